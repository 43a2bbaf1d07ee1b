"""Hub round trips over real HTTP against the Hub emulator (see `hub_endpoint` in conftest.py)."""

from __future__ import annotations

import json
import random
import textwrap

import pytest

from hf_paramgen.hub.cards import fetch_snapshot, push_folder, read_template, render_card


def _write_folder(folder, config: dict, weights: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "weights.bin").write_bytes(weights)
    return folder


def test_upload_folder_then_download_is_byte_identical_and_revisions_pin_old_bytes(hub_repo_id, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi()
    rng = random.Random(0)
    weights_v1, weights_v2 = rng.randbytes(3_000_000), rng.randbytes(3_000_000)
    folder = _write_folder(tmp_path / "v1", {"width": 1}, weights_v1)
    api.create_repo(hub_repo_id)
    sha_v1 = api.upload_folder(folder_path=folder, repo_id=hub_repo_id, commit_message="v1").oid

    siblings = {s.rfilename: s for s in api.model_info(hub_repo_id, files_metadata=True).siblings}
    assert siblings["sub/weights.bin"].lfs is not None and siblings["sub/weights.bin"].lfs.size == 3_000_000
    assert siblings["config.json"].lfs is None  # small text stays a regular git file

    snapshot = snapshot_download(hub_repo_id)
    assert open(f"{snapshot}/sub/weights.bin", "rb").read() == weights_v1
    assert json.loads(open(f"{snapshot}/config.json").read()) == {"width": 1}
    assert open(hf_hub_download(hub_repo_id, "sub/weights.bin"), "rb").read() == weights_v1

    _write_folder(tmp_path / "v2", {"width": 2}, weights_v2)
    sha_v2 = api.upload_folder(folder_path=tmp_path / "v2", repo_id=hub_repo_id, commit_message="v2").oid
    assert sha_v2 != sha_v1 and len(sha_v2) == 40
    assert api.model_info(hub_repo_id).sha == sha_v2
    assert open(hf_hub_download(hub_repo_id, "sub/weights.bin"), "rb").read() == weights_v2
    assert open(hf_hub_download(hub_repo_id, "sub/weights.bin", revision=sha_v1), "rb").read() == weights_v1
    old = snapshot_download(hub_repo_id, revision=sha_v1)
    assert json.loads(open(f"{old}/config.json").read()) == {"width": 1}


def test_push_folder_writes_card_and_fetch_snapshot_pins_revision(hub_repo_id, tmp_path):
    from huggingface_hub import HfApi

    folder = _write_folder(tmp_path / "ckpt", {"width": 3}, b"\0\1" * 1000)
    (folder / "README.md").write_text("stale card\n")
    card = render_card("---\n{{ card_data }}\n---\n# {{ title }}\n", {"license": "mit"}, title="Tiny")
    sha = push_folder(folder, hub_repo_id, card=card, commit_message="first")
    assert HfApi().model_info(hub_repo_id).sha == sha
    (folder / "config.json").write_text(json.dumps({"width": 4}))
    sha2 = push_folder(folder, hub_repo_id, card=card)

    first, latest = fetch_snapshot(hub_repo_id, revision=sha), fetch_snapshot(hub_repo_id)
    assert json.loads((first / "config.json").read_text()) == {"width": 3}
    assert json.loads((latest / "config.json").read_text()) == {"width": 4}
    assert latest.name == sha2
    readme = (latest / "README.md").read_text()
    assert "license: mit" in readme and "# Tiny" in readme and "stale" not in readme
    only_card = fetch_snapshot(hub_repo_id, allow_patterns=["README.md"])
    assert only_card == latest and (only_card / "README.md").exists()


def test_dataset_configs_push_to_hub_and_load_dataset_round_trip(hub_repo_id):
    from datasets import Dataset, Features, List, Value, load_dataset

    chunks = Dataset.from_dict(
        {"model_id": [0, 0, 1], "chunk": [[0.5, -1.25], [3.0, 0.0], [1e-3, 7.5]]},
        features=Features({"model_id": Value("int32"), "chunk": List(Value("float32"))}),
    )
    models = Dataset.from_dict({"model_id": [0, 1], "instruction": ["classify 0 vs 1", "classify 2 vs 3"]})
    chunks.push_to_hub(hub_repo_id, config_name="chunks", split="train")
    models.push_to_hub(hub_repo_id, config_name="models", split="train")

    chunks_back = load_dataset(hub_repo_id, "chunks", split="train")
    models_back = load_dataset(hub_repo_id, "models", split="train")
    assert chunks_back.features == chunks.features and chunks_back.to_dict() == chunks.to_dict()
    assert models_back.features == models.features and models_back.to_dict() == models.to_dict()


def test_transformers_push_to_hub_then_from_pretrained_gives_identical_weights(hub_repo_id):
    import torch
    from transformers import AutoModel, BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = AutoModel.from_config(config)
    model.push_to_hub(hub_repo_id)
    loaded = AutoModel.from_pretrained(hub_repo_id)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_offline_subprocess_resolves_cached_repo_and_explains_uncached_one(hub_repo_id, tmp_path, run_python):
    from huggingface_hub import HfApi

    folder = _write_folder(tmp_path / "ckpt", {"width": 5}, b"weights")
    sha = push_folder(folder, hub_repo_id)
    never_downloaded = hub_repo_id + "-other"
    push_folder(folder, never_downloaded)
    online = fetch_snapshot(hub_repo_id)
    assert HfApi().model_info(never_downloaded).sha  # exists on the Hub, just not in the cache

    code = textwrap.dedent(f"""
        from hf_paramgen.hub.cards import fetch_snapshot
        print("PATH", fetch_snapshot({hub_repo_id!r}))
        try:
            fetch_snapshot({never_downloaded!r})
        except OSError as err:
            print("ERROR", type(err).__name__, str(err).replace(chr(10), " "))
    """)
    result = run_python(code, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("PATH", "ERROR")))
    assert lines["PATH"] == str(online) and online.name == sha
    assert never_downloaded in lines["ERROR"] and "HF_HUB_OFFLINE" in lines["ERROR"]


def test_fetch_snapshot_unknown_repo_or_revision_raises_clear_value_error(hub_repo_id, hub_endpoint, tmp_path):
    with pytest.raises(ValueError, match="Repository not found") as info:
        fetch_snapshot("tester/does-not-exist")
    assert "tester/does-not-exist" in str(info.value) and hub_endpoint in str(info.value)
    assert "HF_ENDPOINT" in str(info.value)

    push_folder(_write_folder(tmp_path / "ckpt", {"width": 6}, b"w"), hub_repo_id)
    with pytest.raises(ValueError, match="Revision not found") as info:
        fetch_snapshot(hub_repo_id, revision="no-such-branch")
    assert hub_repo_id in str(info.value) and "'no-such-branch'" in str(info.value)
    with pytest.raises(ValueError, match="Revision not found"):
        fetch_snapshot(hub_repo_id, revision="0" * 40)


def test_client_raises_hub_specific_errors_for_unknown_repo_revision_and_file(hub_repo_id, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    push_folder(_write_folder(tmp_path / "ckpt", {"width": 7}, b"w"), hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/does-not-exist", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, "config.json", revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(hub_repo_id, "missing.json")
    with pytest.raises(RepositoryNotFoundError):  # a model repo id is not a dataset repo id
        hf_hub_download(hub_repo_id, "config.json", repo_type="dataset")


def test_read_template_still_lists_known_templates_on_a_miss():
    with pytest.raises(FileNotFoundError, match="known templates"):
        read_template("no_such_template.md")
