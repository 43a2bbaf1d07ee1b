"""Several codes per decoding step (`ParamPriorConfig.codes_per_step` = G): config, batches, loss, training,
block-wise generation, caches, save/load, and the speed benchmark's quick run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_param_prior import conditions, tiny_config, tiny_model
from torch import nn
from torch.nn import functional as F

from hf_paramgen import ParamLayout
from hf_paramgen.data.collate import PriorCollator
from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
from hf_paramgen.models.modeling_param_prior import ParamPriorForCausalLM, structure_for_layout

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmark_prior_speed.py"


@pytest.fixture
def layout():
    return ParamLayout.from_module(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))  # 7 chunks of 4 weights


def grouped(seed: int = 0, **overrides) -> ParamPriorForCausalLM:
    """A tiny prior of 4 codes per chunk writing 4 (or `codes_per_step`) codes per step."""
    return tiny_model(seed, **{"codes_per_chunk": 4, "codes_per_step": 4, **overrides})


def rows_for(layout, targets, conds, per_chunk=4):
    structure = structure_for_layout(layout, 4, per_chunk)
    return [{"codes": t, "code_structure": structure, "condition_embeds": c, "condition_types": torch.tensor([0, 1])}
            for t, c in zip(targets, conds, strict=True)]


def test_codes_per_step_must_divide_codes_per_chunk_and_old_configs_load_as_one():
    with pytest.raises(ValueError, match=r"codes_per_step=3 must divide codes_per_chunk=4"):
        tiny_config(codes_per_chunk=4, codes_per_step=3)
    with pytest.raises(ValueError, match=r"codes_per_step must be a positive int, got 0"):
        tiny_config(codes_per_step=0)
    with pytest.raises(ValueError, match=r"block_window must lie in \[0, max_block_steps=59\), got 60"):
        tiny_config(codes_per_chunk=4, codes_per_step=2, block_window=60)
    saved = tiny_config().to_dict()
    del saved["codes_per_step"]  # a config.json written before the field
    old = ParamPriorConfig.from_dict(saved)
    assert old.codes_per_step == 1 and old.max_block_codes == old.max_block_steps == 59
    config = tiny_config(codes_per_chunk=4, codes_per_step=4)
    assert config.max_block_codes == 4 * 59 and config.decoder_config().vocab_size == 4 * 18


def test_grouped_batch_forward_shapes_and_loss_over_every_code(layout):
    """Rows i*G+g of input_ids / labels hold slot g of network i; the loss is the mean cross-entropy of all codes."""
    model = grouped(codes_per_step=2)
    g = torch.Generator().manual_seed(1)
    structure = structure_for_layout(layout, 4, 4)  # 28 codes = 14 steps of 2
    codes = [torch.randint(0, 16, (28,), generator=g), torch.randint(0, 16, (12,), generator=g)]
    rows = [{"codes": codes[0], "code_structure": structure, "condition_embeds": torch.randn(3, 8, generator=g),
             "condition_types": torch.tensor([0, 1, 2])},
            {"codes": codes[1], "code_structure": structure[:12], "condition_embeds": torch.randn(1, 8, generator=g),
             "condition_types": torch.tensor([0])}]
    batch = PriorCollator(model.config)(rows)
    assert batch["input_ids"].shape == (4, 15) and batch["labels"].shape == (4, 15)
    assert batch["attention_mask"].shape == (2, 15) and batch["code_structure"].shape == (2, 15, 10)
    assert batch["input_ids"][1, 1:].tolist() == (codes[0][1::2] + 2).tolist()  # network 0, slot 1
    assert batch["labels"][2, 7:].tolist() == [-100] * 8 and batch["labels"][:, 0].tolist() == [-100] * 4
    assert torch.equal(batch["code_structure"][0, :14], structure[::2])  # one row per step: its first code's
    out = model(**batch)
    assert out.logits.shape == (4, 15, 18)
    picked = torch.cat([out.logits[r, :n].reshape(-1, 18) for r, n in ((0, 14), (1, 14), (2, 6), (3, 6))])
    targets = torch.cat([codes[0][0::2], codes[0][1::2], codes[1][0::2], codes[1][1::2]]) + 2
    torch.testing.assert_close(out.loss, F.cross_entropy(picked, targets))
    single = model(**PriorCollator(model.config)(rows[1:]))  # padding and batch mates change nothing
    torch.testing.assert_close(single.logits, out.logits[2:, :7], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"input_ids must hold b \* codes_per_step rows .* got 3 rows"):
        model(input_ids=batch["input_ids"][:3])


def test_step_embedding_knows_which_code_is_in_which_slot():
    model = grouped()
    ids = torch.tensor([[0, 5], [0, 7], [0, 9], [0, 11]])  # one network, 4 slots
    swapped = ids[[1, 0, 2, 3]]
    assert not torch.allclose(model._step_embeddings(ids), model._step_embeddings(swapped))


def test_collator_crops_windows_of_whole_steps(layout):
    config = tiny_config(codebook_size=32, codes_per_chunk=4, codes_per_step=2, layouts={"mlp": layout.to_json()})
    collator = PriorCollator(config, max_codes=6, seed=0)
    structure = structure_for_layout(layout, 4, 4)
    row = {"codes": torch.arange(28), "architecture": "mlp", "condition_embeds": torch.zeros(2, 8),
           "condition_types": torch.tensor([0, 1])}
    starts = set()
    for _ in range(8):
        batch = collator([row])
        start = int(batch["input_ids"][0, 1]) - 2
        starts.add(start)
        assert start % 2 == 0 and batch["input_ids"][:, 1:].tolist() == [[start + 2, start + 4, start + 6],
                                                                         [start + 3, start + 5, start + 7]]
        assert torch.equal(batch["code_structure"][0, :3], structure[start : start + 6 : 2])
    assert len(starts) > 1
    with pytest.raises(ValueError, match="max_codes=5 must be a multiple of codes_per_step=2"):
        PriorCollator(config, max_codes=5)


def test_a_four_code_per_step_prior_overfits_one_network_and_regenerates_it(layout):
    model = grouped(seed=0).train()
    g = torch.Generator().manual_seed(0)
    target, cond = torch.randint(0, 16, (28,), generator=g), torch.randn(2, 8, generator=g)
    batch = PriorCollator(model.config)(rows_for(layout, [target], [cond]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < 0.05
    codes = model.generate_codes(cond[None], layout, 4, condition_types=torch.tensor([[0, 1]]))
    assert codes.shape == (1, 7, 4) and codes.flatten().tolist() == target.tolist()


def test_blockwise_generation_with_several_codes_per_step(layout):
    """Trained on random crops of 4 steps only, a G=2 prior regenerates whole 14-step networks block by block
    (blocks of 5 steps, windows of 2), with any cache; prefills hold whole steps of the previous block."""
    model = grouped(seed=0, codes_per_step=2, max_position_embeddings=8, max_condition_tokens=3).train()
    g = torch.Generator().manual_seed(1)
    targets = [torch.randint(0, 16, (28,), generator=g) for _ in range(2)]
    conds = [torch.randn(2, 8, generator=g) for _ in range(2)]
    collator = PriorCollator(model.config, seed=0)
    assert collator.max_codes == 8
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(**collator(rows_for(layout, targets, conds) * 4)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    prefills = []

    def spy(module, args, kwargs):
        if kwargs.get("cache") is None or int(kwargs["cache"].get_seq_length()) == 0:
            prefills.append((kwargs["input_ids"].clone(), kwargs["code_structure"].clone()))

    types = torch.tensor([[0, 1]])
    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    codes = model.generate_codes(conds[0][None], layout, 4, condition_types=types, block_window=2)
    handle.remove()
    assert codes.flatten().tolist() == targets[0].tolist()
    assert [tuple(p[0].shape) for p in prefills] == [(2, 1), (2, 3), (2, 3), (2, 3)]  # 5 + 3 + 3 + 3 steps
    flat = codes.flatten() + 2
    assert prefills[1][0][:, 1:].tolist() == [flat[6:10:2].tolist(), flat[7:10:2].tolist()]  # steps 3, 4
    assert torch.equal(prefills[1][1][0], structure_for_layout(layout, 4, 4)[6:12:2])  # absolute rows of steps 3..5
    for options in ({"cache_implementation": "dynamic"}, {"cache_implementation": "static"}, {"use_cache": False}):
        again = model.generate_codes(conds[1][None], layout, 4, condition_types=types, block_window=2, **options)
        assert again.flatten().tolist() == targets[1].tolist(), options


def test_seeded_sampling_candidates_and_probs_with_several_codes_per_step(layout):
    model = grouped(max_position_embeddings=10, max_condition_tokens=3)  # 6 steps per block: block-wise
    cond = conditions(b=2)
    kw = dict(layout=layout, chunk_size=4, do_sample=True, top_k=5, top_p=0.9, temperature=1.3, num_candidates=3,
              **cond)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = model.generate_codes(seed=7, **kw)
    assert torch.equal(torch.random.get_rng_state(), state) and a.shape == (6, 7, 4)
    assert torch.equal(a, model.generate_codes(seed=7, **kw))
    assert torch.equal(a, model.generate_codes(seed=7, cache_implementation="dynamic", **kw))  # default: static
    assert not torch.equal(a, model.generate_codes(seed=8, **kw))
    assert len({tuple(c.flatten().tolist()) for c in a}) > 1
    codes, probs = model.generate_codes(seed=7, return_probs=True, **kw)
    assert torch.equal(codes, a) and probs.shape == (6, 7, 4, 16)
    assert bool(((probs > 0).sum(-1) <= 5).all())  # top_k acted on every code
    picked = probs.gather(-1, codes[..., None])
    assert bool((picked > 0).all())  # every code was drawn from its own distribution
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 7, 4))


def test_save_load_roundtrip_keeps_codes_per_step(tmp_path, layout):
    model = grouped(codes_per_step=2, structure_embedding="factorised")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["codes_per_step"] == 2
    loaded = ParamPriorForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.codes_per_step == 2 and loaded.lm_head.out_features == 2 * 18
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    kw = dict(layout=layout, chunk_size=4, **conditions())
    assert torch.equal(loaded.generate_codes(**kw), model.generate_codes(**kw))


def test_benchmark_quick_run_writes_a_row_per_setting(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_prior_speed", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    assert bench.main(["--quick", "--json", str(out), "--codes_per_step", "1", "4", "--batches", "1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["G"], r["batch"], r["cache"]) for r in rows] == [(1, 1, "dynamic"), (1, 1, "static"),
                                                                (4, 1, "dynamic"), (4, 1, "static")]
    assert all(r["codes_per_s"] == pytest.approx(r["steps_per_s"] * r["G"]) and r["compute_floor_ratio"] > 0
               for r in rows)
    assert [r["same_codes_as_other_cache"] for r in rows if r["cache"] == "static"] == [True, True]
    assert rows[2]["flops_per_code"] == pytest.approx(rows[2]["flops_per_step"] / 4)
