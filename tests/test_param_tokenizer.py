"""ParamTokenizer: config validation, masked loss, codebook health, tokenizer API, save/load, remote code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from hf_paramgen.layout.chunking import chunk, chunk_positions, unchunk
from hf_paramgen.layout.param_layout import KINDS, LayoutError, ParamLayout
from hf_paramgen.models.configuration_param_tokenizer import NUM_KINDS, ParamTokenizerConfig
from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer, register
from hf_paramgen.models.quantizer import EMACodebook, GumbelQuantizer

TINY = dict(chunk_size=8, hidden_size=32, num_layers=2, codebook_size=16, codebook_dim=4, num_quantizers=2,
            latents_per_chunk=2, max_tensors=8, max_chunks_per_tensor=32)


def tiny_tokenizer(**overrides) -> ParamTokenizer:
    torch.manual_seed(0)
    return ParamTokenizer(ParamTokenizerConfig(**{**TINY, **overrides}))


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 3))


def normalised_chunks(net: nn.Module, chunk_size: int = 8):
    layout = ParamLayout.from_module(net)
    return chunk(layout.flatten(net.state_dict()) * layout.fan_in_scale(), layout, chunk_size)


# ---------------------------------------------------------------------------------------------- config
def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="quantizer must be one of .* got 'fsq'"):
        ParamTokenizerConfig(quantizer="fsq")
    with pytest.raises(ValueError, match="num_quantizers=3 .* needs quantizer='ema', got quantizer='gumbel'"):
        ParamTokenizerConfig(quantizer="gumbel", num_quantizers=3)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        ParamTokenizerConfig(chunk_size=0)
    with pytest.raises(ValueError, match="aggregation must be one of .* got 'global'"):
        ParamTokenizerConfig(aggregation="global")


def test_config_rate_and_kind_table_match_layout():
    cfg = ParamTokenizerConfig(chunk_size=8, latents_per_chunk=1, num_quantizers=4, codebook_size=256)
    assert cfg.codes_per_chunk == 4 and cfg.tokens_per_chunk == 4 and cfg.bits_per_param == 4.0
    assert NUM_KINDS == len(KINDS)


def test_config_json_from_before_the_rename_loads_unchanged(tmp_path):
    """Old files name the latents per chunk `codes_per_chunk`; new files write `latents_per_chunk` only."""
    old = {**ParamTokenizerConfig().to_dict(), "codes_per_chunk": 2, "num_quantizers": 3}
    del old["latents_per_chunk"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = ParamTokenizerConfig.from_pretrained(tmp_path)
    assert (cfg.latents_per_chunk, cfg.codes_per_chunk, cfg.tokens_per_chunk) == (2, 6, 6)
    cfg.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["latents_per_chunk"] == 2 and "codes_per_chunk" not in saved
    assert ParamTokenizerConfig.from_pretrained(tmp_path / "new").codes_per_chunk == 6
    with pytest.raises(AttributeError):
        cfg.tokens_per_chunk = 3  # a read-only alias


# ---------------------------------------------------------------------------------------------- forward
def test_reconstruction_loss_is_masked_mse_and_padding_never_counts():
    model = tiny_tokenizer().eval()
    c = normalised_chunks(tiny_net())
    out = model(c.chunks, c.chunk_mask, c.chunk_position)
    err = (out.reconstruction - c.chunks).pow(2)
    assert torch.allclose(out.reconstruction_loss, err[c.chunk_mask].mean())
    assert not c.chunk_mask.all()  # the test net really has padding
    assert out.codes.shape == (len(c), model.config.codes_per_chunk)
    assert torch.allclose(out.loss, out.reconstruction_loss + 0.25 * out.commitment_loss)
    assert 0 < float(out.codebook_usage) <= 1 and float(out.perplexity) >= 1


def test_kmeans_init_then_dead_codes_restart_near_the_data():
    torch.manual_seed(0)
    book = EMACodebook(codebook_size=8, dim=2, decay=0.5, dead_code_threshold=0.5, kmeans_iters=5)
    data = torch.randn(256, 2) * 0.1 + 3.0  # (M, d), far from the N(0, 1) initial codes
    assert not bool(book.initialized)
    book.train()(data)
    assert bool(book.initialized) and (book.embed - 3.0).abs().max() < 1.0  # k-means put codes on the data
    book.embed[0] = torch.tensor([100.0, 100.0])  # a code nothing will ever pick
    book.cluster_size[0] = 0.0
    book(data)
    assert (book.embed[0] - 3.0).abs().max() < 1.0  # restarted from a batch vector
    before = book.embed.clone()
    book.eval()(data)
    assert torch.equal(book.embed, before)  # no update outside training


def test_training_steps_reduce_reconstruction_error():
    torch.manual_seed(0)
    model = tiny_tokenizer(codebook_size=32)
    c = normalised_chunks(tiny_net())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(c.chunks, c.chunk_mask, c.chunk_position)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.reconstruction_loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    rebuilt = model.decode_codes(model.encode_chunks(c.chunks, c.chunk_position), c.chunk_position)
    rel = (rebuilt - c.chunks)[c.chunk_mask].pow(2).mean() / c.chunks[c.chunk_mask].pow(2).mean()
    assert rel < 0.3  # the lossy round trip's error bound for this tiny, briefly trained tokenizer


def test_gumbel_quantizer_trains_and_anneals_temperature():
    model = tiny_tokenizer(quantizer="gumbel", num_quantizers=1, gumbel_cycle_steps=10)
    c = normalised_chunks(tiny_net())
    temps = []
    for _ in range(5):
        temps.append(model.quantizer.temperature)
        out = model(c.chunks, c.chunk_mask, c.chunk_position)
        out.loss.backward()
    assert temps == sorted(temps, reverse=True) and temps[0] == 1.0
    assert model.quantizer.embed.grad is not None and model.quantizer.to_logits.weight.grad is not None
    assert isinstance(model.quantizer, GumbelQuantizer) and out.codes.shape == (len(c), 2)


def test_positions_past_the_tables_are_clipped():
    model = tiny_tokenizer().eval()
    pos = torch.tensor([[1000, 10**6, 12], [7, 31, 0]])
    clipped = torch.tensor([[7, 31, 12], [7, 31, 0]])
    x = torch.randn(2, 8)
    assert torch.equal(model.encode_chunks(x, pos), model.encode_chunks(x, clipped))


# ---------------------------------------------------------------------------------------------- tokenizer API
def test_encode_decode_restore_names_shapes_and_dtypes():
    model = tiny_tokenizer().eval()
    net = tiny_net().to(torch.float64)
    layout = ParamLayout.from_module(net)
    codes = model.encode(net, layout)
    assert codes.dtype == torch.long and codes.shape == (len(chunk_positions(layout, 8)[0]), 4)
    state_dict = model.decode(codes, layout)
    assert list(state_dict) == layout.names
    assert all(state_dict[n].shape == net.state_dict()[n].shape and state_dict[n].dtype == torch.float64
               for n in layout.names)
    assert torch.equal(model.encode(net.state_dict(), layout), codes)


def test_decode_denormalises_by_shape_derived_scale():
    model = tiny_tokenizer().eval()
    net = tiny_net()
    layout = ParamLayout.from_module(net)
    codes = model.encode(net, layout)
    pos = chunk_positions(layout, 8)[0]
    normalised = unchunk(model.decode_codes(codes, pos), layout)
    flat = layout.flatten(model.decode(codes, layout))
    assert torch.allclose(flat * layout.fan_in_scale(), normalised, atol=1e-6)


def test_decode_expected_averages_the_decoded_codes_and_checks_its_input():
    model = tiny_tokenizer(latents_per_chunk=1, num_quantizers=1).eval()
    net = tiny_net()
    layout = ParamLayout.from_module(net)
    codes = model.encode(net, layout)  # (N, 1)
    k = model.config.codebook_size
    one_hot = torch.nn.functional.one_hot(codes[:, 0], k).float()
    expected = model.decode_expected(one_hot[:, None], layout)
    for name, tensor in model.decode(codes, layout).items():
        torch.testing.assert_close(expected[name], tensor, rtol=0, atol=1e-6)
    other = (codes + 1) % k
    half = model.decode_expected(0.5 * one_hot + 0.5 * torch.nn.functional.one_hot(other[:, 0], k).float(), layout)
    first, second = model.decode(codes, layout), model.decode(other, layout)
    mix = {n: 0.5 * a + 0.5 * b for (n, a), b in zip(first.items(), second.values(), strict=True)}
    for name in half:
        torch.testing.assert_close(half[name], mix[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"probs must be a float \(N, 1, K\) or \(N, K\) tensor with N=\d+ chunks"):
        model.decode_expected(one_hot[:-1], layout)
    with pytest.raises(ValueError, match="needs one code per chunk"):
        tiny_tokenizer().decode_expected(one_hot, layout)


def test_batched_api_matches_one_by_one():
    model = tiny_tokenizer().eval()
    nets = [tiny_net(0), tiny_net(1)]
    layouts = [ParamLayout.from_module(n) for n in nets]
    batched = model.encode_batch(nets, layouts)
    for net, layout, codes in zip(nets, layouts, batched, strict=False):
        assert torch.equal(codes, model.encode(net, layout))
    decoded = model.decode_batch(batched, layouts)
    for layout, codes, sd in zip(layouts, batched, decoded, strict=False):
        one = model.decode(codes, layout)
        assert all(torch.allclose(sd[n], one[n], atol=1e-6) for n in layout.names)


def test_bad_input_errors_name_expected_and_received():
    model = tiny_tokenizer().eval()
    net = tiny_net()
    layout = ParamLayout.from_module(net)
    codes = model.encode(net, layout)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\) \(codebook_size=16\), got range \[\d+, 99\]"):
        model.decode(codes.clone().index_fill_(0, torch.tensor([0]), 99), layout)
    with pytest.raises(ValueError, match=r"codes must be a \(N, 4\) integer tensor .* got \(23, 3\)"):
        model.decode(codes[:, :3], layout)
    with pytest.raises(ValueError, match="integer dtype, got torch.float32"):
        model.decode(codes.float(), layout)
    with pytest.raises(LayoutError, match="codes\\[0\\] has 22 rows but the layout needs 23 chunks of size 8"):
        model.decode(codes[:-1], layout)
    bad = ParamLayout(layout.specs, {"chunk_size": 16, "aggregation": "layer"})
    with pytest.raises(LayoutError, match="chunk_size=16 but this ParamTokenizer uses chunk_size=8"):
        model.encode(net, bad)
    with pytest.raises(LayoutError, match=r"missing tensors \['2.bias'\]"):
        model.encode({k: v for k, v in net.state_dict().items() if k != "2.bias"}, layout)
    with pytest.raises(LayoutError, match=r"'0.weight' has shape \(7, 21\), expected \(7, 20\)"):
        model.encode({**net.state_dict(), "0.weight": torch.zeros(7, 21)}, layout)


# ---------------------------------------------------------------------------------------------- save / load
def trained_tokenizer() -> tuple[ParamTokenizer, torch.Tensor, torch.Tensor]:
    model = tiny_tokenizer()
    c = normalised_chunks(tiny_net())
    model(c.chunks, c.chunk_mask, c.chunk_position)  # one training forward: k-means init + EMA update
    return model.eval(), c.chunks, c.chunk_position


def test_save_pretrained_from_pretrained_is_exact_including_codebook_buffers(tmp_path):
    from transformers import AutoModel

    model, chunks, pos = trained_tokenizer()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_param_tokenizer.ParamTokenizerConfig",
                                  "AutoModel": "modeling_param_tokenizer.ParamTokenizer"}
    register()
    for loaded in (ParamTokenizer.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is ParamTokenizer
        a, b = model.state_dict(), loaded.state_dict()
        assert list(a) == list(b) and any("cluster_size" in k for k in a)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        assert torch.equal(loaded.eval()(chunks, None, pos).reconstruction, model(chunks, None, pos).reconstruction)


def test_fresh_process_loads_with_remote_code_only(tmp_path):
    model, chunks, pos = trained_tokenizer()
    model.save_pretrained(tmp_path / "tok")
    torch.save({"chunks": chunks, "pos": pos, "codes": model.encode_chunks(chunks, pos),
                "rec": model(chunks, None, pos).reconstruction}, tmp_path / "ref.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "tok")!r}, trust_remote_code=True).eval()
        ref = torch.load({str(tmp_path / "ref.pt")!r}, weights_only=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert not [m for m in sys.modules if m.startswith("hf_paramgen")], "hf_paramgen was imported"
        assert torch.equal(model.encode_chunks(ref["chunks"], ref["pos"]), ref["codes"])
        assert torch.equal(model(ref["chunks"], None, ref["pos"]).reconstruction, ref["rec"])
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- benchmark
def test_benchmark_small_writes_the_fidelity_keys(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(repo / "examples" / "benchmark_tokenizer.py"), "--small", "--json", str(out),
           "--settings", "default", "vq-K256-C8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    keys = {"heldout_mean_accuracy_drop_pp", "heldout_worst_accuracy_drop_pp", "bits_per_param", "codebook_usage",
            "encode_decode_params_per_second", "copy_floor_ratio"}
    assert keys <= set(report) and set(report["settings"]) == {"default", "vq-K256-C8"}
    assert report["bits_per_param"] == ParamTokenizerConfig().bits_per_param
    assert report["settings"]["vq-K256-C8"]["bits_per_param"] == 1.0
    assert 0 < report["codebook_usage"] <= 1 and report["copy_floor_ratio"] > 0
    assert Path(report["plot"]).stat().st_size > 0
