"""hub_scripts/ against the loopback Hub emulator: push a generator and a corpus, build a corpus from Hub repos."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_corpus import make_checkpoint
from test_pipeline import make_generator, tiny_net

import hf_paramgen  # noqa: F401  (registers the task)
from hf_paramgen.data.corpus import build_corpus, corpus_model_weights, load_corpus
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.research.architectures import ZooNet

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """Import `hub_scripts/<name>.py` as a module."""
    spec = importlib.util.spec_from_file_location(f"hub_scripts_{name}", ROOT / "hub_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pushed_generator_is_pinned_carded_and_runs_from_its_repo_id(hub_repo_id, tmp_path, capsys):
    from huggingface_hub import HfApi, hf_hub_download
    from transformers import pipeline

    folder = make_generator(tmp_path / "gen")
    (tmp_path / "eval.json").write_text(json.dumps({"heldout_task": {"accuracy": 0.61, "models": 4}}))
    (tmp_path / "manifest.json").write_text(json.dumps({"checkpoints": [
        {"path": "a", "architecture": "mlp-64-32", "split": "train"},
        {"path": "b", "architecture": "cnn", "split": "test"}]}))
    argv = ["--generator", str(folder), "--repo_id", hub_repo_id, "--corpus", "tester/corpus@abc123",
            "--eval_json", str(tmp_path / "eval.json"), "--zoo_manifest", str(tmp_path / "manifest.json")]
    assert script("push_generator").main(argv) == 0
    final_sha = capsys.readouterr().out.strip().splitlines()[-1]
    api = HfApi()
    assert api.model_info(hub_repo_id).sha == final_sha
    config = json.loads(Path(hf_hub_download(hub_repo_id, "config.json")).read_text())
    pinned = config["param_tokenizer_revision"]
    assert config["param_tokenizer_repo_id"] == hub_repo_id and pinned != final_sha and len(pinned) == 40
    assert "param_tokenizer/config.json" in api.list_repo_files(hub_repo_id, revision=pinned)
    card = Path(hf_hub_download(hub_repo_id, "README.md")).read_text()
    for expected in ("`tester/corpus` at revision `abc123`", pinned, "| heldout_task | 0.61 | 4 |", "2 checkpoints",
                     "codebook_size"):
        assert expected in card, expected

    pipe = pipeline("parameter-generation", model=hub_repo_id)
    out = pipe({"target": tiny_net(), "task_text": "classify"}, seed=0)
    assert isinstance(out["model"], ZooNet)
    local = pipeline("parameter-generation", model=str(folder))({"target": tiny_net(), "task_text": "classify"}, seed=0)
    for name, tensor in out["state_dict"].items():  # same weights as the local folder: the pinned tokenizer is the one
        torch.testing.assert_close(tensor, local["state_dict"][name])
    from hf_paramgen.generation.generator import ParamGenerator

    by_id = ParamGenerator.from_pretrained(hub_repo_id)  # the pinned ParamTokenizer revision, fetched by sha
    for name, tensor in ParamGenerator.from_pretrained(folder).param_tokenizer.state_dict().items():
        torch.testing.assert_close(by_id.param_tokenizer.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(OSError, match="no-such-branch"):
        pipeline("parameter-generation", model=hub_repo_id, revision="no-such-branch")


def test_unknown_generator_repo_fails_clearly(hub_endpoint):
    from transformers import pipeline

    with pytest.raises(OSError, match="tester/no-such-generator"):
        pipeline("parameter-generation", model="tester/no-such-generator")


def test_pushed_corpus_loads_back_identical(hub_repo_id, tmp_path, capsys):
    from datasets import load_dataset

    ckpts = [make_checkpoint(tmp_path / f"c{i}", "mlp-64-32", seed=i) for i in range(2)]
    corpus = build_corpus(ckpts, tmp_path / "corpus", chunk_size=32)
    assert script("push_corpus").main(["--corpus", str(tmp_path / "corpus"), "--repo_id", hub_repo_id]) == 0
    assert len(capsys.readouterr().out.strip()) == 40
    back = load_corpus(hub_repo_id)
    for name in ("chunks", "models"):
        assert back[name].to_list() == corpus[name].to_list()
    assert load_dataset(hub_repo_id, "models", split="train")["model_id"] == corpus["models"]["model_id"]


def test_corpus_from_two_hub_repos_pins_the_requested_revision(hub_endpoint, hub_repo_id, tmp_path, capsys):
    from huggingface_hub import HfApi

    api = HfApi()
    repo_a, repo_b = f"{hub_repo_id}-a", f"{hub_repo_id}-b"
    for repo in (repo_a, repo_b):
        api.create_repo(repo)
    v1 = make_checkpoint(tmp_path / "a1", "mlp-64-32", seed=1)
    sha_v1 = api.upload_folder(folder_path=v1, repo_id=repo_a).oid
    api.upload_folder(folder_path=make_checkpoint(tmp_path / "a2", "mlp-64-32", seed=2), repo_id=repo_a)  # newer main
    api.upload_folder(folder_path=make_checkpoint(tmp_path / "b", "cnn-digits", seed=3), repo_id=repo_b)
    out = tmp_path / "corpus"
    assert script("build_corpus_from_hub").main(["--repo_ids", f"{repo_a}@{sha_v1}", repo_b, "--output_dir", str(out),
                                                 "--chunk_size", "32"]) == 0
    corpus = load_corpus(out)
    rows = {r["repo_id"]: r for r in corpus["models"].to_list()}
    assert rows[repo_a]["revision"] == sha_v1 and len(rows[repo_b]["revision"]) == 40
    weights, layout = corpus_model_weights(corpus, f"{repo_a}@{sha_v1}")
    expected = ZooNet.from_pretrained(v1).state_dict()
    torch.testing.assert_close(weights, ParamLayout.from_state_dict(expected).flatten(expected))
    assert sha_v1 in (out / "README.md").read_text()
    push_generator = script("push_generator")
    args = argparse.Namespace(
        corpus="tester/corpus@c0ffee", corpus_dir=str(out), zoo_manifest=None, train_log=None, eval_json=None)
    config = {"param_tokenizer_repo_id": "o/g", "param_tokenizer_revision": "1" * 40, "param_tokenizer_subfolder": "t"}
    card = str(push_generator.render_generator_card(config, "o/g", args))
    assert f"| `{repo_a}` | `{sha_v1}` |" in card and f"| `{repo_b}` | `{rows[repo_b]['revision']}` |" in card

    assert script("build_corpus_from_hub").main(["--repo_ids", "tester/no-such-zoo", "--output_dir",
                                                 str(tmp_path / "bad")]) == 1
    assert "tester/no-such-zoo" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_pushed_generator_runs_by_repo_id_in_fresh_process_with_remote_code(hub_repo_id, tmp_path, run_python):
    generator = make_generator(tmp_path / "g")
    assert script("push_generator").main(["--generator", str(generator), "--repo_id", hub_repo_id]) == 0
    code = f"""
import sys, torch
from transformers import pipeline
pipe = pipeline(model={hub_repo_id!r}, trust_remote_code=True)
out = pipe({{"target": torch.nn.Linear(4, 3), "task_text": "x"}}, seed=0)
assert not any(m.startswith("hf_paramgen") for m in sys.modules)
print("OK", sorted(out["state_dict"]))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK ['bias', 'weight']" in result.stdout
    # offline, from the snapshot alone: the ParamTokenizer pinned to the first commit resolves to the snapshot's
    # own identical copy (same sha256), and loading prints nothing on stdout
    fresh = {"HF_HOME": str(tmp_path / "fresh_hf_home")}  # a cache holding the snapshot of main only
    downloaded = run_python(f"from huggingface_hub import snapshot_download; snapshot_download({hub_repo_id!r})", fresh)
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    offline = {**fresh, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_python(code, env=offline)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "OK ['bias', 'weight']\n"
    result = run_python(f"from hf_paramgen.generation import ParamGenerator; ParamGenerator.from_pretrained("
                        f"{hub_repo_id!r}); print('LOADED')", env=offline)
    assert result.returncode == 0 and result.stdout == "LOADED\n", result.stderr[-3000:]
