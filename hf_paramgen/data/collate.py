"""Batch builders for the training loop: `PriorCollator` (conditions + codes -> prior batches) and
`TokenizerCollator` (corpus chunk rows -> ParamTokenizer batches).

The batch format is documented in `hf_paramgen.models.modeling_param_prior` (module docstring); the
per-code structure rows come from `hf_paramgen.models.code_structure`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..models.code_structure import NUM_STRUCTURE_FIELDS, step_structure, structure_for_layout
from ..models.configuration_param_prior import ParamPriorConfig


def _tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


class PriorCollator:
    """Rows -> a `ParamPriorForCausalLM` training batch.

    Each row is a dict with
      * ``codes``: (T,) or (N, l) ints in [0, codebook_size), in chunk order;
      * ``condition_embeds`` (n_cond, d) and ``condition_types`` (n_cond,) (see `encode_instruction`);
      * ``code_structure`` (T, 10), or ``architecture``: a name in ``config.layouts`` (the structure is then
        computed with ``config.chunk_size`` / ``config.aggregation`` and cached).

    Rows with more codes than ``max_codes`` are cropped to a random window ``codes[a:a+max_codes]``
    (structure rows kept absolute), the way block-wise generation continues a network.

    With ``config.codes_per_step`` = G > 1 the batch is grouped by decoding steps (see
    `hf_paramgen.models.modeling_param_prior`): ``input_ids`` / ``labels`` (b*G, 1+S_max), row i*G+g = code slot g
    of row i; ``attention_mask`` (b, 1+S_max); ``code_structure`` (b, 1+S_max, 10), one row per step (its first
    code's). Crop windows start at a multiple of G, as block-wise generation's windows of whole steps do.

    Args:
        config: the prior's config (special ids, vocabulary, layouts, context, codes per step).
        max_codes: crop length in codes, a multiple of ``codes_per_step`` (default: ``config.max_block_codes``).
        seed: seed of the crop positions.
    """

    def __init__(self, config: ParamPriorConfig, max_codes: int | None = None, seed: int = 0):
        self.config = config
        self.max_codes = max_codes or config.max_block_codes
        if self.max_codes % config.codes_per_step:
            raise ValueError(f"max_codes={self.max_codes} must be a multiple of codes_per_step={config.codes_per_step} "
                             "(crops hold whole decoding steps).")
        self.generator = torch.Generator().manual_seed(seed)
        self._structures: dict[str, torch.Tensor] = {}

    def _structure(self, row: dict, num_codes: int) -> torch.Tensor:
        if row.get("code_structure") is not None:
            structure = _tensor(row["code_structure"], torch.long)
        else:
            name = row.get("architecture")
            if name is None:
                raise KeyError("A row needs 'code_structure' or an 'architecture' name from config.layouts.")
            if name not in self._structures:
                if self.config.chunk_size is None:
                    raise ValueError("config.chunk_size is unset: cannot compute code_structure from a layout.")
                layout = self.config.get_layout(name)
                self._structures[name] = structure_for_layout(
                    layout, self.config.chunk_size, self.config.codes_per_chunk, self.config.aggregation
                )
            structure = self._structures[name]
        if structure.shape != (num_codes, NUM_STRUCTURE_FIELDS):
            raise ValueError(f"code_structure has shape {tuple(structure.shape)}, the row's codes need "
                             f"({num_codes}, {NUM_STRUCTURE_FIELDS}) (a corpus encoded by an older version? "
                             "rebuild it).")
        return structure

    def _row(self, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (G, 1+s), code_structure (1+s, 10)) of one row, cropped to `max_codes` codes = s steps of G."""
        per_step = self.config.codes_per_step
        codes = _tensor(row["codes"], torch.long).reshape(-1)
        structure = self._structure(row, codes.shape[0])
        if codes.shape[0] % per_step:
            raise ValueError(f"a row of {codes.shape[0]} codes does not split into steps of codes_per_step={per_step}.")
        if codes.shape[0] > self.max_codes:  # a window of whole steps: start at a multiple of G
            choices = (codes.shape[0] - self.max_codes) // per_step + 1
            start = per_step * int(torch.randint(0, choices, (1,), generator=self.generator))
            codes, structure = codes[start : start + self.max_codes], structure[start : start + self.max_codes]
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}].")
        steps = (codes + self.config.code_offset).view(-1, per_step).T  # (G, s): slot g of every step
        ids = torch.cat([torch.full((per_step, 1), self.config.bos_token_id), steps], dim=1)  # (G, 1+s)
        # row p = step p (its first code); the last row is unused
        return ids, torch.cat([step_structure(structure, per_step), structure.new_zeros(1, NUM_STRUCTURE_FIELDS)])

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("PriorCollator got an empty list of rows.")
        seqs = [self._row(r) for r in rows]
        conds = [_tensor(r["condition_embeds"], torch.float32) for r in rows]
        types = [_tensor(r["condition_types"], torch.long).reshape(-1) for r in rows]
        per_step = self.config.codes_per_step
        b, length, n_max = len(rows), max(s[0].shape[1] for s in seqs), max(c.shape[0] for c in conds)
        dims = {c.shape[-1] for c in conds}
        if len(dims) != 1 or any(c.ndim != 2 for c in conds):
            raise ValueError("condition_embeds must all be (n_cond, d) with one d, got shapes "
                             f"{[tuple(c.shape) for c in conds]}.")
        batch = {
            "input_ids": torch.full((b * per_step, length), self.config.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(b, length, dtype=torch.long),
            "code_structure": torch.zeros(b, length, NUM_STRUCTURE_FIELDS, dtype=torch.long),
            "condition_embeds": torch.zeros(b, n_max, dims.pop()),
            "condition_types": torch.zeros(b, n_max, dtype=torch.long),
            "condition_mask": torch.zeros(b, n_max, dtype=torch.long),
        }
        for i, ((ids, structure), cond, typ) in enumerate(zip(seqs, conds, types, strict=False)):
            if typ.shape[0] != cond.shape[0]:
                raise ValueError(f"row {i}: {cond.shape[0]} condition vectors but {typ.shape[0]} condition types.")
            batch["input_ids"][i * per_step : (i + 1) * per_step, : ids.shape[1]] = ids
            batch["attention_mask"][i, : ids.shape[1]] = 1
            batch["code_structure"][i, : ids.shape[1]] = structure
            batch["condition_embeds"][i, : cond.shape[0]] = cond
            batch["condition_types"][i, : cond.shape[0]] = typ
            batch["condition_mask"][i, : cond.shape[0]] = 1
        padding = batch["attention_mask"].repeat_interleave(per_step, dim=0) == 0  # (b*G, 1+S_max)
        labels = batch["input_ids"].masked_fill(padding, -100)
        labels[:, 0] = -100  # BOS is never a target
        batch["labels"] = labels
        return batch


# ------------------------------------------------------------------------------- ParamTokenizer batches
TOKENIZER_COLUMNS = ["chunk", "scale", "num_valid", "tensor_index", "chunk_in_tensor", "kind_id"]


def tokenizer_inputs(columns: dict, chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Columns of chunk rows -> `chunks` (B*m, c) normalised by `scale` (padding zeroed), `chunk_mask`,
    `chunk_position`.

    A corpus row of L weights is cut into m = L / `chunk_size` tokenizer chunks (layer aggregation:
    row j of a tensor holds its chunks j*m ... j*m + m - 1), so one corpus (e.g. built with 64-weight
    rows) serves tokenizers of any chunk size that divides L. Sub-chunks past `num_valid` are all padding.
    """
    chunks = np.asarray(np.stack(columns["chunk"]) if isinstance(columns["chunk"], list) else columns["chunk"],
                        dtype=np.float32)  # (B, L)
    length = chunks.shape[1]
    c = chunk_size or length
    if length % c:
        raise ValueError(f"corpus chunks hold {length} weights, not a multiple of the tokenizer's chunk_size={c}.")
    m = length // c
    scale = np.asarray(columns["scale"], dtype=np.float32)[:, None]  # (B, 1)
    num_valid = np.asarray(columns["num_valid"], dtype=np.int64)  # (B,)
    keys = ("tensor_index", "chunk_in_tensor", "kind_id")
    position = np.stack([np.asarray(columns[k], dtype=np.int64) for k in keys], axis=1)  # (B, 3)
    mask = np.arange(length)[None, :] < num_valid[:, None]  # (B, L)
    position = np.repeat(position, m, axis=0)  # (B*m, 3)
    position[:, 1] = position[:, 1] * m + np.tile(np.arange(m), len(num_valid))
    return {"chunks": torch.from_numpy((chunks * scale * mask).reshape(-1, c)),
            "chunk_mask": torch.from_numpy(mask.reshape(-1, c)), "chunk_position": torch.from_numpy(position)}


def augment_chunks(inputs: dict[str, torch.Tensor], sign_flip: bool = True, scale_jitter: float = 0.0) -> dict:
    """Random per-chunk sign flips and log-uniform rescaling by up to `1 + scale_jitter` (padding stays 0).

    Both keep a chunk a plausible weight chunk (weight distributions are symmetric; layers differ in
    scale), so the tokenizer sees more of weight space than a small zoo holds.
    """
    chunks = inputs["chunks"]  # (B, C)
    factor = torch.ones(chunks.shape[0], 1)
    if sign_flip:
        factor = factor * (torch.randint(0, 2, factor.shape) * 2 - 1)
    if scale_jitter > 0:
        factor = factor * torch.exp((torch.rand(factor.shape) * 2 - 1) * math.log1p(scale_jitter))
    return {**inputs, "chunks": chunks * factor}


class TokenizerCollator:
    """Chunk rows (dicts) -> the `ParamTokenizer.forward` inputs of `tokenizer_inputs`, optionally augmented."""

    def __init__(self, chunk_size: int | None = None, sign_flip: bool = False, scale_jitter: float = 0.0):
        self.chunk_size, self.sign_flip, self.scale_jitter = chunk_size, sign_flip, scale_jitter

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        inputs = tokenizer_inputs({k: [r[k] for r in rows] for k in TOKENIZER_COLUMNS}, self.chunk_size)
        if self.sign_flip or self.scale_jitter:
            inputs = augment_chunks(inputs, self.sign_flip, self.scale_jitter)
        return inputs


def split_rows(chunks_table, split: str):
    """Rows of the `chunks` table whose `split` column equals `split`, formatted for `TokenizerCollator`."""
    rows = chunks_table.filter(lambda s: [x == split for x in s], input_columns="split", batched=True,
                               batch_size=100_000)
    return rows.with_format("numpy", columns=TOKENIZER_COLUMNS)


class SeededCollate:
    """`collate_fn` with the torch RNG seeded by (seed, process, batch number) and the global RNG left untouched, so
    random augmentations do not depend on when the loader prefetched a batch: batch k of a resumed run gets the same
    ones as batch k of an uninterrupted run. A collator's own `generator` (`torch.Generator`, e.g. `PriorCollator`'s
    crops) is re-seeded the same way. `batch` is the number of the next batch (set on resume)."""

    def __init__(self, collate_fn, seed: int, process_index: int = 0):
        self.collate_fn, self.seed, self.process_index, self.batch = collate_fn, seed, process_index, 0

    def __call__(self, rows):
        seed = hash((self.seed, self.process_index, self.batch)) % 2**63  # a tuple of ints: no per-process hash salt
        self.batch += 1
        if isinstance(getattr(self.collate_fn, "generator", None), torch.Generator):
            self.collate_fn.generator.manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.collate_fn(rows)
