"""Shared orthonormal bases and tensor digests: what the delta codecs (`scale.delta_codec`, `adapters.lora_codec`)
fit and check."""

from __future__ import annotations

import hashlib

import torch


def top_left_singular(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-`rank` left singular vectors of `matrix` (rows x cols), (rows, rank); fewer columns are padded with
    orthonormal complements so the basis always has `rank` columns (at most `rows`)."""
    rank = min(rank, matrix.shape[0])
    U, _, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    U = U[:, :rank]
    if U.shape[1] < rank:
        extra = torch.linalg.qr(torch.cat([U, torch.randn(matrix.shape[0], rank, dtype=U.dtype,
                                                           generator=torch.Generator().manual_seed(0))], 1))[0]
        U = extra[:, :rank]
    return U.float().contiguous()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and float32 bytes: names the exact reference a delta is taken from."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()
