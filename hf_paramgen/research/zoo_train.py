"""Training and saving zoo checkpoints: the fixed recipe (`TRAINING_RECIPE`), `train_model`, `finetune`,
`evaluate_accuracy`, and `train_checkpoint`, which writes one Hub-style checkpoint folder atomically.

Training uses one fixed recipe and one thread per worker, so a (task, architecture, seed) job always gives the same
weights; the checkpoint seed sets the data order.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData

from ..data.checkpoints import LAYOUT_FILE  # a checkpoint's `ParamLayout`: what corpora read
from ..layout.param_layout import ParamLayout
from ..utils import accuracy, replace_dir, temporary_sibling
from .architectures import ZooNet, initial_model
from .tasks import Task, load_task_split, task_from_dict

__all__ = ["TRAINING_RECIPE", "LAYOUT_FILE", "train_model", "evaluate_accuracy", "finetune", "train_checkpoint",
           "load_checkpoint_model"]

TRAINING_RECIPE: dict = {"optimizer": "Adam", "lr": 3e-3, "batch_size": 64, "weight_decay": 0.0,
                         "loss": "cross_entropy", "epochs": {"mnist": 5, "digits": 15}, "torch_threads": 1}


def _batches(n: int, batch_size: int, seed: int):
    """Endless mini-batch index tensors over n samples, reshuffled each epoch by a generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]


def _check_model_task(model: torch.nn.Module, task: Task) -> None:
    """The model reads the task's inputs and has one output unit per class (`ParamLayout.output_size`)."""
    input_shape = getattr(model, "input_shape", None)
    if input_shape is not None and int(np.prod(input_shape)) != task.input_dim:
        raise ValueError(f"Model reads inputs of shape {list(input_shape)} but task {task.task_id!r} "
                         f"({task.dataset}) has {task.input_dim} features.")
    outputs = ParamLayout.from_module(model).output_size
    if outputs is not None and outputs != task.num_classes:
        raise ValueError(f"Model has {outputs} output units but task {task.task_id!r} "
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


def evaluate_accuracy(model: torch.nn.Module, task: Task, split: str = "test") -> float:
    """Top-1 accuracy of `model` on one fixed split ("train", "validation", "test") of `task` (`utils.accuracy`);
    the model's train/eval mode is restored."""
    _check_model_task(model, task)
    X, y = load_task_split(task, split)
    was_training = model.training
    try:
        return accuracy(model, X, y)  # the exact fraction correct / n (ties in best-of-k break as before)
    finally:
        model.train(was_training)


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

| validation accuracy | test accuracy | init | seed | split |
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
    """Train one planned checkpoint and write its folder atomically (a temporary sibling folder, then `os.replace`):
    `config.json`, `model.safetensors`, `param_layout.json` (`LAYOUT_FILE`) and the card `README.md`.

    The job starts from `initial_model(architecture, num_classes, init_seed, job.get("init_style", "default"))`."""
    final = Path(output_dir) / job["path"]
    task = task_from_dict(job["task"])
    start = time.perf_counter()
    style = job.get("init_style", "default")
    model = initial_model(job["architecture"], task.num_classes, job["init_seed"], style)
    train_model(model, task, seed=job["seed"])
    seconds = time.perf_counter() - start
    metadata = {
        "task_id": task.task_id, "instruction": task.task_text, "dataset": task.dataset,
        "classes": list(task.classes), "transform": task.transform, "num_classes": task.num_classes,
        "family": job["task"].get("family"), "architecture": job["architecture"], "seed": job["seed"],
        "init": job["init"], "init_seed": job["init_seed"], "init_style": style,
        "training_recipe": {**TRAINING_RECIPE, "epochs": TRAINING_RECIPE["epochs"][task.dataset]},
        "val_accuracy": round(evaluate_accuracy(model, task, "validation"), 5),
        "test_accuracy": round(evaluate_accuracy(model, task, "test"), 5),
        "split": job["split"], "train_seconds": round(seconds, 4),
    }
    tmp = temporary_sibling(final)
    try:
        model.save_pretrained(tmp)
        (tmp / LAYOUT_FILE).write_text(ParamLayout.from_module(model).to_json(), encoding="utf-8")
        _checkpoint_card(job, metadata).save(tmp / "README.md")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful replace
    return metadata


def load_checkpoint_model(path: str | os.PathLike) -> ZooNet:
    """A zoo checkpoint (local folder or Hub repo id) as a `ZooNet` in eval mode."""
    if os.path.sep in str(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"Checkpoint folder {path} does not exist (expected config.json + model.safetensors).")
    return ZooNet.from_pretrained(str(path)).eval()

