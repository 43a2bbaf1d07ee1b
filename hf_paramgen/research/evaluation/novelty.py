"""How new a generated net is: hidden-unit alignment (Hungarian matching), aligned distances, novelty, error overlap."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..tasks import Task, load_task_split
from .zoo_index import StateDict


def _layers(state_dict: StateDict) -> list[tuple[str, str | None]]:
    """(weight name, bias name) per Linear/Conv layer in forward order (ZooNet: `net.<i>.weight`)."""
    names = sorted((k for k in state_dict if k.endswith(".weight")),
                   key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
    return [(w, w[: -len("weight")] + "bias" if w[: -len("weight")] + "bias" in state_dict else None) for w in names]


def align_hidden_units(state_dict: StateDict, reference: StateDict) -> StateDict:
    """Permute the hidden units (MLP neurons, conv channels) of `state_dict` to best match `reference`.

    Layer by layer, after the previous layer's permutation is applied to this layer's inputs, a Hungarian
    matching (`scipy.optimize.linear_sum_assignment`) on squared distances of each unit's incoming weights
    and bias picks the permutation; it is applied to the unit's outgoing weights too (a conv -> linear step
    permutes channel blocks of the flattened input). The function of the network is unchanged.
    """
    out = {k: v.detach().float().clone() for k, v in state_dict.items()}
    layers = _layers(out)
    for i, (w, b) in enumerate(layers[:-1]):  # the output layer's units are classes: never permuted
        if out[w].shape != reference[w].shape:
            raise ValueError(f"Cannot align tensor {w}: shape {tuple(out[w].shape)} vs reference "
                             f"{tuple(reference[w].shape)}.")
        rows = out[w].reshape(out[w].shape[0], -1)  # (units, fan_in)
        ref = reference[w].float().reshape(rows.shape[0], -1)
        if b is not None:
            rows, ref = torch.cat([rows, out[b][:, None]], 1), torch.cat([ref, reference[b].float()[:, None]], 1)
        _, perm = linear_sum_assignment(torch.cdist(ref.double(), rows.double()).pow(2).numpy())  # ref j <- perm[j]
        perm = torch.as_tensor(perm)
        out[w] = out[w][perm]
        if b is not None:
            out[b] = out[b][perm]
        nxt = out[layers[i + 1][0]]  # (out, in, ...) ; conv->linear: in = channels * spatial
        if nxt.ndim == 2 and out[w].ndim == 4:
            out[layers[i + 1][0]] = nxt.reshape(nxt.shape[0], len(perm), -1)[:, perm].reshape(nxt.shape)
        else:
            out[layers[i + 1][0]] = nxt[:, perm]
    return out


def _flat(state_dict: StateDict) -> torch.Tensor:
    return torch.cat([state_dict[k].detach().float().reshape(-1) for k in sorted(state_dict)])


def aligned_distance(state_dict: StateDict, reference: StateDict) -> float:
    """L2 distance between two nets of one architecture after aligning `state_dict`'s hidden units to `reference`."""
    return float((_flat(align_hidden_units(state_dict, reference)) - _flat(reference)).norm())


def checkpoint_nearest_median(train: list[StateDict], num_reference: int = 16, seed: int = 0) -> float | None:
    """Median over `num_reference` sampled training nets of the aligned distance to their nearest other training net."""
    if len(train) < 2:
        return None
    picks = np.random.default_rng(seed).choice(len(train), min(num_reference, len(train)), replace=False)
    return float(np.median([min(aligned_distance(train[i], t) for j, t in enumerate(train) if j != i) for i in picks]))


def novelty(generated: list[StateDict], train: list[StateDict], reference_median: float | None = None,
            num_reference: int = 16, seed: int = 0) -> dict:
    """Mean nearest aligned distance of the generated nets to the training nets, over the median nearest
    checkpoint-to-checkpoint distance (`checkpoint_nearest_median`, computed unless given)."""
    if len(train) < 2:
        return {"novelty_ratio": None, "reason": f"need >= 2 training checkpoints, got {len(train)}"}
    dists = [[aligned_distance(g, t) for t in train] for g in generated]
    nearest = [min(d) for d in dists]
    median = checkpoint_nearest_median(train, num_reference, seed) if reference_median is None else reference_median
    return {"novelty_ratio": float(np.mean(nearest)) / median if median else None,
            "generated_nearest_distance": float(np.mean(nearest)), "checkpoint_nearest_distance_median": median,
            "nearest_index": [int(np.argmin(d)) for d in dists], "num_train": len(train)}


@torch.no_grad()
def error_agreement(model: torch.nn.Module, other: torch.nn.Module, task: Task, split: str = "test") -> float | None:
    """Jaccard overlap of the two models' misclassified samples (1: same mistakes, as copies make; None: no errors)."""
    X, y = load_task_split(task, split)
    wrong_a, wrong_b = model.eval()(X).argmax(-1) != y, other.eval()(X).argmax(-1) != y
    union = int((wrong_a | wrong_b).sum())
    return int((wrong_a & wrong_b).sum()) / union if union else None
