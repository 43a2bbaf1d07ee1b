"""One Accelerate training loop for every hf_paramgen model that computes its own loss.

`train(model, train_dataset, collate_fn, TrainingConfig(...))` runs unchanged on one CPU, several
processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on CPU) or GPUs. It logs every
scalar field of the model's output to `output_dir/log.jsonl`, saves `save_pretrained` checkpoints
(`checkpoint-<step>`, the final model in `output_dir` itself) and `accelerator.save_state` folders
(`state-<step>`), and resumes from the latest state after a kill. Every write is atomic.

`cli_train_tokenizer(argv)` trains a `ParamTokenizer` on the `train` split of a weight corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

STATE_FILE = "trainer_state.json"
BEST_FILE = "best.json"


@dataclass
class TrainingConfig:
    """Settings of `train`. Steps count optimiser updates (`gradient_accumulation_steps` batches each).

    `max_time_s` stops early (saving as usual) once that much wall time has passed; `eval_every=0`
    evaluates at each log step when an eval dataset is given. `keep_best` also saves the model with
    the lowest `eval_loss` so far into `<output_dir>/best` (with `best.json`: step and loss), so an
    overfitting run still hands back its best model (`best_model_dir`).
    """

    output_dir: str
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
    resume: bool = True
    num_workers: int = 0
    max_time_s: float | None = None
    save_total_limit: int = 2
    keep_best: bool = False


# ---------------------------------------------------------------------------------------------- files
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _state_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete `state-<step>` folders, oldest first."""
    found = []
    for path in output_dir.glob("state-*"):
        if path.is_dir() and path.name.split("-")[-1].isdigit() and (path / STATE_FILE).exists():
            found.append((int(path.name.split("-")[-1]), path))
    return sorted(found)


def _prune(output_dir: Path, prefix: str, keep: int) -> None:
    dirs = sorted((int(p.name.split("-")[-1]), p) for p in output_dir.glob(f"{prefix}-*") if p.name.split("-")[-1].isdigit())
    for _, path in dirs[: max(len(dirs) - keep, 0)]:
        shutil.rmtree(path, ignore_errors=True)


def _save_model(accelerator: Accelerator, model, target: Path) -> None:
    """`save_pretrained` into a temporary folder, then move it (or its files) into `target`."""
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp)
    if target.exists():  # the run's own folder: move files in one by one, each atomically
        for item in tmp.iterdir():
            os.replace(item, target / item.name)
        tmp.rmdir()
    else:
        os.replace(tmp, target)


def save_checkpoint(accelerator: Accelerator, model, config: TrainingConfig, step: int, final: bool = False) -> None:
    """`state-<step>` (resumable) on all ranks, then `checkpoint-<step>` or the final model on rank 0."""
    out = Path(config.output_dir)
    tmp = out / f".state-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_write_text(tmp / STATE_FILE, json.dumps({"step": step}))
        shutil.rmtree(out / f"state-{step}", ignore_errors=True)
        os.replace(tmp, out / f"state-{step}")
        _prune(out, "state", 1)
        _save_model(accelerator, model, out if final else out / f"checkpoint-{step}")
        _prune(out, "checkpoint", config.save_total_limit)
    accelerator.wait_for_everyone()


def best_model_dir(output_dir) -> Path | None:
    """`<output_dir>/best` if a `keep_best` run saved one there, else None."""
    best = Path(output_dir) / "best"
    return best if (best / BEST_FILE).is_file() else None


def _best_loss(config: TrainingConfig) -> float | None:
    best = best_model_dir(config.output_dir)
    return json.loads((best / BEST_FILE).read_text())["eval_loss"] if best is not None else None


def _maybe_save_best(accelerator: Accelerator, model, config: TrainingConfig, record: dict, best: float | None):
    """Save the model into `<output_dir>/best` when `record["eval_loss"]` beats `best`; returns the new best."""
    loss = record.get("eval_loss")
    if not config.keep_best or loss is None or (best is not None and loss >= best):
        return best
    if accelerator.is_main_process:
        target = Path(config.output_dir) / "best"
        (target / BEST_FILE).unlink(missing_ok=True)  # a half-written best folder never looks finished
        _save_model(accelerator, model, target)
        _atomic_write_text(target / BEST_FILE, json.dumps({"step": record["step"], "eval_loss": loss}))
    accelerator.wait_for_everyone()
    return loss


def _resume(accelerator: Accelerator, config: TrainingConfig) -> int:
    """Load the latest `state-<step>` if any (and `config.resume`); drop log lines past it. Returns the step."""
    states = _state_dirs(Path(config.output_dir))
    if not (config.resume and states):
        return 0
    step, path = states[-1]
    accelerator.load_state(str(path))
    log = Path(config.output_dir) / "log.jsonl"
    if accelerator.is_main_process and log.exists():
        kept = [line for line in log.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        _atomic_write_text(log, "".join(f"{line}\n" for line in kept))
    accelerator.print(f"resumed from {path} at step {step}")
    return step


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
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
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
    accelerator.register_for_checkpointing(scheduler)
    return accelerator, model, optimizer, scheduler, loader, eval_loader


def _log_step(accelerator, model, config, step, sums, count, scheduler, eval_loader, started) -> dict:
    record = {"step": step, **_reduce(accelerator, sums, count), "lr": scheduler.get_last_lr()[0],
              "num_processes": accelerator.num_processes, "elapsed_s": round(time.time() - started, 2)}
    if eval_loader is not None and (config.eval_every == 0 or step % config.eval_every == 0):
        record.update(evaluate(accelerator, model, eval_loader, config.eval_batches))
    _write_log(accelerator, config, record)
    return record


def train(model, train_dataset, collate_fn, config: TrainingConfig, eval_dataset=None) -> dict:
    """Train `model` (whose forward returns a `ModelOutput` with `loss`) and save it with `save_pretrained`.

    Returns the last log record plus `step`, `num_processes` and `output_dir`.
    """
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator, model, optimizer, scheduler, loader, eval_loader = _setup(
        model, train_dataset, collate_fn, config, eval_dataset)
    if accelerator.is_main_process:
        _atomic_write_text(Path(config.output_dir) / "training_config.json", json.dumps(asdict(config), indent=2))
    step = _resume(accelerator, config)
    model.train()
    started, sums, count, record, seen = time.time(), {}, 0, {}, 0
    best = _best_loss(config) if step else None
    bar = tqdm(total=config.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    stream = _batches(accelerator, loader, step * config.gradient_accumulation_steps)
    while step < config.max_steps:
        _, batch = next(stream)
        seen += 1
        for k, v in train_step(accelerator, model, batch, optimizer, scheduler, config).items():
            sums[k] = sums.get(k, 0) + v
        count += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        out_of_time = config.max_time_s is not None and time.time() - started > config.max_time_s
        if step % config.log_every == 0 or step == config.max_steps or out_of_time:
            record = _log_step(accelerator, model, config, step, sums, count, scheduler, eval_loader, started)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
            best = _maybe_save_best(accelerator, model, config, record, best)
            sums, count = {}, 0
        if out_of_time:
            break
        if step % config.save_every == 0 and step < config.max_steps:
            save_checkpoint(accelerator, model, config, step)
    bar.close()
    save_checkpoint(accelerator, model, config, step, final=True)
    _write_rank_record(accelerator, config, seen)
    return {**record, "step": step, "num_processes": accelerator.num_processes, "output_dir": config.output_dir}


def _write_rank_record(accelerator: Accelerator, config: TrainingConfig, batches_seen: int) -> None:
    """Each process writes `ranks/rank-<i>.json`: proof of which processes took part."""
    ranks = Path(config.output_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    record = {"rank": accelerator.process_index, "world_size": accelerator.num_processes, "batches_seen": batches_seen}
    _atomic_write_text(ranks / f"rank-{accelerator.process_index}.json", json.dumps(record))
