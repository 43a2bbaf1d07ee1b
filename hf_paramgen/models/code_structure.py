"""Where each code of a network lies: the per-code structure rows the prior is conditioned on.

`structure_for_layout(layout, chunk_size, codes_per_chunk)` gives one row per code,
`(tensor_index, chunk_in_tensor, kind_id, slot, class_slot)` (`STRUCTURE_FIELDS`); `class_slots` marks
the chunks of the classifier head (`ParamLayout.head_tensors`) with 1 + the class (output unit) they
belong to; `CodeStructureEmbedding` embeds the first four fields. Used by `ParamPriorForCausalLM`, the
training collator and generation; this module is part of the prior's Hub remote code.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout.chunking import chunk_positions

STRUCTURE_FIELDS: tuple[str, ...] = ("tensor_index", "chunk_in_tensor", "kind_id", "slot", "class_slot")
NUM_STRUCTURE_FIELDS = len(STRUCTURE_FIELDS)


def head_tensors(layout) -> list[int]:
    """`layout.head_tensors`: indices of the classifier head's tensors (row i of them is class i)."""
    return layout.head_tensors


def class_slots(layout, chunk_size: int, aggregation: str = "layer",
                position: torch.Tensor | None = None) -> torch.Tensor:
    """LongTensor (N,): 1 + the output unit (class) a chunk's first weight belongs to in the head, 0 elsewhere.

    `position`: the layout's `chunk_positions` (N, 3) when the caller already has them.
    """
    if position is None:
        position, _ = chunk_positions(layout, chunk_size, aggregation)  # (N, 3)
    out = torch.zeros(position.shape[0], dtype=torch.long)
    for t in head_tensors(layout):
        spec = layout.specs[t]
        rows = position[:, 0] == t
        if aggregation == "layer":
            local = position[rows, 1] * chunk_size
        else:  # chunk index is global: offset of the chunk's first weight inside tensor t
            local = position[rows, 1] * chunk_size - spec.offset
        out[rows] = 1 + local.clamp(min=0) // max(1, spec.numel // spec.shape[0])
    return out


def structure_for_layout(layout, chunk_size: int, codes_per_chunk: int, aggregation: str = "layer") -> torch.Tensor:
    """Per-code structure of a network: LongTensor (N*l, 5) of `STRUCTURE_FIELDS`, in code order.

    Each chunk's `(tensor_index, chunk_in_tensor, kind_id)` from `chunk_positions` is repeated over
    its `codes_per_chunk` slots; the 4th column is the slot, the 5th the chunk's `class_slots` entry
    (1 + class index inside the classifier head, 0 elsewhere). Values are not clipped here.
    """
    if not isinstance(codes_per_chunk, int) or codes_per_chunk <= 0:
        raise ValueError(f"codes_per_chunk must be a positive int, got {codes_per_chunk!r}.")
    position, _ = chunk_positions(layout, chunk_size, aggregation)  # (N, 3)
    slots = torch.arange(codes_per_chunk).repeat(position.shape[0])  # (N*l,)
    classes = class_slots(layout, chunk_size, aggregation, position)  # (N,)
    per_code = lambda x: x.repeat_interleave(codes_per_chunk, dim=0)  # noqa: E731  chunk rows -> code rows
    return torch.cat([per_code(position), slots[:, None], per_code(classes)[:, None]], dim=1)


class CodeStructureEmbedding(nn.Module):
    """Sum of four embeddings of `code_structure` (..., 5) (its first four fields); indices clipped to each
    table's last row."""

    def __init__(self, config, hidden_size: int):
        """`config`: a `ParamPriorConfig` (table sizes); `hidden_size`: the decoder's width."""
        super().__init__()
        self.tensor = nn.Embedding(config.max_tensors, hidden_size)
        self.chunk = nn.Embedding(config.max_chunks_per_tensor, hidden_size)
        self.kind = nn.Embedding(config.num_kinds, hidden_size)
        self.slot = nn.Embedding(config.codes_per_chunk, hidden_size)

    def forward(self, code_structure: torch.Tensor) -> torch.Tensor:  # (b, q, 5) -> (b, q, h); class_slot unused here
        tables = (self.tensor, self.chunk, self.kind, self.slot)
        return sum(t(code_structure[..., i].clamp(0, t.num_embeddings - 1)) for i, t in enumerate(tables))
