"""Metrics as `evaluate` modules: `evaluate.load("<path to>/hf_paramgen/metrics/param_generation")` works offline."""

from .param_generation.param_generation import compute_param_generation

__all__ = ["compute_param_generation"]
