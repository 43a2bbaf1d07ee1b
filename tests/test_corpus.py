import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from huggingface_hub import DatasetCard, ModelCard, ModelCardData
from safetensors.torch import load_file, save_file

from hf_paramgen.data.checkpoints import LAYOUT_FILE, CorpusError, declared_layout, load_checkpoint
from hf_paramgen.data.corpus import build_corpus, chunk_batch, cli_build_corpus, corpus_model_weights, load_corpus
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.research.architectures import build_model

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path, architecture: str = "mlp-64-32", num_classes: int = 4, seed: int = 0,
                    split: str = "train", layout_file: bool = True) -> Path:
    """A zoo-style checkpoint: config.json + model.safetensors + param_layout.json + README.md card with task
    metadata (`layout_file=False`: a zoo folder saved before zoos recorded their layout)."""
    torch.manual_seed(seed)
    model = build_model(architecture, num_classes)
    model.save_pretrained(folder)
    if layout_file:
        (folder / LAYOUT_FILE).write_text(ParamLayout.from_module(model).to_json())
    meta = ModelCardData(
        task_id=f"digits-{seed}", instruction=f"classify digits 0-{num_classes - 1}", dataset="digits",
        classes=list(range(num_classes)), transform="none", num_classes=num_classes, architecture=architecture,
        seed=seed, init="default", training={"epochs": 1}, val_accuracy=0.5 + seed / 100, test_accuracy=0.4,
        split=split,
    )
    card = ModelCard.from_template(meta, template_str="---\n{{ card_data }}\n---\n# zoo checkpoint\n")
    card.save(folder / "README.md")
    return folder


@pytest.fixture
def ckpts(tmp_path):
    specs = [("mlp-64-32", "train"), ("cnn-digits", "train"), ("mlp-64-32", "validation"),
             ("cnn-digits", "heldout_task")]
    return [make_checkpoint(tmp_path / f"ckpt{i}", arch, seed=i, split=split) for i, (arch, split) in enumerate(specs)]


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.tmp")]


def test_corpus_tables_have_one_row_per_chunk_and_per_model(ckpts, tmp_path):
    corpus = build_corpus(ckpts[:2], tmp_path / "corpus", chunk_size=16)
    chunks, models = corpus["chunks"], corpus["models"]
    assert chunks.features["chunk"].length == 16 and chunks.features["scale"].dtype == "float32"
    assert models["model_id"] == ["ckpt0", "ckpt1"]
    assert models["split"] == ["train", "train"] and models["architecture"] == ["mlp-64-32", "cnn-digits"]
    assert sum(models["num_chunks"]) == len(chunks) and models["first_chunk"] == [0, models["num_chunks"][0]]
    assert json.loads(models["task"][1])["task_id"] == "digits-1" and models["val_accuracy"][1] == 0.51
    _, layout, _ = load_checkpoint(ckpts[0])
    assert models["num_params"][0] == layout.num_params == 64 * 32 + 32 + 32 * 4 + 4
    assert json.loads(models["metadata"][0])["training"] == {"epochs": 1}
    first = chunks.select(range(models["num_chunks"][0]))
    assert first["tensor_index"][:129] == [0] * 128 + [1]  # 2048 weights = 128 chunks, then the bias
    assert first["num_valid"][128:130] == [16, 16] and first["num_valid"][-1] == 4  # 4-value bias, zero padded
    assert first["chunk"][-1][4:] == [0.0] * 12
    assert first["scale"][0] == pytest.approx(math.sqrt(64)) and first["scale"][128] == 1.0
    assert sum(first["num_valid"]) == layout.num_params


@pytest.mark.parametrize("aggregation", ["layer", "architecture"])
def test_model_weights_reassemble_exactly_from_chunks(ckpts, tmp_path, aggregation):
    build_corpus(ckpts[:2], tmp_path / "corpus", chunk_size=7, aggregation=aggregation)
    corpus = load_corpus(tmp_path / "corpus")
    for ckpt in ckpts[:2]:
        state_dict, layout, _ = load_checkpoint(ckpt)
        weights, corpus_layout = corpus_model_weights(corpus, ckpt.name)
        assert corpus_layout == layout
        torch.testing.assert_close(weights, layout.flatten(state_dict), rtol=0, atol=0)
    with pytest.raises(KeyError, match="nope"):
        corpus_model_weights(corpus, "nope")


def test_chunk_batch_matches_numpy_formatting(ckpts, tmp_path):
    chunks = build_corpus(ckpts[:2], tmp_path / "corpus", chunk_size=16)["chunks"]
    chunks = chunks.shuffle(seed=0)  # with an indices map
    indices = [5, 0, 200, 5, len(chunks) - 1]
    batch, expected = chunk_batch(chunks, indices), chunks.with_format("numpy")[indices]
    assert batch["chunk"].shape == (5, 16) and batch["chunk"].dtype == "float32"
    for name, values in batch.items():
        assert (values == expected[name]).all(), name


def test_corpus_folder_has_card_config_and_no_temp_files(ckpts, tmp_path):
    build_corpus(ckpts[:2], tmp_path / "corpus", chunk_size=16)
    card = DatasetCard.load(tmp_path / "corpus" / "README.md")
    assert {c["config_name"] for c in card.data.configs} == {"chunks", "models"}
    provenance = card.data.provenance  # a summary; per-model provenance is the models table
    assert provenance["models_per_split"] == {"train": 2} and provenance["num_tasks"] == 2
    assert provenance["models_per_architecture"] == {"mlp-64-32": 1, "cnn-digits": 1}
    assert provenance["models_from_local_folders"] == 2 and provenance["models_from_hub_repos"] == 0
    assert provenance["hub_repos"] == []
    assert card.data.size_categories == ["n<1K"] and "hf_paramgen" in card.data.tags
    assert "cnn-digits" in card.text and "| `train` | 2 |" in card.text
    config = json.loads((tmp_path / "corpus" / "corpus_config.json").read_text())
    assert config == {"chunk_size": 16, "aggregation": "layer", "num_models": 2}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_zoo_dir_expands_manifest_and_filters_splits(ckpts, tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for ckpt in ckpts:
        ckpt.rename(zoo / ckpt.name)
    manifest = {"zoo_build_seconds": 1.0, "checkpoints": [{"path": c.name, "split": None} for c in ckpts]}
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    corpus = build_corpus([zoo], tmp_path / "corpus", chunk_size=32, splits=["train", "validation"])
    assert corpus["models"]["model_id"] == ["ckpt0", "ckpt1", "ckpt2"]  # split read from each card
    assert set(corpus["chunks"]["split"]) == {"train", "validation"}
    rc = cli_build_corpus(["--zoo_dir", str(zoo), "--splits", "heldout_task", "--output_dir", str(tmp_path / "c2")])
    assert rc == 0 and load_from_disk(str(tmp_path / "c2"))["models"]["model_id"] == ["ckpt3"]


def test_transformers_checkpoint_with_tied_weights_uses_its_declared_layout(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=40, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    state_dict, layout, info = load_checkpoint(tmp_path / "llama")
    assert "lm_head.weight" not in layout.names and layout.names[0] == "model.embed_tokens.weight"
    corpus = build_corpus([tmp_path / "llama"], tmp_path / "corpus", chunk_size=16)
    assert corpus["models"]["architecture"] == ["LlamaForCausalLM"] and corpus["models"]["split"] == ["train"]
    weights, _ = corpus_model_weights(corpus, "llama")
    torch.testing.assert_close(weights, layout.flatten(state_dict), rtol=0, atol=0)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "llama")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="4KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    sharded_state_dict, sharded_layout, _ = load_checkpoint(tmp_path / "sharded")
    assert sharded_layout == layout
    torch.testing.assert_close(sharded_layout.flatten(sharded_state_dict), weights, rtol=0, atol=0)


def test_peft_adapter_folders_enter_with_their_recorded_layout(tmp_path):
    from peft import LoraConfig
    from torch import nn

    from hf_paramgen.adapters import lora_layout, save_adapter

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    layout = lora_layout(base, LoraConfig(r=2, target_modules=["0", "2"]))
    state_dict = {s.name: torch.randn(s.shape) for s in layout.specs}
    save_adapter(state_dict, LoraConfig(r=2, target_modules=["0", "2"]), tmp_path / "adapter",
                 instruction="swap 0 and 1",
                 metadata={"split": "validation", "task_id": "swap-0-1"}, layout=layout)
    corpus = build_corpus([tmp_path / "adapter"], tmp_path / "corpus", chunk_size=4)
    row = corpus["models"][0]
    assert (row["instruction"], row["split"], row["architecture"][:7]) == ("swap 0 and 1", "validation", "lora-r2")
    assert set(corpus["chunks"]["kind_id"]) == {layout.specs[0].kind_id, layout.specs[1].kind_id}
    weights, _ = corpus_model_weights(corpus, "adapter")
    torch.testing.assert_close(weights, layout.flatten(state_dict), rtol=0, atol=0)


def test_card_header_summarises_provenance_and_stays_small_as_the_corpus_grows(tmp_path):
    from datasets import Dataset, DatasetDict

    from hf_paramgen.data.corpus import MAX_LISTED, corpus_card

    def card_for(num_models: int):
        rows = [{"split": "train" if i % 4 else "heldout_task", "architecture": f"arch-{i % 3}", "num_params": 10,
                 "repo_id": f"org/net-{i % 50}" if i % 2 else "", "revision": "a" * 40 if i % 2 else "",
                 "task": json.dumps({"task_id": f"t{i % 7}"})} for i in range(num_models)]
        corpus = DatasetDict({"models": Dataset.from_list(rows), "chunks": Dataset.from_dict({"x": [0] * num_models})})
        return corpus_card(corpus, {"chunk_size": 8, "aggregation": "layer"})

    small, big = card_for(40), card_for(480)
    header_lines = lambda card: str(card).split("\n---\n")[0].count("\n")  # noqa: E731
    assert header_lines(big) == header_lines(small) < 150  # capped lists: no line per model
    data = big.data.provenance
    assert (data["num_models"], data["models_from_hub_repos"], data["models_from_local_folders"]) == (480, 240, 240)
    assert data["models_per_split"] == {"heldout_task": 120, "train": 360} and data["num_tasks"] == 7
    assert data["num_hub_repos"] == 25 and len(data["hub_repos"]) == MAX_LISTED
    assert data["hub_repos"][0] == {"repo_id": "org/net-1", "revision": "a" * 40, "models": 10}
    assert "org/net-1" in big.text and "5 more Hub repos" in big.text


def test_layout_comes_from_param_layout_json_and_old_zoo_folders_still_load(tmp_path):
    new, old = make_checkpoint(tmp_path / "new", "cnn-digits", seed=1), make_checkpoint(
        tmp_path / "old", "cnn-digits", seed=1, layout_file=False)
    module_layout = ParamLayout.from_module(build_model("cnn-digits", 4))
    assert declared_layout(new) == declared_layout(old) == module_layout  # same names, order, shapes and kinds
    assert [s.kind for s in declared_layout(old).specs] == [s.kind for s in module_layout.specs]
    assert {s.kind for s in module_layout.specs} == {"conv.weight", "conv.bias", "linear.weight", "linear.bias"}
    corpus = build_corpus([new, old], tmp_path / "corpus", chunk_size=16)
    torch.testing.assert_close(corpus_model_weights(corpus, "new")[0], corpus_model_weights(corpus, "old")[0])
    # the file is what declares the layout: one that disagrees with the weights is caught
    (new / LAYOUT_FILE).write_text(ParamLayout.from_module(build_model("mlp-64-32", 4)).to_json())
    with pytest.raises(CorpusError, match=r"new: missing tensors \['net\.1\.weight'"):
        load_checkpoint(new)


def test_checkpoint_whose_layout_nothing_declares_fails_clearly(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt", layout_file=False)
    (folder / "config.json").write_text(json.dumps({"depth": 3}))
    with pytest.raises(CorpusError, match=r"ckpt: no param_layout\.json.*zoonet: config\.json is not a ZooNet config"):
        load_checkpoint(folder)
    (folder / LAYOUT_FILE).write_text("{not json")
    with pytest.raises(CorpusError, match=r"ckpt: cannot build the layout it declares"):
        load_checkpoint(folder)


# ------------------------------------------------------------------------------ bad input
def _truncate(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) - 100])


def _corrupt_header(ckpt: Path) -> None:
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[8:20] = b"\xff" * 12  # inside the JSON header
    (ckpt / "model.safetensors").write_bytes(bytes(data))


def _edit_tensors(edit):
    def apply(ckpt: Path) -> None:
        tensors = load_file(ckpt / "model.safetensors")
        edit(tensors)
        save_file(tensors, ckpt / "model.safetensors")
    return apply


def _set(name, index, value):
    def edit(tensors):
        tensors[name].view(-1)[index] = value
    return edit


BAD_CHECKPOINTS = {
    "truncated": (_truncate, r"ckpt1.*model\.safetensors is truncated or corrupted"),
    "corrupted_header": (_corrupt_header, r"ckpt1.*model\.safetensors is truncated or corrupted"),
    "nan": (_edit_tensors(_set("net.3.weight", 5, float("nan"))), r"ckpt1.*'net\.3\.weight' holds 1 NaN/inf"),
    "inf": (_edit_tensors(_set("net.1.bias", 0, float("inf"))), r"ckpt1.*'net\.1\.bias' holds 1 NaN/inf"),
    "wrong_shape": (_edit_tensors(lambda t: t.update({"net.3.bias": torch.zeros(5)})),
                    r"ckpt1.*'net\.3\.bias' has shape \(5,\), expected \(4,\)"),
    "missing": (_edit_tensors(lambda t: t.pop("net.1.weight")), r"ckpt1.*missing tensors \['net\.1\.weight'\]"),
    "extra": (_edit_tensors(lambda t: t.update({"net.9.weight": torch.zeros(2)})),
              r"ckpt1.*unexpected tensors \['net\.9\.weight'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_fails_clearly_and_leaves_no_output(tmp_path, case):
    corrupt, pattern = BAD_CHECKPOINTS[case]
    good = make_checkpoint(tmp_path / "ckpt0", seed=0)
    bad = make_checkpoint(tmp_path / "ckpt1", seed=1)
    corrupt(bad)
    with pytest.raises(CorpusError, match=pattern):
        build_corpus([good, bad], tmp_path / "out", chunk_size=16)
    assert leftovers(tmp_path, "out") == []
    make_checkpoint(bad, seed=7)  # repaired: the rebuild really rereads it (no stale cache)
    corpus = build_corpus([good, bad], tmp_path / "out", chunk_size=16)
    state_dict, layout, _ = load_checkpoint(bad)
    torch.testing.assert_close(corpus_model_weights(corpus, "ckpt1")[0], layout.flatten(state_dict), rtol=0, atol=0)


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", seed=3)
    state_dict = load_file(ckpt / "model.safetensors")
    torch.save(state_dict, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CorpusError, match=r"ckpt: only a pickled pytorch_model\.bin.*allow_pickle"):
        build_corpus([ckpt], tmp_path / "out")
    assert leftovers(tmp_path, "out") == []
    corpus = build_corpus([ckpt], tmp_path / "out", allow_pickle=True, chunk_size=16)
    weights, layout = corpus_model_weights(corpus, "ckpt")
    torch.testing.assert_close(weights, layout.flatten(state_dict), rtol=0, atol=0)


def test_bad_source_lists_fail_before_any_work(ckpts, tmp_path):
    with pytest.raises(CorpusError, match="No sources given"):
        build_corpus([], tmp_path / "out")
    (tmp_path / "other").mkdir()
    make_checkpoint(tmp_path / "other" / "ckpt0", seed=9)
    with pytest.raises(CorpusError, match=r"Duplicate model ids \['ckpt0'\]"):
        build_corpus([ckpts[0], tmp_path / "other" / "ckpt0"], tmp_path / "out")
    with pytest.raises(CorpusError, match="neither an existing folder nor a Hub repo id"):
        build_corpus([str(tmp_path / "does" / "not" / "exist")], tmp_path / "out")
    with pytest.raises(CorpusError, match=r"aggregation"):
        build_corpus(ckpts[:1], tmp_path / "out", aggregation="tensor")
    assert leftovers(tmp_path, "out") == []


def test_existing_output_needs_overwrite_and_survives_a_failed_overwrite(ckpts, tmp_path):
    build_corpus(ckpts[:1], tmp_path / "out", chunk_size=16)
    with pytest.raises(CorpusError, match="already exists.*overwrite"):
        build_corpus(ckpts[:2], tmp_path / "out", chunk_size=16)
    _truncate(ckpts[1])
    with pytest.raises(CorpusError, match="truncated"):
        build_corpus(ckpts[:2], tmp_path / "out", chunk_size=16, overwrite=True)
    assert load_corpus(tmp_path / "out")["models"]["model_id"] == ["ckpt0"]  # old corpus intact
    corpus = build_corpus([ckpts[2]], tmp_path / "out", chunk_size=16, overwrite=True)
    assert corpus["models"]["model_id"] == ["ckpt2"] and leftovers(tmp_path, "out") == ["out"]


def test_unknown_repo_id_fails_clearly_offline(tmp_path):
    code = (
        "from hf_paramgen.data.corpus import build_corpus, CorpusError\n"
        f"try:\n    build_corpus(['nobody/no-such-zoo-net@main'], {str(tmp_path / 'out')!r})\n"
        "except CorpusError as err:\n    print('ERROR', err)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERROR Cannot fetch checkpoint repo 'nobody/no-such-zoo-net' at revision 'main'" in out.stdout, out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stdout and not (tmp_path / "out").exists()


def test_cli_reports_errors_with_exit_code(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_build_corpus(["--sources", str(ckpts[0]), str(ckpts[0]), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and "Duplicate model ids" in capsys.readouterr().err
    argv = ["--sources", *map(str, ckpts[:2]), "--output_dir", str(tmp_path / "out"), "--chunk_size", "8"]
    assert cli_build_corpus(argv) == 0
    assert "2 models" in capsys.readouterr().out


def test_benchmark_small_writes_json_keys(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    make_checkpoint(zoo / "a", seed=0)
    manifest = {"zoo_build_seconds": 12.5, "checkpoints": [{"path": "a", "split": "train"}]}
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "examples" / "benchmark_corpus.py"), "--small", "--skip_zoo_corpus",
           "--json", str(out),
           "--zoo_dir", str(zoo)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("zoo_checkpoints", "zoo_tasks", "zoo_architectures", "zoo_build_seconds",
                "corpus_params_per_second", "corpus_peak_rss_mb"):
        assert key in result, key
    assert result["zoo_checkpoints"] == 1 and result["zoo_build_seconds"] == 12.5
    assert result["corpus_params_per_second"] > 0 and result["corpus_peak_rss_mb"] > 0
    assert "params/s" in proc.stdout
