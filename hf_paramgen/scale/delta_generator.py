"""`DeltaGenerator`: whole networks of millions of parameters from an instruction = the codec's reference + a delta
whose coefficients an IGPG generator (ParamTokenizer + prior) writes.

    coefficients ~ ParamGenerator(task text, samples, coefficient layout)     (a few thousand codes)
    network      = DeltaCodec.decode(coefficients, samples)                   (reference + P C Q^T, prototype head)

A generator folder holds the coefficient generator (a `ParamGenerator` folder) at its root and the codec in
`delta_codec/`. Candidates are decoded one at a time (best-of-k on the caller's validation data keeps only the best),
so memory stays near two networks whatever k is; a request whose networks would not fit `max_memory_bytes` is
refused before any work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..generation.generation_checks import GenerationError
from ..utils import accuracy
from .delta_codec import DeltaCodec

CODEC_SUBFOLDER = "delta_codec"


@dataclass
class DeltaGenerationResult:
    """`model`: the best network (its own class, weights loaded); `scores`: validation accuracy per candidate (None
    without validation); `coefficients`: each candidate's coefficient state_dict; `seconds`: sampling, decoding."""

    model: nn.Module
    scores: list[float | None]
    best_index: int
    coefficients: list[dict[str, torch.Tensor]]
    codes: torch.LongTensor
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class DeltaGenerator:
    """Generates networks of the codec's reference architecture for new instructions.

    Args:
        generator: the `ParamGenerator` of the coefficients.
        codec: the `DeltaCodec` (reference and bases).
        max_memory_bytes: refuse requests whose decoded networks (two held at once, float32) and code probabilities
            exceed this (None: no limit beyond the coefficient generator's own check).
    """

    def __init__(self, generator, codec: DeltaCodec, max_memory_bytes: int | None = None):
        self.generator, self.codec, self.max_memory_bytes = generator, codec, max_memory_bytes

    def network_params(self, num_classes: int) -> int:
        from ..research.architectures import ZooNet

        with torch.device("meta"):
            model = ZooNet(**self.codec.model_config(num_classes))
        return sum(p.numel() for p in model.parameters())

    def check_memory(self, num_classes: int) -> int:
        """Bytes two decoded networks take; `GenerationError` when over `max_memory_bytes`."""
        need = 2 * 4 * self.network_params(num_classes)
        if self.max_memory_bytes is not None and need > self.max_memory_bytes:
            raise GenerationError(f"A {num_classes}-class network of {self.network_params(num_classes):,} parameters "
                                  f"needs about {need / 2**20:.0f} MiB to decode (two float32 copies), over this "
                                  f"generator's max_memory_bytes={self.max_memory_bytes / 2**20:.0f} MiB; raise the "
                                  "limit or generate a smaller network.")
        return need

    @torch.no_grad()
    def generate(self, task_text: str, samples, num_candidates: int = 1, seed: int | None = None, validation=None,
                 **sampling) -> DeltaGenerationResult:
        """Generate `num_candidates` networks for the instruction and keep the best on `validation` (X, y).

        Args:
            task_text: the task description.
            samples: few labelled samples (X (n, 784), y in 0..k-1, every class present): the instruction, and the
                prototype head's reference.
            validation: the caller's validation data for best-of-k (never test data).
            **sampling: `do_sample`, `temperature`, `top_k`, `top_p`, `block_window`.
        """
        X, y = samples
        y = torch.as_tensor(y)
        num_classes = int(y.max()) + 1 if y.numel() else 0
        if num_classes < 2:
            raise GenerationError(f"samples must hold labels 0..k-1 of at least 2 classes, got labels "
                                  f"{sorted(set(y.tolist()))}.")
        self.check_memory(num_classes)
        layout = self.codec.layout(num_classes)
        start = time.perf_counter()
        condition = self.generator.encode(layout, task_text, (X, y))
        codes, coefficients = self.generator.sample(condition, layout, num_candidates, seed, **sampling)
        sampled = time.perf_counter()
        from ..research.architectures import ZooNet

        model = ZooNet(**self.codec.model_config(num_classes)).eval()
        scores: list[float | None] = [None] * len(coefficients)
        best, best_state = 0, None
        for i, coefs in enumerate(coefficients):
            state = self.codec.decode(coefs, (X, y))
            if validation is None:
                best_state = state
                break
            model.load_state_dict(state)
            scores[i] = accuracy(model, *validation)
            if best_state is None or scores[i] > scores[best]:
                best, best_state = i, state
        model.load_state_dict(best_state)
        return DeltaGenerationResult(model, scores, best, coefficients, codes,
                                     {"sample": sampled - start, "decode_and_load": time.perf_counter() - sampled})

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """The coefficient generator at `folder`, the codec in `folder/delta_codec`."""
        folder = Path(folder)
        self.generator.save_pretrained(folder)
        self.codec.save_pretrained(folder / CODEC_SUBFOLDER)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs) -> DeltaGenerator:
        from ..generation.generator import ParamGenerator

        folder = Path(folder)
        if not (folder / CODEC_SUBFOLDER).is_dir():
            raise GenerationError(f"{folder} is not a delta generator folder: no {CODEC_SUBFOLDER}/ (expected a "
                                  "ParamGenerator folder with the DeltaCodec in delta_codec/).")
        max_memory = kwargs.pop("max_memory_bytes", None)
        return cls(ParamGenerator.from_pretrained(folder, **kwargs), DeltaCodec.from_pretrained(
            folder / CODEC_SUBFOLDER), max_memory)
