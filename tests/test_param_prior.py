import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from hf_paramgen import ParamLayout, chunk_positions
from hf_paramgen.data.collate import PriorCollator
from hf_paramgen.models.code_structure import STRUCTURE_FIELDS, FactorisedStructureEmbedding
from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
from hf_paramgen.models.modeling_param_prior import (
    CodeStructureEmbedding,
    ParamPriorForCausalLM,
    class_slots,
    head_tensors,
    register,
    structure_for_layout,
)
from hf_paramgen.research.architectures import build_model

torch.set_num_threads(1)
LLAMA = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4, "intermediate_size": 64}
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4}


def tiny_config(**overrides) -> ParamPriorConfig:
    kwargs = dict(codebook_size=16, codes_per_chunk=2, condition_dim=8, max_condition_tokens=4, num_condition_types=6,
                  max_tensors=8, max_chunks_per_tensor=16, transformer=LLAMA, max_position_embeddings=64, chunk_size=4)
    kwargs.update(overrides)
    return ParamPriorConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> ParamPriorForCausalLM:
    torch.manual_seed(seed)
    return ParamPriorForCausalLM(tiny_config(**overrides)).eval()


@pytest.fixture
def layout():
    return ParamLayout.from_module(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))  # 12 + 3 + 6 + 2 weights


def conditions(b: int = 1, n: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"condition_embeds": torch.randn(b, n, 8, generator=g),
            "condition_types": torch.arange(n).repeat(b, 1) % 6}


def test_config_validation_names_values():
    with pytest.raises(ValueError, match="codebook_size must be >= 2, got 1"):
        tiny_config(codebook_size=1)
    with pytest.raises(ValueError, match="must differ, both are 0"):
        tiny_config(pad_token_id=0)
    with pytest.raises(ValueError, match=r"block_window must lie in \[0, max_block_codes=59\), got 80"):
        tiny_config(block_window=80)
    with pytest.raises(ValueError, match="vocab_size'\\]=99 disagrees with the prior's vocabulary 18"):
        tiny_config(transformer={**LLAMA, "vocab_size": 99})
    with pytest.raises(ValueError, match="leaves 0 codes per block"):
        tiny_config(max_position_embeddings=5)


def test_structure_for_layout_expands_chunk_positions_over_slots(layout):
    structure = structure_for_layout(layout, 4, 2, "layer")
    position, _ = chunk_positions(layout, 4, "layer")  # 3 + 1 + 2 + 1 chunks
    assert structure.shape == (position.shape[0] * 2, len(STRUCTURE_FIELDS)) == (14, 10)
    assert torch.equal(structure[0::2, :3], position) and torch.equal(structure[1::2, :3], position)
    assert structure[:, 3].tolist() == [0, 1] * position.shape[0]
    assert torch.equal(structure[0::2, 4], class_slots(layout, 4))
    assert torch.equal(structure[1::2, 4:], structure[0::2, 4:])
    # (row, column, fan_in, fan_out, tensors_after) of each chunk's first weight: weight (3, 4) in 3 chunks of 4,
    # bias (3,), weight (2, 3) in 2 chunks (the second starts at row 1, column 1), bias (2,)
    assert structure[0::2, 5:].tolist() == [[0, 0, 4, 3, 3], [1, 0, 4, 3, 3], [2, 0, 4, 3, 3], [0, 0, 1, 3, 2],
                                            [0, 0, 3, 2, 1], [1, 1, 3, 2, 1], [0, 0, 1, 2, 0]]


def test_factorised_structure_has_no_table_a_larger_network_overflows():
    """Unit i of a narrow layer and of a wide one get the same embedding; a tensor of 50,000 chunks (far beyond
    max_chunks_per_tensor) embeds to finite, distinct rows instead of being clipped to one table row."""
    config = tiny_config(structure_embedding="factorised", max_chunks_per_tensor=4)
    embed = FactorisedStructureEmbedding(config, 16)
    narrow = structure_for_layout(ParamLayout.from_module(nn.Linear(4, 8)), 4, 2)  # 8 rows x 1 chunk each
    wide = structure_for_layout(ParamLayout.from_module(nn.Linear(4, 32)), 4, 2)
    assert torch.equal(narrow[:16, 5:7], wide[:16, 5:7])  # same (row, column) for units 0..7
    big = structure_for_layout(ParamLayout.from_module(nn.Linear(1000, 200)), 4, 1)  # 50,000 chunks in one tensor
    out = embed(big[None])
    assert big.shape[0] == 50_000 + 200 // 4 and out.shape == (1, big.shape[0], 16) and torch.isfinite(out).all()
    assert not torch.allclose(out[0, 10], out[0, 40_000])
    tables = CodeStructureEmbedding(tiny_config(max_chunks_per_tensor=4), 16)  # capped: chunks >= 3 share a row
    assert torch.equal(tables(big[None])[0, 10], tables(big[None])[0, 40_000])
    five = big[None, :100, :5]  # rows without shape fields: zeros stand in for them
    assert torch.equal(embed(five), embed(torch.cat([five, torch.zeros(1, 100, 5, dtype=torch.long)], -1)))
    with pytest.raises(ValueError, match="structure_embedding must be 'tables' or 'factorised', got 'relative'"):
        tiny_config(structure_embedding="relative")


def test_factorised_prior_trains_and_generates_for_a_wider_layout():
    """A factorised prior runs forward/backward on one layout and generates codes for a wider, deeper one."""
    model = tiny_model(structure_embedding="factorised")
    layout = ParamLayout.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    wide = ParamLayout.from_module(nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                                                 nn.Linear(12, 2)))
    cs, per_chunk = model.config.chunk_size, model.config.codes_per_chunk
    structure = structure_for_layout(layout, cs, per_chunk)
    ids = torch.randint(model.config.code_offset, model.config.vocab_size, (1, structure.shape[0]))
    out = model(input_ids=ids, code_structure=structure[None], labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.structure_embed.proj.weight.grad.abs().sum() > 0
    codes = model.generate_codes(None, wide, chunk_size=cs, seed=0)
    assert codes.shape == (1, structure_for_layout(wide, cs, per_chunk).shape[0] // per_chunk, per_chunk)


def test_class_slots_mark_the_rows_of_the_classifier_head():
    model = build_model("mlp-64-32", 3)  # Linear(64, 32) -> Linear(32, 3): head weight (3, 32) + bias (3,)
    layout = ParamLayout.from_module(model)
    assert head_tensors(layout) == [2, 3]
    slots = class_slots(layout, 8)  # weight rows hold 4 chunks each; the 3-wide bias is one chunk starting at class 0
    n_hidden = (64 * 32) // 8 + 32 // 8
    assert slots[:n_hidden].tolist() == [0] * n_hidden
    assert slots[n_hidden:].tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [1]
    arch = class_slots(layout, 8, "architecture")  # global chunks: the head starts inside chunk 260
    assert arch.shape == (-(-layout.num_params // 8),) and int(arch[:260].max()) == 0
    assert arch[271] == 3 and arch[272] == 1  # last weight chunk is in row 2; the bias chunk starts at class 0


def test_head_tokens_see_the_prototype_of_their_own_class():
    model = tiny_model()
    cond = torch.randn(1, 4, 8)
    types = torch.tensor([[0, 1, 2, 3]])  # text, architecture, class 0, class 1
    structure = torch.zeros(1, 3, 5, dtype=torch.long)
    structure[0, :, 4] = torch.tensor([0, 1, 2])  # a hidden token, a class-0 token, a class-1 token
    mask = torch.ones(1, 4, dtype=torch.long)
    out = model._injection(cond, types, mask, structure)
    swapped = model._injection(cond[:, [0, 1, 3, 2]], types, mask, structure)  # class prototypes swapped
    torch.testing.assert_close(out[0, 1], swapped[0, 2])
    torch.testing.assert_close(out[0, 2], swapped[0, 1])
    torch.testing.assert_close(out[0, 0], swapped[0, 0])  # hidden tokens: only the (order-free) mean
    plain = tiny_model(condition_injection=False)
    assert not hasattr(plain, "class_condition") and not hasattr(plain, "token_condition")


def test_codes_input_ids_roundtrip_is_exact_and_rejects_specials():
    model = tiny_model()
    codes = torch.randint(0, 16, (3, 5, 2))
    ids = model.codes_to_input_ids(codes)
    assert ids.min() >= model.config.code_offset
    torch.testing.assert_close(model.input_ids_to_codes(ids), codes, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, codebook_size=16\), got values in \[0, 16\]"):
        model.codes_to_input_ids(torch.tensor([0, 16]))
    with pytest.raises(ValueError, match=r"non-code ids \(e.g. \[0\]\); code ids lie in \[2, 18\)"):
        model.input_ids_to_codes(torch.tensor([0, 5]))


def test_save_load_is_exact_and_auto_class_loads(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    expected = {"configuration_param_prior.py", "modeling_param_prior.py", "code_structure.py",
                "generation_param_prior.py", "chunking.py", "param_layout.py"}
    assert expected <= set(os.listdir(tmp_path))
    loaded = ParamPriorForCausalLM.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    register()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(auto) is ParamPriorForCausalLM
    ids = torch.tensor([[0, 5, 7, 3]])
    # weights are bit-identical (above); loaded tensors sit at other memory alignments, so BLAS may round differently
    torch.testing.assert_close(auto(ids, **conditions()).logits, model(ids, **conditions()).logits, rtol=0, atol=1e-6)


def test_a_prior_saved_before_condition_injection_loads_as_prefix_only(tmp_path):
    model = tiny_model(condition_injection=False)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["condition_injection"]  # what a prior saved by an older version holds
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, info = ParamPriorForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.config.condition_injection is False and not info["missing_keys"]
    assert ParamPriorConfig().condition_injection is True  # new priors inject by default


def test_fresh_process_loads_with_trust_remote_code(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "prior")
    ids = torch.tensor([[0, 5, 7, 3]])
    expected = model(ids, **conditions()).logits[0, -1, 2:].sum().item()
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'prior')!r}, trust_remote_code=True).eval()\n"
        "assert 'hf_paramgen' not in sys.modules, 'remote code must not need the installed package'\n"
        "g = torch.Generator().manual_seed(0)\n"
        "c = torch.randn(1, 3, 8, generator=g)\n"
        "out = m(torch.tensor([[0, 5, 7, 3]]), condition_embeds=c, condition_types=torch.arange(3)[None])\n"
        "print(type(m).__module__, repr(out.logits[0, -1, 2:].sum().item()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    module, value = result.stdout.split()
    assert module.startswith("transformers_modules")
    assert float(value) == pytest.approx(expected, rel=1e-5)  # same weights; other memory alignment (see above)


def test_forward_loss_ignores_prefix_and_padding(layout):
    model = tiny_model()
    collator = PriorCollator(model.config)
    structure = structure_for_layout(layout, 4, 2, "layer")  # 7 chunks -> 14 codes
    g = torch.Generator().manual_seed(1)
    rows = [
        {"codes": torch.randint(0, 16, (14,), generator=g), "code_structure": structure,
         "condition_embeds": torch.randn(3, 8, generator=g), "condition_types": torch.tensor([0, 1, 2])},
        {"codes": torch.randint(0, 16, (6,), generator=g), "code_structure": structure[:6],
         "condition_embeds": torch.randn(1, 8, generator=g), "condition_types": torch.tensor([0])},
    ]
    batch = collator(rows)
    assert batch["input_ids"].shape == (2, 15) and batch["condition_embeds"].shape == (2, 3, 8)
    out = model(**batch)
    assert out.logits.shape == (2, 15, 18)  # prefix positions dropped
    # manual loss over the code targets only
    targets = torch.cat([rows[0]["codes"], rows[1]["codes"]]) + 2
    picked = torch.cat([out.logits[0, :14], out.logits[1, :6]])
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(picked, targets))
    # each row's logits are independent of padding in the batch
    for i, row in enumerate(rows):
        single = collator([row])
        n = single["input_ids"].shape[1]
        torch.testing.assert_close(model(**single).logits[0], out.logits[i, :n], rtol=1e-4, atol=1e-5)
    # garbage in padded slots changes nothing
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 9))
    noisy["condition_embeds"] = batch["condition_embeds"] + 5 * (1 - batch["condition_mask"][..., None])
    torch.testing.assert_close(model(**noisy).loss, out.loss)


def test_generate_codes_returns_only_in_range_codes_of_the_right_count(layout):
    model = tiny_model()
    codes = model.generate_codes(conditions()["condition_embeds"], layout, 4, "layer", do_sample=True, seed=0,
                                 condition_types=conditions()["condition_types"])
    assert codes.shape == (1, 7, 2) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 16
    # the raw generate output holds only code ids after BOS, even when specials are favoured
    with torch.no_grad():
        model.lm_head.weight[:2] += 10.0
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=14, do_sample=True,
                         code_structure=structure_for_layout(layout, 4, 2)[None], **conditions())
    assert out.shape == (1, 15) and bool((out[:, 1:] >= 2).all())


def test_kv_cache_greedy_equals_no_cache_greedy(layout):
    for transformer in (LLAMA, GPT2):
        model = tiny_model(seed=3, transformer=transformer)
        kw = dict(layout=layout, chunk_size=4, aggregation="layer", **conditions())
        cached = model.generate_codes(**kw)
        uncached = model.generate_codes(use_cache=False, **kw)
        torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(layout):
    model = tiny_model()
    kw = dict(layout=layout, chunk_size=4, aggregation="layer", do_sample=True, top_k=8, top_p=0.95, temperature=1.5,
              **conditions())
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = model.generate_codes(seed=7, **kw), model.generate_codes(seed=7, **kw)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, model.generate_codes(seed=8, **kw))


def test_several_samples_per_instruction(layout):
    model = tiny_model()
    cond = conditions(b=2)
    codes = model.generate_codes(layout=layout, chunk_size=4, num_candidates=3, do_sample=True, seed=0, **cond)
    assert codes.shape == (6, 7, 2)
    assert len({tuple(c.flatten().tolist()) for c in codes}) > 1
    first = model.generate_codes(cond["condition_embeds"][:1], layout, 4, condition_types=cond["condition_types"][:1])
    greedy = model.generate_codes(layout=layout, chunk_size=4, num_candidates=2, **cond)
    torch.testing.assert_close(greedy[:2], first.expand(2, -1, -1), rtol=0, atol=0)  # instruction-major


def test_blockwise_generation_with_context_smaller_than_network(layout):
    model = tiny_model(max_position_embeddings=12, max_condition_tokens=3)  # 12 - 3 - 1 = 8 codes per block
    structure = structure_for_layout(layout, 4, 2)
    prefills = []

    def spy(module, args, kwargs):
        if kwargs.get("cache") is None or kwargs["cache"].get_seq_length() == 0:
            prefills.append((kwargs["input_ids"].clone(), kwargs["code_structure"].clone()))

    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    codes = model.generate_codes(layout=layout, chunk_size=4, block_window=3, **conditions()).flatten()
    handle.remove()
    assert codes.shape == (14,) and int(codes.max()) < 16
    # blocks: 8 new codes; then window 3 + 5 new; then window 3 + 1 new -> 14 codes
    assert [p[0].shape[1] for p in prefills] == [1, 4, 4]
    assert prefills[1][0][0, 1:].tolist() == (codes[5:8] + 2).tolist()  # window = last codes of block 1
    assert prefills[2][0][0, 1:].tolist() == (codes[10:13] + 2).tolist()
    assert torch.equal(prefills[1][1][0], structure[5:9])  # absolute structure rows, row p = code predicted at p
    # with a context large enough the same greedy prior gives one block
    big = tiny_model(max_condition_tokens=3)
    big.load_state_dict(model.state_dict())
    assert big.generate_codes(layout=layout, chunk_size=4, **conditions()).shape == (1, 7, 2)


def test_prior_overfits_two_conditions_to_two_code_sequences(layout):
    model = tiny_model(seed=0).train()
    structure = structure_for_layout(layout, 4, 2)
    g = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, 16, (14,), generator=g) for _ in range(2)]
    conds = [torch.randn(2, 8, generator=g) for _ in range(2)]
    rows = [{"codes": t, "code_structure": structure, "condition_embeds": c, "condition_types": torch.tensor([0, 1])}
            for t, c in zip(targets, conds, strict=False)]
    batch = PriorCollator(model.config)(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < 0.05
    for target, cond in zip(targets, conds, strict=False):
        codes = model.generate_codes(cond[None], layout, 4, condition_types=torch.tensor([[0, 1]]))
        assert codes.flatten().tolist() == target.tolist()


def test_collator_crops_long_networks_and_masks_labels(layout):
    config = tiny_config(layouts={"mlp": layout.to_json()})
    collator = PriorCollator(config, max_codes=6, seed=0)
    row = {"codes": torch.arange(14), "architecture": "mlp", "condition_embeds": torch.zeros(2, 8),
           "condition_types": torch.tensor([0, 1])}
    batch = collator([row, {**row, "codes": torch.arange(14).view(7, 2)}])
    assert batch["input_ids"].shape == (2, 7) and bool((batch["labels"][:, 0] == -100).all())
    structure = structure_for_layout(layout, 4, 2)
    for i in range(2):
        start = int(batch["input_ids"][i, 1]) - 2  # codes are arange, so the first code is the crop start
        assert batch["input_ids"][i, 1:].tolist() == list(range(start + 2, start + 8))
        assert torch.equal(batch["code_structure"][i, :6], structure[start : start + 6])
    with pytest.raises(ValueError, match=r"code_structure has shape \(14, 10\), the row.s codes need \(5, 10\)"):
        collator([{**row, "codes": torch.arange(5), "code_structure": structure}])


def test_blockwise_generation_reproduces_networks_learned_from_crops(layout):
    """Algorithm 1 end to end: trained on random 8-code crops only, the prior regenerates whole 14-code networks."""
    model = tiny_model(seed=0, max_position_embeddings=12, max_condition_tokens=3).train()
    structure = structure_for_layout(layout, 4, 2)
    g = torch.Generator().manual_seed(1)
    targets = [torch.randint(0, 16, (14,), generator=g) for _ in range(2)]
    conds = [torch.randn(2, 8, generator=g) for _ in range(2)]
    rows = [{"codes": t, "code_structure": structure, "condition_embeds": c, "condition_types": torch.tensor([0, 1])}
            for t, c in zip(targets, conds, strict=False)]
    collator = PriorCollator(model.config, seed=0)
    assert collator.max_codes == 8
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(**collator(rows * 4)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for target, cond in zip(targets, conds, strict=False):
        codes = model.generate_codes(cond[None], layout, 4, condition_types=torch.tensor([[0, 1]]), block_window=3)
        assert codes.flatten().tolist() == target.tolist()


def test_generate_codes_accepts_a_layout_name_and_architecture_aggregation(layout):
    model = tiny_model(layouts={"mlp": layout.to_json()}, aggregation="architecture")
    codes = model.generate_codes(layout="mlp", **conditions())  # chunk_size and aggregation from the config
    assert codes.shape == (1, 6, 2)  # 23 weights -> ceil(23 / 4) = 6 chunks in one run
    assert model.generate_codes(layout="mlp", aggregation="layer", **conditions()).shape == (1, 7, 2)
    with pytest.raises(KeyError, match=r"No layout named 'cnn' in this prior; it knows \['mlp'\]"):
        model.generate_codes(layout="cnn")
    with pytest.raises(ValueError, match="num_candidates must be a positive int, got 0"):
        model.generate_codes(layout="mlp", num_candidates=0)
    with pytest.warns(FutureWarning, match="num_samples"), pytest.raises(ValueError, match="got 0"):
        model.generate_codes(layout="mlp", num_samples=0)
