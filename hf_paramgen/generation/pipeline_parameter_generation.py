"""`ParameterGenerationPipeline`: the `parameter-generation` task (instruction in, weights out).

    import hf_paramgen  # registers the task
    from transformers import pipeline

    gen = pipeline("parameter-generation", model="org/igpg")          # or a folder, or a loaded prior
    out = gen({"target": net, "task_text": "classify digits 0-4", "samples": (X, y), "validation": (Xv, yv)},
              num_candidates=4, seed=0, do_sample=True, top_k=20, decoding="mean")
    out["model"]        # `net`'s class with the best generated weights loaded (a PeftModel for a LoRA target)
    out["state_dict"], out["codes"], out["scores"], out["best_index"]

`decoding="mean"` (the default where the ParamTokenizer has one code per chunk) loads the expected
weights under each sampled code's distribution; `decoding="sample"` the sampled codes' weights.

Two generator families behind one task: `model=` a diffusion generator folder or repo id (a diffusers pipeline
folder, `hf_paramgen.diffusion`) gives a `ParamDiffusionPipeline` as the model and a `DiffusionParamGenerator`, with
the sampling options `num_inference_steps` and `scheduler` ("ddim", "ddpm", "dpm_solver", "flow_match_euler") instead
of the prior's; `out["codes"]` is None there. Switching families is switching the model id.

A generator folder with a LoRA codec (`lora_codec/`, `LoraCodecGenerator`) writes whole adapters of a stock class:
`{"target": (AutoModelForSequenceClassification..., LoraConfig(task_type="SEQ_CLS", ...)), "samples": (texts,
labels), "validation": (texts, labels)}` with `output="peft"` gives the `PeftModel`.

The pipeline's `model` is the prior (`ParamPriorForCausalLM`); everything else is its `ParamGenerator`
(`self.generator`, built with `ParamGenerator.from_prior` from the repo or folder the prior came from):
preprocess, forward and postprocess only delegate to it. A saved pipeline (`save_pretrained`, the
same as `ParamGenerator.save_pretrained`) holds `custom_pipelines` in its config and this module's code,
so a fresh process can run `pipeline(model=folder, trust_remote_code=True)` without hf_paramgen.
"""

from __future__ import annotations

import os
import warnings

from transformers import AutoModelForCausalLM, Pipeline

from ..conditioning.samples import SampleEncoder
from ..models.modeling_param_tokenizer import ParamTokenizer
from .generation_checks import SAMPLING_KEYS, check_flag, check_sampling, check_seed
from .generation_targets import ON_UNSEEN_LAYOUT
from .generator import ParamGenerator, resolve_decoding, resolve_num_candidates
from .generator_loading import resolve_commit

TASK = "parameter-generation"
# Key of `custom_pipelines` in saved configs. It must differ from TASK: transformers' `pipeline()` treats a
# task named in `custom_pipelines` as remote code (trust_remote_code required) even when the task is
# registered locally, which would break `pipeline(TASK, model=repo)` after `import hf_paramgen`.
REMOTE_TASK = "remote-parameter-generation"
PIPELINE_FILE = __file__  # the entry module of a generator repo's remote code
OUTPUTS = ("model", "peft", "state_dict")


def custom_pipelines() -> dict:
    """The `custom_pipelines` entry of a generator repo's config: `REMOTE_TASK` -> this pipeline class."""
    return {REMOTE_TASK: {"impl": f"{os.path.splitext(os.path.basename(PIPELINE_FILE))[0]}.ParameterGenerationPipeline",
                          "pt": ["AutoModelForCausalLM"], "tf": [], "type": "multimodal"}}


class ParameterGenerationPipeline(Pipeline):
    """Generate the weights of a target network (or LoRA adapter) from an instruction.

    Inputs: a dict with "target" (an `nn.Module`, a transformers config, a `ParamLayout` or
    `(base_model, LoraConfig)`), "task_text", optionally "samples" `(X, y)` and "validation" `(X, y)`.
    Call options: `num_candidates`, `seed`, `output` ("model", "peft", "state_dict"), `show_progress`,
    `decoding`, `on_unseen_layout` ("warn": a layout the generator was not trained on is generated with a
    warning and `out["out_of_distribution"]` set; "error": refused) and the sampling options `do_sample`,
    `temperature`, `top_k`, `top_p`.

    Args:
        model: a `ParamPriorForCausalLM`.
        param_tokenizer: the matching `ParamTokenizer` (default: loaded as the prior's config says).
        text_encoder: a text encoder (default: built from `config.text_encoder`).
        sample_encoders: name -> `SampleEncoder` (default: the generator's `sample_encoders/`).
        revision / cache_dir / token / subfolder: where the generator's other components are (default: the
            current commit of the repo, or the folder, the prior came from). transformers' `pipeline()` does not
            pass its own `revision` on: pass `revision=` here too for a branch other than the default.
        max_memory_bytes: refuse a call whose estimated memory exceeds this, before any work (default: half the
            available memory; `ParamGenerator.max_memory_bytes`).
    """

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(self, model, param_tokenizer: ParamTokenizer | None = None, text_encoder=None,
                 sample_encoders: dict[str, SampleEncoder] | None = None, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                 subfolder: str | None = None, max_memory_bytes: int | None = None, **kwargs):
        super().__init__(model=model, **kwargs)
        if is_diffusion_model(self.model):  # the diffusion family: a ParamDiffusionPipeline as the model
            if param_tokenizer is not None or sample_encoders is not None:
                raise TypeError("param_tokenizer and sample_encoders are autoregressive-generator components; a "
                                "diffusion generator carries its own (conditioner/).")
            self.generator = _diffusion("generator").DiffusionParamGenerator(
                self.model, text_encoder=text_encoder, max_memory_bytes=max_memory_bytes)
            self.param_tokenizer = None
            return
        from huggingface_hub import constants

        name = getattr(self.model, "name_or_path", None) or None
        local_files_only = bool(name) and not os.path.isdir(name) and constants.is_offline_mode()
        revision = resolve_commit(name, revision, cache_dir, token, local_files_only)
        self.generator = ParamGenerator.from_prior(
            self.model, name_or_path=name, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=local_files_only, param_tokenizer=param_tokenizer, text_encoder=text_encoder,
            sample_encoders=sample_encoders, max_memory_bytes=max_memory_bytes)
        self.param_tokenizer = self.generator.param_tokenizer.to(self.device)

    def __call__(self, inputs=None, *args, **kwargs):
        """`Pipeline.__call__`, refusing an empty batch (transformers would fail on it with an IndexError).

        Thread safety: one pipeline object may serve several threads at once; the sampling step (global RNG seeded
        per call, the prior's `generate`) runs under the generator's lock, so each call gives what the same call
        gives alone (same seed, same weights)."""
        if isinstance(inputs, list) and not inputs:
            raise ValueError("parameter-generation got an empty list: expected an input dict {'target', 'task_text', "
                             "...} or a non-empty list of them.")
        return super().__call__(inputs, *args, **kwargs)

    def _sanitize_parameters(self, num_candidates=None, seed=None, output=None, show_progress=None, decoding=None,
                             num_samples=None, on_unseen_layout=None, **sampling):
        forward = self._sampling_options(sampling, decoding)
        num_candidates = resolve_num_candidates(num_candidates, num_samples, default=None)
        if num_candidates is not None:
            forward["num_candidates"] = num_candidates
        if seed is not None:
            forward["seed"] = check_seed(seed)
        if show_progress is not None:
            forward["show_progress"] = check_flag(show_progress, "show_progress")
        post = {}
        if output is not None:
            if output not in OUTPUTS:
                raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
            post["output"] = output
        pre = {k: forward[k] for k in ("num_candidates", "decoding") if k in forward}  # memory checked before work
        if on_unseen_layout is not None:
            if on_unseen_layout not in ON_UNSEEN_LAYOUT:
                raise ValueError(f"on_unseen_layout must be one of {ON_UNSEEN_LAYOUT}, got {on_unseen_layout!r}.")
            pre["on_unseen_layout"] = on_unseen_layout
        return pre, forward, post

    @property
    def family(self) -> str:
        """"diffusion" or "autoregressive": which generator family this pipeline runs."""
        return "diffusion" if is_diffusion_model(self.model) else "autoregressive"

    def _sampling_options(self, sampling: dict, decoding) -> dict:
        """The family's sampling options, checked: the prior's `SAMPLING_KEYS` and `decoding`, or the diffusion
        generator's `num_inference_steps` and `scheduler` (each family refuses the other's, naming its own)."""
        if self.family == "diffusion":
            generator, schedulers = _diffusion("generator"), _diffusion("schedulers")
            options_known = generator.SAMPLING_OPTIONS
            unknown = sorted(set(sampling) - set(options_known)) + (["decoding"] if decoding is not None else [])
            if unknown:
                raise TypeError(f"Unknown options for a diffusion generator: {unknown}; expected num_candidates, seed, "
                                f"output, show_progress, on_unseen_layout or sampling options {list(options_known)}.")
            options = generator.check_diffusion_sampling(sampling)
            if options:  # validated now (unknown scheduler, bad step count), before any work
                try:
                    sampler = schedulers.sampling_scheduler(self.model.scheduler, options.get("scheduler"))
                    if "num_inference_steps" in options:
                        schedulers.check_num_inference_steps(options["num_inference_steps"], sampler)
                except schedulers.SchedulerError as err:
                    raise ValueError(str(err)) from err
            return options
        unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise TypeError(f"Unknown parameter-generation options {unknown}; expected num_candidates, seed, output, "
                            f"show_progress, decoding, on_unseen_layout or sampling options {list(SAMPLING_KEYS)} "
                            "(num_inference_steps and scheduler are the diffusion family's).")
        forward = check_sampling(sampling)
        if decoding is not None:
            forward["decoding"] = resolve_decoding(self.param_tokenizer.config, decoding)
        return forward

    def preprocess(self, inputs: dict, on_unseen_layout: str = "warn", num_candidates: int = 1,
                   decoding: str | None = None) -> dict:
        if not isinstance(inputs, dict) or "target" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise TypeError(f"parameter-generation expects a dict with 'target' (and 'task_text', 'samples', "
                            f"'validation'), got {got}.")
        task_text = inputs.get("task_text")
        if "task" in inputs:
            warnings.warn("The input key 'task' is deprecated: pass the task description as 'task_text'.",
                          FutureWarning, stacklevel=2)
            if task_text is not None:
                raise TypeError("Pass the task description once, as 'task_text' (not also as 'task').")
            task_text = inputs["task"]
        return self.generator.prepare(inputs["target"], task_text, inputs.get("samples"), inputs.get("validation"),
                                      on_unseen_layout, num_candidates, decoding)

    def _forward(self, model_inputs: dict, num_candidates: int = 1, seed: int | None = None,
                 show_progress: bool = False, decoding: str | None = None, **sampling) -> dict:
        codes, state_dicts = self.generator.sample(model_inputs["condition"], model_inputs["layout"], num_candidates,
                                                   seed, decoding, show_progress, **sampling)
        return {**model_inputs, "codes": codes, "state_dicts": state_dicts}

    def postprocess(self, model_outputs: dict, output: str = "model") -> dict:
        if output == "peft" and not isinstance(model_outputs["template"], tuple):
            raise ValueError("output='peft' needs a LoRA target (base_model, LoraConfig).")
        result = self.generator.select(model_outputs, model_outputs["codes"], model_outputs["state_dicts"],
                                       build=output != "state_dict")
        return {"state_dict": result.best_state_dict, "model": result.model, "codes": result.codes,
                "scores": result.scores, "best_index": result.best_index, "state_dicts": result.state_dicts,
                "out_of_distribution": result.out_of_distribution, "ood_reasons": result.ood_reasons}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """A complete pipeline repo: `ParamGenerator.save_pretrained` of this pipeline's generator (`kwargs` of
        `Pipeline.save_pretrained`, such as `safe_serialization`, are accepted and ignored: it writes safetensors).

        `custom_pipelines` names the task `REMOTE_TASK`, so a fresh process runs
        `pipeline(model=folder, trust_remote_code=True)` and `pipeline(TASK, model=folder)` still uses
        the installed package after `import hf_paramgen`.
        """
        self.generator.save_pretrained(save_directory)


def _diffusion(module: str):
    """`hf_paramgen.diffusion.<module>`, imported by name: the diffusion family (diffusers) is no part of this
    module's Hub remote code, which must travel without hf_paramgen (`hub.remote_code`)."""
    import importlib

    return importlib.import_module(f"hf_paramgen.diffusion.{module}")


def is_diffusion_model(model) -> bool:
    """True for a `ParamDiffusionPipeline` (checked without importing diffusers when it is not loaded)."""
    import sys

    module = sys.modules.get("hf_paramgen.diffusion.pipeline_param_diffusion")
    return module is not None and isinstance(model, module.ParamDiffusionPipeline)


def register() -> None:
    """Register the `parameter-generation` task with transformers' pipeline registry (idempotent)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    _diffusion("bridge").register()  # `model=<diffusion folder or repo id>` routes to the diffusion family

    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ParameterGenerationPipeline,
                                        pt_model=AutoModelForCausalLM, type="multimodal")
