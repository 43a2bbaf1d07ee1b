"""Train the instruction-conditioned prior on a weight corpus and save a generator folder.

`build_prior_dataset` turns the corpus's models into rows (codes + cached condition vectors);
`train_prior` trains a `ParamPriorForCausalLM` on them with `training.train` + `PriorCollator`
(resumable) and saves a `ParamGenerator` (prior + ParamTokenizer + sample encoders).
Only models of the "train" split are trained on; the "validation" split is monitored.

The core knows no dataset names: each model's few-shot samples come from a `SamplesProvider`
(on the command line `--samples package.module:Name`, default the research zoos' `ZooSamples`).
A corpus that `encode-corpus` encoded with the same ParamTokenizer gives its cached codes; any other
corpus is encoded here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import HfArgumentParser

from ..conditioning.instruction import Instruction, InstructionEncoders, encode_instruction
from ..conditioning.samples import SampleEncoder
from ..conditioning.text import MINILM_HUB_ID, make_text_encoder
from ..data.collate import PriorCollator
from ..data.corpus import corpus_model_weights, load_corpus
from ..data.encoding import cached_codes_usable, corpus_codes, param_tokenizer_fingerprint
from ..generation.generator import ParamGenerator, check_compatible
from ..jobs import clear_job_errors, output_lock, recover_temporaries
from ..layout.param_layout import ParamLayout
from ..models.code_structure import STRUCTURE_FIELDS, structure_for_layout
from ..models.configuration_param_prior import ParamPriorConfig
from ..models.modeling_param_prior import ParamPriorForCausalLM
from ..models.modeling_param_tokenizer import ParamTokenizer
from ..utils import atomic_write_json, load_pretrained, replace_dir, temporary_sibling
from .loop import TrainingConfig, best_model_dir, train

DEFAULT_SAMPLES = "hf_paramgen.research.samples:ZooSamples"  # imported only when the CLI is run
SMALL_DECODER = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6}
CACHE_FILE = "prior_dataset.json"  # beside the cached rows: the ParamTokenizer and settings they were built with


def work_dir(output_dir) -> Path:
    """Where training state and the encoded dataset of a generator folder live: `<output_dir>-work`."""
    return Path(str(Path(output_dir)) + "-work")


def check_architectures(corpus, architectures: list[str] | None) -> None:
    """Raise a ValueError naming the `architectures` the corpus's `models` table lacks (None: all, always fine)."""
    if architectures is None:
        return
    if not architectures:
        raise ValueError("architectures is empty: name at least one, or pass None to train on all.")
    known = sorted(set(corpus["models"]["architecture"]))
    missing = [a for a in architectures if a not in known]
    if missing:
        raise ValueError(f"The corpus has no models of architectures {missing}; it holds {known}.")


def _model_rows(corpus, splits, architectures) -> list[dict]:
    return [r for r in corpus["models"].to_list()
            if r["split"] in splits and (architectures is None or r["architecture"] in architectures)]


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
    """`"package.module:Name"` -> `Name(**kwargs)`: a samples provider named on the command line.

    Raises:
        ValueError: if `spec` is not of that form, does not import, or does not give a `SamplesProvider`.
    """
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"A samples provider is named 'package.module:Name', got {spec!r}.")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Cannot import samples provider {spec!r}: {err}.") from err
    provider = factory(**kwargs)
    if not isinstance(provider, SamplesProvider):
        raise ValueError(f"Samples provider {spec!r} gave a {type(provider).__name__}, which lacks "
                         "sample_encoders(dim) or __call__(task, text_encoder).")
    return provider


def condition_for_row(row: dict, encoders: InstructionEncoders, sample_encoders: dict[str, SampleEncoder],
                      samples: SamplesProvider | None = None, max_condition_tokens: int | None = None):
    """(condition_embeds (n, d), condition_types (n,)) of a corpus `models` row: text, architecture, prototypes.

    Args:
        row: the model's `models` row (`task` JSON, `instruction` = task text, `architecture_text`, `layout`).
        encoders: `text` encodes the task text and the architecture text.
        sample_encoders: name -> SampleEncoder; the provider's answer names one.
        samples: the few-shot samples provider (None: no class prototypes).
        max_condition_tokens: the prior's limit on condition tokens.
    """
    task_info = json.loads(row["task"]) if row.get("task") else {}
    found = samples(task_info, encoders.text) if samples is not None and task_info else None
    pair, num_classes, enc = None, None, encoders
    if found is not None and found[2] in sample_encoders:
        X, y, name = found
        pair, num_classes = (X, y), int(torch.as_tensor(y).max()) + 1
        enc = InstructionEncoders(text=encoders.text, samples=sample_encoders[name])
    task_text = row.get("instruction") or None
    arch_text = row.get("architecture_text") or ParamLayout.from_json(row["layout"]).describe()
    out = encode_instruction(Instruction(task_text, pair, arch_text, num_classes), enc, max_condition_tokens)
    return out.condition_embeds[0], out.condition_types[0]


def build_prior_dataset(corpus, param_tokenizer: ParamTokenizer, encoders: InstructionEncoders,
                        splits: tuple[str, ...] = ("train",), architectures: list[str] | None = None,
                        sample_encoders: dict[str, SampleEncoder] | None = None,
                        max_condition_tokens: int | None = None, samples: SamplesProvider | None = None,
                        use_cached_codes: bool = True) -> Dataset:
    """One row per model: `codes` (N*T,), `code_structure` (N*T, 10), `condition_embeds` (n, d),
    `condition_types` (n,), `architecture`, `split`, `model_id`.

    Args:
        corpus: a corpus `DatasetDict` (or its path / repo id); an `encode-corpus` output gives its cached codes.
        param_tokenizer: encodes each model's weights (its chunk_size must match the corpus's).
        encoders: `text` encodes the task text and the architecture text (`layout.describe()`).
        splits: corpus splits to keep (train on "train" only).
        architectures: keep only these architecture names (None: all).
        sample_encoders: name -> SampleEncoder for the few-shot prototypes (`samples` names one per model).
        max_condition_tokens: the prior's limit on condition tokens.
        samples: gives each model's few-shot samples (None: no prototypes).
        use_cached_codes: read the corpus's `codes` when `param_tokenizer` made them (else encode the weights).

    Raises:
        ValueError: if no model is of `splits` and `architectures`.
    """
    from tqdm.auto import tqdm

    corpus = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    sample_encoders = dict(sample_encoders or {})
    rows = _model_rows(corpus, set(splits), architectures)
    if not rows:
        raise ValueError(f"The corpus has no models of splits {list(splits)} and architectures {architectures}.")
    cached = use_cached_codes and cached_codes_usable(corpus, param_tokenizer, [r["model_id"] for r in rows])
    out = {"model_id": [], "architecture": [], "split": [], "codes": [], "code_structure": [], "condition_embeds": [],
           "condition_types": []}
    tok = param_tokenizer.config
    cached_codes = corpus_codes(corpus, rows) if cached else None
    with torch.no_grad():
        for i, row in enumerate(tqdm(rows, desc="cached codes" if cached else "encoding models")):
            if cached:
                layout, codes = ParamLayout.from_json(row["layout"]), cached_codes[i]  # (N*T,)
            else:
                weights, layout = corpus_model_weights(corpus, row["model_id"], row)
                codes = param_tokenizer.encode(layout.unflatten(weights), layout).reshape(-1)  # (N*T,)
            structure = structure_for_layout(layout, tok.chunk_size, tok.codes_per_chunk, tok.aggregation)  # (N*T, 10)
            if structure.shape[0] != codes.shape[0]:
                raise ValueError(f"model {row['model_id']!r}: {codes.shape[0]} codes but its layout needs "
                                 f"{structure.shape[0]} (corpus encoded with other chunking?).")
            embeds, types = condition_for_row(row, encoders, sample_encoders, samples, max_condition_tokens)
            out["model_id"].append(row["model_id"])
            out["architecture"].append(row["architecture"])
            out["split"].append(row["split"])
            out["codes"].append(codes.numpy().astype(np.int32))
            out["code_structure"].append(structure.numpy().astype(np.int32))
            out["condition_embeds"].append(embeds.numpy())
            out["condition_types"].append(types.numpy())
    return Dataset.from_dict(out)


def layouts_of(corpus, architectures: list[str] | None = None, splits: tuple[str, ...] = ("train",)) -> dict[str, str]:
    """`<architecture>:<num outputs>` -> layout JSON of the corpus's models of `splits` (`ParamLayout.output_size`):
    the layouts the prior is trained on, never those of held-out architectures."""
    models = corpus["models"]
    layouts = {}
    for arch, layout, split in zip(models["architecture"], models["layout"], models["split"], strict=True):
        if (architectures is None or arch in architectures) and split in splits:
            size = ParamLayout.from_json(layout).output_size
            if size is None:
                raise ValueError(f"architecture {arch!r} has no weight matrix, so no output size to name it by.")
            layouts.setdefault(f"{arch}:{size}", layout)
    return layouts


def make_prior_config(param_tokenizer: ParamTokenizer, condition_dim: int, layouts: dict[str, str],
                      overrides: dict | None = None) -> ParamPriorConfig:
    """A prior config that matches the ParamTokenizer (codebook, codes per chunk, chunking)."""
    tok = param_tokenizer.config
    kwargs = {"codebook_size": tok.codebook_size, "codes_per_chunk": tok.codes_per_chunk, "chunk_size": tok.chunk_size,
              "aggregation": tok.aggregation, "condition_dim": condition_dim, "layouts": layouts,
              "param_tokenizer_subfolder": "param_tokenizer", "transformer": dict(SMALL_DECODER)}
    kwargs.update(overrides or {})
    config = ParamPriorConfig(**kwargs)
    check_compatible(config, tok)
    return config


def _prior_datasets(corpus, tokenizer, text, samplers, config, architectures, samples, text_encoder: str,
                    cache: Path) -> dict[str, Dataset | None]:
    """The train / validation rows, from `cache` when it was built with the same ParamTokenizer and settings."""
    provider = None if samples is None else f"{type(samples).__module__}.{type(samples).__qualname__}"
    models = json.dumps([list(corpus["models"]["model_id"]), len(corpus["chunks"])]).encode()
    meta = {"corpus": hashlib.sha256(models).hexdigest(), "param_tokenizer": param_tokenizer_fingerprint(tokenizer),
            "text_encoder": text_encoder,
            "architectures": architectures, "samples": provider, "samplers": sorted(samplers),
            "max_condition_tokens": config.max_condition_tokens, "structure_fields": list(STRUCTURE_FIELDS)}
    meta_file = cache / CACHE_FILE
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:
        return {split: Dataset.load_from_disk(str(cache / split)) if (cache / split).is_dir() else None
                for split in ("train", "validation")}
    data = {}
    for split in ("train", "validation"):
        has_rows = bool(_model_rows(corpus, {split}, architectures))
        data[split] = build_prior_dataset(corpus, tokenizer, InstructionEncoders(text=text), (split,), architectures,
                                          samplers, config.max_condition_tokens, samples) if has_rows else None
    if data["train"] is None:
        raise ValueError(f"The corpus has no 'train' models of architectures {architectures}.")
    tmp = temporary_sibling(cache)
    tmp.mkdir()
    for split, rows in data.items():
        if rows is not None:
            rows.save_to_disk(str(tmp / split))
    atomic_write_json(tmp / CACHE_FILE, meta)
    replace_dir(tmp, cache)
    return data


def train_prior(corpus, param_tokenizer_path: str, output_dir: str, prior_config_overrides: dict | None = None,
                training_config: TrainingConfig | None = None, architectures: list[str] | None = None,
                text_encoder: str = MINILM_HUB_ID, samples: SamplesProvider | None = None,
                dataset_cache: str | None = None) -> ParamGenerator:
    """Train a prior on the corpus's "train" models and save a generator folder at `output_dir`.

    Args:
        corpus: corpus `DatasetDict`, folder or Hub id; an `encode-corpus` output made with this ParamTokenizer
            gives its cached codes instead of being encoded again.
        param_tokenizer_path: ParamTokenizer folder or Hub id.
        output_dir: the generator folder to write (`save_pretrained` replaces it atomically).
        prior_config_overrides: `ParamPriorConfig` fields over the defaults that follow from the ParamTokenizer.
        training_config: loop settings (default: `<output_dir>-work/training`, `TrainingConfig` defaults).
        architectures: train on these architecture names only (None: all); unknown names raise at once.
        text_encoder: Hub id, folder or `hashing:<dim>` of the text encoder.
        samples: each model's few-shot samples and the sample encoders (e.g.
            `hf_paramgen.research.samples.ZooSamples`); None: no class prototypes.
        dataset_cache: where the encoded rows are cached across restarts (default `<output_dir>-work/prior_dataset`).

    Training state (checkpoints, `log.jsonl`) goes to `<output_dir>-work/training/`; a killed run resumes there.
    `output_dir` is locked while a run writes it (`jobs.output_lock`: a second run raises `OutputLocked`).

    Raises:
        ValueError: if `architectures` names one the corpus lacks, or the corpus has no train model of them
            (before any folder is written).
    """
    corpus = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    check_architectures(corpus, architectures)
    if not _model_rows(corpus, {"train"}, architectures):
        raise ValueError(f"The corpus has no 'train' models of architectures {architectures}.")
    # the device choice of `training.loop` (a bare `PartialState()` on a CPU machine under `accelerate launch` is one
    # process of its own, and the Accelerator built later would inherit that: two independent runs in one folder)
    state = PartialState(cpu=not torch.cuda.is_available())
    with output_lock(output_dir) if state.is_main_process else contextlib.nullcontext():
        return _train_prior(corpus, param_tokenizer_path, output_dir, prior_config_overrides, training_config,
                            architectures, text_encoder, samples, dataset_cache)


def _train_prior(corpus, param_tokenizer_path, output_dir, prior_config_overrides, training_config, architectures,
                 text_encoder, samples, dataset_cache) -> ParamGenerator:
    state = PartialState(cpu=not torch.cuda.is_available())
    training_config = training_config or TrainingConfig(output_dir=str(work_dir(output_dir) / "training"))
    torch.manual_seed(training_config.seed)  # the same initial prior (and sample encoders) in every run and process
    tokenizer = load_pretrained(ParamTokenizer, param_tokenizer_path, "param_tokenizer").eval()
    text = make_text_encoder(text_encoder)
    dim = text.dim if hasattr(text, "dim") else int(text("x").shape[-1])
    samplers = samples.sample_encoders(dim) if samples is not None else {}
    config = make_prior_config(tokenizer, dim, layouts_of(corpus, architectures), prior_config_overrides)
    cache = Path(dataset_cache or work_dir(output_dir) / "prior_dataset")
    with state.main_process_first():  # under `accelerate launch` rank 0 builds the cache, the others read it
        if state.is_main_process:
            recover_temporaries(cache)  # what a killed run left beside it
        data = _prior_datasets(corpus, tokenizer, text, samplers, config, architectures, samples, text_encoder,
                               cache)
    torch.manual_seed(training_config.seed)
    prior = ParamPriorForCausalLM(config)
    collator = PriorCollator(config, seed=training_config.seed)
    train(prior, data["train"], collator, training_config, eval_dataset=data["validation"])
    best = best_model_dir(training_config.output_dir)
    if training_config.keep_best and best is not None:  # the prior with the lowest validation loss, not the last one
        prior = ParamPriorForCausalLM.from_pretrained(best)
    generator = ParamGenerator(prior, tokenizer, text_encoder, samplers, text_encoder=text)
    if state.is_main_process:  # one writer: the other processes of `accelerate launch` wait
        generator.save_pretrained(output_dir)
    state.wait_for_everyone()
    return generator


# ---------------------------------------------------------------------------------------------- CLI
@dataclass
class PriorScriptArguments:
    """The command line of `hf-paramgen train-prior` (an `HfArgumentParser` dataclass)."""

    corpus: str = field(metadata={"help": "corpus folder or Hub id (an encode-corpus output gives cached codes)"})
    param_tokenizer: str = field(metadata={"help": "ParamTokenizer folder or Hub id"})
    output_dir: str = field(metadata={"help": "generator folder to write"})
    architectures: list[str] | None = field(default=None, metadata={"help": "train on these architectures only"})
    text_encoder: str = field(default=MINILM_HUB_ID,
                              metadata={"help": "text encoder: Hub id, folder or 'hashing:<dim>'"})
    samples: str = field(default=DEFAULT_SAMPLES, metadata={
        "help": "few-shot samples provider 'package.module:Name' ('none': no sample conditioning)"})
    sample_datasets: list[str] = field(default_factory=lambda: ["mnist", "digits"], metadata={
        "help": "datasets the provider serves (zoos: mnist, digits; 'text': labelled texts of text tasks)"})
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    context: int = field(default=1280, metadata={"help": "max_position_embeddings (prefix + BOS + decoding steps)"})
    batch_size: int = 8
    lr: float = 1e-3
    max_steps: int = 2000
    warmup_steps: int = 100
    log_every: int = 20
    save_every: int = 200
    eval_every: int = 100
    max_time_s: float | None = None
    seed: int = 0
    keep_last: bool = field(default=False, metadata={
        "help": "save the last prior, not the one with the lowest validation loss"})
    structure_embedding: str = field(default="factorised", metadata={
        "help": "'factorised' (sinusoidal position and shape features: any tensor size, width or depth) or 'tables' "
                "(learned tables, capped at max_tensors / max_chunks_per_tensor)"})
    condition_injection: bool = field(default=True, metadata={
        "help": "also condition every code token (--no_condition_injection: through the prefix only, as IGPG)"})
    codes_per_step: int = field(default=1, metadata={
        "help": "codes the prior writes per decoding step (a divisor of the ParamTokenizer's codes per chunk)"})

    def __post_init__(self):
        """The decoder's shape checked before any work (transformers would refuse it deep inside its config)."""
        for name in ("hidden_size", "num_layers", "num_heads", "context", "codes_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} must be an int >= 1, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"--hidden_size {self.hidden_size} must be a multiple of --num_heads {self.num_heads} "
                             "(the attention heads split the hidden size).")
        self.training_config()  # the loop's settings (batch size, steps, lr, ...) are checked here, before any work

    def prior_overrides(self) -> dict:
        """`ParamPriorConfig` fields these arguments set (a Llama decoder of `hidden_size` x `num_layers`)."""
        h = self.hidden_size
        return {"max_position_embeddings": self.context, "condition_injection": self.condition_injection,
                "structure_embedding": self.structure_embedding, "codes_per_step": self.codes_per_step,
                "transformer": {**SMALL_DECODER, "hidden_size": h, "intermediate_size": 4 * h,
                                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                                "num_key_value_heads": self.num_heads}}

    def training_config(self) -> TrainingConfig:
        return loop_config(self)


def loop_config(args) -> TrainingConfig:
    """The training loop's settings from a script's arguments (`train-prior`, `train-diffusion`: the same fields);
    state goes to `<output_dir>-work/training`."""
    return TrainingConfig(output_dir=str(work_dir(args.output_dir) / "training"), batch_size=args.batch_size,
                          lr=args.lr, max_steps=args.max_steps, warmup_steps=args.warmup_steps,
                          log_every=args.log_every, save_every=args.save_every, eval_every=args.eval_every,
                          max_time_s=args.max_time_s, seed=args.seed, weight_decay=0.01, keep_best=not args.keep_last)


def cli_train_prior(argv: list[str]) -> int:
    """`hf-paramgen train-prior`: train the prior on a corpus and save a generator folder."""
    parser = HfArgumentParser(PriorScriptArguments)
    parser.prog, parser.description = "hf-paramgen train-prior", cli_train_prior.__doc__
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    samples = None
    if args.samples.lower() != "none":
        samples = load_samples_provider(args.samples, datasets=tuple(args.sample_datasets))
    with clear_job_errors(parser.prog, args.output_dir):
        train_prior(args.corpus, args.param_tokenizer, args.output_dir, args.prior_overrides(),
                    args.training_config(), args.architectures, args.text_encoder, samples)
    print(json.dumps({"output_dir": args.output_dir, "seconds": time.perf_counter() - start}))
    return 0
