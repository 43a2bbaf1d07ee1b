"""Generation: `ParamGenerator` (prior + ParamTokenizer + encoders) and the `parameter-generation` pipeline."""

from .generator import DECODINGS, GenerationError, GenerationResult, ParamGenerator
from .pipeline_parameter_generation import REMOTE_TASK, TASK, ParameterGenerationPipeline

__all__ = ["DECODINGS", "GenerationError", "GenerationResult", "ParamGenerator", "ParameterGenerationPipeline",
           "REMOTE_TASK", "TASK"]
