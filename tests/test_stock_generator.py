"""Generated adapters for a stock transformers class: the LoRA codec, a `LoraCodecGenerator` trained end to end on a
tiny stock adapter zoo, `pipeline("parameter-generation")` with a `(base, LoraConfig)` target giving a `PeftModel`
that loads without hf_paramgen, and the bad inputs (unknown target modules, another base, num_labels)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from peft_isolated import assert_same_logits_without_hf_paramgen
from transformers import pipeline

import hf_paramgen  # noqa: F401  (registers the task)
from hf_paramgen.adapters.adapter_io import load_adapter_state_dict
from hf_paramgen.adapters.lora_codec import LoraCodec, LoraCodecError
from hf_paramgen.generation.generation_targets import GenerationError
from hf_paramgen.generation.generator import ParamGenerator
from hf_paramgen.generation.lora_codec_generator import LoraCodecGenerator
from hf_paramgen.research.adapter_zoo_stock import load_stock_base, offline_base_folder, stock_lora_config
from hf_paramgen.research.stock_bench import print_stock_table
from hf_paramgen.research.stock_codec import AdapterRunner, adapter_entries, fit_stock_codec

TEXTS = ["Return the square root of x.", "Open a socket connection to host and port.",
         "Parse a CSV row into fields.", "Start a new thread running target."]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, stock_tiny_zoo):
    """`benchmark_lora.py --base minilm-seqcls --stock_small`: a tiny stock zoo, its codec, coefficients, corpus,
    ParamTokenizer, prior and the benchmark's results."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "benchmark_lora.py"
    spec = importlib.util.spec_from_file_location("benchmark_lora", script)
    bench_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_script)
    root = tmp_path_factory.mktemp("stockgen")
    out = root / "results.json"
    assert bench_script.main(["--json", str(out), "--base", "minilm-seqcls", "--stock_small", "--k", "2",
                              "--stock_zoo", str(stock_tiny_zoo[0]), "--stock_work", str(root / "work")]) == 0
    (root / "zoo").symlink_to(stock_tiny_zoo[0])  # the tests below read the zoo at root / "zoo"
    return root, json.loads(out.read_text())["minilm-seqcls"]


def few_shot_texts(root):
    from hf_paramgen.research.stock_codec import few_shot, stock_context

    ctx = stock_context(root / "zoo")
    task = adapter_entries(root / "zoo", "heldout_task")[0]["task"]
    return ctx, task, few_shot(ctx, task)


def test_codec_reproduces_a_training_adapter_whose_factors_its_bases_span(bench):
    root, _ = bench
    zoo = root / "zoo"
    codec = fit_stock_codec(zoo, None, rank=8, head_rank=4)  # one training adapter: rank 8 spans its factors
    from hf_paramgen.research.stock_codec import decode_adapter, stock_context

    ctx = stock_context(zoo)
    runner = AdapterRunner(ctx)
    entry = adapter_entries(zoo, "train")[0]
    task = entry["task"]
    state, _ = load_adapter_state_dict(zoo / entry["path"])
    coefs = codec.encode(state, runner.head_reference(task, state))
    assert codec.layout(4).num_params == sum(v.numel() for v in coefs.values()) == 36 * 2 * 8 * 8 + 4 * 4 + 4
    from transformers import AutoTokenizer

    text = codec.layout(4).describe()  # conditions the prior: within the MiniLM text encoder's 256 tokens
    assert len(AutoTokenizer.from_pretrained(offline_base_folder())(text)["input_ids"]) < 256, text
    decoded = decode_adapter(codec, coefs, runner, task)
    assert set(decoded) == set(state)
    for name, value in state.items():
        torch.testing.assert_close(decoded[name], value, atol=2e-4, rtol=1e-3)


def test_codec_folder_refuses_corrupt_tensors_and_names_the_digest(bench, tmp_path):
    root, _ = bench
    folder = root / "work" / "lora_codec"
    codec = LoraCodec.from_pretrained(folder)
    assert codec.config["lora_rank"] == 8 and len(codec.modules) == 36
    bad = tmp_path / "codec"
    codec.save_pretrained(bad)
    data = bytearray((bad / "lora_codec.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "lora_codec.safetensors").write_bytes(bytes(data))
    with pytest.raises(LoraCodecError, match="digest"):
        LoraCodec.from_pretrained(bad)
    (bad / "lora_codec.safetensors").unlink()
    with pytest.raises(LoraCodecError, match="lora_codec.safetensors"):
        LoraCodec.from_pretrained(bad)


def test_benchmark_reports_every_key_for_both_held_out_splits(bench, capsys):
    _, results = bench
    keys = ("generated", "generated_head_only", "base_only", "trained_adapter", "retrieval", "permuted_retrieval",
            "prototype_head", "num_tasks")
    for split in ("heldout_tasks", "heldout_topics"):
        assert all(k in results[split] for k in keys), sorted(results[split])
        assert 0.0 <= results[split]["generated"] <= 1.0 and results[split]["num_tasks"] == 1
    assert results["adapter_values"] == 333_316 and results["seconds_per_adapter"] > 0
    assert results["seconds_to_train_adapter"] > 0 and results["generated_head_only_note"]
    print_stock_table(results)
    assert "| heldout_topics |" in capsys.readouterr().out


def test_pipeline_writes_a_peft_adapter_that_loads_on_the_stock_class_without_hf_paramgen(bench, tmp_path):
    root, _ = bench
    _, task, (texts, labels) = few_shot_texts(root)
    gen = pipeline("parameter-generation", model=str(root / "work" / "generator"))
    assert isinstance(gen.generator, LoraCodecGenerator)
    base = load_stock_base(4)
    out = gen({"target": (base, stock_lora_config()), "task_text": task["instruction"], "samples": (texts, labels),
               "validation": (texts[:8], labels[:8])}, num_candidates=2, seed=0, output="peft")
    model = out["model"]
    assert isinstance(model, PeftModel) and len(out["scores"]) == 2 and out["best_index"] in (0, 1)
    assert sum(v.numel() for v in out["state_dict"].values()) == 333_316
    assert any(float(v.abs().max()) > 0 for k, v in out["state_dict"].items() if "lora_B" in k)  # the encoder adapts
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 8
    assert_same_logits_without_hf_paramgen(model, offline_base_folder(), folder, TEXTS, tmp_path)


def test_saved_generator_round_trips_with_its_codec(bench, tmp_path):
    root, _ = bench
    generator = ParamGenerator.from_pretrained(root / "work" / "generator")
    assert isinstance(generator, LoraCodecGenerator)
    generator.save_pretrained(tmp_path / "copy")
    again = ParamGenerator.from_pretrained(tmp_path / "copy")
    assert isinstance(again, LoraCodecGenerator) and again.codec.config["digest"] == generator.codec.config["digest"]
    _, task, samples = few_shot_texts(root)
    base = load_stock_base(4)
    a = generator.generate((base, stock_lora_config()), task["instruction"], samples, seed=3)
    b = again.generate((base, stock_lora_config()), task["instruction"], samples, seed=3)
    for name, value in a.best_state_dict.items():
        torch.testing.assert_close(b.best_state_dict[name], value)


# ------------------------------------------------------------------------------------------------- bad input
def test_unknown_target_modules_another_base_and_num_labels_are_refused_naming_expected_and_received(bench):
    root, _ = bench
    generator = ParamGenerator.from_pretrained(root / "work" / "generator")
    _, task, samples = few_shot_texts(root)
    base = load_stock_base(4)
    narrow = LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    with pytest.raises(GenerationError, match=r"target_modules=\['attention.output.dense'.*query.*value"):
        generator.generate((base, narrow), task["instruction"], samples)
    wrong_rank = stock_lora_config(r=4)
    with pytest.raises(GenerationError, match=r"r=8.*r=\[4\]"):
        generator.generate((base, wrong_rank), task["instruction"], samples)
    from transformers import BertConfig, BertForSequenceClassification

    other = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=37, num_labels=4))
    with pytest.raises(GenerationError, match=r"hidden_size.*\(384, 32\)"):
        generator.generate((other, stock_lora_config()), task["instruction"], samples)
    three = load_stock_base(3)
    with pytest.raises(GenerationError, match=r"num_labels=3.*labels are \[0, 1, 2, 3\]"):
        generator.generate((three, stock_lora_config()), task["instruction"], samples)
    with pytest.raises(GenerationError, match="samples=\\(texts, labels\\)"):
        generator.generate((base, stock_lora_config()), task["instruction"], None)
    with pytest.raises(GenerationError, match="must be \\(base_model, LoraConfig\\)"):
        generator.generate(base, task["instruction"], samples)


def test_generator_pushed_to_the_hub_loads_by_repo_id_with_its_codec_and_tokenizer(bench, hub_repo_id, tmp_path):
    from huggingface_hub import HfApi

    root, _ = bench
    api = HfApi()
    api.create_repo(hub_repo_id)
    api.upload_folder(folder_path=root / "work" / "generator", repo_id=hub_repo_id, commit_message="generator")
    gen = pipeline("parameter-generation", model=hub_repo_id)  # prior, ParamTokenizer, codec, tokenizer: downloaded
    assert isinstance(gen.generator, LoraCodecGenerator) and gen.generator.base_tokenizer is not None
    _, task, samples = few_shot_texts(root)
    local = ParamGenerator.from_pretrained(root / "work" / "generator")
    base = load_stock_base(4)
    a = gen({"target": (base, stock_lora_config()), "task_text": task["instruction"], "samples": samples}, seed=5,
            output="state_dict")["state_dict"]
    b = local.generate((base, stock_lora_config()), task["instruction"], samples, seed=5).best_state_dict
    for name, value in b.items():
        torch.testing.assert_close(a[name], value)
