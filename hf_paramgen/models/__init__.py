"""The two models, each a `transformers.PreTrainedModel` with its own config: `ParamTokenizer` (VQ-VAE,
weights <-> codes) and `ParamPriorForCausalLM` (instruction -> codes, a stock decoder with `GenerationMixin`)."""

from .configuration_param_prior import ParamPriorConfig
from .configuration_param_tokenizer import ParamTokenizerConfig
from .modeling_param_prior import ParamPriorForCausalLM, structure_for_layout
from .modeling_param_tokenizer import ParamTokenizer, ParamTokenizerOutput

__all__ = ["ParamPriorConfig", "ParamPriorForCausalLM", "ParamTokenizer", "ParamTokenizerConfig",
           "ParamTokenizerOutput", "structure_for_layout"]
