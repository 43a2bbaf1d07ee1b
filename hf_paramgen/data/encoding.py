"""Add ParamTokenizer codes to a weight corpus: the prior's training data.

`encode_corpus(corpus, param_tokenizer)` maps the `chunks` table in batches (memory-bounded, via
`Dataset.map(batched=True)`) and adds a `codes` column: `m * codes_per_chunk` ints per row, where a
corpus row of L weights holds m = L / chunk_size tokenizer chunks, and `num_codes`: how many of them
stand for real weights (`ceil(num_valid / chunk_size) * codes_per_chunk`; the rest code padding).
A model's rows in order, each cut to its `num_codes`, give exactly `param_tokenizer.encode(model)`
(`corpus_model_codes`).

The `models` table records which ParamTokenizer made the codes (`CODES_COLUMN`: its
`param_tokenizer_fingerprint`), so `train-prior` uses the cached codes when it is given an encoded
corpus and the same ParamTokenizer, and encodes afresh otherwise (`cached_codes_usable`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict, List, Value

from ..jobs import clear_job_errors, output_lock
from ..utils import load_pretrained, replace_dir, temporary_sibling
from .collate import tokenizer_inputs
from .corpus import load_corpus

CODES_COLUMN = "codes_param_tokenizer"  # models-table column: fingerprint of the ParamTokenizer that made `codes`
# config fields that, with the weights, decide the codes a ParamTokenizer gives
_FINGERPRINT_FIELDS = ("chunk_size", "latents_per_chunk", "num_quantizers", "codebook_size", "codebook_dim",
                       "quantizer", "aggregation", "num_kinds", "max_tensors", "max_chunks_per_tensor", "hidden_size",
                       "num_layers")


def param_tokenizer_fingerprint(param_tokenizer) -> str:
    """sha256 (hex) of a ParamTokenizer's weights and buffers and the config fields that shape its codes.

    Equal for a model and its `save_pretrained` / `from_pretrained` copy; any weight change alters it.
    """
    h = hashlib.sha256()
    config = param_tokenizer.config
    h.update(json.dumps({k: getattr(config, k, None) for k in _FINGERPRINT_FIELDS}, sort_keys=True).encode())
    for name, tensor in sorted(param_tokenizer.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _encode_batch(batch: dict, param_tokenizer) -> dict:
    c, t = param_tokenizer.config.chunk_size, param_tokenizer.config.codes_per_chunk
    if not np.isfinite(np.asarray(batch["chunk"], dtype=np.float32)).all():
        raise ValueError("The corpus's chunks table holds NaN/Inf weights (build_corpus refuses them): the corpus is "
                         "damaged; rebuild it before encoding.")
    inputs = tokenizer_inputs(batch, c)
    codes = param_tokenizer.encode_chunks(inputs["chunks"], inputs["chunk_position"])  # (B*m, T)
    num_valid = np.asarray(batch["num_valid"], dtype=np.int64)
    return {"codes": codes.to(torch.int32).reshape(len(num_valid), -1).numpy(), "num_codes": -(-num_valid // c) * t}


def encode_corpus(corpus: DatasetDict, param_tokenizer, batch_size: int = 4096,
                  num_proc: int | None = None) -> DatasetDict:
    """`corpus` with `codes` / `num_codes` columns added to its `chunks` table and `CODES_COLUMN` to its `models`.

    Args:
        corpus: a corpus `DatasetDict` (tables `chunks` and `models`).
        param_tokenizer: the `ParamTokenizer` whose codes are added.
        batch_size: chunk rows encoded at a time.
        num_proc: processes of `Dataset.map`.

    Raises:
        ValueError: if the tokenizer's `chunk_size` does not divide the corpus rows' length.
    """
    chunks = corpus["chunks"]
    length, c = chunks.features["chunk"].length, param_tokenizer.config.chunk_size
    if length % c:
        raise ValueError(f"corpus chunks hold {length} weights, not a multiple of the ParamTokenizer's chunk_size={c}.")
    param_tokenizer.eval()
    features = chunks.features.copy()
    features["codes"] = List(Value("int32"), length=length // c * param_tokenizer.config.codes_per_chunk)
    features["num_codes"] = Value("int32")
    encoded = chunks.with_format("numpy").map(
        _encode_batch, batched=True, batch_size=batch_size, features=features, num_proc=num_proc,
        fn_kwargs={"param_tokenizer": param_tokenizer}, desc="encode chunks",
    ).with_format(None)
    models = corpus["models"]
    if CODES_COLUMN in models.column_names:
        models = models.remove_columns(CODES_COLUMN)
    models = models.add_column(CODES_COLUMN, [param_tokenizer_fingerprint(param_tokenizer)] * len(models))
    return DatasetDict({**corpus, "chunks": encoded, "models": models})


def cached_codes_usable(corpus: DatasetDict, param_tokenizer, model_ids=None) -> bool:
    """True if `corpus` holds codes made by `param_tokenizer` (same fingerprint) for every model (or `model_ids`)."""
    models = corpus["models"]
    if "codes" not in corpus["chunks"].column_names or CODES_COLUMN not in models.column_names:
        return False
    fingerprint = param_tokenizer_fingerprint(param_tokenizer)
    wanted = None if model_ids is None else set(model_ids)
    same = all(fp == fingerprint for mid, fp in zip(models["model_id"], models[CODES_COLUMN], strict=False)
               if wanted is None or mid in wanted)
    return same and _codes_in_range(corpus["chunks"], param_tokenizer.config.codebook_size)


def _codes_in_range(chunks, codebook_size: int) -> bool:
    """The `codes` column holds codes of the codebook and `num_codes` fits each row (a damaged cache: encode again)."""
    import pyarrow.compute as pc

    table = chunks.with_format("arrow")[:].select(["codes", "num_codes"])
    if table.num_rows == 0:
        return True
    codes = pc.list_flatten(table.column("codes"))
    lo, hi = pc.min_max(codes).values()
    n_lo, n_hi = pc.min_max(table.column("num_codes")).values()
    width = table.schema.field("codes").type.list_size
    return (lo.as_py() >= 0 and hi.as_py() < codebook_size and n_lo.as_py() >= 0
            and n_hi.as_py() <= width)


def corpus_codes(corpus: DatasetDict, rows: list[dict]) -> list[torch.Tensor]:
    """The cached codes of the models whose `models` rows are `rows`: one LongTensor (N * codes_per_chunk,) each,
    as `param_tokenizer.encode(model).reshape(-1)` gives them.

    The `chunks` table's `codes` are read once through Arrow; each model's rows are found by `first_chunk` /
    `num_chunks` (checked against `model_id` / `chunk_index`, else looked up).
    """
    table = corpus["chunks"].with_format("arrow")[:].select(["model_id", "chunk_index", "codes", "num_codes"])
    table = table.combine_chunks()
    ids = np.asarray(table.column("model_id").to_numpy(zero_copy_only=False))
    index = table.column("chunk_index").to_numpy()
    num_codes = table.column("num_codes").to_numpy()
    column = table.column("codes").chunk(0) if table.num_rows else None
    width = column.type.list_size if column is not None else 0
    codes = column.flatten().to_numpy().reshape(-1, width) if column is not None else np.zeros((0, 0), np.int32)
    out = []
    for row in rows:
        model_id, start, n = row["model_id"], row.get("first_chunk"), row.get("num_chunks")
        part = np.arange(start, start + n) if start is not None and n is not None and start + n <= len(ids) else None
        if part is None or not (ids[part] == model_id).all() or not (index[part] == np.arange(n)).all():
            part = np.flatnonzero(ids == model_id)
            part = part[np.argsort(index[part], kind="stable")]
        pieces = [codes[i, : num_codes[i]] for i in part]
        flat = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)
        out.append(torch.from_numpy(flat))
    return out


def corpus_model_codes(corpus: DatasetDict, row: dict) -> torch.Tensor:
    """The cached codes of one model (its `models` row): LongTensor (N * codes_per_chunk,) (see `corpus_codes`)."""
    return corpus_codes(corpus, [row])[0]


def cli_encode_corpus(argv: list[str]) -> int:
    """`hf-paramgen encode-corpus --corpus PATH --param_tokenizer DIR_OR_ID --output_dir DIR`."""
    p = argparse.ArgumentParser(prog="hf-paramgen encode-corpus", description=encode_corpus.__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="corpus folder (save_to_disk) or Hub dataset id")
    p.add_argument("--param_tokenizer", required=True, help="ParamTokenizer folder or Hub id")
    p.add_argument("--output_dir", required=True, help="encoded corpus folder (train-prior --corpus reads it)")
    p.add_argument("--batch_size", type=int, default=4096)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1 (chunk rows encoded at a time), got {args.batch_size}.")
    if Path(args.output_dir).exists() and not (Path(args.output_dir) / "dataset_dict.json").is_file():
        p.error(f"--output_dir {args.output_dir} exists and is not a corpus folder; expected a new folder or an "
                "earlier encode-corpus output to replace.")
    from ..models.modeling_param_tokenizer import ParamTokenizer

    param_tokenizer = load_pretrained(ParamTokenizer, args.param_tokenizer, "--param_tokenizer")
    encoded = encode_corpus(load_corpus(args.corpus), param_tokenizer, batch_size=args.batch_size)
    with clear_job_errors(p.prog, args.output_dir), output_lock(args.output_dir):
        tmp = temporary_sibling(args.output_dir)
        try:
            encoded.save_to_disk(str(tmp))
            replace_dir(tmp, args.output_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    codes = np.asarray(encoded["chunks"].select(range(min(len(encoded["chunks"]), 1)))["codes"])
    print(json.dumps({"output_dir": str(args.output_dir), "num_chunks": len(encoded["chunks"]),
                      "codes_shape": list(codes.shape), CODES_COLUMN: encoded["models"][0][CODES_COLUMN]
                      if len(encoded["models"]) else None}))
    return 0
