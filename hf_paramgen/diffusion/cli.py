"""`hf-paramgen train-diffusion`: train a diffusion generator on a weight corpus and save its pipeline folder.

    hf-paramgen train-diffusion --corpus outputs/benchmark_generation/corpus \
        --output_dir outputs/benchmark_generation/diffusion_generator \
        --reference_generator outputs/benchmark_generation/generator --max_time_s 3900

Resumable: run the same command again after a kill (state in `<output_dir>-work/training`); `--max_time_s` caps
each run's wall time. stdout carries one JSON line (folder, seconds); progress goes to stderr.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..jobs import clear_job_errors
from ..training.loop import TrainingConfig
from ..training.prior import DEFAULT_SAMPLES, load_samples_provider, loop_config
from .schedulers import OBJECTIVES, PREDICTION_TYPES


@dataclass
class DiffusionScriptArguments:
    """The command line of `hf-paramgen train-diffusion` (an `HfArgumentParser` dataclass)."""

    corpus: str = field(metadata={"help": "corpus folder or Hub id"})
    output_dir: str = field(metadata={"help": "diffusion generator folder to write (a diffusers pipeline folder)"})
    reference_generator: str | None = field(default=None, metadata={
        "help": "an autoregressive generator folder: reuse its sample encoders, text encoder and cached conditions"})
    architectures: list[str] | None = field(default=None, metadata={"help": "train on these architectures only"})
    text_encoder: str | None = field(default=None, metadata={
        "help": "text encoder: Hub id, folder or 'hashing:<dim>' (default: the reference's, else MiniLM)"})
    samples: str = field(default=DEFAULT_SAMPLES, metadata={
        "help": "few-shot samples provider 'package.module:Name' ('none': no sample conditioning)"})
    sample_datasets: list[str] = field(default_factory=lambda: ["mnist", "digits"])
    objective: str = field(default="ddpm", metadata={"help": f"one of {OBJECTIVES}"})
    prediction_type: str = field(default="sample", metadata={"help": f"DDPM target, one of {PREDICTION_TYPES}"})
    chunk_size: int = field(default=16, metadata={"help": "weights per token"})
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_inference_steps: int = field(default=50, metadata={"help": "default sampling steps of the pipeline"})
    batch_size: int = 16
    lr: float = 1e-3
    max_steps: int = 20000
    warmup_steps: int = 100
    log_every: int = 50
    save_every: int = 200
    eval_every: int = 200
    max_time_s: float | None = None
    seed: int = 0
    keep_last: bool = field(default=False, metadata={"help": "save the last denoiser, not the best on validation"})

    def __post_init__(self):
        """Shapes and choices checked before any work."""
        for name in ("chunk_size", "hidden_size", "num_layers", "num_heads", "num_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} must be an int >= 1, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"--hidden_size {self.hidden_size} must be a multiple of --num_heads {self.num_heads}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"--prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        self.training_config()

    def denoiser_overrides(self) -> dict:
        return {"chunk_size": self.chunk_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "num_heads": self.num_heads}

    def training_config(self) -> TrainingConfig:
        return loop_config(self)


def cli_train_diffusion(argv: list[str]) -> int:
    """`hf-paramgen train-diffusion`: train a diffusion generator on a corpus and save its pipeline folder."""
    from .training import train_diffusion, training_seconds

    parser = HfArgumentParser(DiffusionScriptArguments)
    parser.prog, parser.description = "hf-paramgen train-diffusion", cli_train_diffusion.__doc__
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    samples = None
    if args.samples.lower() != "none":
        samples = load_samples_provider(args.samples, datasets=tuple(args.sample_datasets))
    with clear_job_errors(parser.prog, args.output_dir):
        train_diffusion(args.corpus, args.output_dir, args.denoiser_overrides(), args.training_config(),
                        args.architectures, args.text_encoder, samples, args.reference_generator, args.objective,
                        args.prediction_type, args.num_inference_steps)
    print(json.dumps({"output_dir": args.output_dir, "seconds": time.perf_counter() - start,
                      "training_seconds_total": training_seconds(args.output_dir)}))
    return 0
