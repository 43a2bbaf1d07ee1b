"""What generated nets are compared with: retrieval, zoo averages, the ridge map (with their per-run caches), and
the fine-tuning speed ratio."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...layout.param_layout import ParamLayout
from ..architectures import build_model
from ..tasks import Task, few_shot_samples
from ..zoo import evaluate_accuracy
from .novelty import checkpoint_nearest_median, novelty
from .zoo_index import RIDGE_ALPHAS, ConditionFn, StateDict, ZooIndex, make_model


def fit_ridge_hypernetwork(conditions: np.ndarray, weights: np.ndarray, val_fn: Callable[[object], float],
                           alphas: tuple[float, ...] = RIDGE_ALPHAS):
    """Ridge regression condition (n, c) -> flat weights (n, p); alpha maximising `val_fn(model)` (a validation
    score, e.g. mean validation-split accuracy on validation tasks). Returns (model, alpha, scores)."""
    from sklearn.linear_model import Ridge

    if len(conditions) != len(weights) or len(conditions) < 2:
        raise ValueError(f"Ridge map: expected >= 2 matching rows, got {len(conditions)} conditions, "
                         f"{len(weights)} weights.")
    scores, models = {}, {}
    for alpha in alphas:
        models[alpha] = Ridge(alpha=alpha).fit(conditions, weights)
        scores[alpha] = float(val_fn(models[alpha]))
    best = max(alphas, key=lambda a: scores[a])
    return models[best], best, scores


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """First recorded step whose validation accuracy >= target (None: never, censored at the curve's end)."""
    return next((p["step"] for p in curve if p["val_accuracy"] >= target), None)


def steps_ratio(gen_curve: list[dict], rand_curve: list[dict], target: float) -> dict:
    """Steps from generated init / steps from random init to reach `target`; censored values are bounds."""
    cap = gen_curve[-1]["step"]
    g, r = steps_to_reach(gen_curve, target), steps_to_reach(rand_curve, target)
    if r is None:  # random never reached: ratio <= g / cap (or unknown when both never reached)
        return {"generated_steps": g, "random_steps": None, "cap": cap, "ratio": None if g is None else g / cap,
                "censored": "random init did not reach the target; ratio is an upper bound" if g is not None
                else "neither reached"}
    if g is None:
        return {"generated_steps": None, "random_steps": r, "cap": cap, "ratio": cap / max(r, 1),
                "censored": "generated init did not reach the target; ratio is a lower bound"}
    return {"generated_steps": g, "random_steps": r, "cap": cap, "ratio": g / max(r, 1), "censored": None}


class BaselineCache:
    """Per-run caches of one evaluation: conditions, training nets, zoo averages, ridge maps (by architecture,
    dataset and output size), and the retrieval of the nearest training task."""

    def __init__(self, zoo: ZooIndex, condition_fn: ConditionFn, seed: int):
        self.zoo, self.condition_fn, self.seed = zoo, condition_fn, seed
        self._conditions: dict[str, np.ndarray] = {}
        self._cache: dict[tuple, object] = {}

    def condition(self, task: Task) -> np.ndarray:
        if task.task_id not in self._conditions:
            self._conditions[task.task_id] = np.asarray(self.condition_fn(task), dtype=np.float32).reshape(-1)
        return self._conditions[task.task_id]

    def train_entries(self, arch: str, task: Task, init: str | None = None) -> list[dict]:
        return [e for e in self.zoo.checkpoints(arch, "train", num_classes=task.num_classes, init=init)
                if self.zoo.tasks[e["task_id"]].dataset == task.dataset]

    def train_nets(self, arch: str, task: Task) -> list[StateDict]:
        key = ("nets", arch, task.dataset, task.num_classes)
        if key not in self._cache:
            self._cache[key] = [self.zoo.state_dict(e) for e in self.train_entries(arch, task)]
        return self._cache[key]

    def novelty(self, nets: list[StateDict], arch: str, task: Task) -> dict:
        train = self.train_nets(arch, task)
        key = ("median", arch, task.dataset, task.num_classes)
        if key not in self._cache:
            self._cache[key] = checkpoint_nearest_median(train, seed=self.seed)
        return novelty(nets, train, self._cache[key])

    def zoo_average(self, arch: str, task: Task) -> StateDict | None:
        nets = self.train_nets(arch, task)
        return {k: torch.stack([n[k].float() for n in nets]).mean(0) for k in nets[0]} if nets else None

    def retrieve(self, arch: str, task: Task) -> tuple[str, float] | None:
        """(task id, cosine) of the nearest other training task with checkpoints of `arch` (leave-one-out)."""
        ids = sorted({e["task_id"] for e in self.train_entries(arch, task)} - {task.task_id})
        if not ids:
            return None
        q = self.condition(task)
        conds = np.stack([self.condition(self.zoo.tasks[t]) for t in ids])
        cos = conds @ q / (np.linalg.norm(conds, axis=1) * np.linalg.norm(q) + 1e-12)
        return ids[int(np.argmax(cos))], float(cos.max())

    def ridge(self, arch: str, task: Task):
        """(ridge model, layout, alpha, scores) for (arch, dataset, num_classes), fit once; None without data."""
        key = ("ridge", arch, task.dataset, task.num_classes)
        if key in self._cache:
            return self._cache[key]
        entries = self.train_entries(arch, task, init="shared-0")
        layout = ParamLayout.from_module(build_model(arch, task.num_classes))
        validation_tasks = sorted({e["task_id"] for e in self.zoo.checkpoints(arch, "validation",
                                                                              num_classes=task.num_classes)
                                   if self.zoo.tasks[e["task_id"]].dataset == task.dataset})[:4]
        if len(entries) < 2 or not validation_tasks:
            self._cache[key] = None
            return None
        X = np.stack([self.condition(self.zoo.tasks[e["task_id"]]) for e in entries])
        Y = np.stack([layout.flatten(self.zoo.state_dict(e)).numpy() for e in entries])

        def validation_score(model) -> float:
            accs = []
            for tid in validation_tasks:
                t = self.zoo.tasks[tid]
                sd = ridge_state_dict(model, layout, self.condition(t))
                accs.append(evaluate_accuracy(make_model(arch, t.num_classes, sd), t, "validation"))
            return float(np.mean(accs))

        model, alpha, scores = fit_ridge_hypernetwork(X, Y, validation_score)
        self._cache[key] = (model, layout, alpha, scores)
        return self._cache[key]


def ridge_state_dict(model, layout: ParamLayout, condition: np.ndarray) -> StateDict:
    """The weights a fitted ridge map predicts for one condition vector."""
    return layout.unflatten(torch.as_tensor(model.predict(condition[None])[0], dtype=torch.float32))


# ---------------------------------------------------------------------------- lookups that exploit the split
def head_names(arch: str, num_classes: int) -> list[str]:
    """Names of the classifier head's tensors (row i = output unit i) of `arch` (`ParamLayout.head_tensors`)."""
    layout = ParamLayout.from_module(build_model(arch, num_classes))
    return [layout.specs[i].name for i in layout.head_tensors]


def permute_head(state_dict: StateDict, heads: list[str], source_classes: tuple[int, ...],
                 target_classes: tuple[int, ...]) -> StateDict:
    """A checkpoint of `source_classes` with its head rows reordered to `target_classes` (the same class set)."""
    order = torch.tensor([source_classes.index(c) for c in target_classes])
    return {k: v[order] if k in heads else v for k, v in state_dict.items()}


def compose_head(body: StateDict, heads: list[str], rows: list[tuple[StateDict, int]]) -> StateDict:
    """`body` with head row i taken from row `rows[i][1]` of the checkpoint `rows[i][0]`."""
    out = dict(body)
    for name in heads:
        out[name] = torch.stack([sd[name][j] for sd, j in rows])
    return out


def permuted_retrieval_candidates(cache: BaselineCache, arch: str, task: Task, k: int) -> list[StateDict]:
    """Up to k training checkpoints of another task with the **same class set** (same dataset and transform), head
    rows permuted into `task`'s order: what a lookup scores on a held-out new order of seen classes."""
    heads = head_names(arch, task.num_classes)
    same = [e for e in cache.train_entries(arch, task) if e["task_id"] != task.task_id
            and sorted(cache.zoo.tasks[e["task_id"]].classes) == sorted(task.classes)
            and cache.zoo.tasks[e["task_id"]].transform == task.transform]
    return [permute_head(cache.zoo.state_dict(e), heads, cache.zoo.tasks[e["task_id"]].classes, task.classes)
            for e in same[:k]]


def _bodies_by_overlap(cache: BaselineCache, arch: str, task: Task, k: int,
                       same_transform: bool = True) -> list[dict]:
    """The k training checkpoints (other tasks; of the same transform unless `same_transform=False`) sharing the
    most classes with `task` (stable order)."""
    entries = [e for e in cache.train_entries(arch, task) if e["task_id"] != task.task_id
               and (not same_transform or cache.zoo.tasks[e["task_id"]].transform == task.transform)]
    return sorted(entries, key=lambda e: -len(set(cache.zoo.tasks[e["task_id"]].classes) & set(task.classes)))[:k]


def class_row_composition_candidates(cache: BaselineCache, arch: str, task: Task, k: int) -> list[StateDict]:
    """Up to k nets: the body of a training checkpoint with the most of `task`'s classes (one candidate per body),
    and for each output unit the head row of its class from that body's checkpoint when it has the class, else
    from the first training checkpoint that has it. None of a class in training -> no candidate."""
    heads = head_names(arch, task.num_classes)
    entries = [e for e in cache.train_entries(arch, task) if e["task_id"] != task.task_id
               and cache.zoo.tasks[e["task_id"]].transform == task.transform]
    classes_of = {e["id"]: cache.zoo.tasks[e["task_id"]].classes for e in entries}
    donor = {c: next((e for e in entries if c in classes_of[e["id"]]), None) for c in task.classes}
    if any(d is None for d in donor.values()):
        return []
    bodies = _bodies_by_overlap(cache, arch, task, k)
    out = []
    for body in bodies:
        rows = []
        for c in task.classes:
            source = body if c in classes_of[body["id"]] else donor[c]
            rows.append((cache.zoo.state_dict(source), classes_of[source["id"]].index(c)))
        out.append(compose_head(cache.zoo.state_dict(body), heads, rows))
    return out


def _init_bodies(cache: BaselineCache, arch: str, task: Task, k: int) -> list[StateDict]:
    """For an architecture with no training-split checkpoint (a held-out architecture): its untrained networks
    of the zoo's shared initialisations (`ZooIndex.initial_state_dict`, e.g. nested shared-0), up to k."""
    if cache.zoo.checkpoints(arch, "train"):
        return []
    return [cache.zoo.initial_state_dict(arch, task.num_classes, init) for init in sorted(cache.zoo.shared_inits)[:k]]


@torch.no_grad()
def prototype_head_candidates(cache: BaselineCache, arch: str, task: Task, k: int,
                              per_class: int = 5) -> list[StateDict]:
    """Up to k nets: a training checkpoint's body with its head set to the nearest class mean of the same few-shot
    samples the generator gets, in that body's feature space (row i = mean feature of class i, bias
    -||mean||^2 / 2): no learning, and it needs no training task with the class.

    An architecture with no training checkpoint at all (a held-out architecture) has no trained body: its body is
    then the untrained network of the zoo's shared initialisation (random features of e.g. the nested shared-0
    init, `ZooIndex.initial_state_dict`) with the same class-mean head (`prototype_head_note` says so).
    """
    heads = head_names(arch, task.num_classes)
    X, y = few_shot_samples(task, per_class=per_class, split="train")
    bodies = [cache.zoo.state_dict(body) for body in _bodies_by_overlap(cache, arch, task, k, same_transform=False)]
    out = []
    for state_dict in bodies or _init_bodies(cache, arch, task, k):  # a new transform has no body of its own
        model = make_model(arch, task.num_classes, state_dict)
        features = model.net[:-1](torch.as_tensor(X).reshape(len(X), *model.input_shape)).float()  # (n, h)
        means = torch.stack([features[torch.as_tensor(y) == i].mean(0) for i in range(task.num_classes)])
        out.append({**state_dict, heads[0]: means, heads[1]: -0.5 * means.pow(2).sum(1)})
    return out


def prototype_head_note(cache: BaselineCache, arch: str) -> str | None:
    """The note for `prototype_head` where its body is an untrained initial network (no training checkpoint of
    `arch`); None where it comes from training checkpoints."""
    if cache.zoo.checkpoints(arch, "train"):
        return None
    return (f"no training checkpoint of {arch} (held-out architecture): body = its untrained "
            f"{cache.zoo.init_style} {'/'.join(sorted(cache.zoo.shared_inits)) or '(none)'} initial network "
            "(random features), head = class means of the few-shot samples, no learning")
