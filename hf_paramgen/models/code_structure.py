"""Where each code of a network lies: the per-code structure rows the prior is conditioned on.

`structure_for_layout(layout, chunk_size, codes_per_chunk)` gives one row per code (`STRUCTURE_FIELDS`):

* `tensor_index, chunk_in_tensor, kind_id, slot, class_slot` — where the code lies; `class_slots` marks the chunks
  of the classifier head (`ParamLayout.head_tensors`) with 1 + the class (output unit) they belong to;
* `row, column, fan_in, fan_out, tensors_after` — the shape-aware part: the output unit (row) and the index inside
  that unit's incoming weights (column) of the chunk's first weight, the tensor's fan-in (numel / shape[0]) and
  fan-out (shape[0]), and how many tensors follow it (the head is always 1 or 0, however deep the network).

Two embeddings of these rows (`ParamPriorConfig.structure_embedding`):

* `"tables"` (`CodeStructureEmbedding`): learned tables of tensor index, chunk index, kind and slot. Indices beyond
  a table are clipped to its last row, so a tensor larger than any seen in training shares one row: capped.
* `"factorised"` (`FactorisedStructureEmbedding`): kind and slot tables (both fixed vocabularies) plus sinusoidal
  features (and log1p) of every integer field, projected by a linear layer. No table grows with the network, so
  any width, depth or tensor size is expressible, and unit i of a narrow layer has the same `row` features as
  unit i of a wide one.

With several codes per decoding step (`codes_per_step` = G) the prior sees one row per step, `step_structure`: that of
the step's first code.

Used by `ParamPriorForCausalLM`, the training collator and generation; this module is part of the prior's Hub
remote code.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout.chunking import chunk_positions

STRUCTURE_FIELDS: tuple[str, ...] = ("tensor_index", "chunk_in_tensor", "kind_id", "slot", "class_slot", "row",
                                     "column", "fan_in", "fan_out", "tensors_after")
NUM_STRUCTURE_FIELDS = len(STRUCTURE_FIELDS)
STRUCTURE_WIDTHS = (4, 5, NUM_STRUCTURE_FIELDS)  # accepted row widths (older callers pass 4 or 5 fields)
STRUCTURE_EMBEDDINGS = ("tables", "factorised")
# integer fields the factorised embedding encodes with sinusoids (kind and slot have tables)
NUMERIC_FIELDS = ("tensor_index", "chunk_in_tensor", "row", "column", "fan_in", "fan_out", "tensors_after")


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


def shape_features(layout, chunk_size: int, aggregation: str = "layer",
                   position: torch.Tensor | None = None) -> torch.Tensor:
    """LongTensor (N, 5): `(row, column, fan_in, fan_out, tensors_after)` of each chunk's first weight (see the module
    docstring); `position`: the layout's `chunk_positions` (N, 3) when the caller already has them."""
    if position is None:
        position, _ = chunk_positions(layout, chunk_size, aggregation)  # (N, 3)
    specs = layout.specs
    fan_out = torch.tensor([max(1, s.shape[0]) if len(s.shape) else 1 for s in specs], dtype=torch.long)
    numel = torch.tensor([max(1, s.numel) for s in specs], dtype=torch.long)
    offset = torch.tensor([s.offset for s in specs], dtype=torch.long)
    fan_in = (numel // fan_out).clamp(min=1)
    t = position[:, 0]
    first = position[:, 1] * chunk_size  # offset of the chunk's first weight inside its tensor ("layer")
    if aggregation != "layer":  # the chunk index is global
        first = (first - offset[t]).clamp(min=0)
    row, column = first // fan_in[t], first % fan_in[t]
    after = len(specs) - 1 - t
    return torch.stack([row, column, fan_in[t], fan_out[t], after], dim=1)


def structure_for_layout(layout, chunk_size: int, codes_per_chunk: int, aggregation: str = "layer") -> torch.Tensor:
    """Per-code structure of a network: LongTensor (N*l, 10) of `STRUCTURE_FIELDS`, in code order.

    Each chunk's `(tensor_index, chunk_in_tensor, kind_id)` from `chunk_positions` is repeated over
    its `codes_per_chunk` slots; the 4th column is the slot, the 5th the chunk's `class_slots` entry
    (1 + class index inside the classifier head, 0 elsewhere), the last five its `shape_features`.
    Values are not clipped here.
    """
    if not isinstance(codes_per_chunk, int) or codes_per_chunk <= 0:
        raise ValueError(f"codes_per_chunk must be a positive int, got {codes_per_chunk!r}.")
    position, _ = chunk_positions(layout, chunk_size, aggregation)  # (N, 3)
    slots = torch.arange(codes_per_chunk).repeat(position.shape[0])  # (N*l,)
    classes = class_slots(layout, chunk_size, aggregation, position)  # (N,)
    shapes = shape_features(layout, chunk_size, aggregation, position)  # (N, 5)
    per_code = lambda x: x.repeat_interleave(codes_per_chunk, dim=0)  # noqa: E731  chunk rows -> code rows
    return torch.cat([per_code(position), slots[:, None], per_code(classes)[:, None], per_code(shapes)], dim=1)


def step_structure(structure: torch.Tensor, codes_per_step: int) -> torch.Tensor:
    """Per-step structure (S, 10) from per-code rows (S*G, 10): the row of each step's first code. The G codes of a
    step lie in one chunk (G divides `codes_per_chunk`), so only their slot differs, and the slot embedding of the
    first one (a multiple of G) says which part of the chunk the step writes."""
    if structure.shape[0] % codes_per_step:
        raise ValueError(f"{structure.shape[0]} structure rows do not split into steps of codes_per_step="
                         f"{codes_per_step}.")
    return structure[::codes_per_step]


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

    def forward(self, code_structure: torch.Tensor) -> torch.Tensor:  # (b, q, 4+) -> (b, q, h); fields 5+ unused here
        tables = (self.tensor, self.chunk, self.kind, self.slot)
        return sum(t(code_structure[..., i].clamp(0, t.num_embeddings - 1)) for i, t in enumerate(tables))


def sinusoidal_features(values: torch.Tensor, num_frequencies: int, base: float = 10000.0) -> torch.Tensor:
    """(...,) integers -> (..., 2 * num_frequencies + 1) float: sin and cos of `values * base**(-j / F)` for
    j < F, and `log1p(values)`; defined for any value (no table, no cap)."""
    x = values.float()[..., None]
    freqs = base ** (-torch.arange(num_frequencies, device=values.device, dtype=torch.float32) / num_frequencies)
    angles = x * freqs  # (..., F)
    return torch.cat([angles.sin(), angles.cos(), x.clamp(min=0).log1p()], dim=-1)


class FactorisedStructureEmbedding(nn.Module):
    """Kind and slot tables plus a linear map of the sinusoidal features of `NUMERIC_FIELDS` (see the module
    docstring): structure rows of any tensor size, width or depth, with no table that a larger network overflows.
    Rows of 4 or 5 fields (no shape features) use zeros for the missing fields."""

    def __init__(self, config, hidden_size: int, num_frequencies: int = 12):
        super().__init__()
        self.num_frequencies = num_frequencies
        self.kind = nn.Embedding(config.num_kinds, hidden_size)
        self.slot = nn.Embedding(config.codes_per_chunk, hidden_size)
        self.index = [STRUCTURE_FIELDS.index(f) for f in NUMERIC_FIELDS]
        self.proj = nn.Linear(len(NUMERIC_FIELDS) * (2 * num_frequencies + 1), hidden_size)

    def forward(self, code_structure: torch.Tensor) -> torch.Tensor:  # (b, q, 4|5|10) -> (b, q, h)
        if code_structure.shape[-1] < NUM_STRUCTURE_FIELDS:
            pad = code_structure.new_zeros(*code_structure.shape[:-1], NUM_STRUCTURE_FIELDS - code_structure.shape[-1])
            code_structure = torch.cat([code_structure, pad], dim=-1)
        kind = self.kind(code_structure[..., 2].clamp(0, self.kind.num_embeddings - 1))
        slot = self.slot(code_structure[..., 3].clamp(0, self.slot.num_embeddings - 1))
        features = sinusoidal_features(code_structure[..., self.index], self.num_frequencies)  # (b, q, f, 2F+1)
        return kind + slot + self.proj(features.flatten(-2).to(self.proj.weight.dtype))


def structure_embedding(config, hidden_size: int) -> nn.Module:
    """The structure embedding `config.structure_embedding` names ("tables" or "factorised")."""
    kind = getattr(config, "structure_embedding", "tables")
    if kind not in STRUCTURE_EMBEDDINGS:
        raise ValueError(f"structure_embedding must be one of {STRUCTURE_EMBEDDINGS}, got {kind!r}.")
    return FactorisedStructureEmbedding(config, hidden_size) if kind == "factorised" else \
        CodeStructureEmbedding(config, hidden_size)
