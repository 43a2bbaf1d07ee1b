"""Train the instruction-conditioned prior on a weight corpus and save a generator folder.

`build_prior_dataset` turns the corpus's models into rows (codes + cached condition vectors);
`train_prior` trains a `ParamPriorForCausalLM` on them with `training.train` + `PriorCollator`
(resumable) and saves a `ParamGenerator` (prior + ParamTokenizer + sample encoders).
Only models of the "train" split are trained on; the "validation" split is monitored.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from datasets import Dataset

from ..data.collate import PriorCollator
from ..conditioning.instruction import Instruction, InstructionEncoders, encode_instruction
from ..conditioning.samples import SampleEncoder
from ..conditioning.text import MINILM_HUB_ID, make_text_encoder
from ..models.configuration_param_prior import ParamPriorConfig
from ..data.corpus import corpus_model_weights
from ..generation.generator import ParamGenerator, check_compatible
from ..layout.param_layout import ParamLayout
from ..generation.generator import output_size
from ..models.modeling_param_prior import ParamPriorForCausalLM, structure_for_layout
from ..models.modeling_param_tokenizer import ParamTokenizer
from ..data.corpus import load_corpus
from .loop import TrainingConfig, best_model_dir, train

DEFAULT_SAMPLES = "hf_paramgen.research.samples:ZooSamples"  # imported only when the CLI is run
SMALL_DECODER = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6}


def work_dir(output_dir) -> Path:
    """Where training state and the encoded dataset of a generator folder live: `<output_dir>-work`."""
    return Path(str(Path(output_dir)) + "-work")


def _model_rows(corpus, splits, architectures) -> list[dict]:
    models = corpus["models"]
    rows = [models[i] for i in range(len(models))]
    rows = [r for r in rows if r["split"] in splits and (architectures is None or r["architecture"] in architectures)]
    if not rows:
        raise ValueError(f"The corpus has no models of splits {list(splits)} and architectures {architectures}.")
    return rows


@runtime_checkable
class SamplesProvider(Protocol):
    """Where the few-shot samples of a corpus model's task come from (the core knows no dataset names).

    `sample_encoders(dim)` gives the encoders by name; calling it with a model's task dict (the corpus
    `models` row's `task` JSON) and the text encoder gives `(X, y, encoder_name)`, or None for no samples.
    `hf_paramgen.research.samples.ZooSamples` serves the project's zoos.
    """

    def sample_encoders(self, dim: int) -> dict[str, SampleEncoder]: ...

    def __call__(self, task: dict, text_encoder) -> tuple[Any, Any, str] | None: ...


def load_samples_provider(spec: str, **kwargs) -> SamplesProvider:
    """`"package.module:Name"` -> `Name(**kwargs)`: a samples provider named on the command line."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"A samples provider is named 'package.module:Name', got {spec!r}.")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Cannot import samples provider {spec!r}: {err}.") from err
    return factory(**kwargs)


def condition_for_row(row: dict, encoders: InstructionEncoders, sample_encoders: dict[str, SampleEncoder],
                      samples: SamplesProvider | None = None, max_condition_tokens: int | None = None):
    """(condition_embeds (n, d), condition_types (n,)) of a corpus `models` row: text, architecture, prototypes."""
    task_info = json.loads(row["task"]) if row.get("task") else {}
    found = samples(task_info, encoders.text) if samples is not None and task_info else None
    pair, num_classes, enc = None, None, encoders
    if found is not None and found[2] in sample_encoders:
        X, y, name = found
        pair, num_classes = (X, y), int(torch.as_tensor(y).max()) + 1
        enc = InstructionEncoders(text=encoders.text, samples=sample_encoders[name])
    text = row.get("instruction") or None
    arch_text = row.get("architecture_text") or ParamLayout.from_json(row["layout"]).describe()
    out = encode_instruction(Instruction(text, pair, arch_text, num_classes), enc, max_condition_tokens)
    return out.condition_embeds[0], out.condition_types[0]


def build_prior_dataset(corpus, param_tokenizer: ParamTokenizer, encoders: InstructionEncoders,
                        splits: tuple[str, ...] = ("train",), architectures: list[str] | None = None,
                        sample_encoders: dict[str, SampleEncoder] | None = None,
                        max_condition_tokens: int | None = None, samples: SamplesProvider | None = None) -> Dataset:
    """One row per model: `codes` (N*T,), `code_structure` (N*T, 5), `condition_embeds` (n, d), `condition_types` (n,), `architecture`, `model_id`.

    Args:
        corpus: a corpus `DatasetDict` (or its path / repo id).
        param_tokenizer: encodes each model's weights (its chunk_size must match the corpus's).
        encoders: `text` encodes the task text and the architecture text (`layout.describe()`).
        splits: corpus splits to keep (train on "train" only).
        architectures: keep only these architecture names (None: all).
        sample_encoders: name -> SampleEncoder for the few-shot prototypes (`samples` names one per model).
        samples: gives each model's few-shot samples (None: no prototypes).
    """
    from tqdm.auto import tqdm

    corpus = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    sample_encoders = dict(sample_encoders or {})
    rows = _model_rows(corpus, set(splits), architectures)
    out = {"model_id": [], "architecture": [], "split": [], "codes": [], "code_structure": [], "condition_embeds": [],
           "condition_types": []}
    tok = param_tokenizer.config
    with torch.no_grad():
        for row in tqdm(rows, desc="encoding models"):
            weights, layout = corpus_model_weights(corpus, row["model_id"], row)
            codes = param_tokenizer.encode(layout.unflatten(weights), layout)  # (N, T)
            embeds, types = condition_for_row(row, encoders, sample_encoders, samples, max_condition_tokens)
            out["model_id"].append(row["model_id"])
            out["architecture"].append(row["architecture"])
            out["split"].append(row["split"])
            out["codes"].append(codes.reshape(-1).numpy().astype(np.int32))
            structure = structure_for_layout(layout, tok.chunk_size, tok.tokens_per_chunk, tok.aggregation)  # (N*T, 5)
            out["code_structure"].append(structure.numpy().astype(np.int32))
            out["condition_embeds"].append(embeds.numpy())
            out["condition_types"].append(types.numpy())
    return Dataset.from_dict(out)


def layouts_of(corpus, architectures: list[str] | None = None) -> dict[str, str]:
    """`<architecture>:<num outputs>` -> layout JSON of the corpus's models."""
    models = corpus["models"]
    layouts = {}
    for arch, layout in zip(models["architecture"], models["layout"]):
        if architectures is None or arch in architectures:
            layouts.setdefault(f"{arch}:{output_size(ParamLayout.from_json(layout))}", layout)
    return layouts


def make_prior_config(param_tokenizer: ParamTokenizer, condition_dim: int, layouts: dict[str, str],
                      overrides: dict | None = None) -> ParamPriorConfig:
    """A prior config that matches the ParamTokenizer (codebook, codes per chunk, chunking)."""
    tok = param_tokenizer.config
    kwargs = {"codebook_size": tok.codebook_size, "codes_per_chunk": tok.tokens_per_chunk, "chunk_size": tok.chunk_size,
              "aggregation": tok.aggregation, "condition_dim": condition_dim, "layouts": layouts,
              "param_tokenizer_subfolder": "param_tokenizer", "transformer": dict(SMALL_DECODER)}
    kwargs.update(overrides or {})
    config = ParamPriorConfig(**kwargs)
    check_compatible(config, tok)
    return config


def train_prior(corpus, param_tokenizer_path: str, output_dir: str, prior_config_overrides: dict | None = None,
                training_config: TrainingConfig | None = None, architectures: list[str] | None = None,
                text_encoder: str = MINILM_HUB_ID, samples: SamplesProvider | None = None,
                dataset_cache: str | None = None) -> ParamGenerator:
    """Train a prior on the corpus's "train" models and save a generator folder at `output_dir`.

    Training state (checkpoints, `log.jsonl`) goes to `<output_dir>-work/training/` (outside the generator
    folder, which `save_pretrained` replaces atomically); a killed run resumes there. `dataset_cache`
    (default `<output_dir>-work/prior_dataset`) caches the encoded rows across restarts. `samples` gives
    each model's few-shot samples and the sample encoders (e.g. `hf_paramgen.research.samples.ZooSamples`).
    """
    corpus = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    tokenizer = ParamTokenizer.from_pretrained(param_tokenizer_path).eval()
    text = make_text_encoder(text_encoder)
    dim = text.dim if hasattr(text, "dim") else int(text("x").shape[-1])
    samplers = samples.sample_encoders(dim) if samples is not None else {}
    config = make_prior_config(tokenizer, dim, layouts_of(corpus, architectures), prior_config_overrides)
    work = work_dir(output_dir)
    cache = Path(dataset_cache or work / "prior_dataset")
    data = {}
    for split in ("train", "validation"):
        path = cache / split
        if path.is_dir():
            data[split] = Dataset.load_from_disk(str(path))
            continue
        try:
            data[split] = build_prior_dataset(corpus, tokenizer, InstructionEncoders(text=text), (split,), architectures,
                                              samplers, config.max_condition_tokens, samples)
        except ValueError:
            data[split] = None  # e.g. no validation models
            continue
        data[split].save_to_disk(str(path))
    training_config = training_config or TrainingConfig(output_dir=str(work / "training"))
    prior = ParamPriorForCausalLM(config)
    collator = PriorCollator(config, seed=training_config.seed)
    train(prior, data["train"], collator, training_config, eval_dataset=data["validation"])
    best = best_model_dir(training_config.output_dir)
    if training_config.keep_best and best is not None:  # the prior with the lowest validation loss, not the last one
        prior = ParamPriorForCausalLM.from_pretrained(best)
    generator = ParamGenerator(prior, tokenizer, text_encoder, samplers, text_encoder=text)
    generator.save_pretrained(output_dir)
    return generator


def cli_train_prior(argv: list[str]) -> int:
    """`hf-paramgen train-prior`: train the prior on a corpus and save a generator folder."""
    p = argparse.ArgumentParser(prog="hf-paramgen train-prior", description=cli_train_prior.__doc__)
    p.add_argument("--corpus", required=True, help="corpus folder or Hub id")
    p.add_argument("--param_tokenizer", required=True, help="ParamTokenizer folder or Hub id")
    p.add_argument("--output_dir", required=True, help="generator folder to write")
    p.add_argument("--architectures", nargs="*", default=None, help="train on these architectures only")
    p.add_argument("--text_encoder", default=MINILM_HUB_ID, help="text encoder: Hub id, folder or 'hashing:<dim>'")
    p.add_argument("--samples", default=DEFAULT_SAMPLES,
                   help="few-shot samples provider 'package.module:Name' ('none': no sample conditioning)")
    p.add_argument("--sample_datasets", nargs="*", default=["mnist", "digits"],
                   help="datasets the provider serves (zoos: mnist, digits; 'text': labelled texts of text tasks)")
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--context", type=int, default=1280, help="max_position_embeddings (prefix + BOS + codes)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max_steps", type=int, default=2000)
    p.add_argument("--warmup_steps", type=int, default=100)
    p.add_argument("--log_every", type=int, default=20)
    p.add_argument("--save_every", type=int, default=200)
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--max_time_s", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep_last", action="store_true",
                   help="save the last prior, not the one with the lowest validation loss")
    p.add_argument("--no_condition_injection", action="store_true",
                   help="condition through the prefix only (IGPG), not also on every code token")
    args = p.parse_args(argv)
    h = args.hidden_size
    overrides = {"max_position_embeddings": args.context, "condition_injection": not args.no_condition_injection,
                 "transformer": {**SMALL_DECODER, "hidden_size": h, "intermediate_size": 4 * h,
                                 "num_hidden_layers": args.num_layers, "num_attention_heads": args.num_heads,
                                 "num_key_value_heads": args.num_heads}}
    tc = TrainingConfig(output_dir=str(work_dir(args.output_dir) / "training"), batch_size=args.batch_size, lr=args.lr,
                        max_steps=args.max_steps, warmup_steps=args.warmup_steps, log_every=args.log_every,
                        save_every=args.save_every, eval_every=args.eval_every, max_time_s=args.max_time_s,
                        seed=args.seed, weight_decay=0.01, keep_best=not args.keep_last)
    start = time.perf_counter()
    samples = None
    if args.samples.lower() != "none":
        samples = load_samples_provider(args.samples, datasets=tuple(args.sample_datasets))
    train_prior(args.corpus, args.param_tokenizer, args.output_dir, overrides, tc, args.architectures, args.text_encoder,
                samples)
    print(json.dumps({"output_dir": args.output_dir, "seconds": time.perf_counter() - start}))
    return 0
