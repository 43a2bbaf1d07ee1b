"""The `parameter-generation` pipeline: loading paths, outputs, save/reload, remote code, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import pipeline

import hf_paramgen  # noqa: F401  (registers the task)
from hf_paramgen.conditioning import SampleEncoder
from hf_paramgen.generation.generator import GenerationError
from hf_paramgen.generation.pipeline_parameter_generation import ParameterGenerationPipeline
from hf_paramgen.layout.param_layout import LayoutError, ParamLayout
from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
from hf_paramgen.models.modeling_param_prior import ParamPriorForCausalLM
from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer
from hf_paramgen.research.architectures import ZooNet

TINY_DECODER = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2}


def tiny_net(seed: int = 0) -> ZooNet:
    torch.manual_seed(seed)
    return ZooNet(kind="mlp", input_shape=[4], hidden_sizes=[3], num_classes=3)


def make_generator(folder: Path, layouts: dict | None = None, max_tensors: int = 8) -> Path:
    """An untrained tiny generator in the generator-folder format (prior at root, param_tokenizer/)."""
    torch.manual_seed(0)
    tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=4, codebook_size=16, codebook_dim=2, hidden_size=16,
                                              num_layers=1, max_tensors=max_tensors, max_chunks_per_tensor=16))
    prior = ParamPriorForCausalLM(ParamPriorConfig(
        codebook_size=16, codes_per_chunk=1, condition_dim=8, max_condition_tokens=8, num_condition_types=12,
        max_tensors=max_tensors, max_chunks_per_tensor=16, transformer=TINY_DECODER, max_position_embeddings=40,
        chunk_size=4, layouts=layouts or {"tiny": ParamLayout.from_module(tiny_net()).to_json()},
        text_encoder="hashing:8", sample_encoders=["blobs"]))
    prior.save_pretrained(folder)
    tok.save_pretrained(folder / "param_tokenizer")
    SampleEncoder(num_features=4, dim=8).save_pretrained(folder / "sample_encoders" / "blobs")
    return folder


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory) -> Path:
    return make_generator(tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="module")
def pipe(generator_dir):
    return pipeline("parameter-generation", model=str(generator_dir))


def test_task_is_registered_and_folder_loads_the_pipeline(pipe):
    assert isinstance(pipe, ParameterGenerationPipeline)
    assert isinstance(pipe.model, ParamPriorForCausalLM)
    assert isinstance(pipe.param_tokenizer, ParamTokenizer)


def test_module_target_returns_loaded_model_codes_and_best_of_validation(pipe):
    net = tiny_net()
    X, y = torch.randn(12, 4), torch.arange(12) % 3
    out = pipe({"target": net, "task_text": "classify three blobs", "validation": (X, y)}, num_candidates=3, seed=0,
               do_sample=True, top_k=8)
    assert isinstance(out["model"], ZooNet) and out["model"] is not net
    assert out["codes"].shape[0] == 3 and len(out["scores"]) == 3
    assert out["scores"][out["best_index"]] == max(out["scores"])
    for name, tensor in out["model"].state_dict().items():
        torch.testing.assert_close(tensor, out["state_dict"][name])
    assert not torch.equal(out["model"].net[-1].weight, net.net[-1].weight)  # template left untouched


def test_samples_add_one_condition_token_per_class(pipe):
    X, y = torch.randn(9, 4), torch.arange(9) % 3
    layout = ParamLayout.from_module(tiny_net())
    with_samples = pipe.generator.encode(layout, "classify", (X, y))
    assert with_samples["condition_types"].tolist() == [[0, 1, 2, 3, 4]]  # text, architecture, 3 class prototypes
    out = pipe({"target": tiny_net(), "task_text": "classify", "samples": (X, y)}, seed=0)
    assert isinstance(out["model"], ZooNet)
    with pytest.raises(GenerationError, match=r"samples have 5 features per input, but the target reads inputs of "
                                              r"shape \[4\] \(4 features\)"):
        pipe({"target": tiny_net(), "task_text": "classify", "samples": (torch.randn(9, 5), y)})
    wider = ZooNet(kind="mlp", input_shape=[5], hidden_sizes=[3], num_classes=3)  # takes 5: no encoder does
    with pytest.warns(UserWarning, match="out of distribution"), \
            pytest.raises(GenerationError, match="No sample encoder takes 5 features"):
        pipe({"target": wider, "task_text": "classify", "samples": (torch.randn(9, 5), y)})


def test_layouts_the_generator_never_saw_are_flagged_or_refused(pipe):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = pipe({"target": tiny_net(), "task_text": "classify"}, seed=0)
    assert seen["out_of_distribution"] is False and seen["ood_reasons"] == []
    assert not [w for w in caught if "out of distribution" in str(w.message)]
    wider = ZooNet(kind="mlp", input_shape=[4], hidden_sizes=[5], num_classes=3)  # a width it was not trained on
    with pytest.warns(UserWarning, match="out of distribution.*tiny"):
        out = pipe({"target": wider, "task_text": "classify"}, seed=0)
    assert out["out_of_distribution"] is True and "match none of the 1 layouts" in out["ood_reasons"][0]
    assert isinstance(out["model"], ZooNet)  # generated anyway, and flagged
    with pytest.raises(GenerationError, match="Out of distribution: its 4 tensors .* \\(tiny\\)"):
        pipe({"target": wider, "task_text": "classify"}, on_unseen_layout="error")
    unseen_kinds = "tensor kinds \\['conv.bias', 'conv.weight'\\] .* knows kinds \\['linear.bias'"
    with pytest.raises(GenerationError, match=unseen_kinds):
        pipe({"target": nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten()), "task_text": "classify"})
    with pytest.raises(ValueError, match="on_unseen_layout must be one of"):
        pipe({"target": tiny_net(), "task_text": "classify"}, on_unseen_layout="ignore")
    gen = pipe.generator
    with pytest.warns(UserWarning, match="out of distribution"):
        result = gen.generate(wider, "classify", num_candidates=1, seed=0)
    assert result.out_of_distribution and not gen.generate(tiny_net(), "classify", seed=0).out_of_distribution


def test_labelled_texts_condition_a_lora_head_adapter(tmp_path):
    from peft import LoraConfig, PeftModel

    from hf_paramgen.adapters import lora_layout

    base = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    target = (base, LoraConfig(r=3, target_modules=["2"]))
    folder = make_generator(tmp_path / "gen", layouts={"lora": lora_layout(*target).to_json()})
    SampleEncoder.for_texts(8).save_pretrained(folder / "sample_encoders" / "text")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sample_encoders": ["blobs", "text"]}))
    pipe = pipeline("parameter-generation", model=str(folder))
    texts = ["open a socket", "parse a url", "sum a list", "take a mean", "zip a file", "hash bytes"]
    y = [0, 0, 1, 1, 2, 2]
    out = pipe({"target": target, "task_text": "sort docstrings by topic", "samples": (texts, y)}, output="peft",
               seed=0)
    assert isinstance(out["model"], PeftModel)
    assert pipe.generator.encode(ParamLayout.from_module(tiny_net()), "t", (texts, y))["condition_types"].tolist() \
        == [[0, 1, 2, 3, 4]]
    with pytest.raises(GenerationError, match="needs tensors, got texts"):
        pipe({"target": target, "task_text": "sort docstrings by topic", "validation": (texts, y)})


def test_old_input_key_task_and_option_num_samples_still_work_with_a_future_warning(pipe):
    new = pipe({"target": tiny_net(), "task_text": "classify"}, seed=3, num_candidates=2)
    with pytest.warns(FutureWarning, match="'task' is deprecated"):
        old = pipe({"target": tiny_net(), "task": "classify"}, seed=3, num_candidates=2)
    assert torch.equal(new["codes"], old["codes"])
    with pytest.warns(FutureWarning, match="num_samples is deprecated"):
        old = pipe({"target": tiny_net(), "task_text": "classify"}, seed=3, num_samples=2)
    assert torch.equal(new["codes"], old["codes"])
    with pytest.raises(TypeError, match="once, as 'task_text'"), pytest.warns(FutureWarning):
        pipe({"target": tiny_net(), "task_text": "classify", "task": "classify"})


def test_same_seed_gives_same_weights_and_batch_gives_list(pipe):
    item = {"target": tiny_net(), "task_text": "classify"}
    a, b = pipe([item, item], seed=3, do_sample=True, num_candidates=2)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert torch.equal(a["codes"], b["codes"])


def test_decoding_option_mean_is_default_and_sample_decodes_the_codes(pipe):
    item = {"target": tiny_net(), "task_text": "classify"}
    mean = pipe(item, seed=3, num_candidates=1, temperature=5.0)
    sample = pipe(item, seed=3, num_candidates=1, temperature=5.0, decoding="sample")
    assert torch.equal(mean["codes"], sample["codes"])  # one sampled path, two ways to turn it into weights
    decoded = pipe.param_tokenizer.decode(sample["codes"][0], ParamLayout.from_module(tiny_net()))
    assert all(torch.equal(sample["state_dict"][k], decoded[k]) for k in decoded)
    assert not all(torch.equal(mean["state_dict"][k], decoded[k]) for k in decoded)
    with pytest.raises(GenerationError, match="decoding must be one of"):
        pipe(item, decoding="greedy")


def test_generated_model_saves_and_reloads_with_its_own_class(pipe, tmp_path):
    out = pipe({"target": tiny_net(), "task_text": "classify"}, seed=0)
    out["model"].save_pretrained(tmp_path / "net")
    again = ZooNet.from_pretrained(tmp_path / "net")
    for name, tensor in again.state_dict().items():
        torch.testing.assert_close(tensor, out["state_dict"][name])


def test_layout_target_with_state_dict_output_gives_no_model(pipe):
    layout = ParamLayout.from_module(tiny_net())
    out = pipe({"target": layout, "task_text": "classify"}, output="state_dict")
    assert out["model"] is None and sorted(out["state_dict"]) == sorted(layout.names)


def test_pipeline_matches_param_generator_on_a_folder_it_saved(tmp_path):
    from hf_paramgen.generation.generator import ParamGenerator

    source = ParamGenerator.from_pretrained(make_generator(tmp_path / "made"))
    source.save_pretrained(tmp_path / "saved")
    X, y = torch.randn(9, 4), torch.arange(9) % 3
    expected = ParamGenerator.from_pretrained(tmp_path / "saved").generate(
        tiny_net(), "classify", samples=(X, y), num_candidates=2, seed=5, validation=(X, y))
    out = pipeline("parameter-generation", model=str(tmp_path / "saved"))(
        {"target": tiny_net(), "task_text": "classify", "samples": (X, y), "validation": (X, y)}, num_candidates=2,
        seed=5)
    assert torch.equal(out["codes"], expected.codes)
    assert out["scores"] == expected.scores and out["best_index"] == expected.best_index
    for name, tensor in expected.best_state_dict.items():
        torch.testing.assert_close(out["state_dict"][name], tensor)


def test_transformers_config_target_gives_that_model_and_too_big_targets_are_refused(pipe, tmp_path):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_embd=4, n_layer=1, n_head=1, vocab_size=8, n_positions=4)
    with pytest.raises(GenerationError, match="max_tensors=8"):
        pipe({"target": config, "task_text": "x"})
    with pytest.raises(GenerationError, match="tensor kinds .* that no layout of this generator has"):
        pipeline("parameter-generation", model=str(make_generator(tmp_path / "tiny", max_tensors=32)))(
            {"target": config, "task_text": "tiny language model"})
    layouts = {"gpt2": ParamLayout.from_config(config).to_json()}
    big = pipeline("parameter-generation", model=str(make_generator(tmp_path / "g", layouts, max_tensors=32)))
    out = big({"target": config, "task_text": "tiny language model"}, seed=0)
    assert isinstance(out["model"], GPT2Model)
    for name, tensor in out["state_dict"].items():
        torch.testing.assert_close(out["model"].state_dict()[name], tensor)
    out["model"].save_pretrained(tmp_path / "gpt2")
    again = GPT2Model.from_pretrained(tmp_path / "gpt2")
    torch.testing.assert_close(again.wte.weight, out["state_dict"]["wte.weight"])


def test_loaded_prior_as_model_works(generator_dir):
    prior = ParamPriorForCausalLM.from_pretrained(generator_dir)
    pipe = pipeline("parameter-generation", model=prior)
    assert isinstance(pipe({"target": tiny_net(), "task_text": "x"})["model"], ZooNet)


def test_lora_target_returns_peft_model_that_reloads_exactly(tmp_path):
    from peft import LoraConfig, PeftModel

    from hf_paramgen.adapters import lora_layout

    base = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    target = (base, LoraConfig(r=2, target_modules=["0", "2"]))
    folder = make_generator(tmp_path / "gen", layouts={"lora": lora_layout(*target).to_json()})
    pipe = pipeline("parameter-generation", model=str(folder))
    out = pipe({"target": target, "task_text": "adapt"}, output="peft")
    assert isinstance(out["model"], PeftModel)
    out["model"].save_pretrained(tmp_path / "adapter")
    fresh = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    fresh.load_state_dict(base.state_dict())
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    from peft import get_peft_model_state_dict

    reloaded = get_peft_model_state_dict(loaded)
    assert sorted(reloaded) == sorted(out["state_dict"])
    for name, tensor in reloaded.items():
        torch.testing.assert_close(tensor, out["state_dict"][name])


def test_bad_inputs_raise_clear_errors(pipe):
    from peft import LoraConfig

    with pytest.raises(ValueError, match="output units"):
        pipe({"target": tiny_net(), "task_text": "x", "validation": (torch.randn(4, 4), torch.tensor([0, 1, 2, 7]))})
    with pytest.raises(LayoutError, match="target_modules"):
        pipe({"target": (nn.Sequential(nn.Linear(4, 2)), LoraConfig(r=2, target_modules=["nope"])), "task_text": "x"})
    with pytest.raises(TypeError, match="target must be"):
        pipe({"target": "resnet", "task_text": "x"})
    with pytest.raises(GenerationError, match="output units"):
        pipe({"target": tiny_net(), "task_text": "x", "samples": (torch.randn(4, 4), torch.tensor([0, 1, 2, 7]))})
    with pytest.raises(GenerationError, match="no tensors"):
        pipe({"target": nn.ReLU(), "task_text": "x"})
    with pytest.raises(ValueError, match="output must be"):
        pipe({"target": tiny_net(), "task_text": "x"}, output="onnx")
    with pytest.raises(GenerationError, match="bare ParamLayout"):
        pipe({"target": ParamLayout.from_module(tiny_net()), "task_text": "x",
              "validation": (torch.randn(3, 4), [0, 1, 2])})
    with pytest.raises(ValueError, match="peft"):
        pipe({"target": tiny_net(), "task_text": "x"}, output="peft")


def test_lora_base_different_from_the_adapter_corpus_base_is_refused(tmp_path):
    from peft import LoraConfig

    from hf_paramgen.adapters.lora import AdapterBaseMismatchError, lora_layout

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    lora = LoraConfig(r=2, target_modules=["0"])
    folder = make_generator(tmp_path / "gen", layouts={"lora": lora_layout(base, lora).to_json()})
    pipe = pipeline("parameter-generation", model=str(folder))
    assert pipe({"target": (base, lora), "task_text": "x"})["model"] is not None
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))  # other weights, same shapes
    with pytest.raises(AdapterBaseMismatchError):
        pipe({"target": (other, lora), "task_text": "x"})


def test_pinned_param_tokenizer_revision_that_does_not_exist_fails_clearly(tmp_path, hub_endpoint):
    folder = make_generator(tmp_path / "gen")
    config = json.loads((folder / "config.json").read_text())
    config.update(param_tokenizer_repo_id="tester/no-such-tokenizer", param_tokenizer_revision="0" * 40)
    (folder / "config.json").write_text(json.dumps(config))
    assert isinstance(pipeline("parameter-generation", model=str(folder)), ParameterGenerationPipeline)  # local copy
    shutil.rmtree(folder / "param_tokenizer")  # now the pin is the only source
    with pytest.raises(ValueError, match="not found"):
        pipeline("parameter-generation", model=str(folder))


def test_saved_pipeline_runs_in_fresh_process_with_remote_code_only(pipe, tmp_path, run_python):
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert list(config["custom_pipelines"]) == ["remote-parameter-generation"]
    again = pipeline("parameter-generation", model=str(folder))  # installed package, no remote code
    assert type(again) is ParameterGenerationPipeline
    for module in folder.glob("*.py"):  # every relative import of the copied code resolves to a copied file
        for line in module.read_text().splitlines():
            words = line.strip().split()
            if len(words) > 1 and words[0] == "from" and words[1].startswith(".") and words[1] != ".":
                assert (folder / f"{words[1][1:]}.py").is_file(), f"{module.name}: {line.strip()}"
    code = f"""
import sys, torch
from torch import nn
from transformers import pipeline
try:
    pipeline(model={str(folder)!r})
    raise SystemExit("loaded without trust_remote_code")
except ValueError as err:
    assert "trust_remote_code" in str(err), err
pipe = pipeline(model={str(folder)!r}, trust_remote_code=True)
net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
out = pipe({{"target": net, "task_text": "classify"}}, seed=0)
assert not any(m.startswith("hf_paramgen") for m in sys.modules), [m for m in sys.modules if "hf_paramgen" in m]
print("OK", type(pipe).__module__, sorted(out["state_dict"]))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK transformers_modules" in result.stdout
