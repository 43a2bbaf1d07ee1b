"""Honest evaluation of generated networks against baselines, side by side, on fixed splits (DESIGN.md section 4).

`evaluate_generator(generate_fn, zoo_dir, ...)` works with any generator given as
`generate_fn(task, architecture, num_candidates, seed) -> list[state_dict]` (None: baselines only). Per evaluation
split (`EVAL_SPLITS`: `seen_tasks` = train-split tasks, `heldout_tasks` (new orders and sets of seen classes),
`heldout_classes` (tasks with a class no training task has), `heldout_dataset` (data no training task used),
`heldout_architectures`) it reports mean
test accuracy of:

* `generated_zero_shot`  best of k generated nets, chosen on the task's **validation** split (never test);
* `generated_finetuned`  that net after `finetune_steps` Adam steps (zoo recipe lr) on the train split;
* `trained`              mean of the zoo checkpoints of (task, architecture);
* `random_init`          a fresh `build_model` init;
* `zoo_average`          element-wise mean of the train-split checkpoints of that architecture and output size;
* `retrieval`            checkpoints of the training task whose condition vector is nearest (cosine), best on
                         the target's validation split;
* `retrieval_noise`      retrieval + N(0, (0.1 * per-tensor std)^2) noise;
* `permuted_retrieval`   training checkpoints with the task's class set (another order), head rows permuted into
                         the task's order: a lookup that solves held-out new orders of seen classes;
* `class_row_composition` the body of the training checkpoint with most of the task's classes, each head row
                         from a checkpoint that has that class (none when a class is unseen);
* `prototype_head`       that body with each head row the mean feature of its class's few-shot samples (the same
                         samples the generator gets): nearest class mean, no learning;
* `linear_hypernetwork`  ridge map condition -> flat weights, fit on train-split checkpoints with init
                         "shared-0" (one symmetry basin), alpha picked by validation-task accuracy;
* `shuffled_instruction` the generator given another task's instruction, evaluated on the real task;

plus `finetune_steps_ratio` (steps to reach 98 % of the trained *validation* accuracy from the generated init
over steps from a random init, capped) and `novelty_ratio` (aligned distance to the nearest training checkpoint
over the median nearest checkpoint-to-checkpoint distance). Null values come with a reason in `notes`.

Modules: `zoo_index` (constants, `ZooIndex`, conditions, selection), `novelty` (alignment, novelty), `baselines`
(retrieval, zoo average, ridge map, lookups, fine-tuning speed), `speed` (timing, throughput, compute floor), `runner`
(`evaluate_generator`), `report` (tables, plot) and `cli` (`hf-paramgen evaluate`).
"""

from __future__ import annotations

from .baselines import BaselineCache, fit_ridge_hypernetwork, steps_ratio, steps_to_reach
from .cli import cli_evaluate
from .novelty import align_hidden_units, aligned_distance, checkpoint_nearest_median, error_agreement, novelty
from .report import format_architecture_table, format_table, plot_curves
from .runner import evaluate_generator, evaluate_row, summarise
from .speed import (
    GenerationTimer,
    batch_throughput,
    compute_floor_ratio,
    generator_fn,
    matmul_flops_per_second,
    prior_size,
)
from .zoo_index import (
    ARCH_COLUMNS,
    EVAL_SPLITS,
    METHODS,
    NOISE_SCALE,
    REACH_FRACTION,
    RIDGE_ALPHAS,
    TASK_SPLIT,
    GenerateFn,
    StateDict,
    ZooIndex,
    add_noise,
    default_condition_fn,
    hashing_condition_fn,
    make_model,
    select_best,
    select_tasks,
)

__all__ = ["EVAL_SPLITS", "METHODS", "ARCH_COLUMNS", "TASK_SPLIT", "NOISE_SCALE", "REACH_FRACTION", "RIDGE_ALPHAS",
           "StateDict", "GenerateFn",
           "ZooIndex", "select_tasks", "make_model", "default_condition_fn", "hashing_condition_fn", "select_best",
           "add_noise", "align_hidden_units", "aligned_distance", "checkpoint_nearest_median", "novelty",
           "error_agreement", "fit_ridge_hypernetwork", "steps_to_reach", "steps_ratio", "BaselineCache",
           "matmul_flops_per_second", "compute_floor_ratio", "batch_throughput", "GenerationTimer", "generator_fn",
           "prior_size", "evaluate_row", "summarise", "evaluate_generator", "format_table",
           "format_architecture_table", "plot_curves", "cli_evaluate"]


def __getattr__(name: str):
    if name == "SPLITS":  # the old name: SPLITS had three meanings in the project
        import warnings

        warnings.warn("hf_paramgen.research.evaluation.SPLITS is deprecated: use EVAL_SPLITS.", FutureWarning,
                      stacklevel=2)
        return EVAL_SPLITS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
