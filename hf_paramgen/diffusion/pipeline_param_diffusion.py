"""`ParamDiffusionPipeline`: a diffusers `DiffusionPipeline` (denoiser + scheduler + conditioner) that samples whole
networks' weights from condition vectors.

    pipe = ParamDiffusionPipeline.from_pretrained("org/paramgen-diffusion")   # or a folder
    out = pipe(condition_embeds, condition_types, layout, num_candidates=4, num_inference_steps=20,
               scheduler="ddim", seed=0)
    out.state_dicts[0]                                                          # weights of `layout`

A saved pipeline folder is a standard diffusers folder: `model_index.json` and `denoiser/`, `scheduler/`,
`conditioner/` (each with its config and weights). Two small extra files ride along:

* `config.json` (`model_type="param_diffusion"`, `ParamDiffusionConfig`): lets transformers'
  `pipeline("parameter-generation", model=<folder or repo id>)` route the id to this family (after
  `import hf_paramgen`);
* `pipeline.py`, a one-line re-export of this class, so diffusers' own loader also reads the folder:
  `DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline", trust_remote_code=True)` (diffusers resolves
  `_class_name` only among its own classes or through such a file). The components' `model_index.json` entries name
  their full module path (`hf_paramgen.diffusion.modeling_param_denoiser`), which diffusers resolves among imported
  modules.

Instruction handling (text, samples, checks, best-of-k on validation) lives in `DiffusionParamGenerator`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from ..generation.generation_targets import GenerationError, check_in_distribution, known_layouts
from ..layout.chunking import chunk_positions, num_chunks, unchunk
from ..layout.param_layout import KINDS, ParamLayout
from ..models.code_structure import structure_for_layout
from ..utils import replace_dir, temporary_sibling
from .bridge import BRIDGE_CONFIG
from .conditioner import ParamConditioner
from .modeling_param_denoiser import ParamDenoiser
from .schedulers import check_num_inference_steps, sampling_scheduler

COMPONENTS = {"denoiser": "config.json", "scheduler": "scheduler_config.json", "conditioner": "config.json"}
SHIM_FILE = "pipeline.py"  # diffusers' CUSTOM_PIPELINE_FILE_NAME
SHIM = ('"""Re-export of hf_paramgen\'s diffusion pipeline for `DiffusionPipeline.from_pretrained(..., '
        'custom_pipeline="pipeline", trust_remote_code=True)`."""\n'
        "from hf_paramgen.diffusion.pipeline_param_diffusion import ParamDiffusionPipeline  # noqa: F401\n")


@dataclass
class ParamDiffusionOutput(BaseOutput):
    """`state_dicts` (k) of the target layout and `chunks` (k, N, C): the generated normalised chunks."""

    state_dicts: list[dict[str, torch.Tensor]]
    chunks: torch.Tensor


def check_pipeline_folder(folder: Path) -> None:
    """Refuse a local pipeline folder that lacks `model_index.json` or a component (named, with what is there)."""
    index = folder / "model_index.json"
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
    if not index.is_file():
        raise GenerationError(f"{folder} is not a diffusion generator folder: no model_index.json (found: {found}). "
                              f"Expected what ParamDiffusionPipeline.save_pretrained writes: model_index.json and "
                              f"{sorted(COMPONENTS)}.")
    listed = json.loads(index.read_text())
    for name, config_file in COMPONENTS.items():
        if name not in listed or not (folder / name / config_file).is_file():
            raise GenerationError(f"The diffusion generator folder {folder} is missing its {name!r} component "
                                  f"(expected {name}/{config_file}, listed in model_index.json); it has {found}. "
                                  "Save or download the generator again.")


def _snapshot(repo_id: str, kwargs: dict) -> str:
    """The local snapshot of a Hub repo (downloaded with the call's revision, cache, token and offline options).

    diffusers' own Hub path accepts a component whose library is neither diffusers / transformers nor a file shipped
    in the repo only as remote code (`trust_remote_code`); from a local folder it resolves the component's module among
    imported ones. So the repo is fetched here and loaded as a folder."""
    from huggingface_hub import snapshot_download

    from ..utils import check_hub_id

    try:
        check_hub_id(repo_id, "There is no folder of that name, and the diffusion generator repo id")
    except ValueError as err:
        raise GenerationError(str(err)) from err
    hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
    try:
        return snapshot_download(repo_id, **hub)
    except Exception as err:  # noqa: BLE001  (huggingface_hub raises several unrelated error types)
        raise GenerationError(f"The diffusion generator repo {repo_id!r} cannot be fetched "
                              f"({type(err).__name__}: {err}); expected a Hub repo id (or a local folder) with "
                              f"model_index.json and {sorted(COMPONENTS)}.") from err


class ParamDiffusionPipeline(DiffusionPipeline):
    """Sample network weights with a `ParamDenoiser` under a diffusers scheduler, conditioned by condition vectors.

    Args:
        denoiser: the trained `ParamDenoiser`.
        scheduler: the scheduler it was trained with (DDPM or flow matching; samplers are built from its config).
        conditioner: the `ParamConditioner` (text encoder name, sample encoders).
        default_num_inference_steps / default_scheduler: sampling settings when a call names none.
    """

    model_cpu_offload_seq = "denoiser"

    def __init__(self, denoiser: ParamDenoiser, scheduler, conditioner: ParamConditioner,
                 default_num_inference_steps: int = 50, default_scheduler: str | None = None):
        super().__init__()
        denoiser.eval()  # as diffusers loads it: a built and a loaded pipeline sample the same numbers
        self.register_modules(denoiser=denoiser, scheduler=scheduler, conditioner=conditioner)
        self.register_to_config(default_num_inference_steps=default_num_inference_steps,
                                default_scheduler=default_scheduler)

    # ------------------------------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> ParamDiffusionPipeline:
        """`DiffusionPipeline.from_pretrained`, with a local folder's components checked first and load failures
        raised as `GenerationError` naming what was expected."""
        name = os.fspath(pretrained_model_name_or_path)
        folder = name if os.path.isdir(name) else _snapshot(name, kwargs)
        check_pipeline_folder(Path(folder))
        try:
            return super().from_pretrained(folder, **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as err:
            if isinstance(err, GenerationError):
                raise
            raise GenerationError(f"The diffusion generator {name!r} does not load: {type(err).__name__}: {err}. "
                                  f"Expected a folder or repo with model_index.json and {sorted(COMPONENTS)} as "
                                  "ParamDiffusionPipeline.save_pretrained writes them.") from err

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' folder (model_index.json + components), plus the routing `config.json` and the `pipeline.py`
        re-export; written into a temporary sibling and swapped in whole."""
        tmp = temporary_sibling(save_directory)
        try:
            super().save_pretrained(tmp, safe_serialization=True, **kwargs)
            (tmp / "config.json").write_text(json.dumps(BRIDGE_CONFIG, indent=2) + "\n")
            (tmp / SHIM_FILE).write_text(SHIM)
            replace_dir(tmp, save_directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ layouts
    def known_layouts(self) -> dict[str, ParamLayout]:
        """name -> layout of the networks the denoiser was trained on."""
        return known_layouts(self.denoiser.config)

    def check_layout(self, layout: ParamLayout, on_unseen_layout: str = "warn") -> list[str]:
        """`check_expressible`, then the comparison with the trained layouts: a tensor kind none of them has is
        refused; returns the reasons the layout is out of distribution (see `check_in_distribution`)."""
        self.check_expressible(layout)
        return check_in_distribution(layout, self.known_layouts(), on_unseen_layout)

    def check_expressible(self, layout: ParamLayout) -> None:
        """Refuse a layout the denoiser cannot express: no weights, non-float tensors, a kind beyond its table, more
        chunks than `max_chunks`."""
        cfg = self.denoiser.config
        if not isinstance(layout, ParamLayout):
            raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}.")
        if len(layout) == 0 or layout.num_params == 0:
            raise GenerationError(f"The target layout has no weights to generate ({len(layout)} tensors, "
                                  f"{layout.num_params} weights); expected at least one parameter.")
        bad = [s.name for s in layout.specs if not str(s.dtype).startswith(("float", "bfloat", "torch.float"))]
        if bad:
            raise GenerationError(f"The generator only expresses floating-point tensors; the target has {bad[:5]}.")
        kinds = sorted({s.kind for s in layout.specs if KINDS.index(s.kind) >= cfg.num_kinds})
        if kinds:
            raise GenerationError(f"Tensor kinds {kinds} are beyond the denoiser's kind table ({cfg.num_kinds}).")
        n = num_chunks(layout, cfg.chunk_size, cfg.aggregation)
        if n > cfg.max_chunks:
            raise GenerationError(f"The target spans {n} chunks of {cfg.chunk_size} weights; this diffusion generator "
                                  f"takes at most max_chunks={cfg.max_chunks} (its longest training network allows).")

    def layout_inputs(self, layout: ParamLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(code_structure (N, 10) long, chunk_mask (N, C) bool) of `layout` under the denoiser's chunking."""
        cfg = self.denoiser.config
        structure = structure_for_layout(layout, cfg.chunk_size, 1, cfg.aggregation)  # (N, 10)
        return structure, chunk_positions(layout, cfg.chunk_size, cfg.aggregation)[1]

    def chunks_to_state_dict(self, chunks: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
        """Generated chunks (N, C) in the denoiser's units -> the state_dict of `layout` (denormalised)."""
        cfg = self.denoiser.config
        weights = unchunk(chunks.float().cpu() * cfg.data_scale, layout, cfg.aggregation)  # (D,)
        return layout.unflatten(weights / layout.fan_in_scale())

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, condition_embeds: torch.Tensor, condition_types: torch.Tensor, layout: ParamLayout,
                 num_candidates: int = 1, num_inference_steps: int | None = None, scheduler: str | None = None,
                 seed: int | None = None, show_progress: bool = False,
                 on_unseen_layout: str | None = "warn") -> ParamDiffusionOutput:
        """Sample `num_candidates` networks of `layout` for one instruction.

        Args:
            condition_embeds: (1, n, d) and condition_types (1, n): one encoded instruction (`encode_instruction`).
            layout: the target's layout (checked: `check_layout` with `on_unseen_layout`; None: `check_expressible`
                only, for callers that compared it with the trained layouts already).
            num_candidates: networks sampled at once (k).
            num_inference_steps: sampler steps in [1, num_train_timesteps] (default `default_num_inference_steps`).
            scheduler: "ddim", "ddpm", "dpm_solver" (DDPM-trained) or "flow_match_euler" (flow-matching-trained).
            seed: seeds the initial noise and any stochastic step (a local `torch.Generator`: the global RNG is
                untouched), so a seeded call is reproducible.
        """
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}.")
        sampler = sampling_scheduler(self.scheduler, scheduler or self.config.default_scheduler)
        steps = self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        steps = check_num_inference_steps(steps, sampler)
        self.check_expressible(layout) if on_unseen_layout is None else self.check_layout(layout, on_unseen_layout)
        structure, mask = self.layout_inputs(layout)
        device, k = self.denoiser.device, num_candidates
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        x = torch.randn((k, *mask.shape), generator=generator) * float(getattr(sampler, "init_noise_sigma", 1.0))
        mask_k = mask[None].expand(k, -1, -1).to(device)
        x = x.to(device) * mask_k
        inputs = {"code_structure": structure[None].expand(k, -1, -1).to(device), "chunk_mask": mask_k,
                  "condition_embeds": condition_embeds.expand(k, -1, -1).to(device),
                  "condition_types": condition_types.expand(k, -1).to(device)}
        sampler.set_timesteps(steps, device=device)
        for t in tqdm(sampler.timesteps, desc="denoising", disable=not show_progress):
            model_input = sampler.scale_model_input(x, t) if hasattr(sampler, "scale_model_input") else x
            prediction = self.denoiser(model_input, t.reshape(1).expand(k), **inputs).sample
            x = sampler.step(prediction, t, x, generator=generator).prev_sample * mask_k
        return ParamDiffusionOutput([self.chunks_to_state_dict(c, layout) for c in x], x.cpu())
