"""Generation: `ParamGenerator` (prior + ParamTokenizer + encoders), `LoraCodecGenerator` (whole LoRA adapters of a
stock class from codec coefficients) and the `parameter-generation` pipeline."""

from .generator import DECODINGS, GenerationError, GenerationResult, ParamGenerator
from .lora_codec_generator import LoraCodecGenerator
from .pipeline_parameter_generation import REMOTE_TASK, TASK, ParameterGenerationPipeline

__all__ = ["DECODINGS", "GenerationError", "GenerationResult", "LoraCodecGenerator", "ParamGenerator",
           "ParameterGenerationPipeline", "REMOTE_TASK", "TASK"]
