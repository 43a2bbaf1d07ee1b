"""Train a `ParamDenoiser` on a weight corpus with the project's one Accelerate loop and save a diffusion generator.

`build_diffusion_dataset` turns the corpus's models into rows (normalised chunks, structure, condition vectors: the
same `condition_for_row` the prior's dataset uses); `DiffusionCollator` pads a batch and draws noise and timesteps
(seeded per batch by the loop's `SeededCollate`, so a resumed run sees the same noise); `train_diffusion` trains with
`training.loop.train` (resume, several processes) and saves a `ParamDiffusionPipeline` folder. With
`reference_generator` (an autoregressive generator folder) the sample encoders, the text encoder and, when its work
folder holds them, the cached condition vectors are the prior's own: both families then read identical conditions.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset

from ..conditioning.instruction import InstructionEncoders
from ..conditioning.samples import SampleEncoder
from ..conditioning.text import make_text_encoder
from ..data.corpus import corpus_model_weights, load_corpus
from ..jobs import output_lock, recover_temporaries
from ..layout.chunking import chunk
from ..layout.param_layout import ParamLayout
from ..models.code_structure import NUM_STRUCTURE_FIELDS, structure_for_layout
from ..training.loop import TrainingConfig, best_model_dir, train
from ..training.prior import SamplesProvider, _model_rows, check_architectures, condition_for_row, layouts_of, work_dir
from ..utils import atomic_write_json, replace_dir, temporary_sibling
from .conditioner import ParamConditioner
from .modeling_param_denoiser import ParamDenoiser
from .pipeline_param_diffusion import ParamDiffusionPipeline
from .schedulers import training_scheduler

CACHE_FILE = "diffusion_dataset.json"
SECONDS_FILE = "training_seconds.json"  # wall time of every run into this work folder, summed across resumes


def network_tensors(weights: torch.Tensor, layout: ParamLayout, chunk_size: int) -> dict[str, np.ndarray]:
    """One network's flat weights (D,) -> `chunks` (N*C,) fan-in-normalised, `chunk_mask` (N*C,) int8,
    `code_structure` (N*10,) int32 and `num_chunks` N."""
    pieces = chunk(weights * layout.fan_in_scale(), layout, chunk_size, "layer")  # (N, C)
    structure = structure_for_layout(layout, chunk_size, 1, "layer")  # (N, 10)
    return {"chunks": pieces.chunks.reshape(-1).numpy().astype(np.float32),
            "chunk_mask": pieces.chunk_mask.reshape(-1).numpy().astype(np.int8),
            "code_structure": structure.reshape(-1).numpy().astype(np.int32), "num_chunks": len(pieces)}


def build_diffusion_dataset(corpus, chunk_size: int, encoders: InstructionEncoders,
                            sample_encoders: dict[str, SampleEncoder], splits: tuple[str, ...] = ("train",),
                            architectures: list[str] | None = None, samples: SamplesProvider | None = None,
                            max_condition_tokens: int | None = None, cached_conditions: dict | None = None) -> Dataset:
    """One row per corpus model of `splits` / `architectures`: `network_tensors` + `condition_embeds` (n, d),
    `condition_types` (n,), `model_id`, `architecture`. `cached_conditions`: model_id -> (embeds, types) to reuse."""
    from tqdm.auto import tqdm

    rows = _model_rows(corpus, set(splits), architectures)
    if not rows:
        raise ValueError(f"The corpus has no models of splits {list(splits)} and architectures {architectures}.")
    out: dict[str, list] = {k: [] for k in ("model_id", "architecture", "chunks", "chunk_mask", "code_structure",
                                            "num_chunks", "condition_embeds", "condition_types")}
    with torch.no_grad():
        for row in tqdm(rows, desc="diffusion rows"):
            weights, layout = corpus_model_weights(corpus, row["model_id"], row)
            if cached_conditions is not None and row["model_id"] in cached_conditions:
                embeds, types = cached_conditions[row["model_id"]]
            else:
                embeds, types = condition_for_row(row, encoders, sample_encoders, samples, max_condition_tokens)
                embeds, types = embeds.numpy(), types.numpy()
            for key, value in network_tensors(weights, layout, chunk_size).items():
                out[key].append(value)
            out["model_id"].append(row["model_id"])
            out["architecture"].append(row["architecture"])
            out["condition_embeds"].append(np.asarray(embeds, dtype=np.float32))
            out["condition_types"].append(np.asarray(types, dtype=np.int64))
    return Dataset.from_dict(out)


def data_scale_of(dataset: Dataset) -> float:
    """Std of the fan-in-normalised weights over the rows' real (unpadded) entries."""
    values = [np.asarray(c)[np.asarray(m).astype(bool)] for c, m in zip(dataset["chunks"], dataset["chunk_mask"],
                                                                          strict=True)]
    return float(np.concatenate(values).std()) or 1.0


class DiffusionCollator:
    """Rows -> a `ParamDenoiser` training batch: chunks padded to the batch's longest network, condition tokens
    padded with type -1, noisy chunks / timesteps / targets drawn under `scheduler` (global RNG, seeded per batch by
    the loop). Chunks are divided by `data_scale` first."""

    def __init__(self, scheduler, chunk_size: int, data_scale: float):
        self.scheduler, self.chunk_size, self.data_scale = scheduler, chunk_size, float(data_scale)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from .schedulers import noisy_training_pair

        b, c = len(rows), self.chunk_size
        n = max(int(r["num_chunks"]) for r in rows)
        m = max(len(r["condition_types"]) for r in rows)
        d = len(rows[0]["condition_embeds"][0])
        clean, mask = torch.zeros(b, n, c), torch.zeros(b, n, c, dtype=torch.bool)
        structure = torch.zeros(b, n, NUM_STRUCTURE_FIELDS, dtype=torch.long)
        embeds, types = torch.zeros(b, m, d), torch.full((b, m), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            k = int(r["num_chunks"])
            clean[i, :k] = torch.as_tensor(np.asarray(r["chunks"], dtype=np.float32)).view(k, c) / self.data_scale
            mask[i, :k] = torch.as_tensor(np.asarray(r["chunk_mask"])).view(k, c).bool()
            structure[i, :k] = torch.as_tensor(np.asarray(r["code_structure"], dtype=np.int64)).view(k, -1)
            e = torch.as_tensor(np.asarray(r["condition_embeds"], dtype=np.float32))
            embeds[i, : e.shape[0]] = e
            types[i, : e.shape[0]] = torch.as_tensor(np.asarray(r["condition_types"], dtype=np.int64))
        noisy, timestep, target = noisy_training_pair(self.scheduler, clean)
        return {"sample": noisy * mask, "timestep": timestep, "target": target * mask, "code_structure": structure,
                "chunk_mask": mask, "condition_embeds": embeds, "condition_types": types}


def reference_conditions(reference_generator: str | None) -> tuple[dict, dict[str, SampleEncoder], str | None]:
    """(model_id -> (embeds, types) cached beside an AR generator, its sample encoders, its text encoder name)."""
    if not reference_generator:
        return {}, {}, None
    from ..generation.generator_loading import GeneratorSource, load_sample_encoders

    config = json.loads((Path(reference_generator) / "config.json").read_text())
    encoders = load_sample_encoders(GeneratorSource(reference_generator),
                                    SimpleNamespace(sample_encoders=config.get("sample_encoders")))
    cached = {}
    for split in ("train", "validation"):
        folder = work_dir(reference_generator) / "prior_dataset" / split
        if folder.is_dir():
            rows = Dataset.load_from_disk(str(folder)).select_columns(["model_id", "condition_embeds",
                                                                        "condition_types"])
            for r in rows:
                cached[r["model_id"]] = (r["condition_embeds"], r["condition_types"])
    return cached, encoders, config.get("text_encoder")


def _datasets(corpus, chunk_size, text, samplers, architectures, samples, max_tokens, cached, cache: Path, meta: dict):
    """The train / validation rows, from `cache` when it was built with the same settings."""
    meta_file = cache / CACHE_FILE
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:
        return {s: Dataset.load_from_disk(str(cache / s)) if (cache / s).is_dir() else None
                for s in ("train", "validation")}
    data = {}
    for split in ("train", "validation"):
        has_rows = bool(_model_rows(corpus, {split}, architectures))
        data[split] = build_diffusion_dataset(corpus, chunk_size, InstructionEncoders(text=text), samplers, (split,),
                                              architectures, samples, max_tokens, cached) if has_rows else None
    tmp = temporary_sibling(cache)
    tmp.mkdir(parents=True)
    for split, rows in data.items():
        if rows is not None:
            rows.save_to_disk(str(tmp / split))
    atomic_write_json(tmp / CACHE_FILE, meta)
    replace_dir(tmp, cache)
    return data


def train_diffusion(corpus, output_dir: str, denoiser_overrides: dict | None = None,
                    training_config: TrainingConfig | None = None, architectures: list[str] | None = None,
                    text_encoder: str | None = None, samples: SamplesProvider | None = None,
                    reference_generator: str | None = None, objective: str = "ddpm", prediction_type: str = "sample",
                    num_inference_steps: int = 50) -> ParamDiffusionPipeline:
    """Train a denoiser on the corpus's "train" models (validation models monitored) and save the pipeline folder.

    Args:
        corpus: corpus `DatasetDict`, folder or Hub id.
        output_dir: the diffusion generator folder to write (replaced atomically).
        denoiser_overrides: `ParamDenoiser` fields (chunk_size, hidden_size, num_layers, num_heads, max_chunks, ...).
        training_config: loop settings (default: `<output_dir>-work/training`).
        architectures: train on these architectures only (None: all).
        text_encoder: Hub id, folder or `hashing:<dim>` (default: the reference generator's, else MiniLM).
        samples: few-shot samples provider (ignored for models whose conditions come from the reference's cache).
        reference_generator: an autoregressive generator folder whose sample encoders, text encoder and cached
            condition vectors to reuse (the same conditions as the prior).
        objective / prediction_type: `schedulers.training_scheduler`.
        num_inference_steps: the pipeline's default sampling steps.

    Training state goes to `<output_dir>-work/training/` (a killed run resumes there); the summed wall time of all
    runs to `<output_dir>-work/training_seconds.json`.
    """
    from ..conditioning.text import MINILM_HUB_ID

    start = time.perf_counter()
    corpus = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    check_architectures(corpus, architectures)
    state = PartialState(cpu=not torch.cuda.is_available())
    training_config = training_config or TrainingConfig(output_dir=str(work_dir(output_dir) / "training"))
    overrides = dict(denoiser_overrides or {})
    chunk_size = int(overrides.get("chunk_size", 16))
    cached, samplers, ref_text = reference_conditions(reference_generator)
    text_name = text_encoder or ref_text or MINILM_HUB_ID
    text = make_text_encoder(text_name)
    dim = text.dim if hasattr(text, "dim") else int(text("x").shape[-1])
    if not samplers and samples is not None:
        samplers = samples.sample_encoders(dim)
    max_tokens = int(overrides.pop("max_condition_tokens", 34))
    meta = {"corpus": list(corpus["models"]["model_id"])[:3] + [len(corpus["models"])], "chunk_size": chunk_size,
            "text_encoder": text_name, "architectures": architectures, "reference": bool(reference_generator),
            "samplers": sorted(samplers), "max_condition_tokens": max_tokens}
    cache = work_dir(output_dir) / "diffusion_dataset"
    with state.main_process_first():
        if state.is_main_process:
            recover_temporaries(cache)
        data = _datasets(corpus, chunk_size, text, samplers, architectures, samples, max_tokens, cached, cache, meta)
    longest = max(data["train"]["num_chunks"])
    settings = {"chunk_size": chunk_size, "condition_dim": dim, "num_condition_types": max_tokens,
                "max_chunks": 4 * longest, "data_scale": data_scale_of(data["train"]),
                "layouts": layouts_of(corpus, architectures), **overrides}
    with output_lock(output_dir) if state.is_main_process else contextlib.nullcontext():
        torch.manual_seed(training_config.seed)
        denoiser = ParamDenoiser(**settings)
        scheduler = training_scheduler(objective, prediction_type)
        collator = DiffusionCollator(scheduler, chunk_size, settings["data_scale"])
        train(denoiser, data["train"], collator, training_config, eval_dataset=data["validation"])
        best = best_model_dir(training_config.output_dir)
        if training_config.keep_best and best is not None:
            denoiser = ParamDenoiser.from_pretrained(best)
        conditioner = ParamConditioner.from_encoders(text_name, dim, max_tokens, samplers)
        pipeline = ParamDiffusionPipeline(denoiser.eval(), scheduler, conditioner, num_inference_steps)
        if state.is_main_process:
            pipeline.save_pretrained(output_dir)
            _add_seconds(work_dir(output_dir) / SECONDS_FILE, time.perf_counter() - start)
        state.wait_for_everyone()
    return pipeline


def _add_seconds(path: Path, seconds: float) -> float:
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_json(path, {"seconds": round(total, 1)})
    return total


def training_seconds(output_dir) -> float | None:
    """Summed wall time of the `train_diffusion` runs that wrote `output_dir` (None: none recorded)."""
    path = work_dir(output_dir) / SECONDS_FILE
    return json.loads(path.read_text())["seconds"] if path.is_file() else None
