"""The model zoo: many small `ZooNet`s trained on real offline tasks, each saved as a Hub-style checkpoint folder.

Layout of a zoo folder::

    manifest.json                      tasks (+ split), architectures (+ held-out), one entry per checkpoint
    README.md                          a short summary
    checkpoints/<architecture>/<task_id>--seed<k>/{config.json, model.safetensors, README.md}

Every checkpoint's `README.md` is a model card whose YAML metadata holds its task, instruction,
architecture, seed, initialisation, training recipe, accuracies and split
(`huggingface_hub.ModelCard.load(dir).data.to_dict()`).

Weight-space symmetry (DESIGN.md section 1): most checkpoints of an architecture start from one of
two shared initialisations (`torch.manual_seed(SHARED_INIT_SEEDS[k])`, then build; hidden layers
are created before the head, so they match across tasks of any number of classes); seed k uses
`INIT_SCHEDULE[k % 4]`, so seed 2 of every (task, architecture) pair starts from an independent
initialisation (1 in 3 or 1 in 4 checkpoints, depending on the number of seeds; 31 % of "full"). The checkpoint seed sets the
data order. Training uses one fixed recipe (`TRAINING_RECIPE`) and one thread per worker, so a
(task, architecture, seed) triple always gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData
from tqdm.auto import tqdm

from .architectures import ARCHITECTURE_DATASET, ARCHITECTURES, ZooNet, build_model
from .tasks import DATASETS, SPLITS, Task, dataset_arrays, load_task_split, split_info, task_from_dict

__all__ = ["TRAINING_RECIPE", "HELDOUT_ARCHITECTURES", "PRESETS", "make_tasks", "build_zoo", "load_manifest",
           "load_checkpoint_model", "evaluate_accuracy", "train_model", "finetune", "task_from_dict", "cli_build_zoo"]

TRAINING_RECIPE: dict = {"optimizer": "Adam", "lr": 3e-3, "batch_size": 64, "weight_decay": 0.0,
                         "loss": "cross_entropy", "epochs": {"mnist": 5, "digits": 15}, "torch_threads": 1}
SHARED_INIT_SEEDS: dict[str, int] = {"shared-0": 1000, "shared-1": 2000}
INIT_SCHEDULE = ("shared-0", "shared-1", "independent", "shared-0")  # init of seed k: INIT_SCHEDULE[k % 4]
HELDOUT_ARCHITECTURES = ("mlp-784-48",)
SPLIT_SEED = 0
TASK_SPLIT_FRACTIONS = {"heldout_task": 0.15, "validation": 0.10}
CHECKPOINT_SPLITS = ("train", "validation", "heldout_task", "heldout_architecture")

# Colour inversion is used on digits only: on MNIST-5k, 784-input MLPs trained with Adam collapse on inverted
# images (mean inputs ~0.87 move every first-layer pre-activation together; mlp-784-16 reached a mean test
# accuracy of 0.72, some runs chance, in an earlier full build), so MNIST's transforms are transpose and hflip.
# preset -> task families {family: (dataset, num_classes choices, transform, count)} and architecture plan
# {architecture: (seeds, fraction of its dataset's tasks)}.
PRESETS: dict[str, dict] = {
    "full": {
        "families": {
            "mnist-4class": ("mnist", (4,), "none", 96),
            "mnist-kclass": ("mnist", (2, 3, 5, 6, 7, 8, 9, 10), "none", 32),
            "mnist-hflip": ("mnist", (4,), "hflip", 12),
            "mnist-transpose": ("mnist", (4,), "transpose", 12),
            "digits": ("digits", (4, 4, 2, 3, 5, 10), "none", 14),
            "digits-invert": ("digits", (4,), "invert", 3),
            "digits-transpose": ("digits", (4,), "transpose", 3),
        },
        "architectures": {"mlp-784-32": (4, 1.0), "mlp-784-16": (3, 1.0), "mlp-784-64": (3, 1.0),
                          "mlp-784-32-32": (3, 1.0), "cnn-mnist": (3, 0.5), "mlp-784-48": (3, 0.25),
                          "mlp-64-32": (4, 1.0), "cnn-digits": (3, 1.0)},
    },
    # what a generator can learn from (DESIGN.md section 1): one architecture, one shared initialisation
    # for every checkpoint (so a smooth map from instruction to weights exists), many ordered 4-class tasks
    "shared": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 1500)},
        "architectures": {"cnn-mnist": (2, 1.0)},
        "inits": ("shared-0",),
    },
    # evaluation only: the same architecture and initialisation with 3-, 5- and 6-class heads, layouts a
    # prior trained on "shared" (4 classes) never saw
    "shared-heads": {
        "families": {"mnist-kclass": ("mnist", (3, 5, 6), "none", 60)},
        "architectures": {"cnn-mnist": (2, 1.0)},
        "inits": ("shared-0",),
    },
    # the README's main job: the "shared" recipe at a size whose whole chain runs in minutes
    "demo": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 480)},
        "architectures": {"cnn-mnist": (1, 1.0)},
        "inits": ("shared-0",),
    },
    "tiny": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 3), "mnist-hflip": ("mnist", (4,), "hflip", 1),
                     "digits": ("digits", (3,), "none", 1)},
        "architectures": {"mlp-784-16": (3, 1.0), "mlp-784-48": (2, 0.5), "mlp-64-32": (2, 1.0)},
    },
}


def _stable_int(*parts) -> int:
    """A process-independent integer hash of `parts` (Python's `hash` is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


# ------------------------------------------------------------------------------------------------ tasks
def make_tasks(preset: str = "full", seed: int = SPLIT_SEED) -> list[dict]:
    """The zoo's deterministic task list with families and task splits.

    Returns:
        One dict per task: `Task.to_dict()` plus `instruction`, `num_classes`, `family` and `split`
        ("train", "validation" or "heldout_task"; `TASK_SPLIT_FRACTIONS` of each family, seeded).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
    rng = np.random.default_rng(seed)
    tasks, seen = [], set()
    for family, (dataset, sizes, transform, count) in PRESETS[preset]["families"].items():
        family_tasks = []
        while len(family_tasks) < count:
            k = sizes[len(family_tasks) % len(sizes)]
            task = Task.make(dataset, rng.permutation(DATASETS[dataset]["num_classes"])[:k].tolist(), transform)
            if task.task_id not in seen:
                seen.add(task.task_id)
                family_tasks.append({**task.to_dict(), "instruction": task.instruction,
                                     "num_classes": task.num_classes, "family": family, "split": "train"})
        order = rng.permutation(count)
        n_held = max(1, round(count * TASK_SPLIT_FRACTIONS["heldout_task"])) if count >= 3 else 0
        n_val = round(count * TASK_SPLIT_FRACTIONS["validation"])
        for rank, i in enumerate(order):
            family_tasks[i]["split"] = "heldout_task" if rank < n_held else "validation" if rank < n_held + n_val else "train"
        tasks += family_tasks
    for split in ("heldout_task", "validation"):  # tiny presets: still at least one task of each split
        if not any(t["split"] == split for t in tasks):
            next(t for t in tasks if t["split"] == "train" and t["dataset"] == "mnist")["split"] = split
    return tasks


def init_schedule(preset: str) -> tuple[str, ...]:
    """Initialisation of seed k of a preset: `init_schedule(preset)[k % len(...)]` (default `INIT_SCHEDULE`)."""
    return tuple(PRESETS[preset].get("inits", INIT_SCHEDULE))


def plan_checkpoints(tasks: list[dict], preset: str = "full") -> list[dict]:
    """One job per (task, architecture, seed): ids, paths, init and split, in a fixed order."""
    jobs, schedule = [], init_schedule(preset)
    for task in tasks:
        for arch, (seeds, fraction) in PRESETS[preset]["architectures"].items():
            if ARCHITECTURE_DATASET[arch] != task["dataset"]:
                continue
            if fraction < 1.0 and _stable_int(arch, task["task_id"]) % 1000 >= fraction * 1000:
                continue
            split = "heldout_architecture" if arch in HELDOUT_ARCHITECTURES else task["split"]
            for seed in range(seeds):
                init = schedule[seed % len(schedule)]
                init_seed = SHARED_INIT_SEEDS.get(init, _stable_int(task["task_id"], arch, seed))
                jobs.append({"id": f"{task['task_id']}--{arch}--seed{seed}",
                             "path": f"checkpoints/{arch}/{task['task_id']}--seed{seed}", "task": task,
                             "architecture": arch, "seed": seed, "init": init, "init_seed": init_seed, "split": split})
    return jobs


# --------------------------------------------------------------------------------------- train / evaluate
def _batches(n: int, batch_size: int, seed: int):
    """Endless mini-batch index tensors over n samples, reshuffled each epoch by a generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]


def _check_model_task(model: torch.nn.Module, task: Task) -> None:
    input_shape = getattr(model, "input_shape", None)
    if input_shape is not None and int(np.prod(input_shape)) != task.input_dim:
        raise ValueError(f"Model reads inputs of shape {list(input_shape)} but task {task.task_id!r} "
                         f"({task.dataset}) has {task.input_dim} features.")
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    if last and last[0].out_features != task.num_classes:
        raise ValueError(f"Model has {last[0].out_features} output units but task {task.task_id!r} "
                         f"has {task.num_classes} classes.")


def _train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor,
                 batches, steps: int) -> None:
    model.train()
    for _ in range(steps):
        idx = next(batches)
        loss = F.cross_entropy(model(X[idx]), y[idx])  # X[idx]: (b, d) -> logits (b, num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_model(model: torch.nn.Module, task: Task, *, epochs: int | None = None, steps: int | None = None,
                lr: float = TRAINING_RECIPE["lr"], batch_size: int = TRAINING_RECIPE["batch_size"],
                seed: int = 0, weight_decay: float = 0.0) -> torch.nn.Module:
    """Train `model` in place on the task's train split with Adam (the zoo recipe); returns it.

    Args:
        epochs / steps: give exactly one (epochs default to the recipe's for the task's dataset when both are None).
        seed: sets the data order (the initialisation is whatever `model` holds).
    """
    if epochs is not None and steps is not None:
        raise ValueError(f"Give epochs or steps, not both (got epochs={epochs}, steps={steps}).")
    _check_model_task(model, task)
    X, y = load_task_split(task, "train")
    if steps is None:
        epochs = TRAINING_RECIPE["epochs"][task.dataset] if epochs is None else epochs
        steps = epochs * -(-len(X) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    _train_steps(model, opt, X, y, _batches(len(X), batch_size, seed), steps)
    model.eval()
    return model


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, task: Task, split: str = "test") -> float:
    """Top-1 accuracy of `model` on one fixed split ("train", "validation", "test") of `task`."""
    _check_model_task(model, task)
    X, y = load_task_split(task, split)
    was_training = model.training
    model.eval()
    correct = sum(int((model(X[i:i + 2048]).argmax(-1) == y[i:i + 2048]).sum()) for i in range(0, len(X), 2048))
    model.train(was_training)
    return correct / len(y)


def finetune(model: torch.nn.Module, task: Task, steps: int, lr: float = TRAINING_RECIPE["lr"],
             batch_size: int = TRAINING_RECIPE["batch_size"], eval_every: int = 10, seed: int = 0) -> list[dict]:
    """Fine-tune `model` in place with Adam and record its validation accuracy along the way.

    Returns:
        `[{"step": 0, "val_accuracy": ...}, {"step": eval_every, ...}, ..., {"step": steps, ...}]`.
    """
    if steps < 0 or eval_every < 1:
        raise ValueError(f"Expected steps >= 0 and eval_every >= 1, got steps={steps}, eval_every={eval_every}.")
    X, y = load_task_split(task, "train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _batches(len(X), batch_size, seed)
    curve = [{"step": 0, "val_accuracy": evaluate_accuracy(model, task, "validation")}]
    done = 0
    while done < steps:
        n = min(eval_every, steps - done)
        _train_steps(model, opt, X, y, batches, n)
        done += n
        curve.append({"step": done, "val_accuracy": evaluate_accuracy(model, task, "validation")})
    model.eval()
    return curve


# ------------------------------------------------------------------------------------------ checkpoints
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A `{{ architecture }}` network (`hf_paramgen.ZooNet`) of the hf_paramgen model zoo.

**Task:** {{ instruction }}

| val accuracy | test accuracy | init | seed | split |
|---|---|---|---|---|
| {{ val_accuracy }} | {{ test_accuracy }} | {{ init }} | {{ seed }} | {{ split }} |

```python
from hf_paramgen.research.architectures import ZooNet
model = ZooNet.from_pretrained("path/or/repo")
```
"""


def _checkpoint_card(job: dict, metadata: dict) -> ModelCard:
    data = ModelCardData(library_name="hf_paramgen", tags=["hf_paramgen", "model-zoo", job["architecture"]],
                         pipeline_tag="image-classification", **metadata)
    return ModelCard.from_template(data, template_str=CARD_TEMPLATE, title=job["id"], **metadata)


def train_checkpoint(job: dict, output_dir: str | os.PathLike) -> dict:
    """Train one planned checkpoint and write its folder atomically (temporary folder, then `os.replace`)."""
    final = Path(output_dir) / job["path"]
    task = task_from_dict(job["task"])
    start = time.perf_counter()
    torch.manual_seed(job["init_seed"])
    model = build_model(job["architecture"], task.num_classes)
    train_model(model, task, seed=job["seed"])
    seconds = time.perf_counter() - start
    metadata = {
        "task_id": task.task_id, "instruction": task.instruction, "dataset": task.dataset,
        "classes": list(task.classes), "transform": task.transform, "num_classes": task.num_classes,
        "family": job["task"].get("family"), "architecture": job["architecture"], "seed": job["seed"],
        "init": job["init"], "init_seed": job["init_seed"],
        "training_recipe": {**TRAINING_RECIPE, "epochs": TRAINING_RECIPE["epochs"][task.dataset]},
        "val_accuracy": round(evaluate_accuracy(model, task, "validation"), 5),
        "test_accuracy": round(evaluate_accuracy(model, task, "test"), 5),
        "split": job["split"], "train_seconds": round(seconds, 4),
    }
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _checkpoint_card(job, metadata).save(tmp / "README.md")
    os.replace(tmp, final)
    return metadata


def load_checkpoint_model(path: str | os.PathLike) -> ZooNet:
    """A zoo checkpoint (local folder or Hub repo id) as a `ZooNet` in eval mode."""
    if os.path.sep in str(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"Checkpoint folder {path} does not exist (expected config.json + model.safetensors).")
    return ZooNet.from_pretrained(str(path)).eval()


def load_manifest(zoo_dir: str | os.PathLike) -> dict:
    """The `manifest.json` of a zoo folder."""
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{zoo_dir} is not a model zoo: no manifest.json (build one with `hf-paramgen build-zoo`).")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- build
def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _init_worker() -> None:
    """One thread, data loaded, and one throw-away Adam step (its first call imports ~2 s of torch modules)."""
    torch.set_num_threads(1)
    for dataset in DATASETS:
        dataset_arrays(dataset)
    net = torch.nn.Linear(2, 2)
    net(torch.zeros(1, 2)).sum().backward()
    torch.optim.Adam(net.parameters()).step()


def _run_jobs(jobs: list[dict], output_dir: Path, num_workers: int) -> None:
    bar = tqdm(total=len(jobs), desc="zoo checkpoints", unit="ckpt", smoothing=0.05)
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
        out[arch] = {"num_checkpoints": len(rows), "mean_val_accuracy": round(float(np.mean([r["val_accuracy"] for r in rows])), 4),
                     "mean_test_accuracy": round(float(np.mean([r["test_accuracy"] for r in rows])), 4),
                     "min_test_accuracy": round(float(np.min([r["test_accuracy"] for r in rows])), 4)}
    return out


def _manifest(preset: str, tasks: list[dict], jobs: list[dict], output_dir: Path, run: dict) -> dict:
    done = [j for j in jobs if (output_dir / j["path"] / "README.md").is_file()]
    entries = [_read_entry(output_dir, j) for j in tqdm(done, desc="reading cards", unit="card", leave=False)]
    archs = PRESETS[preset]["architectures"]
    return {
        "format": "hf_paramgen-model-zoo/1", "preset": preset,
        "data_splits": {d: split_info(d) for d in sorted({t["dataset"] for t in tasks})},
        "training_recipe": TRAINING_RECIPE,
        "init": {"schedule": list(init_schedule(preset)), "rule": "seed k uses schedule[k % len(schedule)]", "shared_seeds": SHARED_INIT_SEEDS,
                 "independent_seed": "zlib.crc32('<task_id>/<architecture>/<seed>')",
                 "how": "torch.manual_seed(init_seed); build_model(architecture, num_classes)"},
        "task_split": {"seed": SPLIT_SEED, "fractions_per_family": TASK_SPLIT_FRACTIONS},
        "checkpoint_splits": list(CHECKPOINT_SPLITS),
        "tasks": tasks,
        "architectures": {a: {"config": ARCHITECTURES[a], "dataset": ARCHITECTURE_DATASET[a], "seeds": s,
                              "task_fraction": f, "heldout": a in HELDOUT_ARCHITECTURES} for a, (s, f) in archs.items()},
        "heldout_architectures": [a for a in archs if a in HELDOUT_ARCHITECTURES],
        "heldout_tasks": [t["task_id"] for t in tasks if t["split"] == "heldout_task"],
        "validation_tasks": [t["task_id"] for t in tasks if t["split"] == "validation"],
        "checkpoints": entries, "num_checkpoints": len(entries), "num_planned_checkpoints": len(jobs),
        "num_tasks": len({e["task_id"] for e in entries}), "num_architectures": len({e["architecture"] for e in entries}),
        "num_checkpoints_per_split": {s: sum(e["split"] == s for e in entries) for s in CHECKPOINT_SPLITS},
        "num_checkpoints_per_init": {i: sum(e["init"] == i for e in entries) for i in sorted(set(init_schedule(preset)))},
        "summary": _summary(entries) if entries else {}, **run,
    }


def _readme(manifest: dict) -> str:
    rows = "\n".join(f"| {a} | {s['num_checkpoints']} | {s['mean_val_accuracy']} | {s['mean_test_accuracy']} |"
                     for a, s in manifest["summary"].items())
    return (f"# hf_paramgen model zoo ({manifest['preset']})\n\n{manifest['num_checkpoints']} checkpoints of "
            f"{manifest['num_architectures']} architectures on {manifest['num_tasks']} tasks "
            f"(held-out architectures: {', '.join(manifest['heldout_architectures']) or 'none'}; "
            f"{len(manifest['heldout_tasks'])} held-out tasks). Built in {manifest['zoo_build_seconds']} s "
            f"with {manifest['num_workers']} worker(s). Each folder under `checkpoints/` loads with "
            f"`ZooNet.from_pretrained`; `manifest.json` lists tasks, splits and accuracies.\n\n"
            f"| architecture | checkpoints | mean val accuracy | mean test accuracy |\n|---|---|---|---|\n{rows}\n")


def build_zoo(output_dir: str | os.PathLike, preset: str = "full", num_workers: int = 2,
              limit: int | None = None) -> dict:
    """Train the zoo of `preset` into `output_dir` in parallel processes; resumable and deterministic.

    Finished checkpoint folders are skipped, so a killed build continues where it stopped.

    Args:
        output_dir: the zoo folder (created if missing).
        preset: a name in `PRESETS`: "full" (>= 2,000 checkpoints), "shared" (one architecture, one shared init), "demo", "tiny".
        num_workers: training processes (1: in this process).
        limit: build only the first `limit` planned checkpoints.

    Returns:
        The manifest (also written atomically to `output_dir/manifest.json`).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}.")
    start = time.perf_counter()
    output_dir = Path(output_dir)
    tasks = make_tasks(preset)
    jobs = plan_checkpoints(tasks, preset)[:limit]
    for tmp in output_dir.glob("checkpoints/*/.tmp-*"):  # leftovers of a killed build
        shutil.rmtree(tmp, ignore_errors=True)
    todo = [j for j in jobs if not (output_dir / j["path"] / "README.md").is_file()]
    for arch in {j["architecture"] for j in todo}:
        (output_dir / "checkpoints" / arch).mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_jobs(todo, output_dir, num_workers)
    finally:
        torch.set_num_threads(threads)
    previous = json.loads((output_dir / "manifest.json").read_text()) if (output_dir / "manifest.json").is_file() else {}
    run_seconds = time.perf_counter() - start
    run = {"num_workers": num_workers, "num_trained_this_run": len(todo), "this_run_seconds": round(run_seconds, 2),
           "zoo_build_seconds": round(previous.get("zoo_build_seconds", 0.0) + run_seconds, 2),
           "zoo_build_seconds_note": "wall time summed over build runs that reached the manifest (a killed run's "
                                     "time is not counted); the CPU may have been shared with other work"}
    manifest = _manifest(preset, tasks, jobs, output_dir, run)
    _write_text(output_dir / "manifest.json", json.dumps(manifest, indent=1))
    _write_text(output_dir / "README.md", _readme(manifest))
    return manifest


def cli_build_zoo(argv: list[str]) -> int:
    """`hf-paramgen build-zoo --output_dir outputs/zoo --preset full --num_workers 2`."""
    parser = argparse.ArgumentParser(prog="hf-paramgen build-zoo", description="Train a model zoo of small nets on real data.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="build only the first N planned checkpoints")
    args = parser.parse_args(argv)
    manifest = build_zoo(args.output_dir, args.preset, args.num_workers, args.limit)
    keys = ("num_checkpoints", "num_tasks", "num_architectures", "heldout_architectures", "num_checkpoints_per_split",
            "num_checkpoints_per_init", "num_trained_this_run", "this_run_seconds", "zoo_build_seconds", "summary")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli_build_zoo(sys.argv[1:]))
