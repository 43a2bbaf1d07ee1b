"""How transformers' `pipeline("parameter-generation", model=<diffusion folder or repo id>)` reaches the diffusion
family, without importing diffusers at `import hf_paramgen`.

`pipeline()` reads `config.json` from the id before anything else (`AutoConfig`) and loads the model with the task's
Auto class (`AutoModelForCausalLM`). A diffusion generator folder therefore carries a small `config.json`
(`BRIDGE_CONFIG`, `model_type="param_diffusion"`), registered here with `AutoConfig`, and `ParamDiffusionLoader` is
registered for that config with `AutoModelForCausalLM`: its `from_pretrained` returns the `ParamDiffusionPipeline`
(which has the `device` / `to` / `dtype` a transformers `Pipeline` needs of its model). The AR generator's ids are
untouched: their `config.json` names `param_prior`.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

MODEL_TYPE = "param_diffusion"
BRIDGE_CONFIG = {"model_type": MODEL_TYPE, "family": "diffusion", "pipeline_class": "ParamDiffusionPipeline",
                 "note": "hf_paramgen diffusion generator: a diffusers pipeline folder (model_index.json). This file "
                         "only routes transformers' pipeline('parameter-generation', model=...) to it."}
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")


class ParamDiffusionConfig(PreTrainedConfig):
    """The routing `config.json` of a diffusion generator folder (no model settings: those are the components')."""

    model_type = MODEL_TYPE

    def __init__(self, family: str = "diffusion", pipeline_class: str = "ParamDiffusionPipeline", **kwargs):
        self.family, self.pipeline_class = family, pipeline_class
        super().__init__(**kwargs)


class ParamDiffusionLoader:
    """`AutoModelForCausalLM` entry for `ParamDiffusionConfig`: `from_pretrained` loads the whole diffusers pipeline."""

    config_class = ParamDiffusionConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The `ParamDiffusionPipeline` at that folder or repo id (hub options kept, transformers' options dropped)."""
        from .pipeline_param_diffusion import ParamDiffusionPipeline

        hub = {k: v for k, v in kwargs.items() if k in HUB_KWARGS and v is not None}
        pipe = ParamDiffusionPipeline.from_pretrained(pretrained_model_name_or_path, **hub)
        return pipe


def register() -> None:
    """Register `param_diffusion` with `AutoConfig` and `AutoModelForCausalLM` (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(MODEL_TYPE, ParamDiffusionConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(ParamDiffusionConfig, ParamDiffusionLoader)
    except ValueError:
        pass
