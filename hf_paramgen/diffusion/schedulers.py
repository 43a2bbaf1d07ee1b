"""The diffusers schedulers a `ParamDenoiser` trains and samples with, by name, with the checks that keep a sampler
compatible with how the denoiser was trained.

Two training objectives (`OBJECTIVES`):

* `"ddpm"`: a `DDPMScheduler` noise schedule (cosine, no sample clipping, "trailing" timesteps so a few-step sampler
  starts from pure noise) with `prediction_type` "epsilon", "v_prediction" or "sample"; it samples with `"ddpm"`,
  `"ddim"` or `"dpm_solver"` (`DPMSolverMultistepScheduler`), each built from the training scheduler's config;
* `"flow_match"`: rectified flow, `x_sigma = (1 - sigma) x0 + sigma noise`, the denoiser predicts the velocity
  `noise - x0`; it samples with `"flow_match_euler"` (`FlowMatchEulerDiscreteScheduler`).
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULERS: dict[str, type] = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler,
                               "flow_match_euler": FlowMatchEulerDiscreteScheduler}
SAMPLERS_OF: dict[str, tuple[str, ...]] = {"ddpm": ("ddim", "ddpm", "dpm_solver"), "flow_match": ("flow_match_euler",)}
OBJECTIVES: tuple[str, ...] = tuple(SAMPLERS_OF)
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


class SchedulerError(ValueError):
    """A scheduler name, step count or objective the diffusion generator cannot use."""


def training_scheduler(objective: str = "ddpm", prediction_type: str = "sample",
                       num_train_timesteps: int = 1000) -> SchedulerMixin:
    """The scheduler a denoiser is trained with (saved as the pipeline's `scheduler` component)."""
    if objective not in OBJECTIVES:
        raise SchedulerError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise SchedulerError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}.")
    if objective == "flow_match":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps)
    if prediction_type not in PREDICTION_TYPES:
        raise SchedulerError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                         prediction_type=prediction_type, timestep_spacing="trailing")


def objective_of(scheduler: SchedulerMixin) -> str:
    """"flow_match" for a flow-matching scheduler, "ddpm" for one with a DDPM noise schedule."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return "flow_match"
    if hasattr(scheduler, "alphas_cumprod"):
        return "ddpm"
    raise SchedulerError(f"Unsupported scheduler {type(scheduler).__name__}; expected one of "
                         f"{sorted(c.__name__ for c in SCHEDULERS.values())}.")


def default_sampler(scheduler: SchedulerMixin) -> str:
    """The sampler used when none is named: DDIM for a DDPM-trained denoiser, Euler for flow matching."""
    return SAMPLERS_OF[objective_of(scheduler)][0]


def sampling_scheduler(trained: SchedulerMixin, name: str | None = None) -> SchedulerMixin:
    """A fresh sampler `name` built from the training scheduler's config (None: `default_sampler`).

    Raises:
        SchedulerError: an unknown name, or one that does not fit how the denoiser was trained.
    """
    objective = objective_of(trained)
    name = default_sampler(trained) if name is None else name
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise SchedulerError(f"Unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)} "
                             f"(this generator was trained with {objective!r}: use one of {SAMPLERS_OF[objective]}).")
    if name not in SAMPLERS_OF[objective]:
        raise SchedulerError(f"Scheduler {name!r} does not fit this generator: it was trained with the {objective!r} "
                             f"objective, which samples with {SAMPLERS_OF[objective]}; received {name!r}.")
    return SCHEDULERS[name].from_config(trained.config)


def check_num_inference_steps(steps, scheduler: SchedulerMixin) -> int:
    """`steps` as an int in [1, num_train_timesteps] of `scheduler`, else a `SchedulerError` naming the range."""
    most = int(scheduler.config.num_train_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise SchedulerError(f"num_inference_steps must be an int in [1, {most}] (the scheduler's "
                             f"num_train_timesteps), got {steps!r}.")
    return steps


def noisy_training_pair(scheduler: SchedulerMixin, clean: torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy (b, ...), timestep (b,), target (b, ...)) for clean samples `clean` (b, ...), drawn with `generator`
    (None: the global RNG): what the denoiser sees and what it must predict under the scheduler's objective."""
    b = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    shape = (b,) + (1,) * (clean.ndim - 1)
    if objective_of(scheduler) == "flow_match":
        sigma = torch.rand(b, generator=generator)
        noisy = (1 - sigma.view(shape)) * clean + sigma.view(shape) * noise
        return noisy, sigma * scheduler.config.num_train_timesteps, noise - clean
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    noisy = scheduler.add_noise(clean, noise, t)
    kind = scheduler.config.prediction_type
    target = noise if kind == "epsilon" else clean if kind == "sample" else scheduler.get_velocity(clean, noise, t)
    return noisy, t.float(), target
