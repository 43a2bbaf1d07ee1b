"""PEFT LoRA adapters: layouts, exact round trips, PEFT's on-disk format, base checks, a tiny adapter zoo."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel
from torch import nn
from transformers import BertConfig, BertModel

from hf_paramgen.adapters.adapter_io import adapter_checkpoint, load_adapter, load_adapter_state_dict, save_adapter
from hf_paramgen.adapters.lora import AdapterBaseMismatchError, apply_adapter, lora_layout
from hf_paramgen.layout.param_layout import LayoutError


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=16)
    return BertModel(config).eval()


MLP_CONFIG = LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"])
BERT_CONFIG = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])


def random_adapter(layout, seed: int = 1) -> dict[str, torch.Tensor]:
    """Nonzero A and B (PEFT starts B at zero; a generator writes both)."""
    gen = torch.Generator().manual_seed(seed)
    return layout.unflatten(torch.randn(layout.num_params, generator=gen) * 0.3)


def test_lora_layout_of_sequential_has_peft_saved_names_kinds_and_shapes():
    layout = lora_layout(tiny_mlp(), MLP_CONFIG)
    assert layout.names == [
        "base_model.model.0.lora_A.weight", "base_model.model.0.lora_B.weight",
        "base_model.model.2.lora_A.weight", "base_model.model.2.lora_B.weight",
    ]
    assert [s.kind for s in layout.specs] == ["lora_A", "lora_B", "lora_A", "lora_B"]
    assert [s.shape for s in layout.specs] == [(2, 6), (8, 2), (2, 8), (3, 2)]
    assert layout.metadata["base"]["num_params"] == 6 * 8 + 8 + 8 * 3 + 3
    assert layout.metadata["lora_config"]["r"] == 2 and layout.metadata["lora_config"]["target_modules"] == ["0", "2"]
    assert layout.metadata["head"] == ["base_model.model.2.lora_B.weight"]  # rows = the base's 3 outputs
    json.dumps(layout.metadata)  # JSON-safe
    from hf_paramgen.models.modeling_param_prior import class_slots

    assert class_slots(layout, 2).tolist()[-3:] == [1, 2, 3]  # (3, 2) lora_B: one chunk per output row
    assert lora_layout(tiny_mlp(), LoraConfig(r=2, target_modules=["0"])).metadata["head"] == []


def test_lora_layout_of_bert_matches_the_keys_peft_saves(tmp_path):
    base = tiny_bert()
    layout = lora_layout(base, BERT_CONFIG)
    assert len(layout) == 2 * 2 * 2 and layout.num_params == 2 * 2 * (4 * 32 + 32 * 4)
    assert all(p.device.type == "cpu" for p in base.parameters()) and not hasattr(base, "peft_config")
    peft_model = apply_adapter(copy.deepcopy(base), random_adapter(layout), BERT_CONFIG)
    peft_model.save_pretrained(tmp_path)  # PEFT's own writer
    saved, _ = load_adapter_state_dict(tmp_path)
    assert sorted(saved) == sorted(layout.names)


def test_flatten_unflatten_of_an_adapter_is_exact():
    layout = lora_layout(tiny_bert(), BERT_CONFIG)
    state_dict = random_adapter(layout)
    weights = layout.flatten(state_dict)
    restored = layout.unflatten(weights)
    assert all(torch.equal(restored[n], state_dict[n]) for n in layout.names)
    assert torch.equal(layout.flatten(restored), weights)


def test_saved_adapter_loads_in_peft_without_missing_or_unexpected_keys_and_matches_apply_adapter(tmp_path):
    base = tiny_bert()
    layout = lora_layout(base, BERT_CONFIG)
    state_dict = random_adapter(layout)
    save_adapter(state_dict, BERT_CONFIG, tmp_path / "adapter", instruction="topic task", metadata={"acc": 0.9},
                 layout=layout)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing adapter keys.*")
        from_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")
    result = from_peft.load_adapter(tmp_path / "adapter", adapter_name="again")
    assert result.missing_keys == [] and result.unexpected_keys == []
    ours = apply_adapter(copy.deepcopy(base), state_dict, BERT_CONFIG, expected_base=layout)
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_peft, out_ours = from_peft(input_ids=ids).last_hidden_state, ours(input_ids=ids).last_hidden_state
        out_base = base(input_ids=ids).last_hidden_state
    assert torch.equal(out_peft, out_ours)
    assert not torch.allclose(out_ours, out_base)  # the adapter changes the function
    loaded, config = load_adapter_state_dict(tmp_path / "adapter")
    assert config.r == 4 and all(torch.equal(loaded[n], state_dict[n]) for n in layout.names)
    info = json.loads((tmp_path / "adapter" / "adapter_info.json").read_text())
    assert info["instruction"] == "topic task" and info["metadata"]["acc"] == 0.9


def test_save_adapter_replaces_an_existing_folder_and_leaves_no_temporary_folders(tmp_path):
    base = tiny_mlp()
    layout = lora_layout(base, MLP_CONFIG)
    save_adapter(random_adapter(layout, 1), MLP_CONFIG, tmp_path / "a", layout=layout)
    second = random_adapter(layout, 2)
    save_adapter(second, MLP_CONFIG, tmp_path / "a", layout=layout)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    loaded, _ = load_adapter_state_dict(tmp_path / "a")
    assert torch.equal(loaded[layout.names[0]], second[layout.names[0]])


def test_target_modules_missing_from_base_raise_an_error_listing_targetable_modules():
    with pytest.raises(ValueError, match=r"match no module.*'0', '2'"):
        lora_layout(tiny_mlp(), LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention\.self\.query"):
        lora_layout(tiny_bert(), LoraConfig(r=2, target_modules=["q_proj"]))


def test_adapter_on_a_different_base_raises_naming_expected_and_received(tmp_path):
    layout = lora_layout(tiny_mlp(seed=0), MLP_CONFIG)
    state_dict = random_adapter(layout)
    with pytest.raises(AdapterBaseMismatchError, match="weights_fingerprint: expected"):
        apply_adapter(tiny_mlp(seed=1), state_dict, MLP_CONFIG, expected_base=layout)
    save_adapter(state_dict, MLP_CONFIG, tmp_path / "a", layout=layout)
    with pytest.raises(AdapterBaseMismatchError, match=r"class: expected .*Sequential.*received .*BertModel"):
        load_adapter(tiny_bert(), tmp_path / "a")
    assert isinstance(load_adapter(tiny_mlp(seed=0), tmp_path / "a"), PeftModel)


def test_apply_adapter_rejects_a_state_dict_that_does_not_fit_the_config():
    base = tiny_mlp()
    layout = lora_layout(base, MLP_CONFIG)
    state_dict = random_adapter(layout)
    bad = dict(state_dict, **{layout.names[0]: torch.zeros(3, 6)})
    with pytest.raises(LayoutError, match="lora_A.weight' has shape"):
        apply_adapter(copy.deepcopy(base), bad, MLP_CONFIG)
    with pytest.raises(LayoutError, match="does not create"):
        apply_adapter(copy.deepcopy(base), dict(state_dict, extra=torch.zeros(1)), MLP_CONFIG)


def test_adapter_checkpoint_returns_layout_ordered_state_dict_and_info(tmp_path):
    base = tiny_bert()
    layout = lora_layout(base, BERT_CONFIG)
    state_dict = random_adapter(layout)
    save_adapter(state_dict, BERT_CONFIG, tmp_path / "a", instruction="do x", metadata={"split": "train"},
                 layout=layout)
    loaded, loaded_layout, info = adapter_checkpoint(tmp_path / "a", base)
    assert loaded_layout == layout and list(loaded) == layout.names
    assert torch.equal(loaded_layout.flatten(loaded), layout.flatten(state_dict))
    assert info["instruction"] == "do x" and info["metadata"]["split"] == "train" and info["format"] == "peft-lora"
    with pytest.raises(AdapterBaseMismatchError):
        adapter_checkpoint(tmp_path / "a", tiny_bert(seed=3))


@pytest.fixture(scope="module")
def mnist_zoo(tmp_path_factory):
    from hf_paramgen.research.adapter_zoo import build_adapter_zoo

    path = tmp_path_factory.mktemp("mnist_zoo")
    return path, build_adapter_zoo("mnist-mlp", path, preset="tiny")


def test_tiny_mnist_adapter_zoo_beats_base_only_on_its_tasks_and_resumes(mnist_zoo):
    from hf_paramgen.research.adapter_zoo import build_adapter_zoo, load_zoo_base

    tmp_path, manifest = mnist_zoo
    assert manifest["num_adapters"] == 2 and manifest["base_model"]["test_accuracy"] > 0.85
    for adapter in manifest["adapters"]:
        assert adapter["test_accuracy"] > adapter["base_only_test_accuracy"] + 0.1, adapter
    base = load_zoo_base(tmp_path)
    state_dict, layout, info = adapter_checkpoint(tmp_path / manifest["adapters"][0]["path"], base)
    assert info["instruction"].startswith("Classify handwritten digits")
    assert layout.num_params == 4 * 64 + 10 * 4  # head LoRA
    stamp = (tmp_path / manifest["adapters"][0]["path"] / "adapter_model.safetensors").stat().st_mtime_ns
    again = build_adapter_zoo("mnist-mlp", tmp_path, preset="tiny")  # resumes: nothing retrained
    assert (tmp_path / manifest["adapters"][0]["path"] / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert again["adapters"] == manifest["adapters"]


def test_adapter_zoo_folder_builds_a_weight_corpus_with_exact_adapter_weights(mnist_zoo, tmp_path):
    from hf_paramgen.data.corpus import build_corpus, corpus_model_weights
    from hf_paramgen.research.adapter_zoo import load_zoo_base

    zoo, manifest = mnist_zoo
    corpus = build_corpus([zoo], tmp_path / "corpus", chunk_size=64)
    assert len(corpus["models"]) == 2
    entry = manifest["checkpoints"][0]
    weights, layout = corpus_model_weights(corpus, entry["model_id"])
    state_dict, ours, info = adapter_checkpoint(zoo / entry["path"], load_zoo_base(zoo))
    assert layout == ours and torch.equal(weights, ours.flatten(state_dict))
    row = corpus["models"][corpus["models"]["model_id"].index(entry["model_id"])]
    assert row["instruction"] == info["instruction"] and row["split"] == "train"


@pytest.mark.slow
def test_tiny_minilm_adapter_zoo_beats_base_only_on_its_tasks(tmp_path):
    from hf_paramgen.research.adapter_zoo import build_adapter_zoo

    manifest = build_adapter_zoo("minilm", tmp_path, preset="tiny")
    for adapter in manifest["adapters"]:
        assert adapter["test_accuracy"] > adapter["base_only_test_accuracy"] + 0.2, adapter


def test_a_head_adapter_whose_rank_equals_the_outputs_has_class_rows_in_lora_A_too():
    from hf_paramgen.models.modeling_param_prior import class_slots

    layout = lora_layout(tiny_mlp(), LoraConfig(r=3, lora_alpha=3, target_modules=["2"]))
    assert layout.metadata["head"] == ["base_model.model.2.lora_A.weight", "base_model.model.2.lora_B.weight"]
    # lora_A (3, 8): two 4-value chunks per rank row; lora_B (3, 3): one chunk per output row
    assert class_slots(layout, 4).tolist() == [1, 1, 2, 2, 3, 3, 1, 2, 3]


def test_class_aligned_init_starts_at_the_base_and_trains_rank_r_on_class_r():
    from peft import get_peft_model

    from hf_paramgen.research.adapter_zoo import class_aligned_init

    base = tiny_mlp()
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=3, lora_alpha=3, target_modules=["2"]))
    class_aligned_init(model, "2")
    layer = model.base_model.model[2]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.equal(A, torch.zeros(3, 8)) and torch.equal(B, torch.eye(3))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(model(x), base(x))  # B A = 0: the adapter starts as the base
    torch.nn.functional.cross_entropy(model(x), y).backward()
    W = base[2].weight.detach().clone().requires_grad_()  # gradient of the output layer's rows
    torch.nn.functional.cross_entropy(torch.nn.functional.linear(base[1](base[0](x)), W, base[2].bias), y).backward()
    assert torch.allclose(A.grad, W.grad, atol=1e-6)  # row r of A moves like row r (class r) of the weight
    assert torch.equal(B.grad, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="rank == output count, got lora_B of shape \\(3, 2\\)"):
        class_aligned_init(get_peft_model(tiny_mlp(), LoraConfig(r=2, target_modules=["2"])), "2")
    with pytest.raises(ValueError, match="one LoRA layer named 'head', found 0"):
        class_aligned_init(model, "head")


def test_minilm_head_adapters_learn_their_topics_and_load_in_peft(tmp_path):
    """The `shared` MiniLM preset (LoRA on the 4-way head, class-aligned init) on 3 real topic tasks."""
    from hf_paramgen.conditioning import HashingTextEncoder, InstructionEncoders, SampleEncoder
    from hf_paramgen.research.adapter_zoo import build_adapter_zoo, load_zoo_base, text_few_shot_samples
    from hf_paramgen.research.samples import ZooSamples
    from hf_paramgen.training.prior import condition_for_row

    manifest = build_adapter_zoo("minilm", tmp_path, preset="shared", num_tasks=3)
    assert manifest["lora_config"]["target_modules"] == ["head"] and manifest["num_adapters"] == 3
    for adapter in manifest["adapters"]:
        assert adapter["test_accuracy"] > adapter["base_only_test_accuracy"] + 0.3, adapter
    entry, task = manifest["adapters"][0], manifest["tasks"][0]
    base = load_zoo_base(tmp_path)
    state_dict, layout, info = adapter_checkpoint(tmp_path / entry["path"], base)
    assert layout.num_params == 4 * 384 + 4 * 4 and layout.metadata["head"] == layout.names
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PEFT warns on missing or unexpected keys
        model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / entry["path"])
    assert torch.equal(model.base_model.model.head.lora_A["default"].weight, state_dict[layout.names[0]])

    texts, y = text_few_shot_samples(task, per_class=2)
    assert len(texts) == 8 and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="Unknown topics \\['cooking'\\]"):
        text_few_shot_samples({**task, "classes": ["cooking"]})
    text = HashingTextEncoder(dim=16)
    row = {"task": json.dumps(task), "instruction": task["instruction"], "architecture_text": "a LoRA head adapter"}
    embeds, types = condition_for_row(row, InstructionEncoders(text=text), {"text": SampleEncoder.for_texts(16)},
                                      ZooSamples(("text",)))
    assert types.tolist() == [0, 1, 2, 3, 4, 5]  # text, architecture, one prototype per topic


def test_new_topics_preset_holds_out_every_task_with_an_unseen_topic(tmp_path):
    from hf_paramgen.research.adapter_zoo import PRESETS, build_adapter_zoo

    manifest = build_adapter_zoo("minilm", tmp_path, preset="new-topics", num_tasks=8, steps=2)
    unseen = set(PRESETS["minilm"]["new-topics"]["heldout_classes"])
    splits = {t["task_id"]: (t["split"], bool(set(t["classes"]) & unseen)) for t in manifest["tasks"]}
    assert all((split == "heldout_task") == has_unseen for split, has_unseen in splits.values()), splits
    assert {s for s, _ in splits.values()} >= {"train", "heldout_task"}


def test_lora_module_travels_without_the_disk_io():
    import hf_paramgen.adapters.lora as lora
    from hf_paramgen.hub.remote_code import remote_code_closure

    assert set(remote_code_closure([lora.__file__])) == {"lora.py", "param_layout.py"}  # what a generator carries
