"""`examples/benchmark_lora.py --small`: tiny mnist-mlp adapter zoo, baselines only, JSON keyed by base."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmark_lora.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_bench")
    bench = _load_script()
    out = tmp / "results.json"
    assert bench.main(["--json", str(out), "--small", "--work_root", str(tmp / "work")]) == 0
    return bench, json.loads(out.read_text())


def test_small_run_writes_every_metric_keyed_by_base(small_results):
    bench, results = small_results
    assert list(results) == ["mnist-mlp"]
    row = results["mnist-mlp"]
    assert set(bench.KEYS) <= set(row)
    assert row["num_eval_tasks"] == 2


def test_small_run_reports_null_generated_with_reason(small_results):
    _, results = small_results
    row = results["mnist-mlp"]
    assert row["generated"] is None and row["seconds_per_adapter"] is None
    assert "small" in row["generated_reason"]


def test_small_run_baselines_are_accuracies_and_adapters_beat_base(small_results):
    _, results = small_results
    row = results["mnist-mlp"]
    for key in ("base_only", "trained_adapter", "retrieval"):
        assert 0.0 <= row[key] <= 1.0, key
    # permuted-label tasks: the base alone gets the non-swapped digits only; a trained adapter learns the swap
    assert row["trained_adapter"] > row["base_only"] + 0.1
    assert row["seconds_to_train_adapter"] > 0
    # retrieval never returns the evaluated task's own adapter
    assert all(src != dst for src, dst in row["retrieved"].items())


def test_generate_minilm_adapter_example_names_what_is_wrong(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("generate_minilm_adapter",
                                                  SCRIPT.with_name("generate_minilm_adapter.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit):
        example.main(["--topics", "networking", "mathematics", "cooking", "concurrency"])
    assert "unknown topics ['cooking']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.main(["--topics", "networking", "mathematics", "concurrency", "data formats",
                      "--generator", str(tmp_path / "missing")])
    assert f"no generator at {tmp_path / 'missing'}" in capsys.readouterr().err


def test_tasks_are_grouped_by_how_many_classes_no_training_task_has():
    from types import SimpleNamespace

    bench = _load_script()
    tasks = {"a": {"classes": ["networking", "mathematics", "concurrency", "data formats"]},
             "b": {"classes": ["testing and debugging", "mathematics", "concurrency", "data formats"]},
             "c": {"classes": ["networking", "data formats", "concurrency", "mathematics"]}}
    zb = SimpleNamespace(base="minilm", manifest={"preset": "new-topics"}, tasks=tasks)
    row = {"generated_per_task": {"a": 0.7, "b": 0.5, "c": 0.8}, "trained_per_task": {"a": 0.8, "b": 0.9, "c": 0.84}}
    groups = bench.by_unseen_classes(zb, row)["by_unseen_classes"]
    assert groups == {"1": {"num_tasks": 2, "generated": 0.75, "trained_adapter": 0.82},
                      "2": {"num_tasks": 1, "generated": 0.5, "trained_adapter": 0.9}}
    zoo = SimpleNamespace(base="minilm", manifest={"preset": "shared"}, tasks=tasks)
    assert bench.by_unseen_classes(zoo, row) == {}
