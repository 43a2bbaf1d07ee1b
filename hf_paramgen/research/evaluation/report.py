"""The evaluation's tables (markdown) and fine-tuning curve plot."""

from __future__ import annotations

import os
from pathlib import Path

from ...utils import temporary_sibling
from .zoo_index import ARCH_COLUMNS, EVAL_SPLITS, METHODS

TABLE_KEYS = (*METHODS, "random_init_finetuned", "retrieval_finetuned", "finetune_steps_ratio", "retrieval_steps_ratio",
              "novelty_ratio", "novelty_ratio_retrieval_noise", "error_agreement_with_nearest", "fraction_of_trained",
              "retrieval_gap_closed", "num_tasks")


def format_table(result: dict, splits: tuple[str, ...] = EVAL_SPLITS) -> str:
    """Rows = methods, columns = splits (mean test accuracy; ratios last)."""
    splits = tuple(s for s in splits if s in result)
    fmt = lambda v: "null" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {k} | " + " | ".join(fmt(result[s].get(k)) for s in splits) + " |" for k in TABLE_KEYS]
    return "\n".join(lines)


# issue targets (zero-shot): split -> (minimum fraction of trained accuracy, baselines the generator must beat)
TARGETS: dict[str, tuple[float | None, tuple[str, ...]]] = {
    "heldout_tasks": (0.97, ("permuted_retrieval",)),
    "heldout_classes": (0.85, ("permuted_retrieval", "class_row_composition", "prototype_head", "linear_hypernetwork")),
    "heldout_dataset": (0.75, ("prototype_head",)),
    "heldout_architectures": (0.8, ("prototype_head",)),
}
SHUFFLED_TOLERANCE = 0.05  # shuffled_instruction within 5 points of random_init
NOVELTY_TARGET = 1.0


def check_targets(result: dict) -> list[dict]:
    """Every target of the generalisation benchmark as `{split, target, value, bar, met}`; `met` is None where a
    value or its bar is null (a baseline that does not apply, or no generated net), with the reason in `value`."""
    out = []

    def add(split, target, value, bar, met):
        out.append({"split": split, "target": target, "value": value, "bar": bar, "met": met})

    for split in (s for s in EVAL_SPLITS if s in result):
        r = result[split]
        gen = r.get("generated_zero_shot")
        fraction, beat = TARGETS.get(split, (None, ()))
        if fraction is not None:
            value = r.get("fraction_of_trained")
            met = None if value is None else value >= fraction
            add(split, f"fraction_of_trained >= {fraction}", value, fraction, met)
        for baseline in beat:
            bar = r.get(baseline)
            add(split, f"generated_zero_shot > {baseline}", gen, bar,
                None if gen is None or bar is None else gen > bar)
        shuffled, rand = r.get("shuffled_instruction"), r.get("random_init")
        add(split, f"|shuffled_instruction - random_init| <= {SHUFFLED_TOLERANCE}", shuffled, rand,
            None if shuffled is None or rand is None else abs(shuffled - rand) <= SHUFFLED_TOLERANCE)
        novelty = r.get("novelty_ratio")
        add(split, f"novelty_ratio >= {NOVELTY_TARGET}", novelty, NOVELTY_TARGET,
            None if novelty is None else novelty >= NOVELTY_TARGET)
    return out


def format_targets(targets: list[dict]) -> str:
    """The targets as a markdown table (met: yes / NO / n/a)."""
    fmt = lambda v: "null" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| split | target | value | bar | met |", "|---|---|---|---|---|"]
    lines += [f"| {t['split']} | {t['target']} | {fmt(t['value'])} | {fmt(t['bar'])} | "
              f"{'n/a' if t['met'] is None else 'yes' if t['met'] else 'NO'} |" for t in targets]
    return "\n".join(lines)


def format_architecture_table(result: dict, splits: tuple[str, ...] = EVAL_SPLITS) -> str:
    """Rows = (split, architecture), columns = methods (mean test accuracy)."""
    fmt = lambda v: "null" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| split | architecture | " + " | ".join(ARCH_COLUMNS) + " |", "|---|---|" + "---|" * len(ARCH_COLUMNS)]
    for split in (s for s in splits if s in result):
        for arch, means in result[split].get("per_architecture", {}).items():
            lines.append(f"| {split} | {arch} | " + " | ".join(fmt(means[m]) for m in ARCH_COLUMNS) + " |")
    return "\n".join(lines)


def plot_curves(result: dict, path: str | os.PathLike) -> None:
    """PNG of mean fine-tuning curves (validation accuracy vs step) per split: generated / random / retrieval init;
    written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in EVAL_SPLITS if result["curves"].get(s)]  # splits with no evaluated task get no panel
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(5 * max(len(splits), 1), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=False):  # no split: one empty panel
        for init, curve in result["curves"][split].items():
            ax.plot(result["curves"]["steps"][: len(curve)], curve, label=f"{init.replace('_init', '')} init")
        ax.set(title=split, xlabel="fine-tuning step", ylabel="validation accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = temporary_sibling(path)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, Path(path))
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
