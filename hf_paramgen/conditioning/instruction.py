"""An instruction (task text, labelled samples, architecture) -> the prior's condition tokens.

`encode_instruction` puts the pieces of an `Instruction` in a fixed order, each token with a type the
prior embeds:

    [task text (type 0)] [architecture text (type 1)] [class 0 prototype (type 2)] ... [class k-1 (type 2+k-1)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .samples import SampleEncoder
from .text import ConditionEncoder

CONDITION_TYPE_TEXT = 0
CONDITION_TYPE_ARCHITECTURE = 1
CONDITION_TYPE_CLASS_OFFSET = 2  # class i -> 2 + i


@dataclass
class Instruction:
    """What to generate: task text, optional labelled samples `(X, y)`, and the target architecture.

    `architecture` is a `ParamLayout` (rendered with `describe()`) or its text.
    """

    task_text: str | None = None
    samples: tuple[Any, Any] | None = None
    architecture: Any = None
    num_classes: int | None = None

    @property
    def architecture_text(self) -> str | None:
        if self.architecture is None or isinstance(self.architecture, str):
            return self.architecture
        return self.architecture.describe()


@dataclass
class InstructionEncoders:
    """The encoders `encode_instruction` uses; `architecture` defaults to `text`."""

    text: ConditionEncoder | None = None
    samples: SampleEncoder | None = None
    architecture: ConditionEncoder | None = None


@dataclass
class EncodedInstruction:
    """`condition_embeds` (1, n_cond, d) float32 and `condition_types` (1, n_cond) long."""

    condition_embeds: torch.Tensor
    condition_types: torch.Tensor

    def as_model_kwargs(self) -> dict[str, torch.Tensor]:
        return {"condition_embeds": self.condition_embeds, "condition_types": self.condition_types}


def encode_instruction(instruction: Instruction, encoders: InstructionEncoders,
                       max_condition_tokens: int | None = None) -> EncodedInstruction:
    """Encode an instruction in the fixed order text, architecture, class prototypes 0..k-1."""
    pieces: list[tuple[torch.Tensor, list[int]]] = []
    if instruction.task_text is not None:
        if encoders.text is None:
            raise ValueError("The instruction has task_text but no text encoder was given.")
        pieces.append((encoders.text(instruction.task_text)[0], [CONDITION_TYPE_TEXT]))
    arch_text = instruction.architecture_text
    if arch_text is not None:
        encoder = encoders.architecture or encoders.text
        if encoder is None:
            raise ValueError("The instruction has an architecture but no architecture/text encoder was given.")
        pieces.append((encoder(arch_text)[0], [CONDITION_TYPE_ARCHITECTURE]))
    if instruction.samples is not None:
        if encoders.samples is None:
            raise ValueError("The instruction has samples but no sample encoder was given.")
        protos = encoders.samples(*instruction.samples, num_classes=instruction.num_classes)[0]  # (k, d)
        pieces.append((protos, [CONDITION_TYPE_CLASS_OFFSET + i for i in range(protos.shape[0])]))
    if not pieces:
        raise ValueError("The instruction is empty: give task_text, samples or architecture.")
    dims = {p.shape[-1] for p, _ in pieces}
    if len(dims) > 1:
        raise ValueError(f"Encoders disagree on the condition width: got {sorted(dims)}; give them the same dim.")
    embeds = torch.cat([p for p, _ in pieces])[None].float()  # (1, n, d)
    types = torch.tensor([t for _, ts in pieces for t in ts], dtype=torch.long)[None]
    if max_condition_tokens is not None and embeds.shape[1] > max_condition_tokens:
        raise ValueError(
            f"The instruction encodes to {embeds.shape[1]} condition tokens, more than max_condition_tokens="
            f"{max_condition_tokens} (too many classes?)."
        )
    return EncodedInstruction(embeds, types)


def add_condition_columns(dataset, encoders: InstructionEncoders, text_column: str | None = "task_text",
                          architecture_column: str | None = "architecture",
                          samples_columns: tuple[str, str] | None = None, num_classes_column: str | None = None,
                          max_condition_tokens: int | None = None, **map_kwargs):
    """Cache condition vectors as columns: adds `condition_embeds` (n_cond, d) and `condition_types` (n_cond,).

    Each row of the `datasets.Dataset` becomes an `Instruction` from the named columns (missing or
    None columns are skipped); `map_kwargs` go to `Dataset.map` (e.g. `num_proc`, `desc`).
    """

    def encode_row(row: dict) -> dict:
        samples = None
        if samples_columns is not None and row.get(samples_columns[0]) is not None:
            samples = (row[samples_columns[0]], row[samples_columns[1]])
        instruction = Instruction(
            task_text=row.get(text_column) if text_column else None,
            architecture=row.get(architecture_column) if architecture_column else None,
            samples=samples,
            num_classes=row.get(num_classes_column) if num_classes_column else None,
        )
        enc = encode_instruction(instruction, encoders, max_condition_tokens)
        return {"condition_embeds": enc.condition_embeds[0].numpy(), "condition_types": enc.condition_types[0].numpy()}

    map_kwargs.setdefault("desc", "encoding instructions")
    return dataset.map(encode_row, **map_kwargs)
