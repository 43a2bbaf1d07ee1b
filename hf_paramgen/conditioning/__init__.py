"""Instruction encoders: task text, labelled samples and architecture -> condition vectors for the prior.

Every encoder follows one small interface (`ConditionEncoder`): call it, get `(b, n_cond, d)`, read `.dim`.
"""

from .instruction import EncodedInstruction, Instruction, InstructionEncoders, add_condition_columns, encode_instruction
from .samples import TEXT_SAMPLES, SampleEncoder
from .text import ConditionEncoder, HashingTextEncoder, TextEncoder, make_text_encoder, resolve_text_model

__all__ = ["TEXT_SAMPLES", "ConditionEncoder", "EncodedInstruction", "HashingTextEncoder", "Instruction",
           "InstructionEncoders",
           "SampleEncoder", "TextEncoder", "add_condition_columns", "encode_instruction", "make_text_encoder",
           "resolve_text_model"]
