"""Weight corpora as HF Datasets: checkpoints (Hub repos, folders, a zoo) -> one row per chunk.

A corpus is a `datasets.DatasetDict` with two tables:

* ``chunks`` — one row per fixed-size chunk of flat weights (layer-wise or whole-network chunking,
  see `hf_paramgen.layout.chunking`), with its position (tensor, chunk in tensor, kind), a shape-derived
  ``scale`` = sqrt(fan_in) and ``num_valid`` (the non-padding prefix of ``chunk``);
* ``models`` — one row per checkpoint: layout, instruction, task, split, metrics, provenance.

Building is memory-bounded (one checkpoint in memory at a time, streamed to Arrow record batches of
``writer_batch_size`` rows by datasets' `ArrowWriter`) and atomic (built beside ``output_dir`` and renamed at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, Features, List, Value

from ..layout.chunking import AGGREGATIONS, chunk
from ..layout.param_layout import LayoutError, ParamLayout

CHUNK_COLUMNS = ("model_id", "chunk_index", "tensor_index", "chunk_in_tensor", "kind_id", "scale", "num_valid", "split")
MODEL_FEATURES = Features(
    {
        "model_id": Value("string"), "source": Value("string"), "repo_id": Value("string"),
        "revision": Value("string"), "layout": Value("string"), "architecture": Value("string"),
        "architecture_text": Value("string"), "instruction": Value("string"), "task": Value("string"),
        "split": Value("string"), "val_accuracy": Value("float64"), "test_accuracy": Value("float64"),
        "init": Value("string"), "seed": Value("int64"), "num_params": Value("int64"),
        "num_chunks": Value("int64"), "first_chunk": Value("int64"), "chunk_size": Value("int32"),
        "aggregation": Value("string"), "metadata": Value("string"),
    }
)
TASK_FIELDS = ("task_id", "instruction", "dataset", "classes", "transform", "num_classes")
SPLITS = ("train", "validation", "heldout_task", "heldout_architecture")
CONFIG_FILE = "corpus_config.json"
ADAPTER_CONFIG, ADAPTER_INFO = "adapter_config.json", "adapter_info.json"  # PEFT adapter folders (hf_paramgen.adapters.lora)
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.bin", "README.md"]  # what a checkpoint needs from a repo
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


class CorpusError(ValueError):
    """A checkpoint or source cannot go into a corpus; the message names which (and which tensor)."""


def chunk_features(chunk_size: int) -> Features:
    """`Features` of the ``chunks`` table for chunks of `chunk_size` float32 values."""
    ints = {name: Value("int32") for name in ("chunk_index", "tensor_index", "chunk_in_tensor", "kind_id", "num_valid")}
    return Features(
        {"model_id": Value("string"), **ints, "scale": Value("float32"), "split": Value("string"),
         "chunk": List(Value("float32"), length=chunk_size)}
    )


# ---------------------------------------------------------------------------------- checkpoints
def _read_json(path: Path, name: str, expected: str) -> dict:
    file = path / name
    if not file.is_file():
        raise CorpusError(f"Checkpoint {path}: no {name} (expected {expected}).")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(f"Checkpoint {path}: {name} is not valid JSON ({err}).") from err


def _read_config(path: Path) -> dict:
    """`config.json`, or a PEFT adapter's `adapter_config.json`."""
    if (path / ADAPTER_CONFIG).is_file():
        return _read_json(path, ADAPTER_CONFIG, "a PEFT adapter config")
    return _read_json(path, "config.json", "a ZooNet or transformers config")


def _transformers_layout(path: Path) -> ParamLayout:
    """Layout of the transformers model a config declares (meta device), tied aliases dropped."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        return ParamLayout.from_config(config)
    with torch.device("meta"):
        model = cls(config)
    layout = ParamLayout.from_module(model)
    tensors, seen, keep = model.state_dict(keep_vars=True), set(), []
    for spec in layout.specs:  # tied weights (lm_head <- embeddings) are stored once
        if id(tensors[spec.name]) not in seen:
            seen.add(id(tensors[spec.name]))
            keep.append((spec.name, spec.shape, spec.dtype, spec.kind, spec.is_buffer))
    return ParamLayout.from_specs(keep, {"model_type": config.model_type, "architecture": archs[0]})


def declared_layout(path: str | os.PathLike, config: dict | None = None) -> ParamLayout:
    """The layout a checkpoint's `config.json` declares (never read off its weights)."""
    from ..research.architectures import model_from_config

    path = Path(path)
    config = _read_config(path) if config is None else config
    try:
        if "peft_type" in config:  # layout recorded by hf_paramgen.adapters.lora.save_adapter (built by peft)
            layout = _read_json(path, ADAPTER_INFO, "the adapter's recorded layout").get("layout")
            if not layout:
                raise ValueError(f"{ADAPTER_INFO} records no layout; save adapters with `save_adapter(..., layout=...)`")
            return ParamLayout.from_dict(layout)
        if "model_type" in config:
            return _transformers_layout(path)
        with torch.device("meta"):
            return ParamLayout.from_module(model_from_config(config))
    except (ValueError, KeyError, TypeError) as err:
        raise CorpusError(f"Checkpoint {path}: cannot build the layout its config.json declares: {err}") from err


def _read_card(path: Path) -> dict:
    """The checkpoint's metadata: its card's YAML (for adapters, `adapter_info.json` metadata + instruction)."""
    from huggingface_hub import ModelCard

    readme = path / "README.md"
    card = ModelCard.load(readme).data.to_dict() if readme.is_file() else {}
    if (path / ADAPTER_INFO).is_file():
        info = json.loads((path / ADAPTER_INFO).read_text())
        card = {**card, **info.get("metadata", {}), "instruction": info.get("instruction")}
    return card


def _load_safetensors(path: Path, single: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / f"{single}.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [single]
    state_dict: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state_dict.update(load_file(path / name))
        except Exception as err:  # safetensors raises SafetensorError / OSError on bad bytes
            raise CorpusError(f"Checkpoint {path}: {name} is truncated or corrupted and cannot be read ({err}).") from err
    return state_dict


def _load_weights(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if (path / "adapter_model.safetensors").is_file():
        return _load_safetensors(path, "adapter_model.safetensors")
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        return _load_safetensors(path)
    if (path / "pytorch_model.bin").is_file():
        if not allow_pickle:
            raise CorpusError(
                f"Checkpoint {path}: only a pickled pytorch_model.bin, no model.safetensors. Pickles can run code; "
                "pass allow_pickle=True (CLI --allow_pickle) to load it with torch.load(weights_only=True)."
            )
        try:
            return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:
            raise CorpusError(f"Checkpoint {path}: pytorch_model.bin cannot be loaded with weights_only=True ({err}).") from err
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "not a folder"
    raise CorpusError(f"Checkpoint {path}: expected model.safetensors (or pytorch_model.bin), found {found}.")


def load_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], ParamLayout, dict]:
    """Read and validate one checkpoint folder.

    Args:
        path: folder with `config.json`, `model.safetensors` (or `pytorch_model.bin`) and `README.md`.
        allow_pickle: accept a `pytorch_model.bin`-only checkpoint (loaded with `weights_only=True`).

    Returns:
        `(state_dict, layout, info)`: tensors, the layout declared by `config.json`, and
        `info = {"config": ..., "card": <card YAML metadata>}`.

    Raises:
        CorpusError: unreadable files, or tensors missing, misshapen, non-finite or unexpected.
    """
    path = Path(path)
    config = _read_config(path)
    layout = declared_layout(path, config)
    state_dict = _load_weights(path, allow_pickle)
    try:
        layout.validate(state_dict, source=f"Checkpoint {path}")
    except LayoutError as err:
        raise CorpusError(str(err)) from err
    extra = [name for name, t in state_dict.items() if name not in set(layout.names) and torch.is_floating_point(t)]
    if extra:
        raise CorpusError(f"Checkpoint {path}: unexpected tensors {extra} that its config.json does not declare.")
    return state_dict, layout, {"config": config, "card": _read_card(path)}


# ---------------------------------------------------------------------------------- sources
@dataclass
class _Source:
    model_id: str
    path: Path
    source: str
    repo_id: str = ""
    revision: str = ""
    split: str = ""


def _fetch(repo_id: str, revision: str | None) -> Path:
    """Download a model repo snapshot (honours HF_ENDPOINT, HF_HUB_OFFLINE and the HF cache)."""
    from ..hub.cards import fetch_snapshot

    try:
        return Path(fetch_snapshot(repo_id, revision=revision, allow_patterns=_SNAPSHOT_FILES))
    except Exception as err:  # RepositoryNotFound, RevisionNotFound, LocalEntryNotFound, connection errors
        at = f" at revision {revision!r}" if revision else ""
        raise CorpusError(
            f"Cannot fetch checkpoint repo {repo_id!r}{at}: it is not a local folder, and the Hub "
            f"(HF_ENDPOINT={os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}, "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}) answered {type(err).__name__}: {err}"
        ) from err


def _zoo_sources(zoo_dir: Path) -> list[_Source]:
    """Checkpoints listed by a zoo's `manifest.json` (a list of paths or of dicts with a path)."""
    manifest_file = zoo_dir / "manifest.json"
    if not manifest_file.is_file():
        raise CorpusError(f"{zoo_dir} is not a model zoo: no manifest.json (build one with `hf-paramgen build-zoo`).")
    manifest = json.loads(manifest_file.read_text())
    entries = next((manifest[k] for k in ("checkpoints", "models", "entries") if isinstance(manifest.get(k), list)), None)
    if entries is None:  # no list in the manifest: every checkpoint folder under the zoo
        entries = [str(p.parent.relative_to(zoo_dir)) for p in sorted(zoo_dir.rglob("config.json"))]
    sources = []
    for entry in entries:
        entry = {"path": entry} if isinstance(entry, str) else entry
        rel = next((entry[k] for k in ("path", "dir", "checkpoint", "folder") if k in entry), None)
        if rel is None:
            raise CorpusError(f"{manifest_file}: entry {entry} has no 'path'.")
        path = (zoo_dir / rel).resolve()
        model_id = entry.get("model_id") or Path(rel).as_posix()
        sources.append(_Source(model_id, path, str(path), split=entry.get("split") or ""))
    return sources


def resolve_sources(sources: list[str], splits: list[str] | None = None) -> list[_Source]:
    """Expand folders, zoo dirs and Hub ids (`org/name[@revision]`) into checkpoints; check ids are unique."""
    if not sources:
        raise CorpusError("No sources given: expected checkpoint folders, zoo dirs or Hub repo ids (org/name[@rev]).")
    resolved: list[_Source] = []
    for src in map(str, sources):
        path = Path(src)
        if path.is_dir() and (path / "manifest.json").is_file():
            resolved += _zoo_sources(path)
        elif path.is_dir():
            resolved.append(_Source(path.resolve().name, path.resolve(), str(path.resolve())))
        elif _REPO_ID.match(src):
            repo_id, _, revision = src.partition("@")
            snapshot = _fetch(repo_id, revision or None)
            sha = snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else (revision or "")
            resolved.append(_Source(src, snapshot, src, repo_id, sha))
        else:
            raise CorpusError(f"Source {src!r} is neither an existing folder nor a Hub repo id 'org/name[@revision]'.")
    ids = [s.model_id for s in resolved]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise CorpusError(f"Duplicate model ids {dups}: each checkpoint may enter a corpus once.")
    for s in resolved:
        s.split = s.split or str(_read_card(s.path).get("split") or "train")
    if splits:
        resolved = [s for s in resolved if s.split in splits]
        if not resolved:
            raise CorpusError(f"No checkpoint in {list(map(str, sources))} belongs to splits {splits}.")
    return resolved


# ---------------------------------------------------------------------------------- build
def _config_architecture(config: dict) -> str:
    """A short architecture name from a config, for checkpoints whose card does not name one."""
    if "peft_type" in config:
        return f"{config['peft_type'].lower()}-r{config.get('r')}:{config.get('base_model_name_or_path')}"
    if "model_type" in config:
        return (config.get("architectures") or [config["model_type"]])[0]
    return f"{config.get('kind')}-{config.get('input_shape')}-{config.get('hidden_sizes')}"


def _model_row(src: _Source, layout: ParamLayout, info: dict, chunking: tuple[int, str, int, int]) -> dict:
    """The `models` row; `chunking` = (chunk_size, aggregation, num_chunks, first_chunk)."""
    chunk_size, aggregation, n_chunks, first_chunk = chunking
    card, config = info["card"], info["config"]
    float_or_none = lambda v: None if v is None else float(v)  # noqa: E731
    arch = card.get("architecture") or _config_architecture(config)
    seed = card.get("seed") if isinstance(card.get("seed"), int) else None
    return {
        "model_id": src.model_id, "source": src.source, "repo_id": src.repo_id, "revision": src.revision,
        "layout": layout.to_json(), "architecture": str(arch), "architecture_text": layout.describe(),
        "instruction": str(card.get("instruction") or ""),
        "task": json.dumps({k: card.get(k) for k in TASK_FIELDS}, default=str), "split": src.split,
        "val_accuracy": float_or_none(card.get("val_accuracy")), "test_accuracy": float_or_none(card.get("test_accuracy")),
        "init": str(card.get("init") or ""), "seed": seed, "num_params": layout.num_params,
        "num_chunks": n_chunks, "first_chunk": first_chunk, "chunk_size": chunk_size,
        "aggregation": aggregation, "metadata": json.dumps(card, default=str, sort_keys=True),
    }


def _chunk_table(src: _Source, layout: ParamLayout, weights: torch.Tensor, chunk_size: int, aggregation: str):
    """The `chunks` rows of one model as a `pyarrow.Table` (columns built from arrays, no per-row Python)."""
    import numpy as np
    import pyarrow as pa

    out = chunk(weights, layout, chunk_size, aggregation)  # chunks (N, C)
    n, position = len(out), out.chunk_position.numpy().astype(np.int32)  # (N, 3)
    scales = np.array([math.sqrt(s.fan_in) for s in layout.specs], dtype=np.float32)
    columns = {
        "model_id": pa.array([src.model_id] * n, pa.string()),
        "chunk_index": pa.array(np.arange(n, dtype=np.int32)),
        "tensor_index": pa.array(position[:, 0]), "chunk_in_tensor": pa.array(position[:, 1]),
        "kind_id": pa.array(position[:, 2]), "scale": pa.array(scales[position[:, 0]]),
        "num_valid": pa.array(out.chunk_mask.sum(1).numpy().astype(np.int32)),
        "split": pa.array([src.split] * n, pa.string()),
        "chunk": pa.FixedSizeListArray.from_arrays(pa.array(out.chunks.numpy().reshape(-1)), chunk_size),
    }
    return pa.table(columns, schema=chunk_features(chunk_size).arrow_schema)


def _write_chunks(sources, path: Path, chunk_size, aggregation, allow_pickle, writer_batch_size) -> list[dict]:
    """Stream every checkpoint's chunks into one Arrow file, one checkpoint in memory at a time.

    Returns the `models` rows. Uses datasets' own `ArrowWriter` (record batches of `writer_batch_size`
    rows), the writer `Dataset.from_generator` uses, without its per-row Python encoding.
    """
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    model_rows, first = [], 0
    with ArrowWriter(features=chunk_features(chunk_size), path=str(path), writer_batch_size=writer_batch_size) as writer:
        for src in tqdm(sources, desc="checkpoints", unit="ckpt"):
            state_dict, layout, info = load_checkpoint(src.path, allow_pickle=allow_pickle)
            weights = layout.flatten(state_dict, source=f"Checkpoint {src.path}")  # (D,)
            del state_dict
            table = _chunk_table(src, layout, weights, chunk_size, aggregation)
            writer.write_table(table, writer_batch_size=writer_batch_size)
            model_rows.append(_model_row(src, layout, info, (chunk_size, aggregation, len(table), first)))
            first += len(table)
            del weights, table
        writer.finalize()
    return model_rows


def build_corpus(
    sources: list[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    chunk_size: int = 64,
    aggregation: str = "layer",
    allow_pickle: bool = False,
    splits: list[str] | None = None,
    writer_batch_size: int | None = None,
    overwrite: bool = False,
) -> DatasetDict:
    """Turn checkpoints into a weight corpus saved at `output_dir` (`load_from_disk`-able, with a card).

    Args:
        sources: checkpoint folders, zoo dirs (with `manifest.json`) or Hub ids `org/name[@revision]`.
        output_dir: where the corpus goes; must not exist unless `overwrite`.
        chunk_size: values per chunk C.
        aggregation: "layer" (each tensor padded to whole chunks) or "architecture".
        allow_pickle: accept `pytorch_model.bin`-only checkpoints (`torch.load(weights_only=True)`).
        splits: keep only checkpoints of these splits (card metadata `split`; "train" when absent).
        writer_batch_size: rows per Arrow write; default keeps a batch near 1M floats (4 MB).
        overwrite: replace an existing corpus (only once the new one is complete).

    Returns:
        The corpus, memory-mapped from `output_dir`: splits "chunks" and "models".
    """
    from datasets import load_from_disk

    output_dir = Path(output_dir).resolve()
    if aggregation not in AGGREGATIONS or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise CorpusError(f"Expected chunk_size > 0 and aggregation in {AGGREGATIONS}, got {chunk_size!r}, {aggregation!r}.")
    if output_dir.exists() and not overwrite:
        raise CorpusError(f"Output {output_dir} already exists; pass overwrite=True (CLI --overwrite) to replace it.")
    resolved = resolve_sources(list(map(str, sources)), splits)
    writer_batch_size = writer_batch_size or max(16, 2**20 // chunk_size)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        model_rows = _write_chunks(resolved, tmp / "chunks.arrow", chunk_size, aggregation, allow_pickle, writer_batch_size)
        corpus = DatasetDict({"chunks": Dataset.from_file(str(tmp / "chunks.arrow")),
                              "models": Dataset.from_list(model_rows, features=MODEL_FEATURES)})
        corpus.save_to_disk(str(tmp / "corpus"))
        config = {"chunk_size": chunk_size, "aggregation": aggregation, "num_models": len(resolved),
                  "provenance": [{"model_id": s.model_id, "source": s.source, "repo_id": s.repo_id,
                                  "revision": s.revision} for s in resolved]}
        (tmp / "corpus" / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        corpus_card(corpus, config).save(tmp / "corpus" / "README.md")
        del corpus  # release the cache files before moving
        if output_dir.exists():
            os.replace(output_dir, tmp / "old")
        os.replace(tmp / "corpus", output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(output_dir))


# ---------------------------------------------------------------------------------- card, load, push
def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((name for bound, name in bounds if n < bound), "1B<n<10B")


def corpus_card(corpus: DatasetDict, config: dict):
    """The dataset card (`huggingface_hub.DatasetCard`) of a corpus, from `model_cards/weight_corpus.md`."""
    from collections import Counter

    from ..hub.cards import read_template, render_card

    models = corpus["models"].select_columns(["architecture", "split", "num_params", "repo_id"]).to_list()
    arch_counts = Counter(m["architecture"] for m in models)
    arch_params = {m["architecture"]: m["num_params"] for m in models}
    card_data = {
        "pretty_name": config.get("pretty_name", "hf_paramgen weight corpus"),
        "tags": ["hf_paramgen", "weight-space", "neural-network-weights", "model-zoo"],
        "size_categories": [_size_category(len(corpus["chunks"]))],
        "configs": [{"config_name": name, "data_files": [{"split": "train", "path": f"{name}/train-*"}]}
                    for name in ("chunks", "models")],
        "provenance": [{"model_id": p["model_id"], "repo_id": p["repo_id"] or None, "revision": p["revision"] or None}
                       for p in config["provenance"]],
    }
    ctx = {
        "num_models": len(models), "num_chunks": len(corpus["chunks"]), "num_params": sum(m["num_params"] for m in models),
        "chunk_size": config["chunk_size"], "aggregation": config["aggregation"],
        "architectures": [(a, n, arch_params[a]) for a, n in sorted(arch_counts.items())],
        "splits": sorted(Counter(m["split"] for m in models).items()),
        "num_hub_sources": sum(bool(m["repo_id"]) for m in models),
    }
    return render_card(read_template("weight_corpus.md"), card_data, repo_type="dataset", **ctx)


def load_corpus(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> DatasetDict:
    """A corpus from a `build_corpus` folder, or from a Hub dataset repo with configs "chunks" and "models"."""
    from datasets import load_dataset, load_from_disk

    if Path(path_or_repo_id).exists():
        return load_from_disk(str(path_or_repo_id))
    return DatasetDict(
        {name: load_dataset(str(path_or_repo_id), name, split="train", revision=revision) for name in ("chunks", "models")}
    )


def push_corpus(corpus: DatasetDict | str | os.PathLike, repo_id: str, *, revision: str | None = None,
                private: bool | None = None, card=None) -> None:
    """Push both tables as configs "chunks" and "models" of dataset repo `repo_id`, then the card.

    Args:
        corpus: a corpus or the folder `build_corpus` wrote (whose README.md is the card).
        repo_id: target dataset repo.
        revision: branch to push to (created from main if missing).
        card: a `DatasetCard` to push; default the one saved with the corpus folder, else a fresh one.
    """
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download

    if not isinstance(corpus, DatasetDict):
        folder = Path(corpus)
        card = card or DatasetCard.load(folder / "README.md")
        corpus = load_corpus(folder)
    if card is None:
        first = corpus["models"][0]
        card = corpus_card(corpus, {"chunk_size": first["chunk_size"], "aggregation": first["aggregation"],
                                    "provenance": corpus["models"].select_columns(["model_id", "repo_id", "revision"]).to_list()})
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    for name in ("chunks", "models"):
        corpus[name].push_to_hub(repo_id, config_name=name, split="train", revision=revision, private=private)
    pushed = DatasetCard.load(hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)).data.to_dict()
    data = card.data.to_dict()
    data.update({k: pushed[k] for k in ("configs", "dataset_info") if k in pushed})  # what datasets wrote for its files
    merged = DatasetCard(f"---\n{type(card.data)(**data).to_yaml()}\n---\n{card.text}")
    merged.push_to_hub(repo_id, repo_type="dataset", revision=revision, commit_message="Add weight corpus card")


def corpus_model_weights(corpus: DatasetDict, model_id: str, row: dict | None = None) -> tuple[torch.Tensor, ParamLayout]:
    """Reassemble one model's flat `weights` (D,) exactly from its chunks, with its layout.

    `row`: the model's row of the `models` table when the caller already holds it (skips the id lookup,
    which reads the whole id column: callers looping over every model should pass it).
    """
    from ..layout.chunking import unchunk

    if row is None or row.get("model_id") != model_id:
        models = corpus["models"]
        ids = list(models["model_id"])
        if model_id not in ids:
            raise KeyError(f"Model {model_id!r} is not in the corpus; it holds {len(ids)} models, e.g. {ids[:5]}.")
        row = models[ids.index(model_id)]
    layout = ParamLayout.from_json(row["layout"])
    chunks_table = corpus["chunks"]
    start, n = row["first_chunk"], row["num_chunks"]
    part = chunks_table.select(range(start, start + n)) if start + n <= len(chunks_table) else None
    if part is None or set(part["model_id"]) != {model_id} or list(part["chunk_index"]) != list(range(n)):
        part = chunks_table.filter(lambda m: m == model_id, input_columns="model_id").sort("chunk_index")
    chunks = part.with_format("torch", columns=["chunk"])[:]["chunk"].to(torch.float32)  # (N, C)
    return unchunk(chunks, layout, row["aggregation"]), layout


def chunk_batch(chunks: Dataset, indices, columns: tuple[str, ...] = ("chunk", "scale", "num_valid", "tensor_index",
                "chunk_in_tensor", "kind_id")) -> dict:
    """Rows `indices` of a `chunks` table as numpy arrays, gathered through Arrow (several times faster than
    `with_format("numpy")`, which builds the fixed-size lists row by row). `chunk` is (B, C) float32, others (B,)."""
    table = chunks.with_format("arrow")[list(map(int, indices))].select(list(columns)).combine_chunks()
    out = {name: table.column(name).chunk(0) for name in columns}
    if "chunk" in out:  # FixedSizeList -> (B, C) without Python objects
        out["chunk"] = out["chunk"].flatten().to_numpy().reshape(len(table), -1)
    return {name: col if name == "chunk" else col.to_numpy(zero_copy_only=False) for name, col in out.items()}


# ---------------------------------------------------------------------------------- CLI
def cli_build_corpus(argv: list[str]) -> int:
    """`hf-paramgen build-corpus`: checkpoints (folders, a zoo, Hub ids) -> a weight corpus folder."""
    parser = argparse.ArgumentParser(prog="hf-paramgen build-corpus", description=cli_build_corpus.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sources", nargs="+", help="checkpoint folders, zoo dirs or Hub ids org/name[@revision]")
    group.add_argument("--zoo_dir", help="a model zoo folder (with manifest.json)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, help="keep only checkpoints of these splits")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="layer")
    parser.add_argument("--writer_batch_size", type=int, default=None)
    parser.add_argument("--allow_pickle", action="store_true", help="accept pytorch_model.bin (weights_only=True)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        corpus = build_corpus(
            args.sources or [args.zoo_dir], args.output_dir, chunk_size=args.chunk_size, aggregation=args.aggregation,
            allow_pickle=args.allow_pickle, splits=args.splits, writer_batch_size=args.writer_batch_size,
            overwrite=args.overwrite,
        )
    except CorpusError as err:
        parser.exit(1, f"hf-paramgen build-corpus: error: {err}\n")
    models = corpus["models"]
    print(f"corpus {args.output_dir}: {len(models)} models, {sum(models['num_params'])} params, "
          f"{len(corpus['chunks'])} chunks of {args.chunk_size} ({args.aggregation})")
    return 0
