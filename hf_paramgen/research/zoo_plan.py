"""The model zoo's plan: presets (task families x architectures), the deterministic task list with its task
splits, and one job per (task, architecture, seed) with its initialisation and checkpoint split.

Weight-space symmetry (DESIGN.md section 1): most checkpoints of an architecture start from one of
two shared initialisations (`torch.manual_seed(SHARED_INIT_SEEDS[k])`, then build; hidden layers
are created before the head, so they match across tasks of any number of classes); seed k uses
`INIT_SCHEDULE[k % 4]`, so seed 2 of every (task, architecture) pair starts from an independent
initialisation (1 in 3 or 1 in 4 checkpoints, depending on the number of seeds; 31 % of "full").
A preset with `"init_style": "nested"` builds each initialisation with `architectures.nested_init_` instead, so the
same shared initialisation is one nested family of tensors across widths, depths and numbers of classes.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..data.corpus import MODEL_SPLITS
from .architectures import ARCHITECTURE_DATASET
from .tasks import DATASETS, Task

__all__ = ["SHARED_INIT_SEEDS", "INIT_SCHEDULE", "HELDOUT_ARCHITECTURES", "SPLIT_SEED", "TASK_SPLIT_FRACTIONS",
           "CHECKPOINT_SPLITS", "PRESETS", "make_tasks", "init_schedule", "init_style", "heldout_architectures",
           "plan_checkpoints"]

SHARED_INIT_SEEDS: dict[str, int] = {"shared-0": 1000, "shared-1": 2000}
INIT_SCHEDULE = ("shared-0", "shared-1", "independent", "shared-0")  # init of seed k: INIT_SCHEDULE[k % 4]
HELDOUT_ARCHITECTURES = ("mlp-784-48",)  # a preset's "heldout_architectures" overrides this
GENERALISE_TRAIN_ARCHITECTURES = ("mlp-p4-16", "mlp-p4-32", "mlp-p4-16-16", "cnn-p2-8", "cnn-p2-4-8", "cnn-mnist")
# widths between and beyond the training widths, and one layer deeper than any training network
GENERALISE_HELDOUT_ARCHITECTURES = ("mlp-p4-24", "mlp-p4-48", "mlp-p4-16-16-16", "cnn-p2-6-12", "cnn-p2-12-24",
                                    "cnn-p2-4-8-16")
SPLIT_SEED = 0
TASK_SPLIT_FRACTIONS = {"heldout_task": 0.15, "validation": 0.10}
CHECKPOINT_SPLITS = MODEL_SPLITS  # the corpus's model splits

# Colour inversion is used on digits only: on MNIST-5k, 784-input MLPs trained with Adam collapse on inverted
# images (mean inputs ~0.87 move every first-layer pre-activation together; mlp-784-16 reached a mean test
# accuracy of 0.72, some runs chance, in an earlier full build), so MNIST's transforms are transpose and hflip.
# preset -> task families {family: (dataset, num_classes choices, transform, count)} and architecture plan
# {architecture: (seeds, fraction of its dataset's tasks)}.
PRESETS: dict[str, dict] = {
    "full": {
        "families": {
            "mnist-4class": ("mnist", (4,), "none", 96),
            "mnist-kclass": ("mnist", (2, 3, 5, 6, 7, 8, 9, 10), "none", 32),
            "mnist-hflip": ("mnist", (4,), "hflip", 12),
            "mnist-transpose": ("mnist", (4,), "transpose", 12),
            "digits": ("digits", (4, 4, 2, 3, 5, 10), "none", 14),
            "digits-invert": ("digits", (4,), "invert", 3),
            "digits-transpose": ("digits", (4,), "transpose", 3),
        },
        "architectures": {"mlp-784-32": (4, 1.0), "mlp-784-16": (3, 1.0), "mlp-784-64": (3, 1.0),
                          "mlp-784-32-32": (3, 1.0), "cnn-mnist": (3, 0.5), "mlp-784-48": (3, 0.25),
                          "mlp-64-32": (4, 1.0), "cnn-digits": (3, 1.0)},
    },
    # what a generator can learn from (DESIGN.md section 1): one architecture, one shared initialisation
    # for every checkpoint (so a smooth map from instruction to weights exists), many ordered 4-class tasks
    "shared": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 1500)},
        "architectures": {"cnn-mnist": (2, 1.0)},
        "inits": ("shared-0",),
    },
    # evaluation only: the same architecture and initialisation with 3-, 5- and 6-class heads, layouts a
    # prior trained on "shared" (4 classes) never saw
    "shared-heads": {
        "families": {"mnist-kclass": ("mnist", (3, 5, 6), "none", 60)},
        "architectures": {"cnn-mnist": (2, 1.0)},
        "inits": ("shared-0",),
    },
    # the README's main job: the "shared" recipe at a size whose whole chain runs in minutes
    "demo": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 480), "mnist-hflip": ("mnist", (4,), "hflip", 24)},
        "architectures": {"cnn-mnist": (1, 1.0)},
        "inits": ("shared-0",),
        # digits 8 and 9 appear in no train/validation/heldout_task task: 24 tasks with them are "heldout_class"
        "heldout_classes": {"mnist": (8, 9)},
        "heldout_class_tasks": 24,
        # horizontally flipped digits, a transform no other task uses: every task of this family is "heldout_dataset"
        "heldout_families": ("mnist-hflip",),
    },
    # one generator for many architectures: six trained architectures (MLPs and CNNs of several widths and depths,
    # heads of 2-8 classes) from one nested shared initialisation; six held-out ones (checkpoints on ~12 % of the
    # tasks each, evaluation only); unseen digits 8 and 9 and horizontally flipped digits as in "demo"
    "generalise": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 300),
                     "mnist-kclass": ("mnist", (2, 3, 5, 6, 7, 8), "none", 120),
                     "mnist-hflip": ("mnist", (4,), "hflip", 30)},
        "architectures": {**{a: (1, 1.0) for a in GENERALISE_TRAIN_ARCHITECTURES},
                          **{a: (1, 0.12) for a in GENERALISE_HELDOUT_ARCHITECTURES}},
        "heldout_architectures": GENERALISE_HELDOUT_ARCHITECTURES,
        "inits": ("shared-0",), "init_style": "nested",
        "heldout_classes": {"mnist": (8, 9)}, "heldout_class_tasks": 30, "heldout_families": ("mnist-hflip",),
    },
    # tests: the "generalise" recipe with two trained and one held-out architecture, every model split present
    "tiny-generalise": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 3), "mnist-hflip": ("mnist", (4,), "hflip", 1)},
        "architectures": {"mlp-p4-16": (1, 1.0), "cnn-p2-4-8": (1, 1.0), "mlp-p4-24": (1, 0.5)},
        "heldout_architectures": ("mlp-p4-24",),
        "inits": ("shared-0",), "init_style": "nested",
        "heldout_classes": {"mnist": (8, 9)}, "heldout_class_tasks": 1, "heldout_families": ("mnist-hflip",),
    },
    "tiny": {
        "families": {"mnist-4class": ("mnist", (4,), "none", 3), "mnist-hflip": ("mnist", (4,), "hflip", 1),
                     "digits": ("digits", (3,), "none", 1)},
        "architectures": {"mlp-784-16": (3, 1.0), "mlp-784-48": (2, 0.5), "mlp-64-32": (2, 1.0)},
    },
}



def _stable_int(*parts) -> int:
    """A process-independent integer hash of `parts` (Python's `hash` is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def make_tasks(preset: str = "full", seed: int = SPLIT_SEED) -> list[dict]:
    """The zoo's deterministic task list with families and task splits.

    A preset may hold out classes (`"heldout_classes": {dataset: classes}`): no train, validation or
    heldout_task task contains them, and `"heldout_class_tasks"` tasks per family that do contain one get the split
    "heldout_class" (unseen classes, not only unseen orders of seen ones). Every task of a family in
    `"heldout_families"` gets the split "heldout_dataset" (data no training task used); it has no held-out class.

    Returns:
        One dict per task: `Task.to_dict()` plus `instruction`, `num_classes`, `family` and `split`
        ("train", "validation", "heldout_task" (`TASK_SPLIT_FRACTIONS` of each family, seeded), "heldout_class" or
        "heldout_dataset").
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
    rng = np.random.default_rng(seed)
    held_classes = PRESETS[preset].get("heldout_classes", {})
    held_families = PRESETS[preset].get("heldout_families", ())
    tasks, seen = [], set()
    for family, (dataset, sizes, transform, count) in PRESETS[preset]["families"].items():
        num_held = 0 if family in held_families else PRESETS[preset].get("heldout_class_tasks", 0)
        family_tasks, unseen_class_tasks = [], []
        while len(family_tasks) < count or (held_classes.get(dataset) and len(unseen_class_tasks) < num_held):
            k = sizes[(len(family_tasks) + len(unseen_class_tasks)) % len(sizes)]
            task = Task.make(dataset, rng.permutation(DATASETS[dataset]["num_classes"])[:k].tolist(), transform)
            if task.task_id in seen:
                continue
            entry = {**task.to_dict(), "instruction": task.task_text, "num_classes": task.num_classes,
                     "family": family, "split": "train"}
            if set(task.classes) & set(held_classes.get(dataset, ())):
                if len(unseen_class_tasks) < num_held:
                    seen.add(task.task_id)
                    unseen_class_tasks.append({**entry, "split": "heldout_class"})
            elif len(family_tasks) < count:
                seen.add(task.task_id)
                family_tasks.append(entry)
        order = rng.permutation(count)
        n_held = max(1, round(count * TASK_SPLIT_FRACTIONS["heldout_task"])) if count >= 3 else 0
        n_validation = round(count * TASK_SPLIT_FRACTIONS["validation"])
        for rank, i in enumerate(order):
            family_tasks[i]["split"] = ("heldout_task" if rank < n_held
                                        else "validation" if rank < n_held + n_validation else "train")
        if family in held_families:
            for task in family_tasks:
                task["split"] = "heldout_dataset"
        tasks += family_tasks + unseen_class_tasks
    for split in ("heldout_task", "validation"):  # tiny presets: still at least one task of each split
        if not any(t["split"] == split for t in tasks):
            next(t for t in tasks if t["split"] == "train" and t["dataset"] == "mnist")["split"] = split
    return tasks


def init_schedule(preset: str) -> tuple[str, ...]:
    """Initialisation of seed k of a preset: `init_schedule(preset)[k % len(...)]` (default `INIT_SCHEDULE`)."""
    return tuple(PRESETS[preset].get("inits", INIT_SCHEDULE))


def init_style(preset: str) -> str:
    """How a preset builds an initialisation: "default" (`torch.manual_seed(init_seed); build_model(...)`) or
    "nested" (`architectures.nested_init_`)."""
    return PRESETS[preset].get("init_style", "default")


def heldout_architectures(preset: str) -> tuple[str, ...]:
    """Architectures whose checkpoints are all "heldout_architecture" (the preset's, default
    `HELDOUT_ARCHITECTURES`)."""
    return tuple(PRESETS[preset].get("heldout_architectures", HELDOUT_ARCHITECTURES))


def plan_checkpoints(tasks: list[dict], preset: str = "full") -> list[dict]:
    """One job per (task, architecture, seed): ids, paths, init and split, in a fixed order."""
    jobs, schedule, style, held = [], init_schedule(preset), init_style(preset), heldout_architectures(preset)
    for task in tasks:
        for arch, (seeds, fraction) in PRESETS[preset]["architectures"].items():
            if ARCHITECTURE_DATASET[arch] != task["dataset"]:
                continue
            if fraction < 1.0 and _stable_int(arch, task["task_id"]) % 1000 >= fraction * 1000:
                continue
            split = "heldout_architecture" if arch in held else task["split"]
            for seed in range(seeds):
                init = schedule[seed % len(schedule)]
                init_seed = SHARED_INIT_SEEDS.get(init, _stable_int(task["task_id"], arch, seed))
                jobs.append({"id": f"{task['task_id']}--{arch}--seed{seed}",
                             "path": f"checkpoints/{arch}/{task['task_id']}--seed{seed}", "task": task,
                             "architecture": arch, "seed": seed, "init": init, "init_seed": init_seed,
                             "init_style": style, "split": split})
    return jobs

