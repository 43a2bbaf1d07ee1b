"""Inputs that used to fail deep inside torch or safetensors, or to give a silently wrong network: each now ends in a
clear error naming what was expected and what was received, before any sampling starts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_corpus import make_checkpoint
from test_generation import tiny_generator
from test_pipeline import make_generator, tiny_net
from torch import nn
from transformers import pipeline

import hf_paramgen  # noqa: F401  (registers the task)
from hf_paramgen.conditioning.samples import SampleEncoder
from hf_paramgen.data.checkpoints import CorpusError, load_checkpoint, zoo_sources
from hf_paramgen.generation.generation_checks import check_seed, estimate_generation_bytes
from hf_paramgen.generation.generator import GenerationError, ParamGenerator
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer
from hf_paramgen.research.architectures import build_model

ARCH = "mlp-64-32"


def _never_sample(*args, **kwargs):
    raise AssertionError("sampling started although the request should have been refused first")


@pytest.fixture
def generator(monkeypatch) -> ParamGenerator:
    gen = tiny_generator()
    monkeypatch.setattr(gen.prior, "generate_codes", _never_sample)  # every request below must fail before it
    return gen


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generators") / "gen"
    tiny_generator().save_pretrained(folder)
    return folder


def _variant(saved, tmp_path, edit) -> str:
    folder = tmp_path / "variant"
    shutil.copytree(saved, folder)
    edit(folder)
    return str(folder)


def _set(path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _samples(n: int = 8):
    return torch.randn(n, 64), torch.arange(n) % 4


# ------------------------------------------------------------------------------ the instruction
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_samples_are_refused_before_sampling(generator, value):
    X, y = _samples()
    X = X.double()  # float64: 1e39 is finite there, but not in the float32 the encoders read
    X[3, 5] = value
    with pytest.raises(GenerationError, match=r"samples X holds 1 non-finite value .* expected finite numbers"):
        generator.generate(build_model(ARCH, 4), "classify digits", samples=(X, y))


def test_a_seed_that_is_not_an_int_is_a_type_error_naming_int(generator):
    for seed in ("x", 1.5, [1], True):
        with pytest.raises(TypeError, match=r"seed must be an int \(or None for a random draw\), got"):
            generator.generate(build_model(ARCH, 4), "classify digits", seed=seed)
    assert check_seed(None) is None and check_seed(torch.tensor(3).item()) == 3
    with pytest.raises(ValueError, match="seed must lie in"):
        check_seed(1 << 70)


def test_validation_of_the_wrong_shape_or_all_nan_is_refused_before_sampling(generator):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))  # declares no input shape
    y = torch.arange(8) % 4
    with pytest.raises(GenerationError, match=r"validation X of shape \(8, 2, 2\) cannot be fed to the target "
                                              r"Sequential .*\(n, \*input shape\)"):
        generator.generate(net, "classify", validation=(torch.randn(8, 2, 2), y))
    with pytest.raises(GenerationError, match=r"validation have 5 features per input, but the target's first layer"):
        generator.generate(net, "classify", validation=(torch.randn(8, 5), y))
    with pytest.raises(ValueError, match="as many labels as inputs, got 8 inputs and 16 labels"):
        generator.generate(net, "classify", validation=(torch.randn(8, 4), torch.stack([y, y], 1)))
    with pytest.raises(GenerationError, match=r"validation X holds 32 non-finite values .* among 32"):
        generator.generate(net, "classify", validation=(torch.full((8, 4), float("nan")), y))
    assert net.training  # the shape probe leaves the caller's template as it was


@pytest.mark.parametrize("samples, error, match", [
    (lambda X, y: X, TypeError, r"samples must be a pair \(X, y\) .* got a Tensor of shape \(8, 64\)"),
    (lambda X, y: y, TypeError, r"samples must be a pair \(X, y\) .* got a Tensor of shape \(8,\)"),
    (lambda X, y: (X,), TypeError, r"got a tuple of length 1: pass samples=\(X, y\)"),
    (lambda X, y: (None, y), TypeError, r"got X=NoneType and y=a Tensor of shape \(8,\): give both"),
    (lambda X, y: (X, None), TypeError, r"got X=a Tensor of shape \(8, 64\) and y=NoneType: give both"),
    (lambda X, y: (X[:2], X[2:4]), ValueError, r"y must be integer class labels, got non-integer values"),
    (lambda X, y: (X, -y), ValueError, r"labels must be >= 0"),
])
def test_samples_without_labels_or_labels_without_samples_are_refused(generator, samples, error, match):
    X, y = _samples()
    y[0] = 1  # -y then holds a negative label
    with pytest.raises(error, match=match):
        generator.generate(build_model(ARCH, 4), "classify digits", samples=samples(X, y))


def test_an_overlong_task_text_is_refused_naming_the_limits(generator):
    target = build_model(ARCH, 4)
    with pytest.raises(GenerationError, match=r"task_text has 100000 characters, more than 2000 \(the text encoder "
                                              r"reads at most 200 words, 2000 characters, 100 characters per word\)"):
        generator.generate(target, "a" * 100_000)
    with pytest.raises(GenerationError, match=r"task_text holds a word of 150 characters .* one unknown token"):
        generator.generate(target, "classify " + "x" * 150)
    with pytest.raises(GenerationError, match=r"201 words, more than 200"):
        generator.generate(target, "word " * 201)
    generator.sample_encoders["text"] = SampleEncoder.for_texts(32)
    texts = ["open a file", "list a folder", "add two numbers", "y" * 101]
    with pytest.raises(GenerationError, match=r"samples X text 3 holds a word of 101 characters"):
        generator.encode(ParamLayout.from_module(build_model(ARCH, 2)), "sort texts", samples=(texts, [0, 0, 1, 1]))


# ------------------------------------------------------------------------------ memory before work
def test_a_request_too_large_for_memory_is_refused_before_any_work(generator):
    target = build_model(ARCH, 4)
    with pytest.raises(GenerationError, match=r"Generating 10000000 candidates .* needs an estimated [\d.]+ GB "
                                              r"\(kv cache .*\), more than the limit of .* Lower num_candidates"):
        generator.generate(target, "classify digits", num_candidates=10_000_000)
    generator.max_memory_bytes = 10_000
    with pytest.raises(GenerationError, match=r"more than the limit of 0.01 MB .* raise the generator's "
                                              r"max_memory_bytes"):
        generator.generate(target, "classify digits", num_candidates=2)
    layout = ParamLayout.from_module(target)
    one, many = (estimate_generation_bytes(generator.prior.config, generator.param_tokenizer.config, layout, k, True)
                 for k in (1, 100))
    assert many["kv_cache"] == 100 * one["kv_cache"] and many["probabilities"] == 100 * one["probabilities"]


def test_the_pipeline_checks_seed_and_memory_before_work(tmp_path):
    pipe = pipeline("parameter-generation", model=str(make_generator(tmp_path / "gen")), max_memory_bytes=10_000)
    pipe.generator.prior.generate_codes = _never_sample
    with pytest.raises(TypeError, match="seed must be an int"):
        pipe({"target": tiny_net(), "task_text": "classify"}, seed="x")
    with pytest.raises(GenerationError, match="Generating 3 candidates .* more than the limit"):
        pipe({"target": tiny_net(), "task_text": "classify"}, num_candidates=3)


# ------------------------------------------------------------------------------ generator folders
def test_a_missing_local_generator_folder_is_no_such_folder(tmp_path):
    for name in ("./no/such/generator", str(tmp_path / "missing"), tmp_path / "missing", "~/no-such-generator"):
        with pytest.raises(GenerationError, match=r"No such folder: .* Expected a generator folder"):
            ParamGenerator.from_pretrained(name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenerationError, match=r"is not a generator folder: it holds no config.json"):
        ParamGenerator.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("file", ["model.safetensors", "param_tokenizer/model.safetensors",
                                  "sample_encoders/digits/model.safetensors"])
def test_a_truncated_weights_file_is_named(saved, tmp_path, file):
    def truncate(folder):
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data[: len(data) // 2])

    with pytest.raises(GenerationError, match=rf"variant/{file} is truncated or corrupted: safetensors cannot read"):
        ParamGenerator.from_pretrained(_variant(saved, tmp_path, truncate))


@pytest.mark.parametrize("file, field, lie, truth", [
    ("config.json", "codebook_size", 32, 16),
    ("config.json", "condition_dim", 64, 32),
    ("param_tokenizer/config.json", "codebook_size", 32, 16),
    ("param_tokenizer/config.json", "codebook_dim", 8, 4),
])
def test_a_config_that_lies_names_the_field_and_both_values(saved, tmp_path, file, field, lie, truth):
    folder = _variant(saved, tmp_path, lambda f: _set(f / file, **{field: lie}))
    with pytest.raises(GenerationError, match=rf"variant/{file} says {field}={lie}, but .*model.safetensors was "
                                              rf"saved with {field}={truth}"):
        ParamGenerator.from_pretrained(folder)


# ------------------------------------------------------------------------------ integrity: the ParamTokenizer
def test_a_param_tokenizer_swapped_for_another_with_the_same_config_is_refused(saved, tmp_path):
    config = json.loads((saved / "config.json").read_text())
    assert len(config["param_tokenizer_sha256"]) == 64  # save_pretrained records it
    ParamGenerator.from_pretrained(saved)  # its own ParamTokenizer passes

    def swap(folder):
        torch.manual_seed(1)
        other = ParamTokenizer(ParamTokenizerConfig.from_pretrained(folder / "param_tokenizer"))
        shutil.rmtree(folder / "param_tokenizer")
        other.save_pretrained(folder / "param_tokenizer")

    folder = _variant(saved, tmp_path, swap)
    match = (rf"The ParamTokenizer in .*variant/param_tokenizer is not the one this prior was trained with: its "
             rf"model.safetensors has sha256 [0-9a-f]{{64}}, the prior's config records "
             rf"param_tokenizer_sha256={config['param_tokenizer_sha256']}")
    with pytest.raises(GenerationError, match=match):
        ParamGenerator.from_pretrained(folder)
    with pytest.raises(GenerationError, match="is not the one this prior was trained with"):
        pipeline("parameter-generation", model=folder)


# ------------------------------------------------------------------------------ found by examples/fuzz_inputs.py
@pytest.mark.parametrize("options, error, match", [
    ({"temperature": 0}, ValueError, r"temperature must be a finite number > 0 .* got 0"),
    ({"temperature": float("nan")}, ValueError, "temperature must be a finite number"),
    ({"temperature": "hot"}, TypeError, "temperature must be a number, got str 'hot'"),
    ({"top_k": -1}, ValueError, r"top_k must be an int >= 0 \(0: no top-k filtering\), got -1"),
    ({"top_k": 1.5}, TypeError, "top_k must be an int, got float 1.5"),
    ({"top_p": 1.5}, ValueError, r"top_p must be a number in \(0, 1\]"),
    ({"do_sample": "yes"}, TypeError, "do_sample must be True or False, got str 'yes'"),
    ({"max_new_tokens": 3}, TypeError, r"Unknown generation options \['max_new_tokens'\]"),
    ({"show_progress": "x"}, TypeError, "show_progress must be True or False"),
])
def test_sampling_options_are_checked_before_any_work(generator, options, error, match):
    with pytest.raises(error, match=match):
        generator.generate(build_model(ARCH, 4), "classify digits", **options)


def test_the_pipeline_checks_sampling_options_and_refuses_an_empty_batch(tmp_path):
    pipe = pipeline("parameter-generation", model=str(make_generator(tmp_path / "gen")))
    pipe.generator.prior.generate_codes = _never_sample
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        pipe({"target": tiny_net(), "task_text": "classify"}, temperature=-1.0)
    with pytest.raises(ValueError, match="parameter-generation got an empty list"):
        pipe([])


@pytest.mark.parametrize("X, match", [
    (torch.empty(8, 64, device="meta"), "got a meta tensor of shape"),
    (torch.randn(8, 64).to(torch.complex64), "got a torch.complex64 tensor"),
])
def test_samples_without_real_values_are_a_type_error(generator, X, match):
    with pytest.raises(TypeError, match=rf"samples X must be real numbers with values, {match}"):
        generator.generate(build_model(ARCH, 4), "classify digits", samples=(X, torch.arange(8) % 4))


def test_a_huge_or_empty_target_is_refused_without_allocating_it(generator):
    huge = ParamLayout.from_specs([("w", (10 ** 7, 10 ** 4), "float32", "linear.weight", False),
                                   ("b", (10 ** 7,), "float32", "linear.bias", False)])
    with pytest.raises(GenerationError, match="spans 1562500000 chunks"):  # counted, not built (800 GB)
        generator.generate(huge, "classify digits")
    empty = ParamLayout.from_specs([("w", (0, 64), "float32", "linear.weight", False)])
    with pytest.raises(GenerationError, match="tensors are all of size 0"):
        generator.generate(empty, "classify digits")


@pytest.mark.parametrize("file, fields, match", [
    ("sample_encoders/digits/config.json", {"num_features": 10 ** 6},
     r"says num_features=1000000, but .*model.safetensors was saved with num_features=64"),
    ("sample_encoders/digits/config.json", {"dim": 33}, r"says dim=33, but .* saved with dim=32"),
    ("config.json", {"layouts": {"x": "not json"}}, r"layouts\['x'\] is not layout JSON"),
    ("config.json", {"text_encoder": "hashing:x"}, r"'hashing:x' must be 'hashing:<dim>' with dim a positive int"),
    ("config.json", {"sample_encoders": "digits"}, "sample_encoders must be a list of encoder names"),
])
def test_generator_configs_that_lie_are_refused_before_they_allocate(saved, tmp_path, file, fields, match):
    with pytest.raises(GenerationError, match=match):
        ParamGenerator.from_pretrained(_variant(saved, tmp_path, lambda f: _set(f / file, **fields)))


def test_prior_weights_stored_as_booleans_are_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    def to_bool(folder):
        tensors = load_file(folder / "model.safetensors")
        save_file({k: v.bool() for k, v in tensors.items()}, folder / "model.safetensors")

    with pytest.raises(GenerationError, match=r"stores floating-point parameters as \['BOOL'\]"):
        ParamGenerator.from_pretrained(_variant(saved, tmp_path, to_bool))


def test_a_seeded_call_gives_the_same_weights_whatever_runs_beside_it():
    import threading

    gen = tiny_generator()
    layout = ParamLayout.from_module(build_model(ARCH, 4))
    serial = [gen.generate(layout, f"classify digits {i}", num_candidates=2, seed=i).codes for i in range(6)]
    threaded: dict[int, torch.Tensor] = {}

    def run(i):
        threaded[i] = gen.generate(layout, f"classify digits {i}", num_candidates=2, seed=i).codes

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(threaded[i], serial[i]) for i in range(6))


def _rewrite_weights(folder, edit) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v.contiguous() for k, v in edit(load_file(folder / "model.safetensors")).items()},
              folder / "model.safetensors")


def test_checkpoints_that_would_put_inf_or_read_outside_their_folder_are_refused(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt")
    _rewrite_weights(folder, lambda t: {k: (v.double() * (1e40 if k == "net.1.weight" else 1)) for k, v in t.items()})
    with pytest.raises(CorpusError, match=r"'net.1.weight' \(torch.float64\) holds values beyond the float32 range"):
        load_checkpoint(folder)
    folder = make_checkpoint(tmp_path / "shards")
    index = {"weight_map": {"net.1.weight": "../../elsewhere/model.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorpusError, match=r"names shards outside the checkpoint folder"):
        load_checkpoint(folder)
    (folder / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CorpusError, match=r"model.safetensors.index.json is not valid JSON"):
        load_checkpoint(folder)
    zoo = tmp_path / "zoo"
    make_checkpoint(zoo / "a")
    (zoo / "manifest.json").write_text(json.dumps({"checkpoints": ["a", "../../etc"]}))
    with pytest.raises(CorpusError, match=r"entry '../../etc' leads outside the zoo folder"):
        zoo_sources(zoo)


@pytest.mark.parametrize("edit, match", [
    (lambda f: _set(f / "param_layout.json", specs="x"), r"param_layout.json holds dict .*expected ParamLayout"),
    (lambda f: (f / "param_layout.json").write_text(json.dumps({"specs": [{**s, "dtype": "int8"} for s in json.loads(
        (f / "param_layout.json").read_text())["specs"]]})), r"declares tensor 'net.1.weight' of dtype 'int8'"),
    (lambda f: (f / "README.md").write_text("---\ninstruction: [unclosed\n---\n"), "README.md is not a model card"),
    (lambda f: ((f / "model.safetensors").unlink(), (f / "model.safetensors").symlink_to("/dev/zero")),
     "model.safetensors is not a regular file"),
])
def test_checkpoint_files_that_lie_are_named(tmp_path, edit, match):
    folder = make_checkpoint(tmp_path / "ckpt")
    edit(folder)
    with pytest.raises(CorpusError, match=match):
        load_checkpoint(folder)


def test_a_config_that_lies_about_its_depth_is_refused_before_the_model_is_built(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt", layout_file=False)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 10 ** 6,
                                                    "hidden_size": 16, "num_attention_heads": 2,
                                                    "intermediate_size": 16, "vocab_size": 10}))
    with pytest.raises(CorpusError, match=r"num_hidden_layers=1000000, but model.safetensors stores only 4 tensors"):
        load_checkpoint(folder)
