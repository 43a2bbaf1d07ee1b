"""The diffusion generator family: a diffusers denoiser + schedulers + the project's conditioning, saved as a
diffusers pipeline folder, served by `pipeline("parameter-generation")`, trained by the project's Accelerate loop."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn

import hf_paramgen  # noqa: F401  (registers the task and the diffusion routing)
from hf_paramgen.conditioning.samples import SampleEncoder
from hf_paramgen.diffusion import (
    DiffusionCollator,
    DiffusionParamGenerator,
    ParamConditioner,
    ParamDenoiser,
    ParamDiffusionPipeline,
    training_scheduler,
)
from hf_paramgen.diffusion.training import network_tensors
from hf_paramgen.generation.generation_targets import GenerationError
from hf_paramgen.layout.param_layout import ParamLayout

C, DIM = 4, 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is 30x faster than two on a shared 2-core machine (0.5 s vs 16 s to overfit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def tiny_pipeline(objective: str = "ddpm", hidden: int = 16, layers: int = 1, data_scale: float = 1.0,
                  max_chunks: int = 64) -> ParamDiffusionPipeline:
    torch.manual_seed(0)
    layout = ParamLayout.from_module(tiny_net())
    denoiser = ParamDenoiser(chunk_size=C, hidden_size=hidden, num_layers=layers, num_heads=2, condition_dim=DIM,
                             num_condition_types=8, max_chunks=max_chunks, data_scale=data_scale,
                             layouts={"tiny:3": layout.to_json()})
    conditioner = ParamConditioner.from_encoders(f"hashing:{DIM}", DIM, 8, {"feat6": SampleEncoder(6, DIM)})
    return ParamDiffusionPipeline(denoiser, training_scheduler(objective), conditioner, 4)


def row_of(net: nn.Module, n_cond: int = 2) -> dict:
    layout = ParamLayout.from_module(net)
    row = network_tensors(layout.flatten(net.state_dict()), layout, C)
    gen = torch.Generator().manual_seed(n_cond)
    row.update(condition_embeds=torch.randn(n_cond, DIM, generator=gen).numpy(),
               condition_types=np.arange(n_cond))
    return row


def condition(row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(row["condition_embeds"])[None], torch.as_tensor(row["condition_types"])[None]


SAMPLES = (torch.randn(9, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2] * 3))


def test_denoiser_forward_shapes_zero_padding_and_masked_loss():
    pipe = tiny_pipeline()
    short = nn.Sequential(nn.Linear(6, 3))
    batch = DiffusionCollator(pipe.scheduler, C, 1.0)([row_of(tiny_net()), row_of(short, n_cond=1)])
    n = ParamLayout.from_module(tiny_net()).num_params
    assert batch["sample"].shape == (2, batch["chunk_mask"].shape[1], C) and int(batch["chunk_mask"][0].sum()) == n
    assert batch["condition_types"][1].tolist() == [0, -1]  # padded condition token
    out = pipe.denoiser(**batch)
    assert out.sample.shape == batch["sample"].shape and torch.isfinite(out.loss)
    assert torch.all(out.sample[~batch["chunk_mask"]] == 0)
    moved = dict(batch, target=batch["target"] + 100.0 * ~batch["chunk_mask"])  # padding never counts
    assert torch.allclose(pipe.denoiser(**moved).loss, out.loss)


def test_tiny_generator_overfits_one_network_and_samples_it_back():
    torch.manual_seed(0)
    net = tiny_net()
    row = row_of(net)
    scale = float(np.std(row["chunks"][row["chunk_mask"].astype(bool)]))
    pipe = tiny_pipeline(hidden=32, data_scale=scale)
    collate = DiffusionCollator(pipe.scheduler, C, scale)
    opt = torch.optim.AdamW(pipe.denoiser.parameters(), lr=3e-3)
    pipe.denoiser.train()
    for _ in range(150):
        loss = pipe.denoiser(**collate([row] * 8)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    pipe.denoiser.eval()
    layout = ParamLayout.from_module(net)
    out = pipe(*condition(row), layout, num_candidates=2, num_inference_steps=10, scheduler="ddim", seed=0)
    target = layout.flatten(net.state_dict())
    errors = [float((layout.flatten(sd) - target).norm() / target.norm()) for sd in out.state_dicts]
    assert max(errors) < 0.2, errors  # an untrained denoiser gives ~1.4
    assert set(out.state_dicts[0]) == set(net.state_dict())


@pytest.mark.parametrize("objective,scheduler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("ddpm", "dpm_solver"),
                                                 ("flow_match", "flow_match_euler")])
def test_seeded_sampling_is_reproducible(objective, scheduler):
    pipe = tiny_pipeline(objective)
    row, layout = row_of(tiny_net()), ParamLayout.from_module(tiny_net())
    a, b, c = (pipe(*condition(row), layout, num_candidates=2, num_inference_steps=3, scheduler=scheduler, seed=s)
               for s in (7, 7, 8))
    assert torch.equal(a.chunks, b.chunks) and not torch.equal(a.chunks, c.chunks)
    assert torch.isfinite(a.chunks).all()


def test_saved_folder_loads_with_diffusers_and_gives_the_same_samples(tmp_path):
    from diffusers import DiffusionPipeline

    pipe, row, layout = tiny_pipeline(), row_of(tiny_net()), ParamLayout.from_module(tiny_net())
    pipe.save_pretrained(tmp_path / "gen")
    index = json.loads((tmp_path / "gen" / "model_index.json").read_text())
    assert index["_class_name"] == "ParamDiffusionPipeline"
    assert index["denoiser"] == ["hf_paramgen.diffusion.modeling_param_denoiser", "ParamDenoiser"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    expected = pipe(*condition(row), layout, num_inference_steps=3, seed=0).chunks
    ours = ParamDiffusionPipeline.from_pretrained(tmp_path / "gen")
    theirs = DiffusionPipeline.from_pretrained(tmp_path / "gen", custom_pipeline="pipeline", trust_remote_code=True)
    assert type(theirs).__name__ == "ParamDiffusionPipeline"
    for loaded in (ours, theirs):
        assert torch.equal(loaded(*condition(row), layout, num_inference_steps=3, seed=0).chunks, expected)
        projection = pipe.conditioner.encoders["feat6"].projection
        assert torch.equal(loaded.conditioner.encoders["feat6"].projection, projection)


def test_pipeline_parameter_generation_serves_a_diffusion_folder(tmp_path):
    from transformers import pipeline

    tiny_pipeline().save_pretrained(tmp_path / "gen")
    gen = pipeline("parameter-generation", model=str(tmp_path / "gen"))
    assert gen.family == "diffusion"
    out = gen({"target": tiny_net(), "task_text": "classify three blobs", "samples": SAMPLES, "validation": SAMPLES},
              num_candidates=2, seed=0, num_inference_steps=3, scheduler="ddim")
    assert isinstance(out["model"], nn.Sequential) and out["codes"] is None and len(out["scores"]) == 2
    assert torch.equal(out["model"].state_dict()["2.weight"], out["state_dict"]["2.weight"])
    again = gen({"target": tiny_net(), "task_text": "classify three blobs", "samples": SAMPLES, "validation": SAMPLES},
                num_candidates=2, seed=0, num_inference_steps=3, scheduler="ddim")
    assert torch.equal(again["state_dict"]["0.weight"], out["state_dict"]["0.weight"])


def test_push_to_loopback_hub_then_pipeline_from_repo_id(tmp_path, hub_repo_id):
    from huggingface_hub import HfApi
    from transformers import pipeline

    from hf_paramgen.generation.generator_loading import load_generator

    tiny_pipeline().save_pretrained(tmp_path / "gen")
    api = HfApi()
    api.create_repo(hub_repo_id)
    api.upload_folder(folder_path=tmp_path / "gen", repo_id=hub_repo_id)
    assert isinstance(load_generator(hub_repo_id), DiffusionParamGenerator)
    gen = pipeline("parameter-generation", model=hub_repo_id)
    out = gen({"target": tiny_net(), "task_text": "classify"}, num_candidates=1, seed=0, num_inference_steps=2)
    assert isinstance(out["model"], nn.Sequential)


def test_bad_inputs_name_what_was_expected_and_received(tmp_path):
    from transformers import pipeline

    pipe, row = tiny_pipeline(max_chunks=30), row_of(tiny_net())  # the tiny net is 21 chunks
    layout = ParamLayout.from_module(tiny_net())
    with pytest.raises(ValueError, match=r"Unknown scheduler 'euler_a'.*ddim"):
        pipe(*condition(row), layout, scheduler="euler_a")
    with pytest.raises(ValueError, match=r"trained with the 'ddpm' objective.*received 'flow_match_euler'"):
        pipe(*condition(row), layout, scheduler="flow_match_euler")
    for steps in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, 1000\]"):
            pipe(*condition(row), layout, num_inference_steps=steps)
    wide = ParamLayout.from_module(nn.Sequential(nn.Linear(6, 64), nn.Linear(64, 3)))
    with pytest.raises(GenerationError, match=r"spans 161 chunks of 4 weights; .* max_chunks=30"):
        pipe(*condition(row), wide)
    generator = DiffusionParamGenerator(tiny_pipeline())
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(GenerationError, match=r"tensor kinds \['conv.bias', 'conv.weight'\].*knows kinds"):
        generator.generate(conv, "classify", num_candidates=1)
    with pytest.raises(GenerationError, match=r"takes sampling options \['num_inference_steps', 'scheduler'\]"):
        generator.generate(tiny_net(), "classify", temperature=0.5)
    pipe.save_pretrained(tmp_path / "gen")
    served = pipeline("parameter-generation", model=str(tmp_path / "gen"))
    with pytest.raises(TypeError, match=r"Unknown options for a diffusion generator: \['top_k'\]"):
        served({"target": tiny_net(), "task_text": "x"}, top_k=3)
    with pytest.raises(ValueError, match=r"Unknown scheduler 'nope'"):
        served({"target": tiny_net(), "task_text": "x"}, scheduler="nope")
    shutil.rmtree(tmp_path / "gen" / "conditioner")
    with pytest.raises(GenerationError, match=r"missing its 'conditioner' component \(expected conditioner/config"):
        ParamDiffusionPipeline.from_pretrained(tmp_path / "gen")


def _rows() -> Dataset:
    rows = [row_of(tiny_net(seed)) for seed in range(4)]
    return Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})


def test_the_project_loop_trains_saves_and_resumes_the_denoiser(tmp_path):
    from hf_paramgen.training.loop import TrainingConfig, list_checkpoints, train

    pipe = tiny_pipeline()
    collate = DiffusionCollator(pipe.scheduler, C, 1.0)
    config = TrainingConfig(output_dir=str(tmp_path / "run"), batch_size=2, max_steps=4, save_every=2, log_every=2)
    train(pipe.denoiser, _rows(), collate, config)
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    loaded = ParamDenoiser.from_pretrained(tmp_path / "run")  # the loop's final save_pretrained
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), pipe.denoiser.state_dict().values(),
                                                 strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        longer = TrainingConfig(**{**config.__dict__, "max_steps": 6})
        result = train(tiny_pipeline().denoiser, _rows(), collate, longer)  # resumes at step 4
    assert result["step"] == 6 and [s for s, _ in list_checkpoints(tmp_path / "run")] == [4, 6]


def _train_two(out: str) -> None:
    from hf_paramgen.training.loop import TrainingConfig, train

    pipe = tiny_pipeline()
    train(pipe.denoiser, _rows(), DiffusionCollator(pipe.scheduler, C, 1.0),
          TrainingConfig(output_dir=out, batch_size=1, max_steps=2, save_every=2, log_every=1))


@pytest.mark.slow
def test_two_gloo_processes_train_the_denoiser(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_train_two, args=(str(tmp_path / "run"),), num_processes=2)
    ranks = sorted(json.loads(p.read_text())["rank"] for p in (tmp_path / "run" / "ranks").glob("rank-*.json"))
    assert ranks == [0, 1]
    assert (tmp_path / "run" / "diffusion_pytorch_model.safetensors").is_file()
