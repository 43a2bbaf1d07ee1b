"""The two models, each a `transformers.PreTrainedModel` with its own config: `ParamTokenizer` (VQ-VAE,
weights <-> codes) and `ParamPriorForCausalLM` (instruction -> codes, a stock decoder with `GenerationMixin`),
and the per-code structure the prior is conditioned on (`code_structure`)."""

from .code_structure import STRUCTURE_FIELDS, class_slots, structure_for_layout
from .configuration_param_prior import ParamPriorConfig
from .configuration_param_tokenizer import ParamTokenizerConfig
from .modeling_param_prior import ParamPriorForCausalLM
from .modeling_param_tokenizer import ParamTokenizer, ParamTokenizerOutput

__all__ = ["STRUCTURE_FIELDS", "ParamPriorConfig", "ParamPriorForCausalLM", "ParamTokenizer", "ParamTokenizerConfig",
           "ParamTokenizerOutput", "class_slots", "structure_for_layout"]
