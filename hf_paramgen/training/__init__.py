"""Training with Accelerate: the shared loop (`train`), the ParamTokenizer's and the prior's entry points
(`training.tokenizer`, `training.prior`, imported on use)."""

from .loop import TrainingConfig, best_model_dir, list_checkpoints, train

__all__ = ["TrainingConfig", "best_model_dir", "list_checkpoints", "train"]
