"""Weight corpora as HF Datasets: checkpoints (Hub repos, folders, a zoo) -> one row per chunk.

A corpus is a `datasets.DatasetDict` with two tables:

* ``chunks`` — one row per fixed-size chunk of flat weights (layer-wise or whole-network chunking,
  see `hf_paramgen.layout.chunking`), with its position (tensor, chunk in tensor, kind), a shape-derived
  ``scale`` = sqrt(fan_in) and ``num_valid`` (the non-padding prefix of ``chunk``);
* ``models`` — one row per checkpoint: layout, instruction, task, model split, metrics, provenance.

Building is memory-bounded (one checkpoint in memory at a time, streamed to Arrow record batches of
``writer_batch_size`` rows by datasets' `ArrowWriter`) and atomic (built beside ``output_dir`` and renamed at the end).
Checkpoints are read and validated by `hf_paramgen.data.checkpoints`.

Every long job (zoo, adapter zoo, corpus, training, generation) writes its output folder under `output_lock` (one
writer at a time; a second one gets `OutputLocked`) and reports a full disk in one clear line (`clear_job_errors`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, Features, List, Value

from ..jobs import clear_job_errors, output_lock
from ..layout.chunking import AGGREGATIONS, chunk
from ..layout.param_layout import ParamLayout
from ..utils import check_hub_id, check_revision, looks_like_path, replace_dir, temporary_sibling
from .checkpoints import CorpusError, Source, load_checkpoint, resolve_sources
from .corpus_card import MAX_LISTED, corpus_card, provenance_summary  # noqa: F401  (MAX_LISTED re-exported)

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
# the corpus's model splits; "heldout_class": tasks with a class no train/validation task has; "heldout_dataset":
# tasks on data (a dataset or input transform) no train/validation task used
MODEL_SPLITS = ("train", "validation", "heldout_task", "heldout_class", "heldout_dataset", "heldout_architecture")
CONFIG_FILE = "corpus_config.json"
MAX_CHUNK_SIZE = 1 << 16  # values per chunk; every tensor is padded to whole chunks


def chunk_features(chunk_size: int) -> Features:
    """`Features` of the ``chunks`` table for chunks of `chunk_size` float32 values."""
    ints = {name: Value("int32") for name in ("chunk_index", "tensor_index", "chunk_in_tensor", "kind_id", "num_valid")}
    return Features(
        {"model_id": Value("string"), **ints, "scale": Value("float32"), "split": Value("string"),
         "chunk": List(Value("float32"), length=chunk_size)}
    )


# ---------------------------------------------------------------------------------- build
def _config_architecture(config: dict) -> str:
    """A short architecture name from a config, for checkpoints whose card does not name one."""
    if "peft_type" in config:
        return f"{config['peft_type'].lower()}-r{config.get('r')}:{config.get('base_model_name_or_path')}"
    if "model_type" in config:
        return (config.get("architectures") or [config["model_type"]])[0]
    return f"{config.get('kind')}-{config.get('input_shape')}-{config.get('hidden_sizes')}"


def _model_row(src: Source, layout: ParamLayout, info: dict, chunking: tuple[int, str, int, int]) -> dict:
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
        "val_accuracy": float_or_none(card.get("val_accuracy")),
        "test_accuracy": float_or_none(card.get("test_accuracy")),
        "init": str(card.get("init") or ""), "seed": seed, "num_params": layout.num_params,
        "num_chunks": n_chunks, "first_chunk": first_chunk, "chunk_size": chunk_size,
        "aggregation": aggregation, "metadata": json.dumps(card, default=str, sort_keys=True),
    }


def _chunk_table(src: Source, layout: ParamLayout, weights: torch.Tensor, chunk_size: int, aggregation: str):
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
    features = chunk_features(chunk_size)
    with ArrowWriter(features=features, path=str(path), writer_batch_size=writer_batch_size) as writer:
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
        splits: keep only checkpoints of these model splits (`MODEL_SPLITS`; card `split`, "train" when absent).
        writer_batch_size: rows per Arrow write; default keeps a batch near 1M floats (4 MB).
        overwrite: replace an existing corpus (only once the new one is complete).

    Returns:
        The corpus, memory-mapped from `output_dir`: splits "chunks" and "models".
    """
    from datasets import load_from_disk

    output_dir = Path(output_dir).resolve()
    if (aggregation not in AGGREGATIONS or not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
            or not 0 < chunk_size <= MAX_CHUNK_SIZE):
        raise CorpusError(
            f"Expected 0 < chunk_size <= {MAX_CHUNK_SIZE} and aggregation in {AGGREGATIONS}, got {chunk_size!r}, "
            f"{aggregation!r} (each tensor is padded to whole chunks: a huge chunk_size pads every tensor to it)."
        )
    if writer_batch_size is not None and (not isinstance(writer_batch_size, int) or writer_batch_size < 1):
        raise CorpusError(f"Expected writer_batch_size None or an int >= 1 (rows per Arrow write), got "
                          f"{writer_batch_size!r}.")
    exists = f"Output {output_dir} already exists; pass overwrite=True (CLI --overwrite) to replace it."
    if output_dir.exists() and not overwrite:
        raise CorpusError(exists)
    resolved = resolve_sources(list(map(str, sources)), splits)
    writer_batch_size = writer_batch_size or max(16, 2**20 // chunk_size)
    with output_lock(output_dir):  # one writer; checked again: another may have finished meanwhile
        if output_dir.exists() and not overwrite:
            raise CorpusError(exists)
        tmp = temporary_sibling(output_dir)  # built beside `output_dir`, then swapped in whole
        try:
            tmp.mkdir()
            model_rows = _write_chunks(resolved, tmp / "chunks.arrow", chunk_size, aggregation, allow_pickle,
                                       writer_batch_size)
            corpus = DatasetDict({"chunks": Dataset.from_file(str(tmp / "chunks.arrow")),
                                  "models": Dataset.from_list(model_rows, features=MODEL_FEATURES)})
            corpus.save_to_disk(str(tmp / "corpus"))
            config = {"chunk_size": chunk_size, "aggregation": aggregation, "num_models": len(resolved)}
            (tmp / "corpus" / CONFIG_FILE).write_text(json.dumps(config, indent=2))
            corpus_card(corpus, config).save(tmp / "corpus" / "README.md")
            del corpus  # release the cache files before moving
            replace_dir(tmp / "corpus", output_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(output_dir))


# ---------------------------------------------------------------------------------- load, push
def _check_hub_target(repo_id: str, revision: str | None) -> None:
    """A corpus repo id and revision that cannot name a path outside the Hub cache (`CorpusError` otherwise)."""
    try:
        check_hub_id(repo_id, "Corpus repo id")
        check_revision(revision)
    except ValueError as err:
        raise CorpusError(str(err)) from None


def load_corpus(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> DatasetDict:
    """A corpus from a `build_corpus` folder, or from a Hub dataset repo with configs "chunks" and "models"."""
    from datasets import load_dataset

    name = os.fspath(path_or_repo_id) if isinstance(path_or_repo_id, (str, os.PathLike)) else None
    if not name:
        raise CorpusError(f"Expected a corpus folder or a Hub dataset id 'org/name', got {path_or_repo_id!r}.")
    folder = Path(name).expanduser()
    if folder.exists():
        return _load_corpus_folder(folder)
    if looks_like_path(name):
        raise CorpusError(f"No such corpus folder: {folder.resolve()} (given as {name!r}); expected a folder written "
                          "by build-corpus / encode-corpus or a Hub dataset id 'org/name'.")
    _check_hub_target(name, revision)
    try:
        return DatasetDict({part: load_dataset(name, part, split="train", revision=revision)
                            for part in ("chunks", "models")})
    except Exception as err:  # noqa: BLE001  (datasets raises many types for a missing or malformed repo)
        at = f" at revision {revision!r}" if revision else ""
        raise CorpusError(f"Cannot load the corpus {name!r}{at} from the Hub (expected configs 'chunks' and "
                          f"'models'): {type(err).__name__}: {err}") from err


def _load_corpus_folder(folder: Path) -> DatasetDict:
    """`load_from_disk` of a corpus folder, its layout checked first (`dataset_dict.json`, `chunks/`, `models/`,
    data files named inside their split folder) and any read error named."""
    from datasets import load_from_disk

    expected = "expected what build-corpus writes: dataset_dict.json, chunks/ and models/"
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        for split in splits:
            state = json.loads((folder / split / "state.json").read_text())
            names = [f["filename"] for f in state["_data_files"]]
            if any(Path(n).name != n for n in names):
                raise CorpusError(f"{folder / split / 'state.json'} names data files outside its folder {names[:3]}; "
                                  "expected plain file names.")
        if not {"chunks", "models"} <= set(splits):
            raise CorpusError(f"{folder} holds the splits {splits}; {expected}.")
        return load_from_disk(str(folder))
    except CorpusError:
        raise
    except Exception as err:  # noqa: BLE001  (json, OSError, pyarrow's ArrowInvalid ... on a damaged folder)
        raise CorpusError(f"{folder} is not a readable corpus ({type(err).__name__}: {err}); {expected} (rebuild "
                          "it).") from err


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

    _check_hub_target(repo_id, revision)
    if not isinstance(corpus, DatasetDict):
        folder = Path(corpus)
        card = card or DatasetCard.load(folder / "README.md")
        corpus = load_corpus(folder)
    if card is None:
        first = corpus["models"][0]
        card = corpus_card(corpus, {"chunk_size": first["chunk_size"], "aggregation": first["aggregation"]})
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    for name in ("chunks", "models"):
        corpus[name].push_to_hub(repo_id, config_name=name, split="train", revision=revision, private=private)
    readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
    pushed = DatasetCard.load(readme).data.to_dict()
    data = card.data.to_dict()
    data.update({k: pushed[k] for k in ("configs", "dataset_info") if k in pushed})  # what datasets wrote for its files
    merged = DatasetCard(f"---\n{type(card.data)(**data).to_yaml()}\n---\n{card.text}")
    merged.push_to_hub(repo_id, repo_type="dataset", revision=revision, commit_message="Add weight corpus card")


def corpus_model_weights(
    corpus: DatasetDict, model_id: str, row: dict | None = None
) -> tuple[torch.Tensor, ParamLayout]:
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
    try:
        layout = ParamLayout.from_json(row["layout"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorpusError(f"The corpus's models row of {model_id!r} holds no valid layout JSON ({type(err).__name__}: "
                          f"{err}); the corpus is damaged: rebuild it.") from err
    chunks_table = corpus["chunks"]
    start, n = row["first_chunk"], row["num_chunks"]
    ok = isinstance(start, int) and isinstance(n, int) and 0 <= start and 0 <= n and start + n <= len(chunks_table)
    part = chunks_table.select(range(start, start + n)) if ok else None
    if part is None or set(part["model_id"]) != {model_id} or list(part["chunk_index"]) != list(range(n)):
        part = chunks_table.filter(lambda m: m == model_id, input_columns="model_id").sort("chunk_index")
    if len(part) == 0:
        raise CorpusError(f"Model {model_id!r} has no rows in the corpus's chunks table; the corpus is damaged: "
                          "rebuild it.")
    chunks = part.with_format("torch", columns=["chunk"])[:]["chunk"].to(torch.float32)  # (N, C)
    if not bool(torch.isfinite(chunks).all()):
        raise CorpusError(f"Model {model_id!r} has {int((~torch.isfinite(chunks)).sum())} non-finite values in the "
                          "corpus's chunks table (build_corpus refuses NaN/Inf weights): the corpus is damaged.")
    try:
        return unchunk(chunks, layout, row["aggregation"]), layout
    except ValueError as err:
        raise CorpusError(f"Model {model_id!r}: its {len(part)} chunk rows do not fit its layout "
                          f"({row['aggregation']!r} aggregation): {err}") from err


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
    parser.add_argument("--splits", nargs="+", choices=MODEL_SPLITS, help="keep only checkpoints of these model splits")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="layer")
    parser.add_argument("--writer_batch_size", type=int, default=None)
    parser.add_argument("--allow_pickle", action="store_true", help="accept pytorch_model.bin (weights_only=True)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.zoo_dir and not (Path(args.zoo_dir) / "manifest.json").is_file():
        parser.error(f"--zoo_dir {args.zoo_dir} holds no manifest.json; expected a zoo built by hf-paramgen build-zoo "
                     "(give checkpoint folders with --sources).")
    try:
        with clear_job_errors(parser.prog, args.output_dir):
            corpus = build_corpus(
                args.sources or [args.zoo_dir], args.output_dir, chunk_size=args.chunk_size,
                aggregation=args.aggregation, allow_pickle=args.allow_pickle, splits=args.splits,
                writer_batch_size=args.writer_batch_size, overwrite=args.overwrite,
            )
    except CorpusError as err:
        parser.exit(1, f"hf-paramgen build-corpus: error: {err}\n")
    models = corpus["models"]
    print(f"corpus {args.output_dir}: {len(models)} models, {sum(models['num_params'])} params, "
          f"{len(corpus['chunks'])} chunks of {args.chunk_size} ({args.aggregation})")
    return 0
