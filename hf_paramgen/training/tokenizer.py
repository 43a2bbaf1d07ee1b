"""`hf-paramgen train-tokenizer`: train a ParamTokenizer (VQ-VAE) on the train split of a weight corpus."""

from __future__ import annotations

import argparse
import json

import torch

from ..data.collate import TokenizerCollator, split_rows
from .loop import TrainingConfig, train


def _tokenizer_config_from_args(args, corpus):
    """A `ParamTokenizerConfig` from the CLI; its chunk size must divide the corpus rows' length."""
    from ..models.configuration_param_tokenizer import ParamTokenizerConfig

    length = corpus["chunks"].features["chunk"].length
    aggregation = corpus["models"][0]["aggregation"] if "aggregation" in corpus["models"].column_names else "layer"
    fields = ("chunk_size", "codes_per_chunk", "codebook_size", "codebook_dim", "num_quantizers", "hidden_size",
              "num_layers", "quantizer", "commitment_weight", "ema_decay", "dead_code_threshold", "max_tensors",
              "max_chunks_per_tensor")
    kwargs = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    config = ParamTokenizerConfig(aggregation=aggregation, **kwargs)
    if length % config.chunk_size or (aggregation != "layer" and length != config.chunk_size):
        raise ValueError(f"chunk_size {config.chunk_size} does not fit the corpus, whose rows hold {length} weights "
                         f"({aggregation} aggregation): it must divide {length} (equal it unless aggregation is layer).")
    return config


def tokenizer_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-paramgen train-tokenizer",
                                description="Train a ParamTokenizer (VQ-VAE) on the train split of a weight corpus.")
    p.add_argument("--corpus", required=True, help="corpus folder (save_to_disk) or Hub dataset id")
    p.add_argument("--output_dir", required=True)
    for name, typ in (("chunk_size", int), ("codes_per_chunk", int), ("codebook_size", int), ("codebook_dim", int),
                      ("num_quantizers", int), ("hidden_size", int), ("num_layers", int), ("quantizer", str),
                      ("commitment_weight", float), ("ema_decay", float), ("dead_code_threshold", float),
                      ("max_tensors", int), ("max_chunks_per_tensor", int)):
        p.add_argument(f"--{name}", type=typ, default=None, help="ParamTokenizerConfig field (default: its default)")
    defaults = TrainingConfig(output_dir="")
    for name in ("batch_size", "lr", "max_steps", "warmup_steps", "weight_decay", "log_every", "save_every",
                 "eval_every", "eval_batches", "seed", "mixed_precision", "gradient_accumulation_steps", "max_time_s"):
        value = getattr(defaults, name)
        p.add_argument(f"--{name}", type=type(value) if value is not None else float, default=value)
    p.add_argument("--no_sign_flip", action="store_true", help="do not augment with random chunk sign flips")
    p.add_argument("--scale_jitter", type=float, default=0.5, help="augment: rescale chunks by up to 1+this (0: off)")
    p.add_argument("--no_resume", action="store_true", help="start afresh even if output_dir holds a saved state")
    return p


def cli_train_tokenizer(argv: list[str]) -> int:
    """`hf-paramgen train-tokenizer --corpus PATH --output_dir DIR [...]` (also under `accelerate launch`)."""
    from ..models.modeling_param_tokenizer import ParamTokenizer

    args = tokenizer_arg_parser().parse_args(argv)
    torch.manual_seed(args.seed)  # the same initial weights on every process
    from ..data.corpus import load_corpus

    corpus = load_corpus(args.corpus)
    model = ParamTokenizer(_tokenizer_config_from_args(args, corpus))
    names = ("batch_size", "lr", "max_steps", "warmup_steps", "weight_decay", "log_every", "save_every", "eval_every",
             "eval_batches", "seed", "mixed_precision", "gradient_accumulation_steps", "max_time_s")
    config = TrainingConfig(output_dir=args.output_dir, resume=not args.no_resume, **{n: getattr(args, n) for n in names})
    validation = split_rows(corpus["chunks"], "validation")
    collator = TokenizerCollator(model.config.chunk_size, sign_flip=not args.no_sign_flip, scale_jitter=args.scale_jitter)
    result = train(model, split_rows(corpus["chunks"], "train"), collator, config,
                   eval_dataset=validation if len(validation) else None)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    return 0
