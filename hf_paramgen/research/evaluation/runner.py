"""The runner: every method on every (task, architecture) row of each evaluation split, then per-split summaries."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..architectures import build_model
from ..tasks import Task
from ..zoo import evaluate_accuracy, finetune
from .baselines import (
    BaselineCache,
    class_row_composition_candidates,
    permuted_retrieval_candidates,
    prototype_head_candidates,
    prototype_head_note,
    ridge_state_dict,
    steps_ratio,
)
from .novelty import error_agreement
from .zoo_index import (
    ARCH_COLUMNS,
    EVAL_SPLITS,
    METHODS,
    NOISE_SCALE,
    REACH_FRACTION,
    RIDGE_ALPHAS,
    ConditionFn,
    GenerateFn,
    ZooIndex,
    add_noise,
    default_condition_fn,
    make_model,
    select_best,
    select_tasks,
)

GENERATED_METHODS = ("generated_zero_shot", "generated_finetuned", "shuffled_instruction")
CURVE_INITS = ("generated", "random_init", "retrieval")


def _finetune_pair(model: torch.nn.Module, task: Task, steps: int, max_steps: int, eval_every: int, seed: int):
    """(test accuracy after `steps` fine-tuning steps, validation curve up to `max_steps`) from one init."""
    short = copy.deepcopy(model)
    finetune(short, task, steps, eval_every=max(steps, 1), seed=seed)
    curve = finetune(copy.deepcopy(model), task, max_steps, eval_every=eval_every, seed=seed)
    return evaluate_accuracy(short, task, "test"), curve


def _best_generated(generate_fn: GenerateFn, gen_task: Task, task: Task, arch: str, k: int, seed: int):
    """Best of k nets generated for `gen_task`, chosen on `task`'s validation split: (model, nets, validation accs)."""
    nets = generate_fn(gen_task, arch, k, seed)
    models = [make_model(arch, task.num_classes, sd, f"generated net {i} for {task.task_id}")
              for i, sd in enumerate(nets)]
    best, validation = select_best(models, task)
    return models[best], nets, validation


class _Row:
    """One (task, architecture) row under construction: its values, fine-tuning curves and notes on nulls."""

    def __init__(self, cache: BaselineCache, task: Task, arch: str, opts: dict):
        self.cache, self.task, self.arch, self.opts = cache, task, arch, opts
        self.values: dict = {"task_id": task.task_id, "architecture": arch}
        self.curves: dict[str, list[dict]] = {}
        self.notes: dict[str, str] = {}
        self.target = 0.0  # REACH_FRACTION x mean trained validation accuracy (set by `trained_and_random`)

    def model(self, state_dict, source: str = "state_dict") -> torch.nn.Module:
        return make_model(self.arch, self.task.num_classes, state_dict, source)

    def test(self, model: torch.nn.Module) -> float:
        return evaluate_accuracy(model, self.task, "test")

    def finetune(self, model: torch.nn.Module):
        o = self.opts
        return _finetune_pair(model, self.task, o["finetune_steps"], o["max_steps"], o["eval_every"], o["seed"])

    def finish(self) -> dict:
        self.values["curves"], self.values["notes"] = self.curves, self.notes
        return self.values

    # ------------------------------------------------------------------------------------------- methods
    def trained_and_random(self) -> None:
        """`trained` (zoo checkpoints of the pair), `random_init` and its fine-tuned accuracy and curve."""
        row, task = self.values, self.task
        trained = self.cache.zoo.checkpoints(self.arch, task_id=task.task_id)
        row["trained"] = float(np.mean([e["test_accuracy"] for e in trained]))
        self.target = REACH_FRACTION * float(np.mean([e["val_accuracy"] for e in trained]))
        torch.manual_seed(self.opts["seed"])
        rand = build_model(self.arch, task.num_classes).eval()
        row["random_init"] = self.test(rand)
        row["random_init_finetuned"], self.curves["random_init"] = self.finetune(rand)

    def zoo_average(self) -> None:
        avg = self.cache.zoo_average(self.arch, self.task)
        self.values["zoo_average"] = self.test(self.model(avg)) if avg else None
        if avg is None:
            self.notes["zoo_average"] = (f"no training-split checkpoints of {self.arch} with {self.task.num_classes} "
                                         "classes")

    def retrieval(self) -> None:
        """`retrieval` (+ noise, fine-tuned, steps ratio): the nearest training task's checkpoint best on validation."""
        row, task, arch = self.values, self.task, self.arch
        hit = self.cache.retrieve(arch, task)
        if hit is None:
            row["retrieval"] = row["retrieval_noise"] = None
            self.notes["retrieval"] = f"no training-split checkpoints of {arch} with {task.num_classes} classes"
            return
        sds = [self.cache.zoo.state_dict(e) for e in self.cache.zoo.checkpoints(arch, "train", task_id=hit[0])]
        models = [self.model(sd) for sd in sds]
        best, _ = select_best(models, task)
        row.update(retrieved_task=hit[0], retrieval_cosine=hit[1], retrieval=self.test(models[best]))
        noisy = add_noise(sds[best], NOISE_SCALE, self.opts["seed"])
        row["retrieval_noise"] = self.test(self.model(noisy))
        row["novelty_ratio_retrieval_noise"] = self.cache.novelty([noisy], arch, task)["novelty_ratio"]
        row["retrieval_finetuned"], self.curves["retrieval"] = self.finetune(models[best])
        row["retrieval_steps_ratio"] = steps_ratio(self.curves["retrieval"], self.curves["random_init"], self.target)

    def lookups(self) -> None:
        """`permuted_retrieval`, `class_row_composition` (lookups that exploit a split of new orders of seen
        classes) and `prototype_head` (class means of the few-shot samples in a training body's features): no
        learning; best of the same k as the generator, on validation."""
        for name, candidates_fn, missing in (
                ("permuted_retrieval", permuted_retrieval_candidates, "no training task with the same class set"),
                ("class_row_composition", class_row_composition_candidates, "a class no training task has"),
                ("prototype_head", prototype_head_candidates, "no training checkpoint of this output size")):
            candidates = candidates_fn(self.cache, self.arch, self.task, self.opts["k"])
            if not candidates:
                if not self.cache.zoo.checkpoints(self.arch, "train"):
                    missing = "no training checkpoint of this architecture (held-out architecture)"
                self.values[name], self.notes[name] = None, f"{missing} ({self.arch}, {self.task.task_id})"
                continue
            models = [self.model(sd, name) for sd in candidates]
            best, _ = select_best(models, self.task)
            self.values[name] = self.test(models[best])
            if name == "prototype_head" and (note := prototype_head_note(self.cache, self.arch)):
                self.notes[name] = note

    def linear_hypernetwork(self) -> None:
        ridge = self.cache.ridge(self.arch, self.task)
        if ridge is None:
            self.values["linear_hypernetwork"] = None
            self.notes["linear_hypernetwork"] = (f"no shared-0 training checkpoints / validation tasks of {self.arch} "
                                                 f"({self.task.num_classes} classes)")
            return
        model, layout, alpha, _ = ridge
        sd = ridge_state_dict(model, layout, self.cache.condition(self.task))
        self.values["linear_hypernetwork"], self.values["ridge_alpha"] = self.test(self.model(sd)), alpha

    def generated(self, generate_fn: GenerateFn | None) -> None:
        """The generator's methods: best of k zero-shot, fine-tuned, novelty, error agreement, shuffled instruction."""
        row, task, arch, seed = self.values, self.task, self.arch, self.opts["seed"]
        if generate_fn is None:
            for m in GENERATED_METHODS:
                row[m], self.notes[m] = None, "baselines only: no generator"
            return
        try:
            best_model, nets, validation = _best_generated(generate_fn, task, task, arch, self.opts["k"], seed)
        except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
            for m in GENERATED_METHODS:
                row[m], self.notes[m] = None, f"generator cannot produce {arch}: {err}"
            return
        row["generated_zero_shot"], row["generated_val_accuracies"] = self.test(best_model), validation
        row["generated_finetuned"], self.curves["generated"] = self.finetune(best_model)
        row["finetune_steps_ratio"] = steps_ratio(self.curves["generated"], self.curves["random_init"], self.target)
        row["novelty"] = self.cache.novelty(nets, arch, task)
        if row["novelty"].get("nearest_index"):
            nearest_index = row["novelty"]["nearest_index"][int(np.argmax(validation))]
            nearest = self.model(self.cache.train_nets(arch, task)[nearest_index])
            row["error_agreement_with_nearest"] = error_agreement(best_model, nearest, task)
        self.shuffled_instruction(generate_fn)

    def shuffled_instruction(self, generate_fn: GenerateFn) -> None:
        """The generator given another task's instruction (same dataset and output size), scored on this task."""
        zoo, task = self.cache.zoo, self.task
        others = sorted(t for t, tt in zoo.tasks.items() if t != task.task_id and tt.dataset == task.dataset
                        and tt.num_classes == task.num_classes)
        if not others:
            self.values["shuffled_instruction"] = None
            self.notes["shuffled_instruction"] = (f"no other {task.dataset} task with {task.num_classes} classes "
                                                  "in the zoo")
            return
        seed = self.opts["seed"]
        other = zoo.tasks[others[np.random.default_rng(seed + len(task.task_id)).integers(len(others))]]
        shuffled, _, _ = _best_generated(generate_fn, other, task, self.arch, self.opts["k"], seed)
        self.values["shuffled_instruction"], self.values["shuffled_from"] = self.test(shuffled), other.task_id


def evaluate_row(cache: BaselineCache, generate_fn: GenerateFn | None, task: Task, arch: str, opts: dict) -> dict:
    """Every method on one (task, architecture) pair; nulls carry a reason in `notes`."""
    row = _Row(cache, task, arch, opts)
    row.trained_and_random()
    row.zoo_average()
    row.retrieval()
    row.lookups()
    row.linear_hypernetwork()
    row.generated(generate_fn)
    return row.finish()


# ------------------------------------------------------------------------------------------------ summaries
def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _median_ratio(ratios: list[dict]) -> float | None:
    finite = [d["ratio"] for d in ratios if d["ratio"] is not None]
    return float(np.median(finite)) if finite else None


def ci95(values: list) -> list[float] | None:
    """95 % confidence interval of the mean over tasks (Student t; None with fewer than 2 values)."""
    from scipy import stats

    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return [mean - half, mean + half]


def summarise(rows: list[dict], architectures: list[str]) -> dict:
    """Per-split means over (task, architecture) rows, their 95 % intervals (`ci95`), ratios, and the reasons
    behind any null."""
    out: dict = {m: _mean([r.get(m) for r in rows]) for m in METHODS}
    out["ci95"] = {m: ci95([r.get(m) for r in rows]) for m in METHODS}
    out.update({m: _mean([r.get(m) for r in rows]) for m in ("random_init_finetuned", "retrieval_finetuned",
                                                              "novelty_ratio_retrieval_noise")})
    ratios = [r["finetune_steps_ratio"] for r in rows if "finetune_steps_ratio" in r]
    out["finetune_steps_ratio"] = _median_ratio(ratios)
    out["finetune_steps_ratio_detail"] = {
        "statistic": "median over tasks", "target": f"{REACH_FRACTION} x mean trained validation accuracy",
        "num_censored": sum(d["censored"] is not None for d in ratios), "num": len(ratios)}
    out["retrieval_steps_ratio"] = _median_ratio([r["retrieval_steps_ratio"] for r in rows
                                                  if "retrieval_steps_ratio" in r])
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


def mean_curves(rows: list[dict]) -> dict[str, list[float]]:
    """Mean validation curve per init; with generated curves, every init is averaged over the same rows (those with
    a generated net)."""
    plotted = [r for r in rows if "generated" in r["curves"]] or rows
    return {init: np.mean([[p["val_accuracy"] for p in r["curves"][init]] for r in plotted if init in r["curves"]],
                          0).tolist()
            for init in CURVE_INITS if any(init in r["curves"] for r in plotted)}


def _settings(opts: dict, architectures: list[str], heldout: list[str], num_tasks_per_split: int,
              num_classes: int | None) -> dict:
    return {**opts, "architectures": list(architectures), "heldout_architectures": heldout,
            "num_tasks_per_split": num_tasks_per_split, "num_classes": num_classes,
            "noise": f"retrieval_noise sigma = {NOISE_SCALE} x per-tensor std",
            "retrieval": "leave-one-out nearest training task (cosine of condition vectors), its "
                         "checkpoint best on the target's validation split",
            "selection": "best of k on the validation split, never test",
            "lookups": "permuted_retrieval: training checkpoints of the same class set, head rows permuted; "
                       "class_row_composition: the body of the checkpoint with the most of the task's classes, each "
                       "head row from a checkpoint that has the class; prototype_head: that body with head rows "
                       "= class means of the few-shot samples in its features (bias -|mean|^2/2); all best of k on "
                       "validation, no learning",
            "ridge": "sklearn Ridge, fit on train-split shared-0 checkpoints; alpha in "
                     f"{list(RIDGE_ALPHAS)} by mean validation accuracy on <= 4 validation tasks",
            "novelty": "L2 after Hungarian alignment of hidden units / conv channels "
                       "(incoming weights + bias), over median nearest checkpoint-to-checkpoint "
                       "distance of 16 sampled training checkpoints"}


def evaluate_generator(generate_fn: GenerateFn | None, zoo_dir: str | os.PathLike, architectures: list[str],
                       splits: tuple[str, ...] = EVAL_SPLITS, num_tasks_per_split: int = 4, k: int = 4,
                       finetune_steps: int = 20, seed: int = 0, condition_fn: ConditionFn | None = None,
                       num_classes: int | None = 4, max_steps: int = 200, eval_every: int = 10,
                       heldout_architectures: list[str] | None = None) -> dict:
    """Generated nets vs baselines on each evaluation split (see the package docstring); `generate_fn=None`:
    baselines only.

    Args:
        generate_fn: `(task, architecture, num_candidates, seed) -> list[state_dict]`; exceptions for an
            architecture it cannot express make that split's generated entries null with the reason.
        zoo_dir: a zoo folder (`hf-paramgen build-zoo`).
        architectures: architectures for the seen / held-out task splits.
        splits: a subset of `EVAL_SPLITS`.
        num_tasks_per_split / k: tasks per (split, architecture); generated candidates per task (best of k).
        finetune_steps: Adam steps of the `*_finetuned` values.
        condition_fn: task -> condition vector for retrieval and the ridge map (default: `default_condition_fn()`).
        num_classes: only tasks with this many classes (None: all).
        max_steps / eval_every: length and resolution of the fine-tuning curves used for `finetune_steps_ratio`.
        heldout_architectures: for the held-out-architecture split (default: the manifest's).

    Returns:
        `{split: {method: mean test accuracy or None, ..., "rows": [...], "notes": {...}}, "settings": {...},
        "curves": {split: {init: mean validation curve}}}`.
    """
    unknown = set(splits) - set(EVAL_SPLITS)
    if unknown:
        raise ValueError(f"Unknown splits {sorted(unknown)}; expected a subset of {list(EVAL_SPLITS)}.")
    zoo = ZooIndex(zoo_dir)
    cache = BaselineCache(zoo, condition_fn or default_condition_fn(), seed)
    held = list(heldout_architectures if heldout_architectures is not None
                else zoo.manifest.get("heldout_architectures", []))
    archs_of: Callable[[str], list[str]] = lambda s: held if s == "heldout_architectures" else list(architectures)  # noqa: E731
    opts = {"seed": seed, "k": k, "finetune_steps": finetune_steps, "max_steps": max_steps, "eval_every": eval_every}
    result: dict = {"settings": _settings(opts, architectures, held, num_tasks_per_split, num_classes), "curves": {}}
    jobs = [(s, a, t) for s in splits for a in archs_of(s)
            for t in select_tasks(zoo, s, a, num_tasks_per_split, num_classes, seed)]
    rows: dict[str, list[dict]] = {s: [] for s in splits}
    for split, arch, task in tqdm(jobs, desc="evaluating", unit="task"):
        rows[split].append(evaluate_row(cache, generate_fn, task, arch, opts))
    for split in splits:
        result[split] = summarise(rows[split], archs_of(split))
        result["curves"][split] = mean_curves(rows[split])
    result["curves"]["steps"] = list(range(0, max_steps, eval_every)) + [max_steps]
    return result
