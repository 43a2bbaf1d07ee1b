"""`DiffusionParamGenerator`: instruction (task text + few labelled samples + target) -> networks, with a
`ParamDiffusionPipeline` instead of the autoregressive prior.

It is a `ParamGenerator` for everything the two families share: target resolution, sample checks, instruction encoding
(the same encoders and condition vectors), best-of-k selection on the caller's validation split and building the
model. What differs: no ParamTokenizer and no codes (`GenerationResult.codes` is None), and sampling takes
`num_inference_steps` and `scheduler` instead of the prior's `temperature` / `top_k` / `decoding`.
"""

from __future__ import annotations

import os
import threading

import torch

from ..conditioning.instruction import Instruction, InstructionEncoders, encode_instruction
from ..conditioning.samples import SampleEncoder
from ..generation.generation_checks import check_flag, check_seed, check_task_text, default_memory_limit
from ..generation.generation_targets import GenerationError, resolve_target
from ..generation.generator import GenerationResult, ParamGenerator, output_size, resolve_num_candidates
from ..layout.chunking import num_chunks
from ..layout.param_layout import ParamLayout
from .pipeline_param_diffusion import ParamDiffusionPipeline
from .schedulers import SchedulerError

SAMPLING_OPTIONS = ("num_inference_steps", "scheduler")


def check_diffusion_sampling(sampling: dict) -> dict:
    """Refuse options the diffusion family does not take (e.g. the prior's `temperature`), naming those it does."""
    unknown = sorted(set(sampling) - set(SAMPLING_OPTIONS))
    if unknown:
        raise GenerationError(f"A diffusion generator takes sampling options {list(SAMPLING_OPTIONS)}, got {unknown} "
                              "(temperature, top_k, top_p, do_sample and decoding are the autoregressive prior's).")
    return {k: v for k, v in sampling.items() if v is not None}


class DiffusionParamGenerator(ParamGenerator):
    """A generator around a `ParamDiffusionPipeline` (see the module docstring).

    Args:
        pipeline: the diffusion pipeline (denoiser, scheduler, conditioner).
        text_encoder: an already-built text encoder (else built lazily from the conditioner's name).
        text_encoder_kwargs: passed to the text encoder (e.g. `cache_dir`).
        max_memory_bytes: refuse a call whose estimated activation memory exceeds this (None: half the available).
    """

    def __init__(self, pipeline: ParamDiffusionPipeline, text_encoder=None, text_encoder_kwargs: dict | None = None,
                 max_memory_bytes: int | None = None):
        self.pipeline = pipeline
        self.prior, self.param_tokenizer = None, None  # the autoregressive components: none here
        self.pipeline.denoiser.eval()
        self.sample_encoders: dict[str, SampleEncoder] = dict(pipeline.conditioner.encoders.items())
        self.max_memory_bytes = max_memory_bytes
        self._text_encoder = text_encoder
        self._text_encoder_kwargs = dict(text_encoder_kwargs or {})
        self._lock = threading.RLock()

    family = "diffusion"

    @property
    def text_encoder_name(self) -> str:
        return self.pipeline.conditioner.config.text_encoder

    # -------------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """The diffusers pipeline folder (`ParamDiffusionPipeline.save_pretrained`), written atomically."""
        self.pipeline.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        local_files_only: bool = False, text_encoder=None,
                        max_memory_bytes: int | None = None, **kwargs) -> DiffusionParamGenerator:
        """Load from a pipeline folder or Hub repo id (`ParamDiffusionPipeline.from_pretrained`)."""
        if kwargs:
            raise TypeError(f"Unexpected options {sorted(kwargs)}; a diffusion generator loads with revision, "
                            "cache_dir, token, local_files_only, text_encoder and max_memory_bytes.")
        hub = {k: v for k, v in (("revision", revision), ("cache_dir", cache_dir), ("token", token)) if v is not None}
        pipeline = ParamDiffusionPipeline.from_pretrained(name_or_path, local_files_only=local_files_only, **hub)
        text_kwargs = {k: v for k, v in (("cache_dir", cache_dir), ("token", token)) if v is not None}
        return cls(pipeline, text_encoder=text_encoder, text_encoder_kwargs=text_kwargs,
                   max_memory_bytes=max_memory_bytes)

    # -------------------------------------------------------------- checks
    def check_layout(self, layout: ParamLayout) -> None:
        """Refuse a layout the denoiser cannot express (`ParamDiffusionPipeline.check_expressible`); `prepare` then
        compares it with the trained layouts (`check_in_distribution`: unseen tensor kinds are refused)."""
        self.pipeline.check_expressible(layout)

    def known_layouts(self) -> dict[str, ParamLayout]:
        return self.pipeline.known_layouts()

    def resolve_target(self, target) -> tuple[ParamLayout, object]:
        return resolve_target(target, self.pipeline.denoiser.config.layouts or {})

    def check_memory(self, layout: ParamLayout, num_candidates: int, decoding: str | None = None) -> dict[str, int]:
        """Refuse (`GenerationError`) a request whose activations (tokens x width x layers, attention maps) exceed
        `max_memory_bytes`; returns the estimate."""
        if decoding is not None:
            raise GenerationError(f"decoding={decoding!r} is the autoregressive prior's option; a diffusion generator "
                                  "decodes its chunks directly (leave decoding unset).")
        cfg = self.pipeline.denoiser.config
        prefix = 1 + self.pipeline.conditioner.config.max_condition_tokens
        tokens = num_chunks(layout, cfg.chunk_size, cfg.aggregation) + prefix
        per = tokens * (cfg.hidden_size * (4 + 2 * cfg.num_layers) + cfg.num_heads * tokens) * 4
        estimate = {"activations": num_candidates * per, "weights": num_candidates * layout.num_params * 4 * 3}
        limit = self.max_memory_bytes or default_memory_limit(self.pipeline.denoiser.device)
        total = sum(estimate.values())
        if total > limit:
            raise GenerationError(f"Generating {num_candidates} networks of {layout.num_params} weights needs about "
                                  f"{total / 2**30:.2f} GB, more than the limit of {limit / 2**30:.2f} GB: lower "
                                  "num_candidates or raise max_memory_bytes.")
        return {**estimate, "total": total, "limit": limit}

    def encode(self, layout: ParamLayout, task_text: str, samples=None) -> dict[str, torch.Tensor]:
        """The denoiser's condition kwargs for one instruction (validated): the prior's condition vectors."""
        check_task_text(task_text)
        num_classes = output_size(layout)
        enc = InstructionEncoders(text=self.text_encoder)
        if samples is not None:
            texts = isinstance(samples, (tuple, list)) and len(samples) == 2 and _is_texts(samples[0])
            samples = self._check_samples(samples, num_classes)
            enc.samples = self._sample_encoder(samples[0], texts)
        inst = Instruction(task_text=task_text, samples=samples, architecture=layout.describe(),
                           num_classes=num_classes)
        conditioner = self.pipeline.conditioner.config
        try:
            out = encode_instruction(inst, enc, conditioner.max_condition_tokens)
        except ValueError as err:
            raise GenerationError(str(err)) from err
        width, expected = out.condition_embeds.shape[-1], self.pipeline.denoiser.config.condition_dim
        if width != expected:
            raise GenerationError(f"The condition encoders give vectors of width {width} (text encoder "
                                  f"{self.text_encoder_name!r}), but the denoiser reads condition_dim={expected}.")
        return out.as_model_kwargs()

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def sample(self, condition: dict[str, torch.Tensor], layout: ParamLayout, num_candidates: int = 1,
               seed: int | None = None, decoding: str | None = None, show_progress: bool = False,
               **sampling) -> tuple[None, list[dict[str, torch.Tensor]]]:
        """Sample `num_candidates` networks: (None (no codes), k state_dicts on the CPU)."""
        seed = check_seed(seed)
        sampling = check_diffusion_sampling(sampling)
        check_flag(show_progress, "show_progress")
        self.check_memory(layout, num_candidates, decoding)
        try:
            with self._lock:
                out = self.pipeline(**condition, layout=layout, num_candidates=num_candidates, seed=seed,
                                    show_progress=show_progress, on_unseen_layout=None, **sampling)
        except SchedulerError as err:
            raise GenerationError(str(err)) from err
        return None, [{k: v.cpu() for k, v in sd.items()} for sd in out.state_dicts]

    def generate(self, target, task_text: str, samples=None, num_candidates: int | None = None,
                 seed: int | None = None, validation=None, decoding: str | None = None, *,
                 num_samples: int | None = None, show_progress: bool = False, on_unseen_layout: str = "warn",
                 **sampling) -> GenerationResult:
        """Generate `num_candidates` networks for `target` and keep the best on `validation` (see
        `ParamGenerator.generate`); sampling options: `num_inference_steps`, `scheduler`."""
        num_candidates = resolve_num_candidates(num_candidates, num_samples)
        seed = check_seed(seed)
        sampling = check_diffusion_sampling(sampling)
        check_flag(show_progress, "show_progress")
        prepared = self.prepare(target, task_text, samples, validation, on_unseen_layout, num_candidates, decoding)
        _, state_dicts = self.sample(prepared["condition"], prepared["layout"], num_candidates, seed, decoding,
                                     show_progress, **sampling)
        return self.select(prepared, None, state_dicts)


def _is_texts(X) -> bool:
    from ..generation.generation_targets import is_texts

    return is_texts(X)
