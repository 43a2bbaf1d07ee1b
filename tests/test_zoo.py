"""The model zoo: task plan, splits, a tiny parallel build, checkpoint folders and cards, resume, determinism."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.research.architectures import ZooNet, build_model
from hf_paramgen.research.tasks import Task, load_task_split
from hf_paramgen.research.zoo import (
    HELDOUT_ARCHITECTURES,
    LAYOUT_FILE,
    build_zoo,
    cli_build_zoo,
    evaluate_accuracy,
    finetune,
    load_checkpoint_model,
    load_manifest,
    make_tasks,
    plan_checkpoints,
    task_from_dict,
    train_model,
)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo")
    return path, build_zoo(path, preset="tiny", num_workers=2)


def test_full_plan_meets_the_size_targets_and_is_deterministic():
    tasks = make_tasks("full")
    jobs = plan_checkpoints(tasks, "full")
    assert tasks == make_tasks("full") and len(tasks) >= 150
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    assert len(jobs) >= 2000 and len({j["id"] for j in jobs}) == len(jobs)
    archs = {j["architecture"] for j in jobs}
    assert len(archs) >= 6 and "cnn-mnist" in archs
    four_class = [t for t in tasks if t["family"] == "mnist-4class"]
    assert len(four_class) >= 0.5 * len(tasks) and all(t["num_classes"] == 4 for t in four_class)
    assert {t["transform"] for t in tasks} == {"none", "invert", "transpose", "hflip"}
    assert {t["dataset"] for t in tasks} == {"mnist", "digits"}
    assert {t["num_classes"] for t in tasks} >= set(range(2, 11))
    per_pair = {}
    for j in jobs:
        per_pair.setdefault((j["task"]["task_id"], j["architecture"]), []).append(j["init"])
    assert min(map(len, per_pair.values())) >= 3
    independent = sum(j["init"] == "independent" for j in jobs) / len(jobs)
    assert 0.15 <= independent <= 0.4


def test_task_and_architecture_splits_are_fixed_and_held_out_architecture_wins():
    tasks = make_tasks("full")
    fractions = {s: sum(t["split"] == s for t in tasks) / len(tasks) for s in ("heldout_task", "validation")}
    assert 0.12 <= fractions["heldout_task"] <= 0.18 and 0.07 <= fractions["validation"] <= 0.13
    for family in {t["family"] for t in tasks}:  # every family has held-out tasks
        assert any(t["split"] == "heldout_task" for t in tasks if t["family"] == family)
    for job in plan_checkpoints(tasks, "full"):
        expected = "heldout_architecture" if job["architecture"] in HELDOUT_ARCHITECTURES else job["task"]["split"]
        assert job["split"] == expected


def test_shared_presets_start_every_checkpoint_from_one_initialisation():
    for preset in ("shared", "shared-heads", "demo"):
        jobs = plan_checkpoints(make_tasks(preset), preset)
        assert {j["init"] for j in jobs} == {"shared-0"} and {j["init_seed"] for j in jobs} == {1000}
        assert {j["architecture"] for j in jobs} == {"cnn-mnist"}
    shared = make_tasks("shared")
    assert len(shared) == 1500 and {t["num_classes"] for t in shared} == {4}
    assert {t["num_classes"] for t in make_tasks("shared-heads")} == {3, 5, 6}
    assert {j["init"] for j in plan_checkpoints(make_tasks("full"), "full")} == {"shared-0", "shared-1", "independent"}


def test_shared_initialisation_matches_hidden_layers_across_class_counts():
    jobs = [j for j in plan_checkpoints(make_tasks("full"), "full") if j["architecture"] == "mlp-784-32"]
    a = next(j for j in jobs if j["init"] == "shared-0" and j["task"]["num_classes"] == 4)
    b = next(j for j in jobs if j["init"] == "shared-0" and j["task"]["num_classes"] == 7)
    nets = []
    for job in (a, b):
        torch.manual_seed(job["init_seed"])
        nets.append(build_model("mlp-784-32", job["task"]["num_classes"]))
    assert torch.equal(nets[0].net[1].weight, nets[1].net[1].weight)
    c = next(j for j in jobs if j["init"] == "independent")
    d = next(j for j in jobs if j["init"] == "independent" and j["task"]["task_id"] != c["task"]["task_id"])
    assert c["init_seed"] != d["init_seed"]


def test_tiny_build_writes_hub_checkpoint_folders_with_cards(tiny_zoo):
    path, manifest = tiny_zoo
    assert manifest["num_checkpoints"] == manifest["num_planned_checkpoints"] == len(manifest["checkpoints"]) <= 30
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert (path / "README.md").is_file() and not list(path.glob("checkpoints/*/.*"))  # no temporary folders
    for entry in manifest["checkpoints"]:
        folder = path / entry["path"]
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                            LAYOUT_FILE]
        layout = ParamLayout.from_json((folder / LAYOUT_FILE).read_text())
        assert layout.to_dict() == ParamLayout.from_module(load_checkpoint_model(folder)).to_dict()
        card = ModelCard.load(folder / "README.md").data.to_dict()
        task = task_from_dict(card)
        assert card["task_id"] == entry["task_id"] == task.task_id and card["instruction"] == task.task_text
        assert card["num_classes"] == task.num_classes and card["classes"] == list(task.classes)
        for key in ("architecture", "seed", "init", "split", "val_accuracy", "test_accuracy"):
            assert card[key] == entry[key], key
        assert card["training_recipe"]["optimizer"] == "Adam" and card["transform"] == task.transform


def test_tiny_zoo_checkpoints_load_and_beat_chance(tiny_zoo):
    path, manifest = tiny_zoo
    for entry in manifest["checkpoints"]:
        task = task_from_dict(next(t for t in manifest["tasks"] if t["task_id"] == entry["task_id"]))
        assert entry["test_accuracy"] > 1.0 / task.num_classes + 0.3, entry
    entry = manifest["checkpoints"][0]
    model = ZooNet.from_pretrained(str(path / entry["path"]))
    task = task_from_dict(next(t for t in manifest["tasks"] if t["task_id"] == entry["task_id"]))
    assert evaluate_accuracy(model, task, "test") == pytest.approx(entry["test_accuracy"], abs=1e-5)
    assert isinstance(load_checkpoint_model(path / entry["path"]), ZooNet)


def test_manifest_records_splits_heldout_architecture_and_inits(tiny_zoo):
    _, manifest = tiny_zoo
    splits = {e["split"] for e in manifest["checkpoints"]}
    assert splits == {"train", "validation", "heldout_task", "heldout_architecture"}
    assert manifest["heldout_architectures"] == ["mlp-784-48"] and manifest["architectures"]["mlp-784-48"]["heldout"]
    assert all(e["split"] == "heldout_architecture" for e in manifest["checkpoints"]
               if e["architecture"] == "mlp-784-48")
    heldout = set(manifest["heldout_tasks"])
    assert heldout and all(t["split"] == "heldout_task" for t in manifest["tasks"] if t["task_id"] in heldout)
    assert {e["init"] for e in manifest["checkpoints"]} == {"shared-0", "shared-1", "independent"}
    assert manifest["zoo_build_seconds"] > 0 and manifest["data_splits"]["mnist"]["sizes"]["train"] == 3000


def test_second_build_skips_finished_checkpoints_and_repairs_a_killed_one(tiny_zoo):
    path, manifest = tiny_zoo
    victim = path / manifest["checkpoints"][-1]["path"]
    untouched = path / manifest["checkpoints"][0]["path"] / "model.safetensors"
    mtime = untouched.stat().st_mtime_ns
    shutil.rmtree(victim)
    (victim.parent / f".{victim.name}.tmp-0badc0de").mkdir()  # what a kill mid-write leaves behind
    (victim.parent / f".tmp-{victim.name}-999").mkdir()  # ... and what builds before utils.temporary_sibling left
    again = build_zoo(path, preset="tiny", num_workers=1)
    assert again["num_trained_this_run"] == 1 and again["num_checkpoints"] == manifest["num_checkpoints"]
    assert untouched.stat().st_mtime_ns == mtime and victim.is_dir() and (victim / LAYOUT_FILE).is_file()
    assert not list(path.glob("checkpoints/*/.*"))
    assert again["zoo_build_seconds"] > manifest["zoo_build_seconds"]


def test_same_seed_gives_identical_weights_in_one_process_and_in_workers(tiny_zoo, tmp_path, capsys):
    path, manifest = tiny_zoo
    assert cli_build_zoo(["--output_dir", str(tmp_path), "--preset", "tiny", "--num_workers", "1", "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["num_checkpoints"] == 2
    for entry in load_manifest(tmp_path)["checkpoints"]:
        a, b = (load_file(root / entry["path"] / "model.safetensors") for root in (tmp_path, path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_model_and_finetune_follow_the_recipe():
    task = Task.make("digits", [0, 1, 2])
    torch.manual_seed(0)
    model = build_model("mlp-64-32", 3)
    curve = finetune(model, task, steps=25, lr=3e-3, eval_every=10, seed=0)
    assert [p["step"] for p in curve] == [0, 10, 20, 25]
    assert curve[-1]["val_accuracy"] > max(curve[0]["val_accuracy"], 0.8)
    torch.manual_seed(0)
    trained = train_model(build_model("mlp-64-32", 3), task, steps=40, seed=0)
    assert evaluate_accuracy(trained, task, "validation") > 0.8
    with pytest.raises(ValueError, match="not both"):
        train_model(trained, task, epochs=1, steps=1)
    with pytest.raises(ValueError, match="4 output units but task 'digits-0_1_2-none' has 3 classes"):
        evaluate_accuracy(build_model("mlp-64-32", 4), task)
    with pytest.raises(ValueError, match=r"inputs of shape \[784\] but task"):
        evaluate_accuracy(build_model("mlp-784-16", 3), task)
    assert load_task_split(task, "train")[0].shape[1] == 64


def test_bad_preset_limit_and_missing_manifest_raise(tmp_path):
    with pytest.raises(ValueError, match="Unknown preset 'huge'; expected one of"):
        make_tasks("huge")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        build_zoo(tmp_path, preset="tiny", limit=-1)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_demo_preset_holds_out_classes_and_a_transform_no_training_task_has():
    from collections import Counter

    from hf_paramgen.research.zoo_plan import make_tasks

    tasks = make_tasks("demo")
    splits = Counter(t["split"] for t in tasks)
    assert splits == {"train": 360, "heldout_task": 72, "validation": 48, "heldout_class": 24, "heldout_dataset": 24}
    for t in tasks:  # 8 and 9 appear only in heldout_class tasks, and every such task has one of them
        assert bool(set(t["classes"]) & {8, 9}) == (t["split"] == "heldout_class"), t
        assert (t["transform"] == "hflip") == (t["split"] == "heldout_dataset"), t  # a transform no training task has
    assert make_tasks("shared") == make_tasks("shared")  # presets without held-out classes: unchanged, seeded
