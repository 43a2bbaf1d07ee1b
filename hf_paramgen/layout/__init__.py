"""Layouts and chunking: what a network's parameters are (`ParamLayout`) and how they are cut into chunks."""

from .chunking import AGGREGATIONS, Chunks, chunk, chunk_positions, num_chunks, unchunk
from .param_layout import KIND_TO_ID, KINDS, LayoutError, ParamLayout, ParamSpec

__all__ = ["AGGREGATIONS", "KINDS", "KIND_TO_ID", "Chunks", "LayoutError", "ParamLayout", "ParamSpec", "chunk",
           "chunk_positions", "num_chunks", "unchunk"]
