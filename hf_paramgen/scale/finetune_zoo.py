"""A zoo for scale: one base network of millions of parameters, trained here on real data, and many real
fine-tunes of it, stored as half-precision deltas.

Layout of a fine-tune zoo folder::

    base/                         the base `ZooNet` (config.json, model.safetensors, README.md card): trained on
                                  the digits `BASE_CLASSES` of MNIST-5k (train split), its 8-way head included
    finetunes/<task_id>--seed<k>/ config.json (ZooNet config of the fine-tune + the reference), delta.safetensors
                                  (body tensors: fine-tuned - base, float16; head tensors: the fine-tuned head,
                                  float32), README.md card (task, instruction, split, accuracies)
    manifest.json                 plan, splits, one entry per fine-tune, build time, disk use

A fine-tune starts from the base body and a *prototype head* (`prototype_head`: class-mean directions of the base's
features of the task's 5-shot samples, the same samples a generator is given), and trains every parameter with SGD
(momentum 0.9, clipped gradients) for `FINETUNE_RECIPE["steps"]` steps. Tasks are ordered class subsets under an
input transform (the families of `research.tasks`): "train" and "heldout_tasks" use only `BASE_CLASSES`,
"heldout_classes" tasks contain at least one digit the base and the training fine-tunes never saw.

Builds resume (finished folders are skipped, each one is written to a temporary folder and renamed) and run jobs in
`num_workers` processes; under `accelerate launch` each rank trains its share (`research.sharding`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load_file, save_file

from ..layout.bases import weights_digest  # noqa: F401  (re-exported: the codec digests its reference)
from ..layout.param_layout import ParamLayout
from ..research.architectures import ZooNet
from ..research.tasks import Task, few_shot_samples, load_task_split, task_from_dict
from ..research.zoo_train import evaluate_accuracy
from ..utils import replace_dir, temporary_sibling

BASE_CLASSES = tuple(range(8))
HELDOUT_CLASSES = (8, 9)
TRANSFORM_NAMES = ("none", "invert", "transpose", "hflip")
HEAD_SCALE = 5.0  # norm of each prototype-head row
SCALE_PRESETS: dict[str, dict] = {
    # >= 10M parameters: 784 -> 2560 -> 2560 -> 1024 -> k (11.19M + head)
    "full": {"hidden_sizes": [2560, 2560, 1024], "base_epochs": 4, "num_train": 216, "num_heldout_tasks": 24,
             "num_heldout_classes": 24, "max_classes": 6, "steps": 60},
    "tiny": {"hidden_sizes": [48, 48, 32], "base_epochs": 2, "num_train": 12, "num_heldout_tasks": 3,
             "num_heldout_classes": 3, "max_classes": 4, "steps": 15},
}
FINETUNE_RECIPE = {"optimizer": "SGD", "lr": 0.02, "momentum": 0.9, "batch_size": 64, "clip_grad_norm": 1.0,
                   "head_init": "prototype", "few_shot_per_class": 5, "torch_threads": 1}
BASE_RECIPE = {"optimizer": "Adam", "lr": 3e-4, "batch_size": 64, "classes": list(BASE_CLASSES), "split": "train"}
DELTA_FILE = "delta.safetensors"


def base_config(preset: str, num_classes: int) -> dict:
    return {"kind": "mlp", "input_shape": [784], "hidden_sizes": list(SCALE_PRESETS[preset]["hidden_sizes"]),
            "num_classes": num_classes}


def head_names(model: torch.nn.Module) -> list[str]:
    """Names of the classifier head's tensors (the last Linear's weight and bias)."""
    layout = ParamLayout.from_module(model)
    return [layout.specs[i].name for i in layout.head_tensors]


@torch.no_grad()
def head_input_features(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """(n, d) inputs of the model's last Linear (its head) for inputs X (n, ...)."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    try:
        model.eval()
        model(X)
    finally:
        handle.remove()
    return seen[0]


def prototype_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   scale: float = HEAD_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """Head rows from class means: weight (k, d) = scale * mean_i / |mean_i|, bias (k,) = 0."""
    present = sorted(set(labels.tolist()))
    if present != list(range(num_classes)):
        raise ValueError(f"A prototype head for {num_classes} classes needs samples of labels 0..{num_classes - 1}, "
                         f"got labels {present}.")
    means = torch.stack([features[labels == i].mean(0) for i in range(num_classes)])
    weight = scale * means / means.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return weight, torch.zeros(num_classes)


def with_prototype_head(body_state: dict[str, torch.Tensor], config: dict, samples) -> ZooNet:
    """A `ZooNet(**config)` with the body tensors of `body_state` and the prototype head of `samples` (X, y)."""
    model = ZooNet(**config)
    heads = head_names(model)
    state = model.state_dict()
    state.update({k: v for k, v in body_state.items() if k not in heads})
    model.load_state_dict(state)
    X, y = samples
    weight, bias = prototype_head(head_input_features(model, X), y, config["num_classes"])
    state[heads[0]], state[heads[1]] = weight, bias
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------------------------------- plan
def _tasks(rng: np.random.Generator, pool: list[int], n: int, max_classes: int, taken: set, must: tuple = ()) -> list:
    out = []
    while len(out) < n:
        k = int(rng.integers(2, max_classes + 1))
        classes = [int(c) for c in rng.choice(pool, k, replace=False)]
        if must and not set(classes) & set(must):
            continue
        task = Task.make("mnist", classes, TRANSFORM_NAMES[int(rng.integers(len(TRANSFORM_NAMES)))])
        if task.task_id not in taken:
            taken.add(task.task_id)
            out.append(task)
    return out


def plan_finetunes(preset: str = "full", seed: int = 0) -> list[dict]:
    """The fine-tune jobs of a preset: `{"id", "path", "task", "split", "seed"}`, deterministic."""
    if preset not in SCALE_PRESETS:
        raise ValueError(f"Unknown scale preset {preset!r}; expected one of {sorted(SCALE_PRESETS)}.")
    p, rng, taken = SCALE_PRESETS[preset], np.random.default_rng(seed), set()
    seen = list(BASE_CLASSES)
    splits = {"train": _tasks(rng, seen, p["num_train"], p["max_classes"], taken),
              "heldout_tasks": _tasks(rng, seen, p["num_heldout_tasks"], p["max_classes"], taken),
              "heldout_classes": _tasks(rng, list(range(10)), p["num_heldout_classes"], p["max_classes"], taken,
                                        must=HELDOUT_CLASSES)}
    jobs = []
    for split, tasks in splits.items():
        for i, task in enumerate(tasks):
            job_id = f"{task.task_id}--seed0"
            jobs.append({"id": job_id, "path": f"finetunes/{job_id}", "task": task.to_dict(), "split": split,
                         "seed": int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % 2**31, "index": i})
    return jobs


# ---------------------------------------------------------------------------------------------- base
def _batches(n: int, batch_size: int, gen: torch.Generator):
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def train_base(output_dir: str | os.PathLike, preset: str = "full", seed: int = 0) -> Path:
    """Train (or reuse) the base network under `output_dir/base`; returns the folder."""
    final = Path(output_dir) / "base"
    if (final / "README.md").is_file():
        return final
    p = SCALE_PRESETS[preset]
    task = Task.make("mnist", BASE_CLASSES)
    torch.manual_seed(seed)
    model = ZooNet(**base_config(preset, len(BASE_CLASSES)))
    X, y = load_task_split(task, "train")
    opt = torch.optim.Adam(model.parameters(), lr=BASE_RECIPE["lr"])
    batches, start = _batches(len(X), BASE_RECIPE["batch_size"], torch.Generator().manual_seed(seed)), time.time()
    model.train()
    for _ in range(p["base_epochs"] * (len(X) // BASE_RECIPE["batch_size"])):
        idx = next(batches)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    meta = {"task_id": task.task_id, "instruction": task.task_text, "dataset": "mnist", "classes": list(BASE_CLASSES),
            "split": "base", "architecture": "mlp-784-" + "-".join(map(str, p["hidden_sizes"])),
            "num_params": sum(t.numel() for t in model.parameters()), "training_recipe": {**BASE_RECIPE,
            "epochs": p["base_epochs"], "seed": seed}, "train_seconds": round(time.time() - start, 2),
            "val_accuracy": round(evaluate_accuracy(model, task, "validation"), 5),
            "test_accuracy": round(evaluate_accuracy(model, task, "test"), 5)}
    tmp = temporary_sibling(final)
    try:
        model.save_pretrained(tmp)
        data = ModelCardData(library_name="hf_paramgen", tags=["hf_paramgen", "scale-base"], **meta)
        card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n# Base network\n")
        card.save(tmp / "README.md")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@functools.cache
def load_base_state(base_dir: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, config) of a base folder (cached per process; do not modify the tensors)."""
    model = ZooNet.from_pretrained(base_dir)
    config = json.loads((Path(base_dir) / "config.json").read_text())
    return {k: v.detach() for k, v in model.state_dict().items()}, config


# ---------------------------------------------------------------------------------------------- fine-tunes
def finetune_job(job: dict, output_dir: str | os.PathLike, steps: int) -> dict:
    """Fine-tune the base for one job and write its folder atomically; returns its card metadata."""
    output_dir = Path(output_dir)
    final = output_dir / job["path"]
    base_state, base_cfg = load_base_state(str(output_dir / "base"))
    task = task_from_dict(job["task"])
    config = {**base_cfg, "num_classes": task.num_classes}
    start = time.perf_counter()
    samples = few_shot_samples(task, FINETUNE_RECIPE["few_shot_per_class"], "train", seed=0)
    model = with_prototype_head(base_state, config, samples)
    heads = head_names(model)
    X, y = load_task_split(task, "train")
    opt = torch.optim.SGD(model.parameters(), lr=FINETUNE_RECIPE["lr"], momentum=FINETUNE_RECIPE["momentum"])
    gen = torch.Generator().manual_seed(job["seed"])
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(X), (FINETUNE_RECIPE["batch_size"],), generator=gen)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), FINETUNE_RECIPE["clip_grad_norm"])
        opt.step()
    state = model.state_dict()
    stored = {k: (v if k in heads else (v - base_state[k]).half()).contiguous() for k, v in state.items()}
    model.load_state_dict(restore_state(stored, base_state, heads))  # accuracies of what is stored
    seconds = time.perf_counter() - start
    meta = {"task_id": task.task_id, "instruction": task.task_text, "dataset": task.dataset,
            "classes": list(task.classes), "transform": task.transform, "num_classes": task.num_classes,
            "split": job["split"], "seed": job["seed"], "architecture": "mlp-784-" + "-".join(
                map(str, config["hidden_sizes"])), "finetune_recipe": {**FINETUNE_RECIPE, "steps": steps},
            "val_accuracy": round(evaluate_accuracy(model, task, "validation"), 5),
            "test_accuracy": round(evaluate_accuracy(model, task, "test"), 5), "train_seconds": round(seconds, 3)}
    tmp = temporary_sibling(final)
    try:
        tmp.mkdir(parents=True)
        save_file(stored, str(tmp / DELTA_FILE), metadata={"reference": "../../base", "body_dtype": "float16"})
        (tmp / "config.json").write_text(json.dumps({**config, "reference": "../../base", "head": heads}, indent=1))
        card = ModelCard.from_template(ModelCardData(library_name="hf_paramgen", tags=["hf_paramgen", "finetune"],
                                                     **meta), template_str="---\n{{ card_data }}\n---\n# Fine-tune\n")
        card.save(tmp / "README.md")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def restore_state(stored: dict[str, torch.Tensor], base_state: dict[str, torch.Tensor],
                  heads: list[str]) -> dict[str, torch.Tensor]:
    """The full fine-tuned state: base + float32(delta) for the body, the stored head as is."""
    return {k: (v.float() if k in heads else base_state[k] + v.float()) for k, v in stored.items()}


def load_finetune(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(full state_dict, config, card metadata) of one fine-tune folder (its base resolved from `config.json`)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    base_state, _ = load_base_state(str((folder / config["reference"]).resolve()))
    stored = load_file(str(folder / DELTA_FILE))
    card = ModelCard.load(folder / "README.md").data.to_dict()
    return restore_state(stored, base_state, config["head"]), config, card


def load_deltas(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(body deltas float32, head tensors) of one fine-tune folder."""
    folder = Path(folder)
    heads = json.loads((folder / "config.json").read_text())["head"]
    stored = load_file(str(folder / DELTA_FILE))
    return ({k: v.float() for k, v in stored.items() if k not in heads}, {k: stored[k] for k in heads})


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run(job_and_args):
    job, output_dir, steps = job_and_args
    return finetune_job(job, output_dir, steps)


def build_finetune_zoo(output_dir: str | os.PathLike, preset: str = "full", num_workers: int = 2,
                       limit: int | None = None, rank: int | None = None, world_size: int | None = None) -> dict | None:
    """Train the base (once) and the preset's fine-tunes into `output_dir`; resumable. Returns the manifest.

    Under `accelerate launch` (or with explicit `rank`/`world_size` for processes started without a launcher) each
    rank trains its share of the unfinished fine-tunes with `num_workers` processes of its own and one rank writes
    the manifest once every fine-tune exists (`research.sharding.JobShard`; a shared filesystem across machines);
    the other ranks return None."""
    from ..research.sharding import JobShard, wait_lock

    output_dir, start = Path(output_dir), time.perf_counter()
    jobs = plan_finetunes(preset)[:limit]
    shard = JobShard.resolve(rank, world_size)
    with shard.claim(output_dir):
        with shard.main_first():
            if shard.coordinated:
                train_base(output_dir, preset)
            else:  # ranks without a launcher: the first to come trains the base, the others wait for it
                with wait_lock(output_dir / "base"):
                    train_base(output_dir, preset)
        todo = shard.my_todo(jobs, lambda j: output_dir / j["path"], "README.md")
        (output_dir / "finetunes").mkdir(parents=True, exist_ok=True)
        _run_jobs(todo, output_dir, SCALE_PRESETS[preset]["steps"], num_workers, shard.label)
        done = lambda job: (output_dir / job["path"] / "README.md").is_file()  # noqa: E731  (the card comes last)
        return shard.merge(output_dir / "manifest.json",
                           lambda: _manifest(output_dir, preset, jobs, shard.num_todo, time.perf_counter() - start,
                                             num_workers, shard.world_size),
                           lambda: all(map(done, jobs)), indent=1)


def _run_jobs(todo: list[dict], output_dir: Path, steps: int, num_workers: int, label: str) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"fine-tunes{label}", unit="ft")
    if num_workers <= 1 or len(todo) <= 1:
        threads = torch.get_num_threads()
        try:
            for job in todo:
                finetune_job(job, output_dir, steps)
                bar.update()
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(num_workers, initializer=_worker_init) as pool:
            for _ in pool.imap_unordered(_run, [(j, str(output_dir), steps) for j in todo]):
                bar.update()
    bar.close()


def _manifest(output_dir: Path, preset: str, jobs: list[dict], trained: int | None, seconds: float, num_workers: int,
              world_size: int) -> dict:
    entries = []
    for job in jobs:
        card = ModelCard.load(output_dir / job["path"] / "README.md").data.to_dict()
        entries.append({"id": job["id"], "path": job["path"], "task_id": job["task"]["task_id"],
                        "split": job["split"], "num_classes": len(job["task"]["classes"]),
                        "transform": job["task"]["transform"], "val_accuracy": card["val_accuracy"],
                        "test_accuracy": card["test_accuracy"], "train_seconds": card["train_seconds"]})
    previous = output_dir / "manifest.json"
    before = json.loads(previous.read_text()).get("build_seconds", 0.0) if previous.is_file() else 0.0
    base_card = ModelCard.load(output_dir / "base" / "README.md").data.to_dict()
    disk = sum(f.stat().st_size for f in (output_dir / "finetunes").rglob("*") if f.is_file())
    manifest = {"preset": preset, "base": {"path": "base", **{k: base_card[k] for k in (
                    "num_params", "val_accuracy", "test_accuracy", "train_seconds", "classes")}},
                "num_finetunes": len(entries),
                "num_per_split": {s: sum(e["split"] == s for e in entries) for s in ("train", "heldout_tasks",
                                                                                     "heldout_classes")},
                "finetune_recipe": {**FINETUNE_RECIPE, "steps": SCALE_PRESETS[preset]["steps"]},
                "storage": "body deltas (fine-tuned - base) in float16, heads in float32 (safetensors)",
                "disk_bytes": disk, "build_seconds": round(before + seconds, 1), "num_trained_this_run": trained,
                "num_workers": num_workers, "num_processes": world_size, "checkpoints": entries}
    return manifest


def cli_build_finetune_zoo(argv: list[str]) -> int:
    """`hf-paramgen build-finetune-zoo --output_dir outputs/scale/zoo --preset full --num_workers 2` (also under
    `accelerate launch --multi_gpu --num_processes N -m hf_paramgen.cli build-finetune-zoo ...`)."""
    import argparse

    from ..jobs import clear_job_errors
    from ..research.sharding import add_shard_arguments, check_build_arguments

    parser = argparse.ArgumentParser(prog="hf-paramgen build-finetune-zoo",
                                     description="Train a base of millions of parameters and real fine-tunes of it.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted(SCALE_PRESETS), default="full")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="build only the first N planned fine-tunes")
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    check_build_arguments(parser, args)  # bad --num_workers/--limit/--rank/--world_size: a usage error, no work
    with clear_job_errors(parser.prog, args.output_dir):
        manifest = build_finetune_zoo(args.output_dir, args.preset, args.num_workers, args.limit, args.rank,
                                      args.world_size)
    if manifest is not None:
        print(json.dumps({k: v for k, v in manifest.items() if k != "checkpoints"}, indent=2))
    return 0
