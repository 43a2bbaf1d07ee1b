"""Scale: the fine-tune zoo (base + real fine-tunes as float16 deltas), the DeltaCodec, and the scale benchmark."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hf_paramgen.research.architectures import ZooNet
from hf_paramgen.research.zoo_train import evaluate_accuracy
from hf_paramgen.scale.coefficient_zoo import fit_codec, iter_finetunes, write_coefficient_zoo
from hf_paramgen.scale.delta_codec import DeltaCodec, DeltaCodecError
from hf_paramgen.scale.finetune_zoo import (
    SCALE_PRESETS,
    build_finetune_zoo,
    load_finetune,
    plan_finetunes,
)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "zoo"
    manifest = build_finetune_zoo(out, "tiny", num_workers=1)
    return out, manifest


def test_plan_splits_hold_out_classes():
    jobs = plan_finetunes("tiny")
    p = SCALE_PRESETS["tiny"]
    assert len(jobs) == p["num_train"] + p["num_heldout_tasks"] + p["num_heldout_classes"]
    assert len({j["id"] for j in jobs}) == len(jobs)
    for j in jobs:
        classes = set(j["task"]["classes"])
        assert bool(classes & {8, 9}) == (j["split"] == "heldout_classes")
    assert plan_finetunes("tiny") == jobs  # deterministic
    with pytest.raises(ValueError, match="Unknown scale preset"):
        plan_finetunes("huge")


def test_zoo_stores_real_finetunes_as_deltas(tiny_zoo):
    out, manifest = tiny_zoo
    assert manifest["num_finetunes"] == len(plan_finetunes("tiny"))
    entry = manifest["checkpoints"][0]
    state, config, card = load_finetune(out / entry["path"])
    base = ZooNet.from_pretrained(str(out / "base")).state_dict()
    body = [k for k in base if k not in config["head"]]
    assert any(not torch.equal(state[k], base[k]) for k in body)  # every body tensor was trained
    model = ZooNet(**{k: v for k, v in config.items() if k not in ("reference", "head")}).eval()
    model.load_state_dict(state)
    task = next(iter(iter_finetunes(out, entry["split"], 1)))[3]
    assert evaluate_accuracy(model, task, "test") == pytest.approx(card["test_accuracy"], abs=1e-4)
    again = build_finetune_zoo(out, "tiny", num_workers=1)  # resume: nothing left to train
    assert again["num_trained_this_run"] == 0


def test_codec_round_trip_and_bad_inputs(tiny_zoo, tmp_path):
    out, _ = tiny_zoo
    codec = fit_codec(out, tmp_path / "codec", rank=8, head_rank=8)
    _, state, _, task, samples = next(iter(iter_finetunes(out, "heldout_tasks", 1)))
    coefs = codec.encode(state, samples)
    assert set(coefs) == set(codec.layout(task.num_classes).names)
    decoded = codec.decode(coefs, samples)
    again = codec.encode(decoded, samples)  # decode is a right inverse of encode
    for k in coefs:
        torch.testing.assert_close(again[k], coefs[k], rtol=1e-3, atol=1e-4)
    # a network whose layout differs from the reference: the first differing tensor is named
    bad = dict(state)
    bad["net.3.weight"] = torch.zeros(5, 5)
    with pytest.raises(DeltaCodecError, match="net.3.weight"):
        codec.encode(bad, samples)
    # a corrupt or truncated codec file is refused
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "codec", broken)
    data = (broken / "delta_codec.safetensors").read_bytes()
    (broken / "delta_codec.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeltaCodecError, match="corrupt or truncated"):
        DeltaCodec.from_pretrained(broken)
    (broken / "delta_codec.safetensors").write_bytes(data)
    cfg = json.loads((broken / "delta_codec.json").read_text())
    cfg["reference_digest"] = "0" * 64
    (broken / "delta_codec.json").write_text(json.dumps(cfg))
    with pytest.raises(DeltaCodecError, match="digest"):
        DeltaCodec.from_pretrained(broken)
    with pytest.raises(DeltaCodecError, match="no delta_codec.json"):
        DeltaCodec.from_pretrained(tmp_path)


def test_coefficient_zoo_is_a_corpus_source(tiny_zoo, tmp_path):
    from hf_paramgen.data.corpus import build_corpus

    out, manifest = tiny_zoo
    codec = fit_codec(out, tmp_path / "codec", rank=8, head_rank=8)
    coef = write_coefficient_zoo(out, codec, tmp_path / "coefficients")
    assert len(coef["checkpoints"]) == manifest["num_finetunes"]
    corpus = build_corpus([str(tmp_path / "coefficients")], tmp_path / "corpus", chunk_size=64)
    splits = set(corpus["models"]["split"])
    assert splits == {"train", "heldout_task", "heldout_class"}


def test_two_ranks_build_the_same_zoo(tiny_zoo, tmp_path):
    """Ranks started without a launcher (`rank`/`world_size`), one after the other, build what one process built; the
    last rank to finish writes the manifest; a rerun of a rank trains nothing."""
    out, manifest = tiny_zoo
    sharded = tmp_path / "zoo"
    assert build_finetune_zoo(sharded, "tiny", num_workers=1, rank=0, world_size=2) is None  # rank 1 not done yet
    merged = build_finetune_zoo(sharded, "tiny", num_workers=1, rank=1, world_size=2)
    keep = ("id", "split", "task_id", "val_accuracy", "test_accuracy")
    strip = lambda m: [{k: e[k] for k in keep} for e in m["checkpoints"]]  # noqa: E731
    assert strip(merged) == strip(manifest)
    assert build_finetune_zoo(sharded, "tiny", num_workers=1, rank=0, world_size=2)["num_trained_this_run"] == 0
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        build_finetune_zoo(sharded, "tiny", num_workers=1, rank=2, world_size=2)


def test_generator_refuses_networks_over_its_memory_limit(tiny_zoo, tmp_path):
    from hf_paramgen.generation.generation_checks import GenerationError
    from hf_paramgen.scale.delta_generator import DeltaGenerator

    out, _ = tiny_zoo
    codec = fit_codec(out, tmp_path / "codec", rank=8, head_rank=8)
    gen = DeltaGenerator(None, codec, max_memory_bytes=10_000)
    with pytest.raises(GenerationError, match="max_memory_bytes"):
        gen.check_memory(3)
    assert DeltaGenerator(None, codec).check_memory(3) == 2 * 4 * gen.network_params(3)
    with pytest.raises(GenerationError, match="no delta_codec/"):
        DeltaGenerator.from_pretrained(tmp_path)


@pytest.mark.slow
def test_small_scale_benchmark(tmp_path):
    """The whole chain on the tiny preset: zoo, codec, coefficients, corpus, tokenizer, a G=8 prior, evaluation."""
    from hf_paramgen.scale.benchmark import cli_benchmark_scale

    out = tmp_path / "scale"
    assert cli_benchmark_scale(["--small", "--output_dir", str(out), "--num_workers", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("largest_generated_params", "codes_per_param", "bits_per_param", "heldout_mean_accuracy_drop_pp",
                "heldout_worst_accuracy_drop_pp", "seconds_per_network", "params_per_second", "compute_floor_ratio",
                "peak_rss_mb", "targets"):
        assert key in results, key
    for split in ("heldout_tasks", "heldout_classes"):
        for key in ("generated_zero_shot", "finetuned", "base_only", "retrieval", "num_tasks"):
            assert key in results[split], (split, key)
    assert results["saved_and_reloaded_identical"] is True
    assert results["codes_per_step"] == 8
