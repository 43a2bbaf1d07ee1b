"""Cut flat `weights` into fixed-size `chunks` and back, exactly.

Two aggregation modes (IGPG section 2.1):

* ``"layer"`` — every tensor is padded to a whole number of chunks, so no chunk straddles two
  tensors (generalises better across architectures).
* ``"architecture"`` — the whole flat vector is padded once at its end.

Each chunk carries its position: ``(tensor_index, chunk_index_in_tensor, kind_id)``; in
architecture mode these describe the tensor the chunk starts in, and the chunk index is global.
Padding is marked ``False`` in ``chunk_mask`` and must never count in a loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .param_layout import LayoutError, ParamLayout

Aggregation = Literal["layer", "architecture"]
AGGREGATIONS: tuple[str, ...] = ("layer", "architecture")


@dataclass
class Chunks:
    """`chunks` (N, C) float32, `chunk_mask` (N, C) bool, `chunk_position` (N, 3) long."""

    chunks: torch.Tensor
    chunk_mask: torch.Tensor
    chunk_position: torch.Tensor

    def __len__(self) -> int:
        return self.chunks.shape[0]


def _check(chunk_size: int, aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")


def _segments(layout: ParamLayout, chunk_size: int, aggregation: str) -> list[tuple[int, int, int]]:
    """(offset, length, tensor_index) of the runs of weights that are padded independently."""
    if aggregation == "layer":
        return [(s.offset, s.numel, i) for i, s in enumerate(layout.specs)]
    return [(0, layout.num_params, 0)]


def num_chunks(layout: ParamLayout, chunk_size: int, aggregation: Aggregation = "layer") -> int:
    """Number of chunks `chunk` produces for `layout`."""
    _check(chunk_size, aggregation)
    return sum(-(-length // chunk_size) for _, length, _ in _segments(layout, chunk_size, aggregation))


def chunk_positions(layout: ParamLayout, chunk_size: int,
                    aggregation: Aggregation = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """(`chunk_position` (N, 3) long, `chunk_mask` (N, C) bool), computable without any weights."""
    _check(chunk_size, aggregation)
    starts = torch.tensor([s.offset for s in layout.specs])
    positions, masks = [], []
    for offset, length, t_idx in _segments(layout, chunk_size, aggregation):
        n = -(-length // chunk_size)
        valid = torch.arange(n * chunk_size) < length  # (n*C,)
        masks.append(valid.view(n, chunk_size))
        for j in range(n):
            if aggregation == "architecture":  # tensor holding this chunk's first weight
                t_idx = int(torch.searchsorted(starts, offset + j * chunk_size, right=True)) - 1
            positions.append((t_idx, j, layout.specs[t_idx].kind_id))
    return torch.tensor(positions, dtype=torch.long).view(-1, 3), torch.cat(masks)


def chunk(weights: torch.Tensor, layout: ParamLayout, chunk_size: int, aggregation: Aggregation = "layer") -> Chunks:
    """Flat `weights` (D,) -> `Chunks` with N = `num_chunks(layout, chunk_size, aggregation)`."""
    _check(chunk_size, aggregation)
    if weights.ndim != 1 or weights.numel() != layout.num_params:
        raise LayoutError(f"weights must be (D,) with D={layout.num_params}, got shape {tuple(weights.shape)}.")
    pieces = []
    for offset, length, _ in _segments(layout, chunk_size, aggregation):
        pad = -length % chunk_size
        seg = weights[offset : offset + length]
        pieces.append(torch.nn.functional.pad(seg, (0, pad)).view(-1, chunk_size))  # (n, C)
    position, mask = chunk_positions(layout, chunk_size, aggregation)
    return Chunks(torch.cat(pieces).to(torch.float32), mask, position)


def unchunk(chunks: torch.Tensor, layout: ParamLayout, aggregation: Aggregation = "layer") -> torch.Tensor:
    """Inverse of `chunk`: (N, C) -> flat `weights` (D,), dropping padding."""
    if chunks.ndim != 2:
        raise LayoutError(f"chunks must be (N, C), got shape {tuple(chunks.shape)}.")
    chunk_size = chunks.shape[1]
    expected = num_chunks(layout, chunk_size, aggregation)
    if chunks.shape[0] != expected:
        raise LayoutError(f"layout needs {expected} chunks of size {chunk_size} ({aggregation}), "
                          f"got {chunks.shape[0]}.")
    out, row = [], 0
    for _, length, _ in _segments(layout, chunk_size, aggregation):
        n = -(-length // chunk_size)
        out.append(chunks[row : row + n].reshape(-1)[:length])
        row += n
    return torch.cat(out)
