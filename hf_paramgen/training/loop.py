"""One Accelerate training loop for every hf_paramgen model that computes its own loss.

`train(model, train_dataset, collate_fn, TrainingConfig(...))` runs unchanged on one CPU, several
processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on CPU) or GPUs. It logs every
scalar field of the model's output to `output_dir/log.jsonl` and saves the final model with
`save_pretrained` into `output_dir` itself.

Checkpoints are accelerate's: a `ProjectConfiguration(project_dir=output_dir,
automatic_checkpoint_naming=True, total_limit=save_total_limit)` names them
`output_dir/checkpoints/checkpoint_<i>` and prunes the oldest; `accelerator.save_state` writes the
model, optimiser, scheduler, RNG and sampler states plus a registered `TrainerState` (the step), and a
save-state hook adds the model's `save_pretrained` folder (`model/`). `trainer_state.json` is written
last and marks a checkpoint complete: a run killed mid-save resumes from the latest complete one
(`accelerator.load_state`) with the same results as an uninterrupted run.
"""

from __future__ import annotations

import json
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

from ..utils import atomic_write_json, atomic_write_text, replace_dir, temporary_sibling

CHECKPOINTS = "checkpoints"  # accelerate's automatic checkpoint naming: <output_dir>/checkpoints/checkpoint_<i>
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: it is complete; holds the step
MODEL_DIR = "model"  # the `save_pretrained` folder inside each checkpoint
BEST_DIR, BEST_FILE = "best", "best.json"


@dataclass
class TrainingConfig:
    """Settings of `train`. Steps count optimiser updates (`gradient_accumulation_steps` batches each).

    `max_time_s` stops early (saving as usual) once that much wall time has passed; `eval_every=0`
    evaluates at each log step when an eval dataset is given. `save_total_limit` checkpoints are kept
    (accelerate prunes the oldest before writing a new one, so keep at least 2 to always have a complete
    one while a save is under way). `keep_best` also saves the model with the lowest `eval_loss` so far
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
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1 (checkpoints kept), got {self.save_total_limit}.")


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


def save_checkpoint(accelerator: Accelerator, state: TrainerState) -> Path:
    """`accelerator.save_state` into the next `checkpoints/checkpoint_<i>` (all ranks), then mark it complete."""
    accelerator.save_state()
    path = Path(accelerator.project_dir) / CHECKPOINTS / f"checkpoint_{accelerator.save_iteration - 1}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(path / STATE_FILE, {"step": state.step})
    accelerator.wait_for_everyone()
    return path


def _save_model(accelerator: Accelerator, model, target: Path) -> None:
    """`save_pretrained` into a temporary folder, then move its files into `target` one by one, each atomically."""
    tmp = temporary_sibling(target)
    accelerator.unwrap_model(model).save_pretrained(tmp)
    target.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        os.replace(item, target / item.name)
    tmp.rmdir()


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
        accelerator.unwrap_model(model).save_pretrained(tmp)
        atomic_write_json(tmp / BEST_FILE, {"step": record["step"], "eval_loss": loss})
        replace_dir(tmp, target)
    accelerator.wait_for_everyone()
    return loss


def _resume(accelerator: Accelerator, config: TrainingConfig, state: TrainerState) -> int:
    """Load the latest complete checkpoint (if `config.resume`) and drop log lines past it; returns the step.

    Incomplete checkpoints (a kill mid-save) are removed; without `resume` all old checkpoints are.
    """
    root, log = Path(config.output_dir) / CHECKPOINTS, Path(config.output_dir) / "log.jsonl"
    complete = list_checkpoints(config.output_dir) if config.resume else []
    if accelerator.is_main_process and root.is_dir():
        keep = {p for _, p in complete}
        for path in root.iterdir():
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    if not complete:
        if accelerator.is_main_process and log.exists():
            log.unlink()
        return 0
    step, path = complete[-1]
    accelerator.load_state(str(path))
    accelerator.project_configuration.iteration = _index(path) + 1
    if accelerator.is_main_process and log.exists():
        kept = [line for line in log.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        atomic_write_text(log, "".join(f"{line}\n" for line in kept))
    accelerator.print(f"resumed from {path} at step {state.step}")
    return state.step


def _write_log(accelerator: Accelerator, config: TrainingConfig, record: dict) -> None:
    if accelerator.is_main_process:
        with open(Path(config.output_dir) / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


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
        raise ValueError("the training dataset is smaller than one batch; lower batch_size.")
    epoch, skip = divmod(start_batch, per_epoch)
    while True:
        loader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def _setup(model, train_dataset, collate_fn, config: TrainingConfig, eval_dataset):
    project = ProjectConfiguration(project_dir=config.output_dir, automatic_checkpoint_naming=True,
                                   total_limit=config.save_total_limit)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps, project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)
    loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_fn, num_workers=config.num_workers)
    eval_loader = None if eval_dataset is None else DataLoader(eval_dataset, batch_size=config.batch_size,
                                                               collate_fn=collate_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    state = TrainerState()
    accelerator.register_for_checkpointing(scheduler, state)
    accelerator.register_save_state_pre_hook(_save_pretrained_hook(accelerator))
    return accelerator, model, optimizer, scheduler, loader, eval_loader, state


def _log_step(accelerator, model, config, step, sums, count, scheduler, eval_loader, started) -> dict:
    record = {"step": step, **_reduce(accelerator, sums, count), "lr": scheduler.get_last_lr()[0],
              "num_processes": accelerator.num_processes, "elapsed_s": round(time.time() - started, 2)}
    if eval_loader is not None and (config.eval_every == 0 or step % config.eval_every == 0):
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
    accelerator, model, optimizer, scheduler, loader, eval_loader, state = _setup(
        model, train_dataset, collate_fn, config, eval_dataset)
    if accelerator.is_main_process:
        atomic_write_json(Path(config.output_dir) / "training_config.json", asdict(config))
    state.step = start = _resume(accelerator, config, state)
    model.train()
    started, sums, count, record, seen = time.time(), {}, 0, {}, 0
    best = _best_loss(config) if state.step else None
    bar = tqdm(total=config.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="train")
    stream = _batches(accelerator, loader, state.step * config.gradient_accumulation_steps)
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
            record = _log_step(accelerator, model, config, state.step, sums, count, scheduler, eval_loader, started)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
            best = _maybe_save_best(accelerator, model, config, record, best)
            sums, count = {}, 0
        if out_of_time:
            break
        if state.step % config.save_every == 0 and state.step < config.max_steps:
            save_checkpoint(accelerator, state)
    bar.close()
    if state.step > start or not start:  # a run resumed at its end has nothing new to checkpoint
        save_checkpoint(accelerator, state)
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
