"""hf_paramgen: instruction-guided neural-network parameter generation, native to Hugging Face."""

from ._registration import register_all as _register_all
from .layout.chunking import Chunks, chunk, chunk_positions, num_chunks, unchunk
from .data.collate import PriorCollator
from .conditioning.instruction import EncodedInstruction, Instruction, InstructionEncoders, add_condition_columns, encode_instruction
from .conditioning.samples import SampleEncoder
from .conditioning.text import HashingTextEncoder, TextEncoder
from .models.configuration_param_prior import ParamPriorConfig
from .models.configuration_param_tokenizer import ParamTokenizerConfig
from .layout.param_layout import KINDS, LayoutError, ParamLayout, ParamSpec
from .models.modeling_param_prior import ParamPriorForCausalLM, structure_for_layout
from .models.modeling_param_tokenizer import ParamTokenizer, ParamTokenizerOutput

_register_all()

__version__ = "0.1.0"
