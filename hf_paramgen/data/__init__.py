"""Weight corpora (HF `DatasetDict`s of chunks + a models table) and the collators that batch them."""

from .collate import PriorCollator, TokenizerCollator
from .corpus import CorpusError, build_corpus, corpus_model_weights, load_checkpoint, load_corpus, push_corpus

__all__ = ["CorpusError", "PriorCollator", "TokenizerCollator", "build_corpus", "corpus_model_weights",
           "load_checkpoint", "load_corpus", "push_corpus"]
