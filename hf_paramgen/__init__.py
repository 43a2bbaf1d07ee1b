"""hf_paramgen: instruction-guided neural-network parameter generation, native to Hugging Face."""

from ._registration import register_all as _register_all
from .chunking import Chunks, chunk, chunk_positions, num_chunks, unchunk
from .collate import PriorCollator
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
from .configuration_param_prior import ParamPriorConfig
from .configuration_param_tokenizer import ParamTokenizerConfig
from .layout import KINDS, LayoutError, ParamLayout, ParamSpec
from .modeling_param_prior import ParamPriorForCausalLM, structure_for_layout
from .modeling_param_tokenizer import ParamTokenizer, ParamTokenizerOutput

_register_all()

__version__ = "0.1.0"
