"""hf_paramgen: instruction-guided neural-network parameter generation, native to Hugging Face."""

from .chunking import Chunks, chunk, chunk_positions, num_chunks, unchunk
from .layout import KINDS, LayoutError, ParamLayout, ParamSpec

__version__ = "0.1.0"
