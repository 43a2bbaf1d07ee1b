"""One Accelerate training loop for every hf_paramgen model that computes its own loss.

`train(model, train_dataset, collate_fn, TrainingConfig(...))` runs unchanged on one CPU, several
processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on CPU) or GPUs. It logs every
scalar field of the model's output to `output_dir/log.jsonl` and saves the final model with
`save_pretrained` into `output_dir` itself.

Checkpoints are accelerate's states: `accelerator.save_state` writes the model, optimiser, scheduler, RNG and
sampler states plus a registered `TrainerState` (the step) into a temporary `checkpoints/.checkpoint_<i>.tmp`, and a
save-state hook adds the model's `save_pretrained` folder (`model/`). `trainer_state.json` is written last, then the
folder is renamed `checkpoint_<i>` and the oldest beyond `save_total_limit` are removed: only complete checkpoints
ever carry a final name. A run killed at any moment resumes from the latest one (`accelerator.load_state`) with the
same results as an uninterrupted run. One run writes an `output_dir` at a time (`jobs.output_lock`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data.collate import SeededCollate
from ..jobs import output_lock, recover_temporaries
from ..utils import atomic_write_json, atomic_write_text, replace_dir, temporary_sibling

CHECKPOINTS = "checkpoints"  # <output_dir>/checkpoints/checkpoint_<i>
STATE_FILE = "trainer_state.json"  # written last into a checkpoint, before its rename: it is complete; the step
MODEL_DIR = "model"  # the `save_pretrained` folder inside each checkpoint
BEST_DIR, BEST_FILE = "best", "best.json"
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")  # accelerate's modes


@dataclass
class TrainingConfig:
    """Settings of `train`. Steps count optimiser updates (`gradient_accumulation_steps` batches each).

    `max_time_s` stops early (saving as usual) once that much wall time has passed; `eval_every=0`
    evaluates at each log step when an eval dataset is given. `save_total_limit` checkpoints are kept (the
    oldest are removed once a new one is complete). `keep_best` also saves the model with the lowest `eval_loss` so far
    into `<output_dir>/best` (with `best.json`: step and loss), so an overfitting run still hands back
    its best model (`best_model_dir`).
    """

    output_dir: str = field(metadata={"help": "where checkpoints, log.jsonl and the final model go"})
    batch_size: int = 256
    lr: float = 1e-3
    max_steps: int = 1000
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    save_every: int = 500
    eval_every: int = 0
    eval_batches: int = 8
    seed: int = 0
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    resume: bool = field(default=True, metadata={"help": "resume from the latest checkpoint in output_dir "
                                                          "(--no_resume: start afresh, removing old checkpoints)"})
    num_workers: int = 0
    max_time_s: float | None = None
    save_total_limit: int = 2
    keep_best: bool = False

    def __post_init__(self):
        """Every setting checked before any folder is made (a bad one would fail deep in torch or accelerate)."""
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1 (checkpoints kept), got {self.save_total_limit}.")
        at_least = {"batch_size": 1, "max_steps": 1, "warmup_steps": 0, "log_every": 1, "save_every": 1,
                    "eval_every": 0, "eval_batches": 1, "gradient_accumulation_steps": 1, "num_workers": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainingConfig.{name} must be an int >= {low}, got {value!r}.")
        for name, positive in (("lr", True), ("weight_decay", False), ("max_grad_norm", True), ("max_time_s", True)):
            value = getattr(self, name)
            if value is None and name in ("max_grad_norm", "max_time_s"):
                continue
            bad = not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            if bad or (positive and value == 0):
                raise ValueError(f"TrainingConfig.{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                                 f"got {value!r}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainingConfig.mixed_precision must be one of {MIXED_PRECISION}, got "
                             f"{self.mixed_precision!r}.")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise NotADirectoryError(f"TrainingConfig.output_dir {self.output_dir} is a file; expected a folder "
                                     "(new, or a run to resume).")


class TrainerState:
    """The loop's own state, saved in every checkpoint through `accelerator.register_for_checkpointing`."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------- checkpoints
def _index(path: Path) -> int | None:
    suffix = path.name.rpartition("_")[2]
    return int(suffix) if path.name.startswith("checkpoint_") and suffix.isdigit() else None


def list_checkpoints(output_dir) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints of a run in `output_dir`, oldest first.

    Each folder holds an `accelerator.save_state` state, `model/` (`save_pretrained`) and `trainer_state.json`.
    """
    root = Path(output_dir) / CHECKPOINTS
    found = [(i, p) for p in root.glob("checkpoint_*") if (i := _index(p)) is not None and (p / STATE_FILE).is_file()]
    return [(json.loads((p / STATE_FILE).read_text())["step"], p) for _, p in sorted(found)]


def _save_pretrained_hook(accelerator: Accelerator):
    """A save-state pre hook that adds the model's `save_pretrained` folder to each checkpoint (main process)."""

    def hook(models, weights, output_dir):
        model = accelerator.unwrap_model(models[0]) if models else None
        if accelerator.is_main_process and hasattr(model, "save_pretrained"):
            model.save_pretrained(Path(output_dir) / MODEL_DIR)

    return hook


def save_checkpoint(accelerator: Accelerator, state: TrainerState, total_limit: int | None = None) -> Path:
    """`accelerator.save_state` (all ranks) into `checkpoints/.checkpoint_<i>.tmp`, mark it complete, rename it
    `checkpoint_<i>`, then remove the oldest complete checkpoints beyond `total_limit` (None: keep all)."""
    root = Path(accelerator.project_dir) / CHECKPOINTS
    index = accelerator.save_iteration
    final, tmp = root / f"checkpoint_{index}", root / f".checkpoint_{index}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # bumps accelerator.save_iteration
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"step": state.step})
        os.replace(tmp, final)
        for _, old in list_checkpoints(root.parent)[:-total_limit] if total_limit else []:
            doomed = root / f".{old.name}.del"  # renamed first: a half-removed checkpoint never looks complete
            os.replace(old, doomed)
            shutil.rmtree(doomed)
    accelerator.wait_for_everyone()
    return final


def _save_model(accelerator: Accelerator, model, target: Path) -> None:
    """`save_pretrained` into a temporary folder, then move its files into `target` one by one, each atomically."""
    tmp = temporary_sibling(target)
    try:
        accelerator.unwrap_model(model).save_pretrained(tmp)
        target.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def best_model_dir(output_dir) -> Path | None:
    """`<output_dir>/best` if a `keep_best` run saved one there, else None."""
    best = Path(output_dir) / BEST_DIR
    return best if (best / BEST_FILE).is_file() else None


def _best_loss(config: TrainingConfig) -> float | None:
    best = best_model_dir(config.output_dir)
    return json.loads((best / BEST_FILE).read_text())["eval_loss"] if best is not None else None


def _maybe_save_best(accelerator: Accelerator, model, config: TrainingConfig, record: dict, best: float | None):
    """Save the model into `<output_dir>/best` when `record["eval_loss"]` beats `best`; returns the new best."""
    loss = record.get("eval_loss")
    if not config.keep_best or loss is None or (best is not None and loss >= best):
        return best
    if accelerator.is_main_process:  # written aside, then swapped in whole: a half-written best never shows
        target = Path(config.output_dir) / BEST_DIR
        tmp = temporary_sibling(target)
        try:
            accelerator.unwrap_model(model).save_pretrained(tmp)
            atomic_write_json(tmp / BEST_FILE, {"step": record["step"], "eval_loss": loss})
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    return loss


def _resume(accelerator: Accelerator, config: TrainingConfig, state: TrainerState) -> int:
    """Load the latest complete checkpoint (if `config.resume`) and drop log lines past it; returns the step.

    Temporary checkpoint folders (a kill mid-save) are removed, and so is what a killed `keep_best` save left beside
    `best/` (a `best/` it had moved aside comes back); without `resume` all old checkpoints are removed.
    """
    root, log = Path(config.output_dir) / CHECKPOINTS, Path(config.output_dir) / "log.jsonl"
    complete = list_checkpoints(config.output_dir) if config.resume else []
    if accelerator.is_main_process:
        keep = {p for _, p in complete}
        for path in root.iterdir() if root.is_dir() else []:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        recover_temporaries(Path(config.output_dir) / BEST_DIR)
    accelerator.wait_for_everyone()
    if not complete:
        if accelerator.is_main_process and log.exists():
            log.unlink()
        return 0
    step, path = complete[-1]
    accelerator.load_state(str(path))
    accelerator.project_configuration.iteration = _index(path) + 1
    if accelerator.is_main_process and log.exists():
        kept = [line for line in log.read_text().splitlines() if _log_step_of(line) <= step]
        atomic_write_text(log, "".join(f"{line}\n" for line in kept))
    accelerator.print(f"resumed from {path} at step {state.step}")
    return state.step


def _log_step_of(line: str) -> float:
    """The step of a `log.jsonl` line; infinity for a line cut short by a kill (dropped on resume)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return float("inf")


def _write_log(accelerator: Accelerator, config: TrainingConfig, record: dict) -> None:
    """Append one line to `log.jsonl` in one write; a failed write (full disk) is cut off again."""
    if accelerator.is_main_process:
        path = Path(config.output_dir) / "log.jsonl"
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "ab") as f:
                f.write((json.dumps(record) + "\n").encode())
        except OSError:
            os.truncate(path, size)
            raise


# ---------------------------------------------------------------------------------------------- loop
def scalar_fields(output) -> dict[str, torch.Tensor]:
    """The 0-d (or 1-element) tensor fields of a `ModelOutput`, detached."""
    return {k: v.detach().float().reshape(()) for k, v in output.items() if torch.is_tensor(v) and v.numel() == 1}


def _reduce(accelerator: Accelerator, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Mean over the last `count` steps and over processes."""
    return {k: float(accelerator.reduce(v / max(count, 1), reduction="mean")) for k, v in sums.items()}


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, loader, max_batches: int) -> dict[str, float]:
    """Mean scalar outputs over at most `max_batches` batches of each process (model left in train mode)."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        for k, v in scalar_fields(model(**batch)).items():
            sums[k] = sums.get(k, 0) + v
        count += 1
    model.train()
    return {f"eval_{k}": v for k, v in _reduce(accelerator, sums, count).items()}


def train_step(accelerator: Accelerator, model, batch: dict, optimizer, scheduler, config: TrainingConfig):
    """One forward/backward (an optimiser step when gradients sync). Returns the output's scalars."""
    with accelerator.accumulate(model):
        output = model(**batch)
        accelerator.backward(output.loss)
        if accelerator.sync_gradients and config.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()  # a no-op (accelerate) until gradients sync
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return scalar_fields(output)


def _batches(accelerator: Accelerator, loader, start_batch: int):
    """Endless (epoch, batch) stream from batch number `start_batch` on, reshuffled each epoch."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError(f"the training dataset ({len(loader.dataset)} rows) is smaller than one batch of "
                         f"{loader.total_batch_size} (batch_size x processes); lower batch_size.")
    epoch, skip = divmod(start_batch, per_epoch)
    while True:
        loader.set_epoch(epoch)
        batches = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
        if skip:  # a resumed epoch: its start drew from the global RNG before the checkpoint; it must not again
            with torch.random.fork_rng(devices=[]):
                first = next(batches, None)
            batches = itertools.chain([] if first is None else [first], batches)
        for batch in batches:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def _setup(model, train_dataset, collate_fn, config: TrainingConfig, eval_dataset):
    project = ProjectConfiguration(project_dir=config.output_dir)  # checkpoints named by `save_checkpoint`
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps, project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)
    seeded = [SeededCollate(collate_fn, config.seed + i, accelerator.process_index) for i in (0, 1)]  # train, eval
    loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        collate_fn=seeded[0] if config.num_workers == 0 else collate_fn, num_workers=config.num_workers)
    eval_loader = None if eval_dataset is None else DataLoader(eval_dataset, batch_size=config.batch_size,
                                                               collate_fn=seeded[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    state = TrainerState()
    accelerator.register_for_checkpointing(scheduler, state)
    accelerator.register_save_state_pre_hook(_save_pretrained_hook(accelerator))
    return accelerator, model, optimizer, scheduler, loader, eval_loader, state, seeded


def _log_step(accelerator, model, config, step, sums, count, scheduler, eval_loader, started, seeded) -> dict:
    record = {"step": step, **_reduce(accelerator, sums, count), "lr": scheduler.get_last_lr()[0],
              "num_processes": accelerator.num_processes, "elapsed_s": round(time.time() - started, 2)}
    if eval_loader is not None and (config.eval_every == 0 or step % config.eval_every == 0):
        seeded[1].batch = 0  # every evaluation sees the same batches
        record.update(evaluate(accelerator, model, eval_loader, config.eval_batches))
    _write_log(accelerator, config, record)
    return record


def train(model, train_dataset, collate_fn, config: TrainingConfig, eval_dataset=None) -> dict:
    """Train `model` (whose forward returns a `ModelOutput` with `loss`) and save it with `save_pretrained`.

    Args:
        model: an `nn.Module` with `save_pretrained(folder)`; its forward takes a collated batch as keywords.
        train_dataset: rows for `collate_fn` (map-style: `len` and indexing).
        collate_fn: rows -> batch dict.
        config: the run's settings; `config.output_dir` receives everything.
        eval_dataset: rows for `eval_*` scalars at log steps (None: no evaluation).

    Returns:
        The last log record plus `step`, `num_processes` and `output_dir`.
    """
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator, model, optimizer, scheduler, loader, eval_loader, state, seeded = _setup(
        model, train_dataset, collate_fn, config, eval_dataset)
    with output_lock(config.output_dir) if accelerator.is_main_process else contextlib.nullcontext():
        return _train(accelerator, model, optimizer, scheduler, (loader, eval_loader, seeded), state, config)


def _train(accelerator, model, optimizer, scheduler, loaders, state, config: TrainingConfig) -> dict:
    loader, eval_loader, seeded = loaders
    if accelerator.is_main_process:
        atomic_write_json(Path(config.output_dir) / "training_config.json", asdict(config))
    state.step = start = _resume(accelerator, config, state)
    model.train()
    started, sums, count, record, seen = time.time(), {}, 0, {}, 0
    best = _best_loss(config) if state.step else None
    bar = tqdm(total=config.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="train")
    seeded[0].batch = state.step * config.gradient_accumulation_steps
    stream = _batches(accelerator, loader, seeded[0].batch)
    while state.step < config.max_steps:
        _, batch = next(stream)
        seen += 1
        for k, v in train_step(accelerator, model, batch, optimizer, scheduler, config).items():
            sums[k] = sums.get(k, 0) + v
        count += 1
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        bar.update(1)
        out_of_time = config.max_time_s is not None and time.time() - started > config.max_time_s
        if state.step % config.log_every == 0 or state.step == config.max_steps or out_of_time:
            record = _log_step(accelerator, model, config, state.step, sums, count, scheduler, eval_loader, started,
                               seeded)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
            best = _maybe_save_best(accelerator, model, config, record, best)
            sums, count = {}, 0
        if out_of_time:
            break
        if state.step % config.save_every == 0 and state.step < config.max_steps:
            save_checkpoint(accelerator, state, config.save_total_limit)
    bar.close()
    if state.step > start or not start:  # a run resumed at its end has nothing new to checkpoint
        save_checkpoint(accelerator, state, config.save_total_limit)
    if accelerator.is_main_process:
        _save_model(accelerator, model, Path(config.output_dir))
    _write_rank_record(accelerator, config, seen)
    accelerator.wait_for_everyone()
    return {**record, "step": state.step, "num_processes": accelerator.num_processes, "output_dir": config.output_dir}


def _write_rank_record(accelerator: Accelerator, config: TrainingConfig, batches_seen: int) -> None:
    """Each process writes `ranks/rank-<i>.json`: proof of which processes took part."""
    ranks = Path(config.output_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    record = {"rank": accelerator.process_index, "world_size": accelerator.num_processes, "batches_seen": batches_seen}
    atomic_write_json(ranks / f"rank-{accelerator.process_index}.json", record, indent=None)
