"""The diffusion family of generators, built on diffusers: a whole network's weights denoised at once.

`ParamDenoiser` (diffusers `ModelMixin` + `ConfigMixin`), diffusers schedulers (DDPM / DDIM / DPM-Solver for a
DDPM-trained denoiser, flow matching with Euler sampling), a `ParamConditioner` (the same instruction encoders as the
autoregressive prior), assembled into `ParamDiffusionPipeline` (a `DiffusionPipeline` folder) and served, like the
prior, through `DiffusionParamGenerator` and `pipeline("parameter-generation", model=<folder or repo id>)`.
Trained by `train_diffusion` with the project's one Accelerate loop.

Submodules load on first use (`import hf_paramgen` registers only the light `bridge`; diffusers is imported when a
diffusion name is first touched).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "bridge": ["ParamDiffusionConfig"],
    "conditioner": ["ParamConditioner"],
    "generator": ["DiffusionParamGenerator"],
    "modeling_param_denoiser": ["ParamDenoiser", "ParamDenoiserOutput"],
    "pipeline_param_diffusion": ["ParamDiffusionOutput", "ParamDiffusionPipeline"],
    "schedulers": ["OBJECTIVES", "SCHEDULERS", "SchedulerError", "sampling_scheduler", "training_scheduler"],
    "training": ["DiffusionCollator", "build_diffusion_dataset", "train_diffusion"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
