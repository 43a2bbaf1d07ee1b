"""The model zoo: many small `ZooNet`s trained on real offline tasks, each saved as a Hub-style checkpoint folder.

Layout of a zoo folder::

    manifest.json                      tasks (+ split), architectures (+ held-out), one entry per checkpoint
    README.md                          a short summary
    checkpoints/<architecture>/<task_id>--seed<k>/{config.json, model.safetensors, param_layout.json, README.md}

Every checkpoint's `README.md` is a model card whose YAML metadata holds its task, instruction,
architecture, seed, initialisation, training recipe, accuracies and split
(`huggingface_hub.ModelCard.load(dir).data.to_dict()`); `param_layout.json` is its `ParamLayout`.

The plan (presets, tasks, splits, initialisations) lives in `zoo_plan`, training and saving one checkpoint in
`zoo_train`; this module builds a zoo from them (`build_zoo`, `hf-paramgen build-zoo`) and re-exports both. A build
shards over processes and machines (`accelerate launch --multi_gpu --num_processes N ... -m hf_paramgen.cli
build-zoo`, or `--rank k --world_size N` without a launcher; see `research.sharding`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard
from tqdm.auto import tqdm

from ..jobs import clear_job_errors
from ..utils import atomic_write_text
from .architectures import ARCHITECTURE_DATASET, ARCHITECTURES
from .sharding import JobShard, add_shard_arguments, check_build_arguments
from .tasks import DATASETS, dataset_arrays, split_info, task_from_dict
from .zoo_plan import (
    CHECKPOINT_SPLITS,
    HELDOUT_ARCHITECTURES,
    INIT_SCHEDULE,
    PRESETS,
    SHARED_INIT_SEEDS,
    SPLIT_SEED,
    TASK_SPLIT_FRACTIONS,
    heldout_architectures,
    init_schedule,
    init_style,
    make_tasks,
    plan_checkpoints,
)
from .zoo_train import (
    LAYOUT_FILE,
    TRAINING_RECIPE,
    evaluate_accuracy,
    finetune,
    load_checkpoint_model,
    train_checkpoint,
    train_model,
)

__all__ = ["TRAINING_RECIPE", "HELDOUT_ARCHITECTURES", "PRESETS", "SHARED_INIT_SEEDS", "INIT_SCHEDULE",
           "CHECKPOINT_SPLITS", "LAYOUT_FILE", "make_tasks", "init_schedule", "init_style", "heldout_architectures",
           "plan_checkpoints", "build_zoo", "load_manifest", "load_checkpoint_model", "evaluate_accuracy",
           "train_model", "train_checkpoint", "finetune", "task_from_dict", "cli_build_zoo"]


def load_manifest(zoo_dir: str | os.PathLike) -> dict:
    """The `manifest.json` of a zoo folder."""
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{zoo_dir} is not a model zoo: no manifest.json (build one with "
                                "`hf-paramgen build-zoo`).")
    return json.loads(path.read_text())



# ---------------------------------------------------------------------------------------------- build
def _init_worker() -> None:
    """One thread, data loaded, and one throw-away Adam step (its first call imports ~2 s of torch modules)."""
    torch.set_num_threads(1)
    for dataset in DATASETS:
        dataset_arrays(dataset)
    net = torch.nn.Linear(2, 2)
    net(torch.zeros(1, 2)).sum().backward()
    torch.optim.Adam(net.parameters()).step()


def _run_jobs(jobs: list[dict], output_dir: Path, num_workers: int, label: str = "") -> None:
    bar = tqdm(total=len(jobs), desc=f"zoo checkpoints{label}", unit="ckpt", smoothing=0.05)
    if num_workers <= 1 or len(jobs) <= 1:
        _init_worker()
        for job in jobs:
            train_checkpoint(job, output_dir)
            bar.update()
    else:
        import functools
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(num_workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(functools.partial(train_checkpoint, output_dir=str(output_dir)), jobs,
                                         chunksize=4):
                bar.update()
    bar.close()


def _read_entry(output_dir: Path, job: dict) -> dict:
    card = ModelCard.load(output_dir / job["path"] / "README.md").data.to_dict()
    return {"id": job["id"], "model_id": job["id"], "path": job["path"], "task_id": job["task"]["task_id"],
            "architecture": job["architecture"], "num_classes": job["task"]["num_classes"], "seed": job["seed"],
            "init": job["init"], "init_seed": job["init_seed"], "val_accuracy": card["val_accuracy"],
            "test_accuracy": card["test_accuracy"], "split": job["split"], "train_seconds": card.get("train_seconds")}


def _summary(entries: list[dict]) -> dict:
    out = {}
    for arch in sorted({e["architecture"] for e in entries}):
        rows = [e for e in entries if e["architecture"] == arch]
        out[arch] = {"num_checkpoints": len(rows),
                     "mean_val_accuracy": round(float(np.mean([r["val_accuracy"] for r in rows])), 4),
                     "mean_test_accuracy": round(float(np.mean([r["test_accuracy"] for r in rows])), 4),
                     "min_test_accuracy": round(float(np.min([r["test_accuracy"] for r in rows])), 4)}
    return out


INIT_HOW = {
    "default": "torch.manual_seed(init_seed); build_model(architecture, num_classes)",
    "nested": "torch.manual_seed(init_seed); nested_init_(build_model(architecture, num_classes), init_seed): each "
              "Linear/Conv2d is a slice [:out, :in] of a uniform(-1, 1) master (64, 64, *kernel) drawn from a "
              "torch.Generator seeded by zlib.crc32('<init_seed>/hidden/<l>/<type>') (l-th layer from the input), "
              "the head a slice [:k, :h] of a (10, 64) master, or after a CNN [:k, :C, :s, :s] of a "
              "(10, 64, 16, 16) master reshaped channel-major ('<init_seed>/head/<vector|map>'); weight and bias "
              "scaled by 1/sqrt(fan_in). A narrow net's unit i / channel c equals a wider one's up to that scale, "
              "and head row i is the same for any number of classes.",
}


def _manifest(preset: str, tasks: list[dict], jobs: list[dict], output_dir: Path, run: dict) -> dict:
    done = [j for j in jobs if (output_dir / j["path"] / "README.md").is_file()]
    entries = [_read_entry(output_dir, j) for j in tqdm(done, desc="reading cards", unit="card", leave=False)]
    archs, held = PRESETS[preset]["architectures"], heldout_architectures(preset)
    return {
        "format": "hf_paramgen-model-zoo/1", "preset": preset,
        "data_splits": {d: split_info(d) for d in sorted({t["dataset"] for t in tasks})},
        "training_recipe": TRAINING_RECIPE,
        "init": {"schedule": list(init_schedule(preset)), "rule": "seed k uses schedule[k % len(schedule)]",
                 "shared_seeds": SHARED_INIT_SEEDS,
                 "independent_seed": "zlib.crc32('<task_id>/<architecture>/<seed>')",
                 "style": init_style(preset), "how": INIT_HOW[init_style(preset)]},
        "task_split": {"seed": SPLIT_SEED, "fractions_per_family": TASK_SPLIT_FRACTIONS},
        "checkpoint_splits": list(CHECKPOINT_SPLITS),
        "tasks": tasks,
        "architectures": {a: {"config": ARCHITECTURES[a], "dataset": ARCHITECTURE_DATASET[a], "seeds": s,
                              "task_fraction": f, "heldout": a in held}
                          for a, (s, f) in archs.items()},
        "heldout_architectures": [a for a in archs if a in held],
        "heldout_dataset_tasks": [t["task_id"] for t in tasks if t["split"] == "heldout_dataset"],
        "heldout_tasks": [t["task_id"] for t in tasks if t["split"] == "heldout_task"],
        "heldout_classes": {d: list(c) for d, c in PRESETS[preset].get("heldout_classes", {}).items()},
        "heldout_class_tasks": [t["task_id"] for t in tasks if t["split"] == "heldout_class"],
        "validation_tasks": [t["task_id"] for t in tasks if t["split"] == "validation"],
        "checkpoints": entries, "num_checkpoints": len(entries), "num_planned_checkpoints": len(jobs),
        "num_tasks": len({e["task_id"] for e in entries}),
        "num_architectures": len({e["architecture"] for e in entries}),
        "num_checkpoints_per_split": {s: sum(e["split"] == s for e in entries) for s in CHECKPOINT_SPLITS},
        "num_checkpoints_per_init": {i: sum(e["init"] == i for e in entries)
                                     for i in sorted(set(init_schedule(preset)))},
        "summary": _summary(entries) if entries else {}, **run,
    }


def _readme(manifest: dict) -> str:
    rows = "\n".join(f"| {a} | {s['num_checkpoints']} | {s['mean_val_accuracy']} | {s['mean_test_accuracy']} |"
                     for a, s in manifest["summary"].items())
    return (f"# hf_paramgen model zoo ({manifest['preset']})\n\n{manifest['num_checkpoints']} checkpoints of "
            f"{manifest['num_architectures']} architectures on {manifest['num_tasks']} tasks "
            f"(held-out architectures: {', '.join(manifest['heldout_architectures']) or 'none'}; "
            f"{len(manifest['heldout_tasks'])} held-out tasks, {len(manifest.get('heldout_class_tasks', []))} with "
            f"held-out classes {manifest.get('heldout_classes') or 'none'}). "
            f"Built in {manifest['zoo_build_seconds']} s "
            f"with {manifest['num_workers']} worker(s). Each folder under `checkpoints/` loads with "
            f"`ZooNet.from_pretrained`; `manifest.json` lists tasks, splits and accuracies.\n\n"
            f"| architecture | checkpoints | mean validation accuracy | mean test accuracy |\n"
            f"|---|---|---|---|\n{rows}\n")


def build_zoo(output_dir: str | os.PathLike, preset: str = "full", num_workers: int = 2,
              limit: int | None = None, shard: JobShard | None = None) -> dict | None:
    """Train the zoo of `preset` into `output_dir` in parallel processes; resumable and deterministic.

    Finished checkpoint folders are skipped, so a killed build continues where it stopped; the folder is locked
    while a build runs (`JobShard.claim`: a second build into it raises `OutputLocked`). Under `accelerate launch`
    (or with an explicit `shard`) each rank trains its share of the plan with `num_workers` processes of its own
    and one rank writes the manifest (`research.sharding`); a shared filesystem is assumed across machines.

    Args:
        output_dir: the zoo folder (created if missing).
        preset: a name in `PRESETS`: "full" (>= 2,000 checkpoints), "shared" (one architecture, one shared init),
            "demo", "generalise" (12 architectures, 6 held out, nested init), "tiny", "tiny-generalise".
        num_workers: training processes (1: in this process).
        limit: build only the first `limit` planned checkpoints.
        shard: this process's rank and world size (default: `JobShard.from_launcher()`, rank 0 of 1 without one).

    Returns:
        The manifest (also written atomically to `output_dir/manifest.json`), or None on a rank that did not merge
        it (not the main process of a launch; a rank without a launcher that finished before the others).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}.")
    start = time.perf_counter()
    output_dir, tasks = Path(output_dir), make_tasks(preset)  # an unknown preset raises before anything is written
    shard = shard or JobShard.from_launcher()
    with shard.claim(output_dir):  # one build per folder (all ranks of one launch): a second one gets OutputLocked
        return _build_zoo(output_dir, preset, tasks, num_workers, limit, start, shard)


def _build_zoo(output_dir: Path, preset: str, tasks: list[dict], num_workers: int, limit: int | None,
               start: float, shard: JobShard) -> dict | None:
    jobs = plan_checkpoints(tasks, preset)[:limit]
    done = lambda job: (output_dir / job["path"] / "README.md").is_file()  # noqa: E731  (the card is written last)
    todo = shard.my_todo(jobs, lambda job: output_dir / job["path"], "README.md")  # cleans a killed run's temporaries
    for arch in {j["architecture"] for j in todo}:
        (output_dir / "checkpoints" / arch).mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_jobs(todo, output_dir, num_workers, shard.label)
    finally:
        torch.set_num_threads(threads)

    def merged() -> dict:
        manifest_path = output_dir / "manifest.json"
        previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        run_seconds = time.perf_counter() - start
        run = {"num_workers": num_workers, "num_processes": shard.world_size, "num_trained_this_run": shard.num_todo,
               "this_run_seconds": round(run_seconds, 2),
               "zoo_build_seconds": round(previous.get("zoo_build_seconds", 0.0) + run_seconds, 2),
               "zoo_build_seconds_note": "wall time summed over build runs that reached the manifest (a killed run's "
                                         "time is not counted); the CPU may have been shared with other work"}
        return _manifest(preset, tasks, jobs, output_dir, run)

    manifest = shard.merge(output_dir / "manifest.json", merged, lambda: all(map(done, jobs)), indent=1)
    if manifest is not None:
        atomic_write_text(output_dir / "README.md", _readme(manifest))
    return manifest


def cli_build_zoo(argv: list[str]) -> int:
    """`hf-paramgen build-zoo --output_dir outputs/zoo --preset full --num_workers 2`."""
    parser = argparse.ArgumentParser(prog="hf-paramgen build-zoo",
                                     description="Train a model zoo of small nets on real data.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="build only the first N planned checkpoints")
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} is a file; expected a zoo folder (new, or one to resume).")
    shard = check_build_arguments(parser, args)
    with clear_job_errors(parser.prog, args.output_dir):
        manifest = build_zoo(args.output_dir, args.preset, args.num_workers, args.limit, shard)
    if manifest is None:  # another rank writes the manifest and prints the summary
        return 0
    keys = ("num_checkpoints", "num_tasks", "num_architectures", "heldout_architectures", "num_checkpoints_per_split",
            "num_checkpoints_per_init", "num_trained_this_run", "this_run_seconds", "zoo_build_seconds", "summary")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli_build_zoo(sys.argv[1:]))
