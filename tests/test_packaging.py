"""Packaging: the core never imports the research fixtures; a wheel install (not editable) works on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("layout", "models", "conditioning", "data", "training", "generation", "adapters", "hub", "metrics", "utils",
        "cli")
FIXTURE_MODULES = ("hf_paramgen.research", "mlxtend", "sklearn")


def test_importing_the_core_imports_no_research_fixture_and_the_metric_loads_offline():
    """One subprocess (imports dominate): import the core and every public name, snapshot `sys.modules`; then load
    the `param_generation` metric with `evaluate` from its local folder, offline."""
    metric_dir = ROOT / "hf_paramgen" / "metrics" / "param_generation"
    code = (
        "import importlib, json, sys\n"
        "import hf_paramgen\n"
        f"for name in {CORE!r}:\n"
        "    module = importlib.import_module('hf_paramgen.' + name)\n"
        "    for public in getattr(module, '__all__', []):\n"
        "        getattr(module, public)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
        "import evaluate\n"
        f"metric = evaluate.load({str(metric_dir)!r})\n"
        "result = metric.compute(predictions=[0.8, 0.9], references=[1.0, 1.0], retrieval=[0.5, 0.5])\n"
        "print(json.dumps({k: round(v, 4) for k, v in result.items()}))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules, metric = map(json.loads, proc.stdout.strip().splitlines()[-2:])
    leaked = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FIXTURE_MODULES)]
    assert leaked == [], f"the core imported research fixtures: {leaked}"
    assert {f"hf_paramgen.{name}" for name in CORE} <= set(modules)
    assert metric["fraction_of_trained"] == 0.85 and metric["retrieval_gap_closed"] == 0.7


def test_no_core_module_imports_research_even_inside_a_function():
    """Static check of what the subprocess test cannot see: lazy imports in function bodies. (The CLI names research
    commands by module-path string, its one sanctioned way in.)"""
    import ast

    offenders = []
    for path in sorted((ROOT / "hf_paramgen").rglob("*.py")):
        if path.relative_to(ROOT / "hf_paramgen").parts[0] in ("research", "scale"):
            continue  # research fixtures (`scale`: the scale benchmark's zoo, codec and generator on ZooNets)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import | ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{a}" for a in names]
            if any("research" in n.split(".") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"core modules importing hf_paramgen.research: {offenders}"


def test_public_names_are_declared_and_importable():
    import importlib

    import hf_paramgen

    for name in ("hf_paramgen", *(f"hf_paramgen.{sub}" for sub in CORE if sub not in ("utils", "cli", "metrics"))):
        module = importlib.import_module(name)
        assert module.__all__, name
        missing = [public for public in module.__all__ if not hasattr(module, public)]
        assert missing == [], f"{name}.__all__ names {missing}, which it does not define"
    assert "ParamGenerator" in hf_paramgen.__all__ and "build_corpus" in hf_paramgen.__all__


def test_card_templates_are_package_data():
    from hf_paramgen.hub.cards import TEMPLATE_DIR, read_template

    assert TEMPLATE_DIR.parent == ROOT / "hf_paramgen" / "hub"
    assert {p.name for p in TEMPLATE_DIR.glob("*.md")} >= {"param_generator.md", "weight_corpus.md"}
    assert "{{ card_data }}" in read_template("weight_corpus.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"hf_paramgen.hub" = ["model_cards/*.md"]' in pyproject


# ------------------------------------------------------------------------------ wheel install (slow)
WHEEL_CHECK = r'''
import json, subprocess, sys, time
from pathlib import Path
import torch
from torch import nn
import hf_paramgen
from hf_paramgen.hub.cards import TEMPLATE_DIR, read_template

work = Path(sys.argv[1])
assert "site-packages" in hf_paramgen.__file__, hf_paramgen.__file__
assert "site-packages" in str(TEMPLATE_DIR) and (TEMPLATE_DIR / "weight_corpus.md").is_file()
assert "{{ card_data }}" in read_template("param_generator.md")

# a checkpoint with its param_layout.json -> `hf-paramgen build-corpus` (card rendered from the installed template)
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
from safetensors.torch import save_file
ckpt = work / "ckpt"
ckpt.mkdir()
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, ckpt / "model.safetensors")
(ckpt / "config.json").write_text(json.dumps({"kind": "custom"}))
(ckpt / "param_layout.json").write_text(hf_paramgen.ParamLayout.from_module(net).to_json())
out = subprocess.run(["hf-paramgen", "build-corpus", "--sources", str(ckpt), "--output_dir", str(work / "corpus"),
                      "--chunk_size", "8"], capture_output=True, text=True)
assert out.returncode == 0 and "1 models" in out.stdout, out.stderr[-2000:]
card = (work / "corpus" / "README.md").read_text()
assert "hf_paramgen weight corpus" in card and "models_from_local_folders: 1" in card, card[:3000]

# a tiny untrained generator saved by the installed package (the generator-folder format of tests/test_pipeline.py)
from hf_paramgen import ParamPriorConfig, ParamPriorForCausalLM, ParamTokenizer, ParamTokenizerConfig, SampleEncoder
from transformers import pipeline
target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
decoder = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2}
tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=4, codebook_size=16, codebook_dim=2, hidden_size=16,
                                          num_layers=1, max_tensors=8, max_chunks_per_tensor=16))
prior = ParamPriorForCausalLM(ParamPriorConfig(
    codebook_size=16, codes_per_chunk=1, condition_dim=8, max_condition_tokens=8, num_condition_types=12,
    max_tensors=8, max_chunks_per_tensor=16, transformer=decoder, max_position_embeddings=40, chunk_size=4,
    layouts={"tiny": hf_paramgen.ParamLayout.from_module(target).to_json()}, text_encoder="hashing:8",
    sample_encoders=["blobs"]))
gen = work / "generator"
prior.save_pretrained(gen)
tok.save_pretrained(gen / "param_tokenizer")
SampleEncoder(num_features=4, dim=8).save_pretrained(gen / "sample_encoders" / "blobs")
start = time.perf_counter()
pipe = pipeline("parameter-generation", model=str(gen))
X, y = torch.randn(12, 4), torch.arange(12) % 3
out = pipe({"target": target, "task_text": "classify three blobs", "validation": (X, y)}, num_candidates=2, seed=0)
assert type(out["model"]) is nn.Sequential and out["model"] is not target and len(out["scores"]) == 2
print("PIPELINE_OK", round(time.perf_counter() - start, 2))
'''


@pytest.mark.slow
@pytest.mark.timeout(1800)  # pip installs every dependency into the fresh venv (from the pip cache when warm)
def test_wheel_install_runs_the_cli_cards_and_the_pipeline(tmp_path):
    """`pip install .` (not editable) into a fresh venv, from a copy of the tree (no build output left here)."""
    start = time.perf_counter()
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "outputs", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip, py = venv / "bin" / "pip", venv / "bin" / "python"
    run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kw)  # noqa: E731
    proc = run(str(pip), "install", "-q", "torch==2.13.0")  # the CPU wheel (local), never a CUDA build
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(str(pip), "install", "-q", str(src))
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    proc = run(str(venv / "bin" / "hf-paramgen"), "--help", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "build-corpus" in proc.stdout, proc.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    proc = run(str(py), "-c", WHEEL_CHECK, str(work), env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "PIPELINE_OK" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-3000:])
    print(f"wheel install + checks: {time.perf_counter() - start:.1f} s")
