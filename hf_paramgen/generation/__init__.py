"""Generation: `ParamGenerator` (prior + ParamTokenizer + encoders) and the `parameter-generation` pipeline."""

from .generator import GenerationError, GenerationResult, ParamGenerator
from .pipeline_parameter_generation import ParameterGenerationPipeline

__all__ = ["GenerationError", "GenerationResult", "ParamGenerator", "ParameterGenerationPipeline"]
