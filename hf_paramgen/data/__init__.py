"""Weight corpora (HF `DatasetDict`s of chunks + a models table), the checkpoints they are built from, and the
collators that batch them."""

from .checkpoints import LAYOUT_FILE, CorpusError, declared_layout, load_checkpoint, read_card, resolve_sources
from .collate import PriorCollator, TokenizerCollator
from .corpus import (
    MODEL_SPLITS,
    build_corpus,
    chunk_batch,
    corpus_card,
    corpus_model_weights,
    load_corpus,
    provenance_summary,
    push_corpus,
)

__all__ = ["LAYOUT_FILE", "MODEL_SPLITS", "CorpusError", "PriorCollator", "TokenizerCollator", "build_corpus",
           "chunk_batch", "corpus_card", "corpus_model_weights", "declared_layout", "load_checkpoint", "load_corpus",
           "provenance_summary", "push_corpus", "read_card", "resolve_sources"]
