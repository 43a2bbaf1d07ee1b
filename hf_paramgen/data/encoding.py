"""Add ParamTokenizer codes to a weight corpus: the prior's training data.

`encode_corpus(corpus, param_tokenizer)` maps the `chunks` table in batches (memory-bounded, via
`Dataset.map(batched=True)`) and adds a `codes` column: `m * tokens_per_chunk` ints per row, where a
corpus row of L weights holds m = L / chunk_size tokenizer chunks, and `num_codes`: how many of them
stand for real weights (`ceil(num_valid / chunk_size) * tokens_per_chunk`; the rest code padding).
A model's rows in order, each cut to its `num_codes`, give exactly `param_tokenizer.encode(model)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict, List, Value

from .corpus import load_corpus
from .collate import tokenizer_inputs


def _encode_batch(batch: dict, param_tokenizer) -> dict:
    c, t = param_tokenizer.config.chunk_size, param_tokenizer.config.tokens_per_chunk
    inputs = tokenizer_inputs(batch, c)
    codes = param_tokenizer.encode_chunks(inputs["chunks"], inputs["chunk_position"])  # (B*m, T)
    num_valid = np.asarray(batch["num_valid"], dtype=np.int64)
    return {"codes": codes.to(torch.int32).reshape(len(num_valid), -1).numpy(), "num_codes": -(-num_valid // c) * t}


def encode_corpus(corpus: DatasetDict, param_tokenizer, batch_size: int = 4096, num_proc: int | None = None) -> DatasetDict:
    """`corpus` with a `codes` column (list of `tokens_per_chunk` int32) added to its `chunks` table.

    Raises:
        ValueError: if the tokenizer's `chunk_size` does not divide the corpus rows' length.
    """
    chunks = corpus["chunks"]
    length, c = chunks.features["chunk"].length, param_tokenizer.config.chunk_size
    if length % c:
        raise ValueError(f"corpus chunks hold {length} weights, not a multiple of the ParamTokenizer's chunk_size={c}.")
    param_tokenizer.eval()
    features = chunks.features.copy()
    features["codes"] = List(Value("int32"), length=length // c * param_tokenizer.config.tokens_per_chunk)
    features["num_codes"] = Value("int32")
    encoded = chunks.with_format("numpy").map(
        _encode_batch, batched=True, batch_size=batch_size, features=features, num_proc=num_proc,
        fn_kwargs={"param_tokenizer": param_tokenizer}, desc="encode chunks",
    ).with_format(None)
    return DatasetDict({**corpus, "chunks": encoded})


def cli_encode_corpus(argv: list[str]) -> int:
    """`hf-paramgen encode-corpus --corpus PATH --param_tokenizer DIR_OR_ID --output_dir DIR`."""
    from transformers import AutoModel

    p = argparse.ArgumentParser(prog="hf-paramgen encode-corpus", description=encode_corpus.__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="corpus folder (save_to_disk) or Hub dataset id")
    p.add_argument("--param_tokenizer", required=True, help="ParamTokenizer folder or Hub id")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=4096)
    args = p.parse_args(argv)
    from ..models.modeling_param_tokenizer import register

    register()
    param_tokenizer = AutoModel.from_pretrained(args.param_tokenizer)
    encoded = encode_corpus(load_corpus(args.corpus), param_tokenizer, batch_size=args.batch_size)
    out = Path(args.output_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    encoded.save_to_disk(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    codes = np.asarray(encoded["chunks"].select(range(min(len(encoded["chunks"]), 1)))["codes"])
    print(json.dumps({"output_dir": str(out), "num_chunks": len(encoded["chunks"]), "codes_shape": list(codes.shape)}))
    return 0
