"""hf_paramgen: instruction-guided neural-network parameter generation, native to Hugging Face.

The top level re-exports the everyday names; each sub-package (`layout`, `models`, `conditioning`, `data`,
`training`, `generation`, `adapters`, `hub`) has its own `__all__`. `hf_paramgen.research` holds the research
fixtures (model zoos, tasks, evaluation, demo) and is never imported by the core.
"""

from ._registration import register_all as _register_all
from .conditioning import (
    EncodedInstruction,
    HashingTextEncoder,
    Instruction,
    InstructionEncoders,
    SampleEncoder,
    TextEncoder,
    add_condition_columns,
    encode_instruction,
)
from .data import (
    CorpusError,
    PriorCollator,
    TokenizerCollator,
    build_corpus,
    corpus_model_weights,
    load_checkpoint,
    load_corpus,
    push_corpus,
)
from .generation import GenerationError, GenerationResult, ParameterGenerationPipeline, ParamGenerator
from .layout import KINDS, Chunks, LayoutError, ParamLayout, ParamSpec, chunk, chunk_positions, num_chunks, unchunk
from .models import (
    ParamPriorConfig,
    ParamPriorForCausalLM,
    ParamTokenizer,
    ParamTokenizerConfig,
    ParamTokenizerOutput,
    structure_for_layout,
)

__all__ = [
    "KINDS", "Chunks", "CorpusError", "EncodedInstruction", "GenerationError", "GenerationResult", "HashingTextEncoder",
    "Instruction", "InstructionEncoders", "LayoutError", "ParamGenerator", "ParamLayout", "ParamPriorConfig",
    "ParamPriorForCausalLM", "ParamSpec", "ParamTokenizer", "ParamTokenizerConfig", "ParamTokenizerOutput",
    "ParameterGenerationPipeline", "PriorCollator", "SampleEncoder", "TextEncoder", "TokenizerCollator",
    "__version__", "add_condition_columns", "build_corpus", "chunk", "chunk_positions", "corpus_model_weights",
    "encode_instruction", "load_checkpoint", "load_corpus", "num_chunks", "push_corpus", "structure_for_layout",
    "unchunk",
]
__version__ = "0.1.0"

_register_all()  # the package's only import-time side effect: Auto classes and the `parameter-generation` task
