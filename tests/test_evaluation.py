"""Evaluation of generated nets: validation-only selection, hidden-unit alignment, baselines on a tiny zoo, CLI,
metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hf_paramgen.conditioning import HashingTextEncoder, SampleEncoder
from hf_paramgen.metrics.param_generation.param_generation import compute_param_generation
from hf_paramgen.research.architectures import build_model
from hf_paramgen.research.evaluation import (
    EVAL_SPLITS,
    METHODS,
    ZooIndex,
    add_noise,
    align_hidden_units,
    aligned_distance,
    cli_evaluate,
    evaluate_generator,
    make_model,
    novelty,
    select_best,
    steps_ratio,
)
from hf_paramgen.research.tasks import Task, few_shot_samples, load_task_split
from hf_paramgen.research.zoo import build_zoo, evaluate_accuracy

TASK = Task.make("mnist", [4, 6, 2, 7])


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo")
    build_zoo(path, preset="tiny", num_workers=1)
    return path


_ENCODERS: dict = {}


def hashing_condition(task: Task) -> np.ndarray:
    """A fast stand-in for the MiniLM + PCA-prototype condition: hashed text + random-projection prototypes."""
    text = _ENCODERS.setdefault("text", HashingTextEncoder(64))
    samples = _ENCODERS.setdefault(task.dataset, SampleEncoder(task.input_dim, 64, seed=0))
    protos = samples(*few_shot_samples(task, 5), task.num_classes)
    return torch.cat([text(task.task_text).reshape(-1), protos.reshape(-1)]).numpy()


class LookupNet(nn.Module):
    """Answers correctly exactly on the samples of one split (memorised), class 0 elsewhere."""

    def __init__(self, task: Task, split: str):
        super().__init__()
        X, y = load_task_split(task, split)
        self.table = {x.numpy().tobytes(): int(c) for x, c in zip(X, y, strict=True)}
        self.num_classes = task.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, 784) -> (b, num_classes)
        labels = torch.tensor([self.table.get(row.numpy().tobytes(), 0) for row in x])
        return nn.functional.one_hot(labels, self.num_classes).float()


def test_best_of_k_is_chosen_on_validation_never_on_test():
    test_memoriser, validation_memoriser = LookupNet(TASK, "test"), LookupNet(TASK, "validation")
    assert evaluate_accuracy(test_memoriser, TASK, "test") == 1.0
    assert evaluate_accuracy(validation_memoriser, TASK, "test") < 1.0
    best, validation = select_best([test_memoriser, validation_memoriser], TASK)
    assert best == 1 and validation[1] == 1.0 and validation[0] < 0.5


def _permute_hidden(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random permutation of every hidden layer's units (function-preserving), Linear or Conv."""
    out, gen = {k: v.clone() for k, v in state.items()}, torch.Generator().manual_seed(seed)
    weights = [k for k in out if k.endswith("weight")]
    for w, nxt in zip(weights[:-1], weights[1:], strict=True):
        perm = torch.randperm(out[w].shape[0], generator=gen)
        out[w], out[w[:-6] + "bias"] = out[w][perm], out[w[:-6] + "bias"][perm]
        if out[nxt].ndim == 2 and out[w].ndim == 4:
            out[nxt] = out[nxt].reshape(out[nxt].shape[0], len(perm), -1)[:, perm].reshape(out[nxt].shape)
        else:
            out[nxt] = out[nxt][:, perm]
    return out


@pytest.mark.parametrize("architecture", ["mlp-784-32-32", "cnn-mnist"])
def test_hungarian_alignment_recovers_a_permuted_network_exactly(architecture):
    torch.manual_seed(0)
    ref = build_model(architecture, 4).state_dict()
    permuted = _permute_hidden(ref, seed=1)
    x = load_task_split(TASK, "validation")[0][:32]
    assert torch.allclose(make_model(architecture, 4, permuted)(x), make_model(architecture, 4, ref)(x), atol=1e-5)
    raw = float(torch.cat([(permuted[k] - ref[k]).reshape(-1) for k in ref]).norm())
    assert raw > 1.0 and aligned_distance(permuted, ref) < 1e-5
    aligned = align_hidden_units(permuted, ref)
    assert all(torch.equal(aligned[k], ref[k]) for k in ref)


def test_novelty_of_training_copies_is_zero_and_of_noisy_copies_positive():
    torch.manual_seed(0)
    train = [build_model("mlp-784-16", 4).state_dict() for _ in range(3)]
    copies = novelty([_permute_hidden(train[1], 3)], train)
    assert copies["novelty_ratio"] < 1e-6
    noisy = novelty([add_noise(train[1], 0.1, seed=0)], train)
    assert 0.0 < noisy["novelty_ratio"] < 1.0


def test_steps_ratio_reports_censoring_honestly():
    curve = lambda accs: [{"step": 10 * i, "val_accuracy": a} for i, a in enumerate(accs)]  # noqa: E731
    assert steps_ratio(curve([0.5, 0.9, 0.95]), curve([0.2, 0.5, 0.95]), 0.9) == {
        "generated_steps": 10, "random_steps": 20, "cap": 20, "ratio": 0.5, "censored": None}
    late = steps_ratio(curve([0.2, 0.3, 0.4]), curve([0.2, 0.95, 0.95]), 0.9)
    assert late["ratio"] == 2.0 and "lower bound" in late["censored"]
    early = steps_ratio(curve([0.95, 0.95, 0.95]), curve([0.2, 0.3, 0.4]), 0.9)
    assert early["ratio"] == 0.0 and "upper bound" in early["censored"]


def test_baselines_and_a_copying_generator_on_the_tiny_zoo(tiny_zoo):
    zoo = ZooIndex(tiny_zoo)
    train_entries = zoo.checkpoints("mlp-784-16", "train", num_classes=4)

    def copy_training_checkpoints(task, architecture, num_candidates, seed):
        if architecture != "mlp-784-16":
            raise ValueError(f"this generator only knows mlp-784-16, not {architecture}")
        return [zoo.state_dict(e) for e in train_entries[:num_candidates]]

    result = evaluate_generator(copy_training_checkpoints, tiny_zoo, ["mlp-784-16"], num_tasks_per_split=1, k=2,
                                finetune_steps=5, max_steps=20, condition_fn=hashing_condition)
    for split in EVAL_SPLITS:
        assert set(METHODS) | {"finetune_steps_ratio", "novelty_ratio"} <= set(result[split])
    seen, held = result["seen_tasks"], result["heldout_architectures"]
    row = seen["rows"][0]
    task = zoo.tasks[row["task_id"]]
    assert zoo.task_split[task.task_id] == "train"
    trained = zoo.checkpoints("mlp-784-16", task_id=task.task_id)
    assert row["trained"] == pytest.approx(np.mean([e["test_accuracy"] for e in trained]))
    models = [make_model("mlp-784-16", 4, zoo.state_dict(e)) for e in train_entries[:2]]
    validation = [evaluate_accuracy(m, task, "validation") for m in models]
    assert row["generated_zero_shot"] == evaluate_accuracy(models[int(np.argmax(validation))], task, "test")
    assert seen["novelty_ratio"] == pytest.approx(0.0, abs=1e-6)  # copies of training checkpoints
    assert row["error_agreement_with_nearest"] in (None, 1.0)  # the nearest checkpoint is the copy itself
    assert row["retrieved_task"] != task.task_id and row["novelty_ratio_retrieval_noise"] > 0
    assert all(0.0 <= row[m] <= 1.0 for m in ("random_init", "zoo_average", "retrieval", "linear_hypernetwork"))
    assert held["trained"] is not None and held["generated_zero_shot"] is None
    assert "cannot produce mlp-784-48" in held["notes"]["generated_zero_shot"]
    assert held["linear_hypernetwork"] is None and held["notes"]["linear_hypernetwork"]


def test_cli_baselines_only_small_writes_json_and_png(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli_evaluate(["--baselines_only", "--small", "--hashing_conditions", "--zoo_dir", str(tiny_zoo),
                         "--architectures", "mlp-784-16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["seen_tasks"]["generated_zero_shot"] is None and result["seen_tasks"]["trained"] > 0.5
    assert result["tokens_per_second"] is None and "compute_floor_ratio" in result
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| retrieval |" in capsys.readouterr().out


def test_param_generation_metric_fraction_and_gap_closed():
    got = compute_param_generation([0.8, 0.9], [1.0, 1.0], retrieval=[0.5, 0.5])
    assert got["fraction_of_trained"] == pytest.approx(0.85) and got["retrieval_gap_closed"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="equally many"):
        compute_param_generation([0.8], [1.0, 1.0])
    import evaluate
    metric = evaluate.load(str(Path(__file__).parents[1] / "hf_paramgen/metrics/param_generation"))
    assert metric.compute(predictions=[0.8, 0.9], references=[1.0, 1.0])["fraction_of_trained"] == pytest.approx(0.85)


def test_a_real_untrained_param_generator_runs_through_the_evaluation_and_is_timed(tiny_zoo):
    from hf_paramgen.generation.generator import ParamGenerator
    from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
    from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
    from hf_paramgen.models.modeling_param_prior import ParamPriorForCausalLM
    from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer
    from hf_paramgen.research.evaluation import compute_floor_ratio, generator_fn

    torch.manual_seed(0)
    tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=16, codebook_size=16, codebook_dim=4, hidden_size=16,
                                              num_layers=1))
    decoder = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "num_key_value_heads": 2}
    prior = ParamPriorForCausalLM(ParamPriorConfig(codebook_size=16, codes_per_chunk=1, chunk_size=16, condition_dim=32,
                                                   max_condition_tokens=8, max_position_embeddings=96,
                                                   transformer=decoder))
    generator = ParamGenerator(prior, tok, "hashing:32", {"digits": SampleEncoder(num_features=64, dim=32)})
    gen_fn = generator_fn(generator)
    result = evaluate_generator(gen_fn, tiny_zoo, ["mlp-64-32"], splits=("seen_tasks",), num_tasks_per_split=1, k=2,
                                finetune_steps=5, max_steps=10, num_classes=3, condition_fn=hashing_condition)
    seen = result["seen_tasks"]
    assert 0.0 <= seen["generated_zero_shot"] <= 1.0 and seen["novelty_ratio"] > 0
    assert seen["shuffled_instruction"] is None and "no other digits task" in seen["notes"]["shuffled_instruction"]
    assert gen_fn.tokens == 2 * gen_fn.tokens_per_sample > 0 and gen_fn.tokens_per_second > 0  # k=2, one call
    floor = compute_floor_ratio(gen_fn.tokens_per_second, sum(p.numel() for p in prior.parameters()), 32, 10, 1)
    assert floor["matmul_flops_per_second"] > 0 and 0 < floor["compute_floor_ratio"]
    from hf_paramgen.research.evaluation import batch_throughput

    tp = batch_throughput(generator, Task.make("digits", [0, 1, 2]), "mlp-64-32", batch=3)
    assert tp["batch"] == 3 and tp["tokens"] == 3 * gen_fn.tokens_per_sample and tp["tokens_per_second"] > 0


def test_lookup_baselines_permute_and_compose_head_rows_exactly(tiny_zoo):
    from hf_paramgen.research.evaluation.baselines import (
        BaselineCache,
        class_row_composition_candidates,
        head_names,
        permuted_retrieval_candidates,
    )

    zoo = ZooIndex(tiny_zoo)
    cache = BaselineCache(zoo, hashing_condition, seed=0)
    arch = "mlp-784-16"
    heads = head_names(arch, 4)
    assert len(heads) == 2 and heads[0].endswith("weight") and heads[1].endswith("bias")
    entries = zoo.checkpoints(arch, "train", num_classes=4)
    source = zoo.tasks[entries[0]["task_id"]]
    reordered = Task.make(source.dataset, list(reversed(source.classes)), source.transform)  # a new order, seen set
    candidates = permuted_retrieval_candidates(cache, arch, reordered, k=2)
    assert 1 <= len(candidates) <= 2
    new = candidates[0]
    same_set = [e for e in entries if sorted(zoo.tasks[e["task_id"]].classes) == sorted(source.classes)]
    sd, donor = zoo.state_dict(same_set[0]), zoo.tasks[same_set[0]["task_id"]].classes
    for i, c in enumerate(reordered.classes):  # output i of the new order is the donor's row of class c
        torch.testing.assert_close(new[heads[0]][i], sd[heads[0]][donor.index(c)])
        torch.testing.assert_close(new[heads[1]][i], sd[heads[1]][donor.index(c)])
    assert all(torch.equal(new[k], sd[k]) for k in sd if k not in heads)  # the body is the checkpoint's own
    # a permuted training checkpoint scores its own task's accuracy on the reordered task (no learning at all)
    assert evaluate_accuracy(make_model(arch, 4, new), reordered, "test") == pytest.approx(
        evaluate_accuracy(make_model(arch, 4, sd), zoo.tasks[same_set[0]["task_id"]], "test"))
    composed = class_row_composition_candidates(cache, arch, reordered, k=2)
    assert composed and all(set(c) == set(sd) for c in composed)
    seen_classes = {c for e in entries for c in zoo.tasks[e["task_id"]].classes}
    missing = [c for c in range(10) if c not in seen_classes]
    if missing:  # a class no training checkpoint has: no lookup exists
        unseen = Task.make(source.dataset, [missing[0], *source.classes[:3]], source.transform)
        assert class_row_composition_candidates(cache, arch, unseen, k=2) == []
        assert permuted_retrieval_candidates(cache, arch, unseen, k=2) == []


def test_prototype_head_is_the_nearest_class_mean_of_the_few_shot_samples(tiny_zoo):
    from hf_paramgen.research.evaluation.baselines import BaselineCache, head_names, prototype_head_candidates

    zoo = ZooIndex(tiny_zoo)
    cache = BaselineCache(zoo, hashing_condition, seed=0)
    arch = "mlp-784-16"
    task = zoo.tasks[zoo.checkpoints(arch, "heldout_task", num_classes=4)[0]["task_id"]]
    candidates = prototype_head_candidates(cache, arch, task, k=2)
    assert len(candidates) == 2
    weight, bias = head_names(arch, 4)
    model = make_model(arch, 4, candidates[0])
    X, y = few_shot_samples(task, per_class=5, split="train")
    with torch.no_grad():
        features = model.net[:-1](X.reshape(len(X), 784))
        distances = torch.cdist(features, candidates[0][weight])  # (n, 4)
    assert torch.equal(model(X).argmax(-1), distances.argmin(-1))  # the head is a nearest-class-mean rule
    torch.testing.assert_close(candidates[0][bias], -0.5 * candidates[0][weight].pow(2).sum(1))
    assert evaluate_accuracy(model, task, "test") > 0.5  # well above chance (0.25) with no learning


def test_ci95_is_the_student_t_interval_of_the_task_mean():
    from hf_paramgen.research.evaluation.runner import ci95

    low, high = ci95([0.8, 0.9, 1.0])
    assert (low + high) / 2 == pytest.approx(0.9)
    assert high - low == pytest.approx(2 * 4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert ci95([0.5]) is None and ci95([None, 0.7]) is None
