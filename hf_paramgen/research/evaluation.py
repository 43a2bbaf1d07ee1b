"""Honest evaluation of generated networks against baselines, side by side, on fixed splits (DESIGN.md section 4).

`evaluate_generator(generate_fn, zoo_dir, ...)` works with any generator given as
`generate_fn(task, architecture, num_samples, seed) -> list[state_dict]` (None: baselines only). Per split
(`seen_tasks` = train-split tasks, `heldout_tasks`, `heldout_architectures`) it reports mean test accuracy of:

* `generated_zero_shot`  best of k generated nets, chosen on the task's **validation** split (never test);
* `generated_finetuned`  that net after `finetune_steps` Adam steps (zoo recipe lr) on the train split;
* `trained`              mean of the zoo checkpoints of (task, architecture);
* `random_init`          a fresh `build_model` init;
* `zoo_average`          element-wise mean of the train-split checkpoints of that architecture and output size;
* `retrieval`            checkpoints of the training task whose condition vector is nearest (cosine), best on
                         the target's validation split;
* `retrieval_noise`      retrieval + N(0, (0.1 * per-tensor std)^2) noise;
* `linear_hypernetwork`  ridge map condition -> flat weights, fit on train-split checkpoints with init
                         "shared-0" (one symmetry basin), alpha picked by validation-task accuracy;
* `shuffled_instruction` the generator given another task's instruction, evaluated on the real task;

plus `finetune_steps_ratio` (steps to reach 98 % of the trained *validation* accuracy from the generated init
over steps from a random init, capped) and `novelty_ratio` (aligned distance to the nearest training checkpoint
over the median nearest checkpoint-to-checkpoint distance). Null values come with a reason in `notes`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from .architectures import ARCHITECTURE_DATASET, build_model
from .tasks import Task, few_shot_samples, task_from_dict
from ..layout.param_layout import ParamLayout
from .zoo import evaluate_accuracy, finetune, load_manifest

__all__ = ["SPLITS", "METHODS", "ZooIndex", "default_condition_fn", "select_best", "align_hidden_units",
           "aligned_distance", "checkpoint_nearest_median", "novelty", "error_agreement", "fit_ridge_hypernetwork", "steps_to_reach", "matmul_flops_per_second",
           "compute_floor_ratio", "GenerationTimer", "evaluate_generator", "format_table", "format_architecture_table", "plot_curves", "cli_evaluate"]

SPLITS = ("seen_tasks", "heldout_tasks", "heldout_architectures")
METHODS = ("generated_zero_shot", "generated_finetuned", "trained", "random_init", "zoo_average", "retrieval",
           "retrieval_noise", "linear_hypernetwork", "shuffled_instruction")
ARCH_COLUMNS = (*METHODS, "random_init_finetuned", "retrieval_finetuned")  # per-architecture table
TASK_SPLIT = {"seen_tasks": "train", "heldout_tasks": "heldout_task"}
NOISE_SCALE = 0.1  # retrieval_noise: sigma = NOISE_SCALE * per-tensor std
REACH_FRACTION = 0.98  # finetune_steps_ratio target: 98 % of the trained checkpoints' mean validation accuracy
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
StateDict = dict[str, torch.Tensor]
GenerateFn = Callable[[Task, str, int, int], list[StateDict]]


# ------------------------------------------------------------------------------------------------ zoo access
class ZooIndex:
    """A zoo folder's manifest with cached checkpoint weights and task lookups."""

    def __init__(self, zoo_dir: str | os.PathLike):
        self.zoo_dir = Path(zoo_dir)
        self.manifest = load_manifest(zoo_dir)
        self.tasks = {t["task_id"]: task_from_dict(t) for t in self.manifest["tasks"]}
        self.task_split = {t["task_id"]: t["split"] for t in self.manifest["tasks"]}
        self.entries = self.manifest["checkpoints"]
        self._weights: dict[str, StateDict] = {}

    def checkpoints(self, architecture: str, split: str | None = None, task_id: str | None = None,
                    num_classes: int | None = None, init: str | None = None) -> list[dict]:
        return [e for e in self.entries if e["architecture"] == architecture and (split is None or e["split"] == split)
                and (task_id is None or e["task_id"] == task_id) and (num_classes is None or e["num_classes"] == num_classes)
                and (init is None or e["init"] == init)]

    def state_dict(self, entry: dict) -> StateDict:
        """The weights of one manifest entry (cached)."""
        if entry["id"] not in self._weights:
            path = self.zoo_dir / entry["path"] / "model.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"Checkpoint {entry['id']}: expected weights at {path}.")
            self._weights[entry["id"]] = load_file(str(path))
        return self._weights[entry["id"]]


def make_model(architecture: str, num_classes: int, state_dict: StateDict, source: str = "state_dict") -> torch.nn.Module:
    """`build_model` loaded with `state_dict` (strict), in eval mode."""
    model = build_model(architecture, num_classes)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source} does not fit {architecture} with {num_classes} classes: {err}") from None
    return model.eval()


def default_condition_fn(text_model: str = "all-MiniLM-L6-v2", per_class: int = 5) -> Callable[[Task], np.ndarray]:
    """task -> [MiniLM embedding of the instruction, `sample_encoder_for_dataset` prototypes of `per_class` train
    samples per class (class order)], a 1-D vector of 384 * (1 + num_classes) floats."""
    from ..conditioning.text import TextEncoder
    from .samples import sample_encoder_for_dataset

    text, samples = TextEncoder(text_model), {}

    def condition(task: Task) -> np.ndarray:
        if task.dataset not in samples:
            samples[task.dataset] = sample_encoder_for_dataset(task.dataset, dim=384)
        X, y = few_shot_samples(task, per_class=per_class)
        protos = samples[task.dataset](X, y, task.num_classes)  # (1, k, 384)
        return torch.cat([text(task.instruction).reshape(-1), protos.reshape(-1)]).numpy()

    return condition


# ------------------------------------------------------------------------------------------ selection / noise
def select_best(models: list[torch.nn.Module], task: Task) -> tuple[int, list[float]]:
    """Index of the model with the highest **validation** accuracy (ties: first) and all validation accuracies."""
    if not models:
        raise ValueError(f"select_best: expected at least one model for task {task.task_id!r}, got none.")
    val = [evaluate_accuracy(m, task, "validation") for m in models]
    return int(np.argmax(val)), val


def add_noise(state_dict: StateDict, scale: float = NOISE_SCALE, seed: int = 0) -> StateDict:
    """Each tensor plus Gaussian noise with sigma = scale * that tensor's std (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.float().std().nan_to_num(0.0) * torch.randn(v.shape, generator=gen) for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------- alignment / novelty
def _layers(state_dict: StateDict) -> list[tuple[str, str | None]]:
    """(weight name, bias name) per Linear/Conv layer in forward order (ZooNet: `net.<i>.weight`)."""
    names = sorted((k for k in state_dict if k.endswith(".weight")), key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
    return [(w, w[: -len("weight")] + "bias" if w[: -len("weight")] + "bias" in state_dict else None) for w in names]


def align_hidden_units(state_dict: StateDict, reference: StateDict) -> StateDict:
    """Permute the hidden units (MLP neurons, conv channels) of `state_dict` to best match `reference`.

    Layer by layer, after the previous layer's permutation is applied to this layer's inputs, a Hungarian
    matching (`scipy.optimize.linear_sum_assignment`) on squared distances of each unit's incoming weights
    and bias picks the permutation; it is applied to the unit's outgoing weights too (a conv -> linear step
    permutes channel blocks of the flattened input). The function of the network is unchanged.
    """
    out = {k: v.detach().float().clone() for k, v in state_dict.items()}
    layers = _layers(out)
    for i, (w, b) in enumerate(layers[:-1]):  # the output layer's units are classes: never permuted
        if out[w].shape != reference[w].shape:
            raise ValueError(f"Cannot align tensor {w}: shape {tuple(out[w].shape)} vs reference {tuple(reference[w].shape)}.")
        rows = out[w].reshape(out[w].shape[0], -1)  # (units, fan_in)
        ref = reference[w].float().reshape(rows.shape[0], -1)
        if b is not None:
            rows, ref = torch.cat([rows, out[b][:, None]], 1), torch.cat([ref, reference[b].float()[:, None]], 1)
        _, perm = linear_sum_assignment(torch.cdist(ref.double(), rows.double()).pow(2).numpy())  # ref unit j <- perm[j]
        perm = torch.as_tensor(perm)
        out[w] = out[w][perm]
        if b is not None:
            out[b] = out[b][perm]
        nxt = out[layers[i + 1][0]]  # (out, in, ...) ; conv->linear: in = channels * spatial
        if nxt.ndim == 2 and out[w].ndim == 4:
            out[layers[i + 1][0]] = nxt.reshape(nxt.shape[0], len(perm), -1)[:, perm].reshape(nxt.shape)
        else:
            out[layers[i + 1][0]] = nxt[:, perm]
    return out


def _flat(state_dict: StateDict) -> torch.Tensor:
    return torch.cat([state_dict[k].detach().float().reshape(-1) for k in sorted(state_dict)])


def aligned_distance(state_dict: StateDict, reference: StateDict) -> float:
    """L2 distance between two nets of one architecture after aligning `state_dict`'s hidden units to `reference`."""
    return float((_flat(align_hidden_units(state_dict, reference)) - _flat(reference)).norm())


def checkpoint_nearest_median(train: list[StateDict], num_reference: int = 16, seed: int = 0) -> float | None:
    """Median over `num_reference` sampled training nets of the aligned distance to their nearest other training net."""
    if len(train) < 2:
        return None
    picks = np.random.default_rng(seed).choice(len(train), min(num_reference, len(train)), replace=False)
    return float(np.median([min(aligned_distance(train[i], t) for j, t in enumerate(train) if j != i) for i in picks]))


def novelty(generated: list[StateDict], train: list[StateDict], reference_median: float | None = None,
            num_reference: int = 16, seed: int = 0) -> dict:
    """Mean nearest aligned distance of the generated nets to the training nets, over the median nearest
    checkpoint-to-checkpoint distance (`checkpoint_nearest_median`, computed unless given)."""
    if len(train) < 2:
        return {"novelty_ratio": None, "reason": f"need >= 2 training checkpoints, got {len(train)}"}
    dists = [[aligned_distance(g, t) for t in train] for g in generated]
    nearest = [min(d) for d in dists]
    median = checkpoint_nearest_median(train, num_reference, seed) if reference_median is None else reference_median
    return {"novelty_ratio": float(np.mean(nearest)) / median if median else None,
            "generated_nearest_distance": float(np.mean(nearest)), "checkpoint_nearest_distance_median": median,
            "nearest_index": [int(np.argmin(d)) for d in dists], "num_train": len(train)}


@torch.no_grad()
def error_agreement(model: torch.nn.Module, other: torch.nn.Module, task: Task, split: str = "test") -> float | None:
    """Jaccard overlap of the two models' misclassified samples (1: same mistakes, as copies make; None: no errors)."""
    from .tasks import load_task_split

    X, y = load_task_split(task, split)
    wrong_a, wrong_b = model.eval()(X).argmax(-1) != y, other.eval()(X).argmax(-1) != y
    union = int((wrong_a | wrong_b).sum())
    return int((wrong_a & wrong_b).sum()) / union if union else None


# ---------------------------------------------------------------------------------------------- ridge map
def fit_ridge_hypernetwork(conditions: np.ndarray, weights: np.ndarray, val_fn: Callable[[object], float],
                           alphas: tuple[float, ...] = RIDGE_ALPHAS):
    """Ridge regression condition (n, c) -> flat weights (n, p); alpha maximising `val_fn(model)` (a validation
    score, e.g. mean validation-split accuracy on validation tasks). Returns (model, alpha, scores)."""
    from sklearn.linear_model import Ridge

    if len(conditions) != len(weights) or len(conditions) < 2:
        raise ValueError(f"Ridge map: expected >= 2 matching rows, got {len(conditions)} conditions, {len(weights)} weights.")
    scores, models = {}, {}
    for alpha in alphas:
        models[alpha] = Ridge(alpha=alpha).fit(conditions, weights)
        scores[alpha] = float(val_fn(models[alpha]))
    best = max(alphas, key=lambda a: scores[a])
    return models[best], best, scores


# --------------------------------------------------------------------------------------- fine-tuning speed
def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """First recorded step whose validation accuracy >= target (None: never, censored at the curve's end)."""
    return next((p["step"] for p in curve if p["val_accuracy"] >= target), None)


def steps_ratio(gen_curve: list[dict], rand_curve: list[dict], target: float) -> dict:
    """Steps from generated init / steps from random init to reach `target`; censored values are bounds."""
    cap = gen_curve[-1]["step"]
    g, r = steps_to_reach(gen_curve, target), steps_to_reach(rand_curve, target)
    if r is None:  # random never reached: ratio <= g / cap (or unknown when both never reached)
        return {"generated_steps": g, "random_steps": None, "cap": cap, "ratio": None if g is None else g / cap,
                "censored": "random init did not reach the target; ratio is an upper bound" if g is not None else "neither reached"}
    if g is None:
        return {"generated_steps": None, "random_steps": r, "cap": cap, "ratio": cap / max(r, 1),
                "censored": "generated init did not reach the target; ratio is a lower bound"}
    return {"generated_steps": g, "random_steps": r, "cap": cap, "ratio": g / max(r, 1), "censored": None}


# ------------------------------------------------------------------------------------------------ speed
def matmul_flops_per_second(size: int, repeats: int = 10, device: str = "cpu") -> float:
    """Measured FLOP/s of a (size x size) @ (size x size) `torch.mm` on this machine (2 * size^3 per product)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def compute_floor_ratio(tokens_per_second: float, prior_params: int, hidden_size: int, context: int = 0,
                        num_layers: int = 0) -> dict:
    """Achieved generation FLOP/s (2 * params per token + 4 * layers * context * hidden for attention) over the
    measured matmul FLOP/s of a `hidden_size` square `torch.mm` (same process, same threads)."""
    flops_per_token = 2 * prior_params + 4 * num_layers * context * hidden_size
    peak = matmul_flops_per_second(max(hidden_size, 64))
    achieved = tokens_per_second * flops_per_token
    return {"compute_floor_ratio": achieved / peak, "achieved_flops_per_second": achieved,
            "matmul_flops_per_second": peak, "flops_per_token": flops_per_token}


def batch_throughput(generator, task: Task, architecture: str, batch: int, seed: int = 0) -> dict:
    """Codes per second of one `generate_codes` call sampling `batch` networks for `task` (prior only, no decoding)."""
    layout = ParamLayout.from_module(build_model(architecture, num_classes=task.num_classes))
    cond = generator.encode(layout, task.instruction, few_shot_samples(task, per_class=5, split="train"))
    tok = generator.param_tokenizer.config
    start = time.perf_counter()
    codes = generator.prior.generate_codes(**cond, layout=layout, chunk_size=tok.chunk_size, aggregation=tok.aggregation,
                                           num_samples=batch, seed=seed, do_sample=True, top_k=0)
    seconds = time.perf_counter() - start
    return {"batch": batch, "tokens": int(codes.numel()), "seconds": seconds, "tokens_per_second": codes.numel() / seconds,
            "task": task.task_id, "architecture": architecture}


class GenerationTimer:
    """Wraps a generator call `fn(task, arch, n, seed) -> (state_dicts, num_tokens)` as a `generate_fn` that
    records wall time and generated tokens (codes) for `tokens_per_second`."""

    def __init__(self, fn: Callable[[Task, str, int, int], tuple[list[StateDict], int]]):
        self.fn, self.seconds, self.tokens, self.tokens_per_sample = fn, 0.0, 0, 0

    def __call__(self, task: Task, architecture: str, num_samples: int, seed: int) -> list[StateDict]:
        start = time.perf_counter()
        state_dicts, tokens = self.fn(task, architecture, num_samples, seed)
        self.seconds += time.perf_counter() - start
        self.tokens += int(tokens)
        return state_dicts

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None


# ------------------------------------------------------------------------------------------------- runner
class _Context:
    """Per-run caches: conditions, zoo averages, ridge maps, training nets (by architecture and output size)."""

    def __init__(self, zoo: ZooIndex, condition_fn: Callable[[Task], np.ndarray], seed: int):
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
        val_tasks = sorted({e["task_id"] for e in self.zoo.checkpoints(arch, "validation", num_classes=task.num_classes)
                            if self.zoo.tasks[e["task_id"]].dataset == task.dataset})[:4]
        if len(entries) < 2 or not val_tasks:
            self._cache[key] = None
            return None
        X = np.stack([self.condition(self.zoo.tasks[e["task_id"]]) for e in entries])
        Y = np.stack([layout.flatten(self.zoo.state_dict(e)).numpy() for e in entries])

        def val_fn(model) -> float:
            accs = []
            for tid in val_tasks:
                t = self.zoo.tasks[tid]
                sd = layout.unflatten(torch.as_tensor(model.predict(self.condition(t)[None])[0], dtype=torch.float32))
                accs.append(evaluate_accuracy(make_model(arch, t.num_classes, sd), t, "validation"))
            return float(np.mean(accs))

        model, alpha, scores = fit_ridge_hypernetwork(X, Y, val_fn)
        self._cache[key] = (model, layout, alpha, scores)
        return self._cache[key]


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def _finetune_pair(model: torch.nn.Module, task: Task, steps: int, max_steps: int, eval_every: int, seed: int):
    """(test accuracy after `steps` fine-tuning steps, validation curve up to `max_steps`) from one init."""
    short = _copy(model)
    finetune(short, task, steps, eval_every=max(steps, 1), seed=seed)
    curve = finetune(_copy(model), task, max_steps, eval_every=eval_every, seed=seed)
    return evaluate_accuracy(short, task, "test"), curve


def _generated(generate_fn: GenerateFn, gen_task: Task, task: Task, arch: str, k: int, seed: int):
    """Best of k nets generated for `gen_task`, chosen on `task`'s validation split: (model, nets, val accs)."""
    nets = generate_fn(gen_task, arch, k, seed)
    models = [make_model(arch, task.num_classes, sd, f"generated net {i} for {task.task_id}") for i, sd in enumerate(nets)]
    best, val = select_best(models, task)
    return models[best], nets, val


def _evaluate_row(ctx: _Context, generate_fn: GenerateFn | None, task: Task, arch: str, opts: dict) -> dict:
    """Every method on one (task, architecture) pair; nulls carry a reason in `notes`."""
    seed, k, row, notes = opts["seed"], opts["k"], {"task_id": task.task_id, "architecture": arch}, {}
    trained = ctx.zoo.checkpoints(arch, task_id=task.task_id)
    row["trained"] = float(np.mean([e["test_accuracy"] for e in trained]))
    target = REACH_FRACTION * float(np.mean([e["val_accuracy"] for e in trained]))
    torch.manual_seed(seed)
    rand = build_model(arch, task.num_classes).eval()
    row["random_init"] = evaluate_accuracy(rand, task, "test")
    run = lambda m: _finetune_pair(m, task, opts["finetune_steps"], opts["max_steps"], opts["eval_every"], seed)  # noqa: E731
    curves: dict[str, list[dict]] = {}
    row["random_init_finetuned"], curves["random_init"] = run(rand)
    avg = ctx.zoo_average(arch, task)
    row["zoo_average"] = evaluate_accuracy(make_model(arch, task.num_classes, avg), task, "test") if avg else None
    if avg is None:
        notes["zoo_average"] = f"no training-split checkpoints of {arch} with {task.num_classes} classes"
    hit = ctx.retrieve(arch, task)
    if hit is None:
        row["retrieval"] = row["retrieval_noise"] = None
        notes["retrieval"] = f"no training-split checkpoints of {arch} with {task.num_classes} classes"
    else:
        sds = [ctx.zoo.state_dict(e) for e in ctx.zoo.checkpoints(arch, "train", task_id=hit[0])]
        models = [make_model(arch, task.num_classes, sd) for sd in sds]
        best, _ = select_best(models, task)
        row.update(retrieved_task=hit[0], retrieval_cosine=hit[1], retrieval=evaluate_accuracy(models[best], task, "test"))
        noisy = add_noise(sds[best], NOISE_SCALE, seed)
        row["retrieval_noise"] = evaluate_accuracy(make_model(arch, task.num_classes, noisy), task, "test")
        row["novelty_ratio_retrieval_noise"] = ctx.novelty([noisy], arch, task)["novelty_ratio"]
        row["retrieval_finetuned"], curves["retrieval"] = run(models[best])
        row["retrieval_steps_ratio"] = steps_ratio(curves["retrieval"], curves["random_init"], target)
    ridge = ctx.ridge(arch, task)
    if ridge is None:
        row["linear_hypernetwork"] = None
        notes["linear_hypernetwork"] = f"no shared-0 training checkpoints / validation tasks of {arch} ({task.num_classes} classes)"
    else:
        model, layout, alpha, _ = ridge
        sd = layout.unflatten(torch.as_tensor(model.predict(ctx.condition(task)[None])[0], dtype=torch.float32))
        row["linear_hypernetwork"], row["ridge_alpha"] = evaluate_accuracy(make_model(arch, task.num_classes, sd), task, "test"), alpha
    if generate_fn is None:
        for m in ("generated_zero_shot", "generated_finetuned", "shuffled_instruction"):
            row[m], notes[m] = None, "baselines only: no generator"
        row["curves"], row["notes"] = curves, notes
        return row
    try:
        best_model, nets, val = _generated(generate_fn, task, task, arch, k, seed)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        for m in ("generated_zero_shot", "generated_finetuned", "shuffled_instruction"):
            row[m], notes[m] = None, f"generator cannot produce {arch}: {err}"
        row["curves"], row["notes"] = curves, notes
        return row
    row["generated_zero_shot"], row["generated_val_accuracies"] = evaluate_accuracy(best_model, task, "test"), val
    row["generated_finetuned"], curves["generated"] = run(best_model)
    row["finetune_steps_ratio"] = steps_ratio(curves["generated"], curves["random_init"], target)
    row["novelty"] = ctx.novelty(nets, arch, task)
    if row["novelty"].get("nearest_index"):
        best = int(np.argmax(val))
        nearest = make_model(arch, task.num_classes, ctx.train_nets(arch, task)[row["novelty"]["nearest_index"][best]])
        row["error_agreement_with_nearest"] = error_agreement(best_model, nearest, task)
    others = sorted(t for t, tt in ctx.zoo.tasks.items() if t != task.task_id and tt.dataset == task.dataset
                    and tt.num_classes == task.num_classes)
    if others:
        other = ctx.zoo.tasks[others[np.random.default_rng(seed + len(task.task_id)).integers(len(others))]]
        shuffled, _, _ = _generated(generate_fn, other, task, arch, k, seed)
        row["shuffled_instruction"], row["shuffled_from"] = evaluate_accuracy(shuffled, task, "test"), other.task_id
    else:
        row["shuffled_instruction"] = None
        notes["shuffled_instruction"] = f"no other {task.dataset} task with {task.num_classes} classes in the zoo"
    row["curves"], row["notes"] = curves, notes
    return row


def select_tasks(zoo: ZooIndex, split: str, architecture: str, num_tasks: int, num_classes: int | None, seed: int) -> list[Task]:
    """`num_tasks` tasks (seeded choice, sorted) with checkpoints of `architecture` in `split`."""
    ids = sorted({e["task_id"] for e in zoo.checkpoints(architecture, num_classes=num_classes)
                  if (split == "heldout_architectures" and e["split"] == "heldout_architecture")
                  or (split != "heldout_architectures" and e["split"] == TASK_SPLIT[split])})
    rng = np.random.default_rng(seed)
    return [zoo.tasks[t] for t in sorted(rng.choice(ids, min(num_tasks, len(ids)), replace=False))] if ids else []


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _summarise(rows: list[dict], architectures: list[str]) -> dict:
    """Per-split means over (task, architecture) rows, ratios, and the reasons behind any null."""
    out: dict = {m: _mean([r.get(m) for r in rows]) for m in METHODS}
    out.update({m: _mean([r.get(m) for r in rows]) for m in ("random_init_finetuned", "retrieval_finetuned",
                                                              "novelty_ratio_retrieval_noise")})
    ratios = [r["finetune_steps_ratio"] for r in rows if "finetune_steps_ratio" in r]
    finite = [d["ratio"] for d in ratios if d["ratio"] is not None]
    out["finetune_steps_ratio"] = float(np.median(finite)) if finite else None
    out["finetune_steps_ratio_detail"] = {"statistic": "median over tasks", "target": f"{REACH_FRACTION} x mean trained "
                                          "validation accuracy", "num_censored": sum(d["censored"] is not None for d in ratios),
                                          "num": len(ratios)}
    rr = [r["retrieval_steps_ratio"]["ratio"] for r in rows if "retrieval_steps_ratio" in r]
    out["retrieval_steps_ratio"] = float(np.median([x for x in rr if x is not None])) if any(x is not None for x in rr) else None
    out["novelty_ratio"] = _mean([r["novelty"]["novelty_ratio"] for r in rows if "novelty" in r])
    out["error_agreement_with_nearest"] = _mean([r.get("error_agreement_with_nearest") for r in rows])
    paired = [r for r in rows if r.get("generated_zero_shot") is not None]  # ratios only over rows with both values
    g, t = _mean([r["generated_zero_shot"] for r in paired]), _mean([r["trained"] for r in paired])
    out["fraction_of_trained"] = g / t if g is not None and t else None
    gf = _mean([r["generated_finetuned"] for r in paired])
    out["fraction_of_trained_finetuned"] = gf / t if gf is not None and t else None
    both = [r for r in paired if r.get("retrieval") is not None]
    gr, tr, rr = (_mean([r[m] for r in both]) for m in ("generated_zero_shot", "trained", "retrieval"))
    out["retrieval_gap_closed"] = (gr - rr) / (tr - rr) if None not in (gr, tr, rr) and abs(tr - rr) > 1e-9 else None
    out["ratios_over"] = f"{len(paired)} rows with a generated net ({len(both)} with retrieval too)"
    out["per_architecture"] = {a: {m: _mean([r.get(m) for r in rows if r["architecture"] == a]) for m in ARCH_COLUMNS}
                               for a in architectures}
    out["num_tasks"], out["architectures"] = len(rows), architectures
    out["notes"] = {m: n for r in rows for m, n in r["notes"].items()}
    if not rows:
        out["notes"]["all"] = "no tasks with checkpoints of the requested architectures in this split"
    out["rows"] = [{k: v for k, v in r.items() if k != "curves"} for r in rows]
    return out


def evaluate_generator(generate_fn: GenerateFn | None, zoo_dir: str | os.PathLike, architectures: list[str],
                       splits: tuple[str, ...] = SPLITS, num_tasks_per_split: int = 4, k: int = 4,
                       finetune_steps: int = 20, seed: int = 0, condition_fn: Callable[[Task], np.ndarray] | None = None,
                       num_classes: int | None = 4, max_steps: int = 200, eval_every: int = 10,
                       heldout_architectures: list[str] | None = None) -> dict:
    """Generated nets vs baselines on each split (see the module docstring); `generate_fn=None`: baselines only.

    Args:
        generate_fn: `(task, architecture, num_samples, seed) -> list[state_dict]`; exceptions for an
            architecture it cannot express make that split's generated entries null with the reason.
        architectures: architectures for the seen / held-out task splits.
        heldout_architectures: for the held-out-architecture split (default: the manifest's).
        num_classes: only tasks with this many classes (None: all).
        max_steps / eval_every: length and resolution of the fine-tuning curves used for `finetune_steps_ratio`.

    Returns:
        `{split: {method: mean test accuracy or None, ..., "rows": [...], "notes": {...}}, "settings": {...},
        "curves": {split: {init: mean validation curve}}}`.
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"Unknown splits {sorted(unknown)}; expected a subset of {list(SPLITS)}.")
    zoo = ZooIndex(zoo_dir)
    ctx = _Context(zoo, condition_fn or default_condition_fn(), seed)
    held = list(heldout_architectures if heldout_architectures is not None else zoo.manifest.get("heldout_architectures", []))
    opts = {"seed": seed, "k": k, "finetune_steps": finetune_steps, "max_steps": max_steps, "eval_every": eval_every}
    result: dict = {"settings": {**opts, "architectures": list(architectures), "heldout_architectures": held,
                                 "num_tasks_per_split": num_tasks_per_split, "num_classes": num_classes,
                                 "noise": f"retrieval_noise sigma = {NOISE_SCALE} x per-tensor std",
                                 "retrieval": "leave-one-out nearest training task (cosine of condition vectors), its "
                                              "checkpoint best on the target's validation split",
                                 "selection": "best of k on the validation split, never test",
                                 "ridge": "sklearn Ridge, fit on train-split shared-0 checkpoints; alpha in "
                                          f"{list(RIDGE_ALPHAS)} by mean validation accuracy on <= 4 validation tasks",
                                 "novelty": "L2 after Hungarian alignment of hidden units / conv channels "
                                            "(incoming weights + bias), over median nearest checkpoint-to-checkpoint "
                                            "distance of 16 sampled training checkpoints"},
                    "curves": {}}
    jobs = [(s, a, t) for s in splits for a in (held if s == "heldout_architectures" else architectures)
            for t in select_tasks(zoo, s, a, num_tasks_per_split, num_classes, seed)]
    rows: dict[str, list[dict]] = {s: [] for s in splits}
    for split, arch, task in tqdm(jobs, desc="evaluating", unit="task"):
        rows[split].append(_evaluate_row(ctx, generate_fn, task, arch, opts))
    for split in splits:
        archs = held if split == "heldout_architectures" else list(architectures)
        result[split] = _summarise(rows[split], archs)
        # with generated curves, every init is averaged over the same rows (those with a generated net)
        plotted = [r for r in rows[split] if "generated" in r["curves"]] or rows[split]
        result["curves"][split] = {init: np.mean([[p["val_accuracy"] for p in r["curves"][init]]
                                                  for r in plotted if init in r["curves"]], 0).tolist()
                                   for init in ("generated", "random_init", "retrieval")
                                   if any(init in r["curves"] for r in plotted)}
    result["curves"]["steps"] = list(range(0, max_steps, eval_every)) + [max_steps]
    return result


def format_table(result: dict, splits: tuple[str, ...] = SPLITS) -> str:
    """Rows = methods, columns = splits (mean test accuracy; ratios last)."""
    keys = (*METHODS, "random_init_finetuned", "retrieval_finetuned", "finetune_steps_ratio", "retrieval_steps_ratio",
            "novelty_ratio", "novelty_ratio_retrieval_noise", "error_agreement_with_nearest", "fraction_of_trained", "retrieval_gap_closed", "num_tasks")
    splits = tuple(s for s in splits if s in result)
    fmt = lambda v: "null" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {k} | " + " | ".join(fmt(result[s].get(k)) for s in splits) + " |" for k in keys]
    return "\n".join(lines)


def format_architecture_table(result: dict, splits: tuple[str, ...] = SPLITS) -> str:
    """Rows = (split, architecture), columns = methods (mean test accuracy)."""
    fmt = lambda v: "null" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| split | architecture | " + " | ".join(ARCH_COLUMNS) + " |", "|---|---|" + "---|" * len(ARCH_COLUMNS)]
    for split in (s for s in splits if s in result):
        for arch, means in result[split].get("per_architecture", {}).items():
            lines.append(f"| {split} | {arch} | " + " | ".join(fmt(means[m]) for m in ARCH_COLUMNS) + " |")
    return "\n".join(lines)


def plot_curves(result: dict, path: str | os.PathLike) -> None:
    """PNG of mean fine-tuning curves (validation accuracy vs step) per split: generated / random / retrieval init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in SPLITS if result["curves"].get(s)]  # splits with no evaluated task get no panel
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(5 * max(len(splits), 1), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for init, curve in result["curves"][split].items():
            ax.plot(result["curves"]["steps"][: len(curve)], curve, label=f"{init.replace('_init', '')} init")
        ax.set(title=split, xlabel="fine-tuning step", ylabel="validation accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(f".tmp-{os.getpid()}-{Path(path).name}")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def generator_fn(generator, **generate_kwargs) -> GenerationTimer:
    """A timed `generate_fn` around a `ParamGenerator`: `generate_for_task(task, architecture, num_samples, seed,
    select_on=None, **generate_kwargs)` (selection is done here, on the validation split; `generate_kwargs`: decoding
    and sampling options); tokens = generated codes (k x N x T)."""

    def call(task: Task, architecture: str, num_samples: int, seed: int) -> tuple[list[StateDict], int]:
        from .generate import generate_for_task

        out = generate_for_task(generator, task, architecture, num_samples=num_samples, seed=seed, select_on=None,
                                **generate_kwargs)
        codes = torch.as_tensor(out.codes)  # (k, N, T)
        timer.tokens_per_sample = int(codes[0].numel()) if codes.ndim else 0
        return list(out.state_dicts), int(codes.numel())

    timer = GenerationTimer(call)
    return timer


def _prior_size(generator) -> tuple[int, int, int, int]:
    """(parameters, hidden size, layers, context length) of the generator's prior (`generator.prior`); zeros if unknown."""
    prior = getattr(generator, "prior", None)
    if not isinstance(prior, torch.nn.Module):
        return 0, 0, 0, 0
    config = getattr(prior, "config", None)
    decoder = config.decoder_config() if hasattr(config, "decoder_config") else config
    return (sum(p.numel() for p in prior.parameters()), int(getattr(decoder, "hidden_size", 0) or 0),
            int(getattr(decoder, "num_hidden_layers", 0) or 0), int(getattr(config, "max_position_embeddings", 0) or 0))


def cli_evaluate(argv: list[str]) -> int:
    """`hf-paramgen evaluate --generator outputs/generator --zoo_dir outputs/zoo --json out.json [--baselines_only]`."""
    from ..generation.generator import DECODINGS

    parser = argparse.ArgumentParser(prog="hf-paramgen evaluate", description="Generated nets vs baselines per split.")
    parser.add_argument("--generator", default=None, help="a ParamGenerator folder (from_pretrained)")
    parser.add_argument("--zoo_dir", default="outputs/zoo")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--png", default=None, help="fine-tuning curves PNG (default: next to --json)")
    parser.add_argument("--architectures", nargs="+", default=["cnn-mnist", "mlp-784-32"])
    parser.add_argument("--heldout_architectures", nargs="*", default=None)
    parser.add_argument("--num_tasks", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=4, help="0: tasks of any size")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--finetune_steps", type=int, default=20)
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoding", choices=DECODINGS, default="mean",
                        help="decode the sampled codes, or the expected weights under each code's distribution")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--throughput_batch", type=int, default=64,
                        help="also time one batched generate_codes call of this many networks (0: skip)")
    parser.add_argument("--baselines_only", action="store_true", help="no generator: all baselines incl. the ridge map")
    parser.add_argument("--small", action="store_true", help="1 task per split, k=2, short curves (tests)")
    parser.add_argument("--hashing_conditions", action="store_true", help="HashingTextEncoder instead of MiniLM (tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.small:
        args.num_tasks, args.k, args.finetune_steps, args.max_steps = 1, 2, 5, 20
        args.throughput_batch = min(args.throughput_batch, 2)
    if not args.baselines_only and not args.generator:
        parser.error("give --generator DIR, or --baselines_only")
    condition_fn = None
    if args.hashing_conditions:
        from ..conditioning.samples import SampleEncoder
        from ..conditioning.text import HashingTextEncoder

        text, enc = HashingTextEncoder(384), {}
        condition_fn = lambda t: torch.cat([text(t.instruction).reshape(-1), enc.setdefault(t.dataset, SampleEncoder(  # noqa: E731
            t.input_dim, 384))(*few_shot_samples(t, 5), t.num_classes).reshape(-1)]).numpy()
    gen_fn, generator = None, None
    if not args.baselines_only:
        from ..generation.generator import ParamGenerator

        generator = ParamGenerator.from_pretrained(args.generator)
        gen_fn = generator_fn(generator, decoding=args.decoding, temperature=args.temperature, top_k=args.top_k)
    result = evaluate_generator(gen_fn, args.zoo_dir, args.architectures, num_tasks_per_split=args.num_tasks, k=args.k,
                                finetune_steps=args.finetune_steps, seed=args.seed, condition_fn=condition_fn,
                                num_classes=args.num_classes or None, max_steps=args.max_steps,
                                heldout_architectures=args.heldout_architectures)
    if not args.baselines_only:
        result["settings"]["generation"] = {"decoding": args.decoding, "temperature": args.temperature,
                                            "top_k": args.top_k}
    result["tokens_per_second"] = result["compute_floor_ratio"] = None
    if gen_fn is not None and gen_fn.tokens_per_second:
        params, hidden, layers, max_context = _prior_size(generator)
        # mean attended length: half of one sample's codes, or half the context window when codes come in blocks
        context = min(gen_fn.tokens_per_sample, max_context or gen_fn.tokens_per_sample) // 2
        result["tokens_per_second"] = gen_fn.tokens_per_second
        result["generation"] = {"tokens": gen_fn.tokens, "seconds": gen_fn.seconds, "prior_params": params,
                                "note": "wall time of generate_for_task calls (incl. conditioning and decoding codes to "
                                        "weights), all tasks incl. shuffled-instruction calls; FLOPs/token = 2 x all prior "
                                        "parameters (embeddings included) + 4 x layers x mean context x hidden"}
        if params and hidden:
            floor = compute_floor_ratio(gen_fn.tokens_per_second, params, hidden, context, layers)
            result["compute_floor_ratio"] = floor["compute_floor_ratio"]
            result["generation"].update(floor, attention_context_assumed=context)
        if args.throughput_batch and params and hidden:
            # the same prior sampling many networks at once: how close generation can come to the matmul floor
            tasks = [t for t in load_manifest(args.zoo_dir)["tasks"] if t["split"] == "heldout_task"
                     and (not args.num_classes or t["num_classes"] == args.num_classes)]
            if tasks:
                tp = batch_throughput(generator, task_from_dict(tasks[0]), args.architectures[0], args.throughput_batch)
                tp.update(compute_floor_ratio(tp["tokens_per_second"], params, hidden, context, layers))
                result["batched_generation"] = tp
                result["tokens_per_second_k"] = result["tokens_per_second"]
                result["compute_floor_ratio_k"] = result["compute_floor_ratio"]
                result["tokens_per_second"], result["compute_floor_ratio"] = tp["tokens_per_second"], tp["compute_floor_ratio"]
                result["generation"]["keys"] = (
                    "tokens_per_second / compute_floor_ratio: one batched generate_codes call of `batched_generation.batch` "
                    "networks; *_k: the evaluation's own generate_for_task calls (k samples each, incl. decoding)")
    result["command"] = "hf-paramgen evaluate " + " ".join(argv)
    print(format_table(result))
    print(format_architecture_table(result))
    print(f"tokens_per_second: {result['tokens_per_second']}  compute_floor_ratio: {result['compute_floor_ratio']}"
          + (f"  (batch {result['batched_generation']['batch']}; k-sample calls: {result['tokens_per_second_k']:.0f} "
             f"tokens/s, ratio {result['compute_floor_ratio_k']:.3f})" if "batched_generation" in result else ""))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
        png = Path(args.png) if args.png else path.with_suffix(".png")
        plot_curves(result, png)
        print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_evaluate(sys.argv[1:]))
