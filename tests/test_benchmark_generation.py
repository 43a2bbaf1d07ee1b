"""`examples/benchmark_generation.py` with no generator builds the whole chain (zoo -> corpus -> ParamTokenizer ->
one prior for several architectures -> evaluation) and writes every key the generalisation issue names."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("seen_tasks", "heldout_tasks", "heldout_classes", "heldout_dataset", "heldout_architectures")
SPLIT_KEYS = ("generated_zero_shot", "trained", "random_init", "retrieval", "permuted_retrieval",
              "class_row_composition", "prototype_head", "linear_hypernetwork", "shuffled_instruction",
              "novelty_ratio", "num_tasks", "ci95", "rows")


@pytest.mark.timeout(600)
def test_benchmark_small_builds_everything_and_reuses_it(tmp_path):
    out, json_path = tmp_path / "bench", tmp_path / "out.json"
    cmd = [sys.executable, str(ROOT / "examples" / "benchmark_generation.py"), "--small", "--output_dir", str(out),
           "--json", str(json_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(json_path.read_text())
    for split in SPLITS:
        missing = [k for k in SPLIT_KEYS if k not in result[split]]
        assert not missing, f"{split} lacks {missing}"
        assert result[split]["num_tasks"] >= 1, split
    assert result["num_architectures_trained"] == 2 and result["num_architectures_heldout"] == 1
    assert result["architectures_heldout"] == ["mlp-p4-24"]
    generator_layouts = json.loads((out / "generator" / "config.json").read_text())["layouts"]
    assert {name.rsplit(":", 1)[0] for name in generator_layouts} == {"mlp-p4-16", "cnn-p2-4-8"}  # never held out
    assert result["heldout_architectures"]["generated_zero_shot"] is not None
    row = result["heldout_architectures"]["rows"][0]
    assert row["architecture"] == "mlp-p4-24" and row["permuted_retrieval"] is None
    assert row["prototype_head"] is not None and "untrained" in row["notes"]["prototype_head"]
    assert {t["split"] for t in result["targets"]} == set(SPLITS) and "stage_seconds" in result
    assert "| heldout_classes |" in first.stdout  # the targets table
    for split in SPLITS:  # the diffusion generator beside the autoregressive one, on the same rows
        for key in ("diffusion_generated_zero_shot", "diffusion_novelty_ratio", "diffusion_seconds_per_network",
                    "autoregressive_seconds_per_network"):
            assert key in result[split], (split, key)
        assert result[split]["diffusion_generated_zero_shot"] is not None, split
        assert all("diffusion_generated_zero_shot" in row for row in result[split]["rows"])
    assert result["diffusion_sampling_steps"] == 5 and result["diffusion_scheduler"] == "ddim"
    assert result["diffusion_training_seconds"] > 0 and result["autoregressive_training_seconds"] > 0
    assert (out / "diffusion_generator" / "model_index.json").is_file()
    assert "| s/net AR | s/net diffusion |" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing finished output") == 5  # zoo, corpus, ParamTokenizer, prior, diffusion


@pytest.mark.slow  # a second small benchmark build (the default test above already exercises the diffusion rows)
@pytest.mark.timeout(600)
def test_train_diffusion_example_merges_diffusion_rows_into_a_copy(tmp_path):
    """`examples/train_diffusion.py --benchmark_dir` trains (resumable) and evaluates only the diffusion rows into a
    copy of results.json, leaving the original untouched."""
    out = tmp_path / "bench"
    bench = [sys.executable, str(ROOT / "examples" / "benchmark_generation.py"), "--small", "--output_dir", str(out)]
    assert subprocess.run(bench, capture_output=True, text=True, cwd=tmp_path, timeout=600).returncode == 0
    original = (out / "results.json").read_text()
    example = [sys.executable, str(ROOT / "examples" / "train_diffusion.py"), "--benchmark_dir", str(out)]
    trained = subprocess.run([*example, "--small"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.strip().splitlines()[-1])["training_seconds_total"] > 0
    merged = tmp_path / "merged.json"
    evaluated = subprocess.run([*example, "--evaluate", "--json", str(merged), "--num_inference_steps", "3"],
                               capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(merged.read_text())
    assert result["diffusion_sampling_steps"] == 3 and (out / "results.json").read_text() == original
    assert all(result[s]["diffusion_generated_zero_shot"] is not None for s in SPLITS)
    assert "| seen_tasks |" in evaluated.stdout
