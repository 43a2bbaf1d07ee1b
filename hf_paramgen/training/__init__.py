"""Training with Accelerate: the shared loop (`train`), the ParamTokenizer's and the prior's entry points."""

from .loop import TrainingConfig, train

__all__ = ["TrainingConfig", "train"]
