"""One generator for many architectures, the zoo side: pooled MLPs, the nested shared initialisation, the
"generalise" plan with its held-out architectures, a tiny build, and prototype_head on a held-out architecture."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_paramgen.research import zoo_train
from hf_paramgen.research.architectures import ARCHITECTURE_DATASET, ZooNet, build_model, initial_model, nested_init_
from hf_paramgen.research.evaluation.baselines import (
    BaselineCache,
    class_row_composition_candidates,
    permuted_retrieval_candidates,
    prototype_head_candidates,
    prototype_head_note,
)
from hf_paramgen.research.evaluation.zoo_index import ZooIndex, hashing_condition_fn, make_model, select_tasks
from hf_paramgen.research.zoo import build_zoo, evaluate_accuracy, make_tasks, plan_checkpoints
from hf_paramgen.research.zoo_plan import GENERALISE_HELDOUT_ARCHITECTURES, GENERALISE_TRAIN_ARCHITECTURES

NESTED_SEED = 1000


@pytest.fixture(scope="module")
def tiny_generalise_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo_generalise")
    return path, build_zoo(path, preset="tiny-generalise", num_workers=1)


def _nested(arch: str, num_classes: int = 4) -> dict[str, torch.Tensor]:
    return initial_model(arch, num_classes, NESTED_SEED, "nested").state_dict()


def test_pooled_mlp_reads_the_pooled_image_and_old_mlps_are_unchanged():
    net = build_model("mlp-p4-16", 4)
    assert [tuple(v.shape) for v in net.state_dict().values()] == [(16, 49), (16,), (4, 16), (4,)]
    x = torch.rand(3, 784)
    pooled = torch.nn.functional.avg_pool2d(x.reshape(3, 1, 28, 28), 4).reshape(3, 49)
    assert torch.allclose(net(x), net.net[1:](pooled), atol=1e-6)
    assert build_model("mlp-p4-16-16-16", 7)(x).shape == (3, 7)
    assert all(ARCHITECTURE_DATASET[a] == "mnist" for a in (*GENERALISE_TRAIN_ARCHITECTURES,
                                                             *GENERALISE_HELDOUT_ARCHITECTURES))
    old = build_model("mlp-784-16", 4)  # no pool: Flatten first, the same parameter names as before
    assert list(old.state_dict()) == ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    with pytest.raises(ValueError, match="input_shape"):
        ZooNet(kind="mlp", input_shape=[784], hidden_sizes=[8], num_classes=3, pool=4)


def test_nested_init_makes_narrow_mlps_slices_of_wide_ones():
    narrow, wide = _nested("mlp-p4-16"), _nested("mlp-p4-32")
    assert torch.equal(narrow["net.2.weight"], wide["net.2.weight"][:16])  # same fan-in (49)
    assert torch.equal(narrow["net.2.bias"], wide["net.2.bias"][:16])
    assert torch.allclose(narrow["net.4.weight"] * math.sqrt(16), wide["net.4.weight"][:, :16] * math.sqrt(32))
    assert torch.allclose(narrow["net.4.bias"] * math.sqrt(16), wide["net.4.bias"] * math.sqrt(32))
    seven = _nested("mlp-p4-16", 7)  # head row i is the same for any number of classes
    assert torch.equal(seven["net.4.weight"][:4], narrow["net.4.weight"])
    deep, deeper = _nested("mlp-p4-16-16"), _nested("mlp-p4-16-16-16")
    assert all(torch.equal(deep[k], deeper[k]) for k in ("net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"))
    bound = 1 / math.sqrt(49)  # PyTorch's default bound
    assert narrow["net.2.weight"].abs().max() <= bound and narrow["net.2.weight"].abs().max() > 0.9 * bound
    other = initial_model("mlp-p4-16", 4, 2000, "nested").state_dict()
    assert not torch.equal(other["net.2.weight"], narrow["net.2.weight"])


def test_nested_init_makes_cnn_channels_and_heads_consistent():
    one, two = _nested("cnn-p2-8"), _nested("cnn-p2-4-8")
    assert torch.equal(two["net.1.weight"], one["net.1.weight"][:4])
    assert torch.equal(two["net.1.bias"], one["net.1.bias"][:4])
    wide = _nested("cnn-p2-6-12")
    assert torch.allclose(two["net.3.weight"] * math.sqrt(36), wide["net.3.weight"][:8, :4] * math.sqrt(54))
    # heads read (C, s, s) channel-major: (class i, channel c, pixel (y, x)) has one value in every network
    head_one = one["net.4.weight"].reshape(4, 8, 7, 7) * math.sqrt(8 * 7 * 7)
    head_two = two["net.6.weight"].reshape(4, 8, 4, 4) * math.sqrt(8 * 4 * 4)
    assert torch.allclose(head_one[:, :, :4, :4], head_two)
    assert torch.equal(_nested("cnn-p2-4-8", 6)["net.6.weight"][:4], two["net.6.weight"])
    head_wide = wide["net.6.weight"].reshape(4, 12, 4, 4) * math.sqrt(12 * 4 * 4)
    assert torch.allclose(head_wide[:, :8], head_two)


def test_nested_init_refuses_what_its_masters_cannot_hold():
    with pytest.raises(ValueError, match="at most 64"):
        nested_init_(build_model("mlp-784-16", 4), NESTED_SEED)  # 784 inputs
    with pytest.raises(ValueError, match="init_style"):
        initial_model("mlp-p4-16", 4, NESTED_SEED, "fancy")


def test_old_presets_keep_the_default_initialisation(monkeypatch, tmp_path):
    job = plan_checkpoints(make_tasks("demo"), "demo")[0]
    assert job["init_style"] == "default"
    assert {j["init_style"] for j in plan_checkpoints(make_tasks("full"), "full")} == {"default"}
    monkeypatch.setattr(zoo_train, "train_model", lambda model, task, **kw: model.eval())  # keep the init weights
    zoo_train.train_checkpoint(job, tmp_path)
    saved = load_file(str(tmp_path / job["path"] / "model.safetensors"))
    torch.manual_seed(job["init_seed"])
    expected = build_model(job["architecture"], job["task"]["num_classes"]).state_dict()
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in expected)


def test_generalise_plan_holds_out_six_architectures_and_two_digits():
    tasks = make_tasks("generalise")
    jobs = plan_checkpoints(tasks, "generalise")
    held = {j["architecture"] for j in jobs if j["split"] == "heldout_architecture"}
    assert held == set(GENERALISE_HELDOUT_ARCHITECTURES)
    assert all(j["split"] == "heldout_architecture" for j in jobs if j["architecture"] in held)
    assert {j["init"] for j in jobs} == {"shared-0"} and {j["init_style"] for j in jobs} == {"nested"}
    for arch in GENERALISE_HELDOUT_ARCHITECTURES:
        assert sum(j["architecture"] == arch and j["task"]["num_classes"] == 4 for j in jobs) >= 30
    for arch in GENERALISE_TRAIN_ARCHITECTURES:
        assert sum(j["architecture"] == arch for j in jobs) == len(tasks)
    learned = [t for t in tasks if t["split"] in ("train", "validation", "heldout_task")]
    assert not any({8, 9} & set(t["classes"]) for t in learned)
    assert {t["num_classes"] for t in learned} == {2, 3, 4, 5, 6, 7, 8}
    splits = {s: sum(t["split"] == s for t in tasks) for s in ("heldout_class", "heldout_dataset")}
    assert splits == {"heldout_class": 60, "heldout_dataset": 30}
    assert all({8, 9} & set(t["classes"]) for t in tasks if t["split"] == "heldout_class")


def test_tiny_generalise_build_names_its_heldout_architecture(tiny_generalise_zoo):
    path, manifest = tiny_generalise_zoo
    assert manifest["heldout_architectures"] == ["mlp-p4-24"] and manifest["architectures"]["mlp-p4-24"]["heldout"]
    assert not manifest["architectures"]["mlp-p4-16"]["heldout"]
    assert manifest["init"]["style"] == "nested" and "nested_init_" in manifest["init"]["how"]
    assert all(n >= 1 for n in manifest["num_checkpoints_per_split"].values())
    assert manifest["num_checkpoints"] == manifest["num_planned_checkpoints"]
    held = [e for e in manifest["checkpoints"] if e["architecture"] == "mlp-p4-24"]
    assert held and {e["split"] for e in held} == {"heldout_architecture"}
    card = ModelCard.load(path / held[0]["path"] / "README.md").data.to_dict()
    assert card["init_style"] == "nested" and card["split"] == "heldout_architecture"
    assert all(e["test_accuracy"] > 0.5 for e in manifest["checkpoints"])


def test_prototype_head_on_a_heldout_architecture_uses_the_initial_body(tiny_generalise_zoo):
    zoo = ZooIndex(tiny_generalise_zoo[0])
    cache = BaselineCache(zoo, hashing_condition_fn(dim=16), seed=0)
    tasks = select_tasks(zoo, "heldout_architectures", "mlp-p4-24", 4, None, 0)
    assert tasks and {e["split"] for t in tasks for e in zoo.checkpoints("mlp-p4-24", task_id=t.task_id)} == {
        "heldout_architecture"}
    task = tasks[0]
    assert cache.retrieve("mlp-p4-24", task) is None
    assert permuted_retrieval_candidates(cache, "mlp-p4-24", task, 2) == []
    assert class_row_composition_candidates(cache, "mlp-p4-24", task, 2) == []
    candidates = prototype_head_candidates(cache, "mlp-p4-24", task, 2)
    assert len(candidates) == 1  # one shared initialisation in this zoo
    init = initial_model("mlp-p4-24", task.num_classes, 1000, "nested").state_dict()
    assert torch.equal(candidates[0]["net.2.weight"], init["net.2.weight"])  # the untrained body
    assert candidates[0]["net.4.weight"].shape == (task.num_classes, 24)
    assert evaluate_accuracy(make_model("mlp-p4-24", task.num_classes, candidates[0]), task) > 1.5 / task.num_classes
    assert "held-out architecture" in prototype_head_note(cache, "mlp-p4-24")
    assert prototype_head_note(cache, "mlp-p4-16") is None
