"""ParamGenerator: save/load round trip, generate shapes and ranges, best-of-k, bad-input errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hf_paramgen.conditioning import SampleEncoder
from hf_paramgen.generation.generation_targets import check_input_size
from hf_paramgen.generation.generator import GenerationError, ParamGenerator
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
from hf_paramgen.models.modeling_param_prior import ParamPriorForCausalLM
from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer
from hf_paramgen.research.architectures import ZooNet, build_model
from hf_paramgen.research.generate import generate_for_task
from hf_paramgen.research.tasks import Task, few_shot_samples, load_task_split

ARCH = "mlp-64-32"
DIM = 32
TINY_DECODER = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2}


def tiny_generator(max_tensors: int = 64) -> ParamGenerator:
    torch.manual_seed(0)
    tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=64, codebook_size=16, codebook_dim=4,
                                              hidden_size=16, num_layers=1))
    prior = ParamPriorForCausalLM(ParamPriorConfig(
        codebook_size=16, codes_per_chunk=1, chunk_size=64, condition_dim=DIM, max_condition_tokens=8,
        max_position_embeddings=40, transformer=TINY_DECODER, max_tensors=max_tensors))
    encoders = {"digits": SampleEncoder(num_features=64, dim=DIM, method="random")}
    return ParamGenerator(prior, tok, f"hashing:{DIM}", encoders)


@pytest.fixture(scope="module")
def generator() -> ParamGenerator:
    return tiny_generator()


@pytest.fixture(scope="module")
def task() -> Task:
    return Task.make("digits", [3, 1, 4, 0])


def test_generate_returns_state_dicts_of_the_layout_shapes_and_codes_in_range(generator, task):
    template = build_model(ARCH, 4)
    layout = ParamLayout.from_module(template)
    result = generator.generate(template, task.instruction, samples=few_shot_samples(task, 2), num_candidates=2, seed=0)
    n_chunks = sum(-(-s.numel // 64) for s in layout.specs)  # layer aggregation: each tensor padded to chunks
    assert result.codes.shape == (2, n_chunks, 1)  # (k, N, T): longer than one block (40 context)
    assert 0 <= int(result.codes.min()) and int(result.codes.max()) < 16
    for sd in result.state_dicts:
        assert {k: tuple(v.shape) for k, v in sd.items()} == {s.name: s.shape for s in layout.specs}
    assert result.scores == [None, None] and result.best_index == 0
    assert isinstance(result.model, type(template))
    assert not torch.equal(result.codes[0], result.codes[1])  # sampled, not argmax


def test_generate_is_seeded_and_accepts_a_bare_layout(generator, task):
    layout = ParamLayout.from_module(build_model(ARCH, 4))
    a = generator.generate(layout, task.instruction, num_candidates=1, seed=3)
    b = generator.generate(layout, task.instruction, num_candidates=1, seed=3)
    assert torch.equal(a.codes, b.codes) and a.model is None


def test_mean_decoding_is_the_expectation_of_the_sampled_distribution(generator, task):
    layout = ParamLayout.from_module(build_model(ARCH, 4))
    sampled = generator.generate(layout, task.instruction, num_candidates=2, seed=5, top_k=1, decoding="sample")
    mean = generator.generate(layout, task.instruction, num_candidates=2, seed=5, top_k=1, decoding="mean")
    assert torch.equal(sampled.codes, mean.codes)  # the same sampled path
    # top_k=1: one-hot distributions, so the same weights
    for a, b in zip(sampled.state_dicts, mean.state_dicts, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    soft = generator.generate(layout, task.instruction, num_candidates=1, seed=5, decoding="mean", temperature=5.0)
    hard = generator.generate(layout, task.instruction, num_candidates=1, seed=5, temperature=5.0, decoding="sample")
    default = generator.generate(layout, task.instruction, num_candidates=1, seed=5, temperature=5.0)
    assert torch.equal(layout.flatten(default.state_dicts[0]), layout.flatten(soft.state_dicts[0]))  # one code/chunk
    assert torch.equal(soft.codes, hard.codes)
    assert not torch.allclose(layout.flatten(soft.state_dicts[0]), layout.flatten(hard.state_dicts[0]))
    with pytest.raises(GenerationError, match=r"decoding must be one of \('sample', 'mean'\), got 'argmax'"):
        generator.generate(layout, task.instruction, decoding="argmax")


def test_best_of_k_picks_the_highest_validation_score_and_loads_it(generator, task):
    template = build_model(ARCH, 4)
    X, y = load_task_split(task, "validation")
    result = generator.generate(template, task.instruction, samples=few_shot_samples(task, 2), num_candidates=4,
                                seed=1, validation=(X, y))
    assert all(0.0 <= s <= 1.0 for s in result.scores)
    assert result.scores[result.best_index] == max(result.scores)
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, result.state_dicts[result.best_index][name])
    acc = float((result.model(X).argmax(-1) == y).float().mean())
    assert acc == pytest.approx(max(result.scores))


def test_generate_for_task_uses_the_zoo_task(generator, task):
    result = generate_for_task(generator, task, ARCH, num_candidates=2, seed=0)
    assert len(result.state_dicts) == 2 and result.scores[result.best_index] == max(result.scores)


def test_save_and_load_round_trip_reproduces_generation(generator, task, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    assert (tmp_path / "gen" / "param_tokenizer" / "config.json").is_file()
    assert (tmp_path / "gen" / "sample_encoders" / "digits").is_dir()
    loaded = ParamGenerator.from_pretrained(tmp_path / "gen")
    assert loaded.prior.config.param_tokenizer_subfolder == "param_tokenizer"
    assert loaded.text_encoder_name == f"hashing:{DIM}"
    layout = ParamLayout.from_module(build_model(ARCH, 4))
    samples = few_shot_samples(task, 2)
    a = generator.generate(layout, task.instruction, samples=samples, seed=5)
    b = loaded.generate(layout, task.instruction, samples=samples, seed=5)
    assert torch.equal(a.codes, b.codes)
    for k in a.state_dicts[0]:
        assert torch.allclose(a.state_dicts[0][k], b.state_dicts[0][k])


def test_loading_a_prior_with_the_wrong_param_tokenizer_fails(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    other = ParamTokenizer(ParamTokenizerConfig(chunk_size=64, codebook_size=32, codebook_dim=4, hidden_size=16))
    shutil.rmtree(tmp_path / "gen" / "param_tokenizer")
    other.save_pretrained(tmp_path / "gen" / "param_tokenizer")
    with pytest.raises(GenerationError, match="codebook_size: prior 16 vs ParamTokenizer 32"):
        ParamGenerator.from_pretrained(tmp_path / "gen")


def test_samples_whose_classes_do_not_match_the_output_size_are_rejected(generator, task):
    X, y = few_shot_samples(task, 2)
    with pytest.raises(GenerationError,
                       match="3 output units: samples need labels exactly 0..2, got labels \\[0, 1, 2, 3\\]"):
        generator.generate(build_model(ARCH, 3), task.instruction, samples=(X, y))
    with pytest.raises(GenerationError, match=r"samples have 10 features per input, but the target reads inputs of "
                                              r"shape \[64\] \(64 features\)"):
        generator.generate(build_model(ARCH, 4), task.instruction, samples=(torch.zeros(8, 10), y[:8]))
    # a network that pools its 28x28 input before its 49-input first layer takes 784-feature samples, not 49
    pooled = build_model("mlp-p4-16", 4)
    layout = ParamLayout.from_module(pooled)
    check_input_size(layout, (torch.zeros(8, 784), y[:8]), "samples", pooled)
    with pytest.raises(GenerationError, match=r"samples have 49 features per input, but the target reads inputs of "
                                              r"shape \[1, 28, 28\] \(784 features\)"):
        check_input_size(layout, (torch.zeros(8, 49), y[:8]), "samples", pooled)
    with pytest.raises(GenerationError, match="target's first layer 'net.2.weight' takes 49"):  # a bare layout
        check_input_size(layout, (torch.zeros(8, 784), y[:8]), "samples")
    takes_10 = ZooNet(kind="mlp", input_shape=[10], hidden_sizes=[32], num_classes=4)
    with pytest.raises(GenerationError, match="No sample encoder takes 10 features"):
        generator.generate(takes_10, task.instruction, samples=(torch.zeros(8, 10), y[:8]))


def test_empty_or_overlong_instruction_is_rejected(generator):
    template = build_model(ARCH, 4)
    with pytest.raises(GenerationError, match="non-empty"):
        generator.generate(template, "   ")
    with pytest.raises(GenerationError, match="more than 200"):
        generator.generate(template, "word " * 201)


def test_architecture_beyond_the_prior_tables_is_rejected(task):
    small = tiny_generator(max_tensors=2)
    with pytest.raises(GenerationError, match="max_tensors=2"):
        small.generate(build_model(ARCH, 4), task.instruction)
    with pytest.raises(GenerationError, match="needs a target that builds a model"):
        small.generate(ParamLayout.from_module(build_model(ARCH, 4)), task.instruction, validation=(None, None))
    with pytest.raises(TypeError, match="target must be an nn.Module template"):
        small.generate("mlp-64-32", task.instruction)


def test_cli_generate_saves_the_best_network(generator, tmp_path, capsys):
    from hf_paramgen.research.generate import cli_generate
    from hf_paramgen.research.zoo import load_checkpoint_model

    generator.save_pretrained(tmp_path / "gen")
    rc = cli_generate(["--generator", str(tmp_path / "gen"), "--dataset", "digits", "--classes", "3,1,4,0",
                       "--architecture", ARCH, "--num_samples", "2", "--output_dir", str(tmp_path / "net")])
    out = capsys.readouterr().out
    report = json.loads(out)  # stdout is the JSON report alone (loader notices go to stderr)
    assert rc == 0 and len(report["validation_scores"]) == 2 and 0.0 <= report["best_test_accuracy"] <= 1.0
    net = load_checkpoint_model(tmp_path / "net")
    assert net(torch.zeros(1, 64)).shape == (1, 4)


def test_labelled_texts_are_embedded_by_the_text_encoder():
    gen = tiny_generator()
    layout = ParamLayout.from_module(build_model(ARCH, 2))
    texts, y = ["open a file", "list a folder", "add two numbers", "take a square root"], [0, 0, 1, 1]
    with pytest.raises(GenerationError, match="samples are texts, but this generator has no 'text' sample encoder"):
        gen.encode(layout, "sort texts by topic", samples=(texts, y))
    gen.sample_encoders["text"] = SampleEncoder.for_texts(DIM)
    cond = gen.encode(layout, "sort texts by topic", samples=(texts, y))
    embeds, types = cond["condition_embeds"][0], cond["condition_types"][0]
    vectors = gen.text_encoder(texts)[:, 0]  # (4, DIM)
    protos = torch.nn.functional.normalize(torch.stack([vectors[:2].mean(0), vectors[2:].mean(0)]), dim=-1)
    assert types.tolist()[-2:] == [2, 3]  # class 0 and class 1 prototypes, after text and architecture
    assert torch.allclose(embeds[-2:], protos, atol=1e-6)
    with pytest.raises(GenerationError, match="labels exactly 0..1, got labels \\[0\\]"):
        gen.encode(layout, "sort texts by topic", samples=(texts[:2], y[:2]))


def test_num_samples_is_a_deprecated_alias_of_num_candidates(generator, task):
    layout = ParamLayout.from_module(build_model(ARCH, 4))
    new = generator.generate(layout, task.instruction, num_candidates=2, seed=3)
    with pytest.warns(FutureWarning, match="num_samples is deprecated"):
        old = generator.generate(layout, task.instruction, num_samples=2, seed=3)
    assert torch.equal(new.codes, old.codes) and len(old.state_dicts) == 2
    with pytest.raises(ValueError, match="num_candidates must be a positive int, got 0"):
        generator.generate(layout, task.instruction, num_candidates=0)


def test_saved_generator_is_a_complete_pipeline_repo_and_declares_its_settings(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    config = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert list(config["custom_pipelines"]) == ["remote-parameter-generation"] and config["auto_map"]
    assert config["text_encoder"] == f"hashing:{DIM}" and config["sample_encoders"] == ["digits"]
    assert len(config["param_tokenizer_sha256"]) == 64 and config["transformer"]["model_type"] == "llama"
    code = sorted(p.name for p in (tmp_path / "gen").glob("*.py"))
    assert "pipeline_parameter_generation.py" in code and "generator.py" in code and "cards.py" not in code
    declared = set(ParamPriorConfig().to_dict())
    assert {"text_encoder", "sample_encoders", "param_tokenizer_sha256", "layouts"} <= declared
    public = {k for k in generator.prior.config.__dict__ if not k.startswith("_")}
    assert public - declared <= {"custom_pipelines", "auto_map"}


def test_a_config_saved_with_the_decoder_as_a_plain_dict_loads_the_same_model(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    path = tmp_path / "gen" / "config.json"
    config = json.loads(path.read_text())
    config.update(transformer=TINY_DECODER, text_encoder="all-MiniLM-L6-v2")  # as saved by earlier versions
    path.write_text(json.dumps(config))
    old = ParamPriorForCausalLM.from_pretrained(tmp_path / "gen")
    assert old.config.text_encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert old.config.decoder_config() is old.config.transformer and old.config.hidden_size == 32
    fresh, loaded = generator.prior.config.transformer.to_dict(), old.config.transformer.to_dict()
    assert {k: v for k, v in loaded.items() if k != "dtype"} == {k: v for k, v in fresh.items() if k != "dtype"}
    for name, tensor in generator.prior.state_dict().items():
        assert torch.equal(tensor, old.state_dict()[name])
