"""The evaluation's constants, its view of a zoo folder (`ZooIndex`), conditions, model building and selection."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..architectures import build_model, initial_model
from ..tasks import Task, few_shot_samples, task_from_dict
from ..zoo import evaluate_accuracy, load_manifest

EVAL_SPLITS = ("seen_tasks", "heldout_tasks", "heldout_classes", "heldout_dataset", "heldout_architectures")
METHODS = ("generated_zero_shot", "generated_finetuned", "trained", "random_init", "zoo_average", "retrieval",
           "retrieval_noise", "permuted_retrieval", "class_row_composition", "prototype_head",
           "linear_hypernetwork", "shuffled_instruction")
ARCH_COLUMNS = (*METHODS, "random_init_finetuned", "retrieval_finetuned")  # per-architecture table
# EVAL_SPLITS -> the zoo's checkpoint split
TASK_SPLIT = {"seen_tasks": "train", "heldout_tasks": "heldout_task", "heldout_classes": "heldout_class",
              "heldout_dataset": "heldout_dataset"}
NOISE_SCALE = 0.1  # retrieval_noise: sigma = NOISE_SCALE * per-tensor std
REACH_FRACTION = 0.98  # finetune_steps_ratio target: 98 % of the trained checkpoints' mean validation accuracy
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
StateDict = dict[str, torch.Tensor]
# (task, architecture, num_candidates, seed) -> num_candidates state dicts
GenerateFn = Callable[[Task, str, int, int], list[StateDict]]
ConditionFn = Callable[[Task], np.ndarray]


class ZooIndex:
    """A zoo folder's manifest with cached checkpoint weights and task lookups."""

    def __init__(self, zoo_dir: str | os.PathLike):
        self.zoo_dir = Path(zoo_dir)
        self.manifest = load_manifest(zoo_dir)
        missing = [k for k in ("tasks", "checkpoints") if not isinstance(self.manifest.get(k), list)]
        if missing:
            raise ValueError(f"{Path(zoo_dir) / 'manifest.json'} has no {missing} list; expected the manifest of a zoo "
                             "built by hf-paramgen build-zoo (tasks, checkpoints, architectures).")
        self.tasks = {t["task_id"]: task_from_dict(t) for t in self.manifest["tasks"]}
        self.task_split = {t["task_id"]: t["split"] for t in self.manifest["tasks"]}
        self.entries = self.manifest["checkpoints"]
        init = self.manifest.get("init", {})
        self.init_style: str = init.get("style", "default")  # manifests before nested init: "default"
        self.shared_inits: dict[str, int] = {i: init.get("shared_seeds", {})[i] for i in init.get("schedule", ())
                                             if i in init.get("shared_seeds", {})}  # shared inits the zoo used
        self._weights: dict[str, StateDict] = {}

    def checkpoints(self, architecture: str, split: str | None = None, task_id: str | None = None,
                    num_classes: int | None = None, init: str | None = None) -> list[dict]:
        """Manifest entries of `architecture`, filtered by checkpoint split, task, number of classes and init."""
        wanted = {"split": split, "task_id": task_id, "num_classes": num_classes, "init": init}
        return [e for e in self.entries if e["architecture"] == architecture
                and all(v is None or e[k] == v for k, v in wanted.items())]

    def initial_state_dict(self, architecture: str, num_classes: int, init: str = "shared-0") -> StateDict:
        """The untrained weights the zoo's shared initialisation `init` gives `architecture` (the zoo's init style:
        `architectures.initial_model`), also for an architecture with no checkpoints (held out)."""
        if init not in self.shared_inits:
            raise KeyError(f"Shared initialisation {init!r} is not used by this zoo; expected one of "
                           f"{sorted(self.shared_inits)}.")
        model = initial_model(architecture, num_classes, self.shared_inits[init], self.init_style)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def state_dict(self, entry: dict) -> StateDict:
        """The weights of one manifest entry (cached)."""
        if entry["id"] not in self._weights:
            path = self.zoo_dir / entry["path"] / "model.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"Checkpoint {entry['id']}: expected weights at {path}.")
            self._weights[entry["id"]] = load_file(str(path))
        return self._weights[entry["id"]]


def select_tasks(zoo: ZooIndex, split: str, architecture: str, num_tasks: int, num_classes: int | None,
                 seed: int) -> list[Task]:
    """`num_tasks` tasks (seeded choice, sorted) with checkpoints of `architecture` in the evaluation split `split`."""
    ids = sorted({e["task_id"] for e in zoo.checkpoints(architecture, num_classes=num_classes)
                  if (split == "heldout_architectures" and e["split"] == "heldout_architecture")
                  or (split != "heldout_architectures" and e["split"] == TASK_SPLIT[split])})
    rng = np.random.default_rng(seed)
    return [zoo.tasks[t] for t in sorted(rng.choice(ids, min(num_tasks, len(ids)), replace=False))] if ids else []


def make_model(architecture: str, num_classes: int, state_dict: StateDict,
               source: str = "state_dict") -> torch.nn.Module:
    """`build_model` loaded with `state_dict` (strict), in eval mode."""
    model = build_model(architecture, num_classes)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source} does not fit {architecture} with {num_classes} classes: {err}") from None
    return model.eval()


def default_condition_fn(text_model: str = "all-MiniLM-L6-v2", per_class: int = 5) -> ConditionFn:
    """task -> [MiniLM embedding of the task text, `sample_encoder_for_dataset` prototypes of `per_class` train
    samples per class (class order)], a 1-D vector of 384 * (1 + num_classes) floats."""
    from ...conditioning.text import TextEncoder
    from ..samples import sample_encoder_for_dataset

    text, samples = TextEncoder(text_model), {}

    def condition(task: Task) -> np.ndarray:
        if task.dataset not in samples:
            samples[task.dataset] = sample_encoder_for_dataset(task.dataset, dim=384)
        X, y = few_shot_samples(task, per_class=per_class)
        protos = samples[task.dataset](X, y, task.num_classes)  # (1, k, 384)
        return torch.cat([text(task.task_text).reshape(-1), protos.reshape(-1)]).numpy()

    return condition


def hashing_condition_fn(dim: int = 384, per_class: int = 5) -> ConditionFn:
    """A fast stand-in for `default_condition_fn` (tests): hashed task text + random-projection prototypes."""
    from ...conditioning.samples import SampleEncoder
    from ...conditioning.text import HashingTextEncoder

    text, encoders = HashingTextEncoder(dim), {}

    def condition(task: Task) -> np.ndarray:
        encoder = encoders.setdefault(task.dataset, SampleEncoder(task.input_dim, dim))
        protos = encoder(*few_shot_samples(task, per_class), task.num_classes)
        return torch.cat([text(task.task_text).reshape(-1), protos.reshape(-1)]).numpy()

    return condition


def select_best(models: list[torch.nn.Module], task: Task) -> tuple[int, list[float]]:
    """Index of the model with the highest **validation** accuracy (ties: first) and all validation accuracies."""
    if not models:
        raise ValueError(f"select_best: expected at least one model for task {task.task_id!r}, got none.")
    validation = [evaluate_accuracy(m, task, "validation") for m in models]
    return int(np.argmax(validation)), validation


def add_noise(state_dict: StateDict, scale: float = NOISE_SCALE, seed: int = 0) -> StateDict:
    """Each tensor plus Gaussian noise with sigma = scale * that tensor's std (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.float().std().nan_to_num(0.0) * torch.randn(v.shape, generator=gen)
            for k, v in state_dict.items()}
