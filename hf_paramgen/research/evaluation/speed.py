"""Generation speed: a timed `generate_fn` around a `ParamGenerator`, batched throughput, and the ratio of achieved
to matmul FLOP/s."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ...layout.param_layout import ParamLayout
from ..architectures import build_model
from ..tasks import Task, few_shot_samples
from .zoo_index import StateDict


def matmul_flops_per_second(size: int, repeats: int = 10, device: str = "cpu") -> float:
    """Measured FLOP/s of a (size x size) @ (size x size) `torch.mm` on this machine (2 * size^3 per product)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def compute_floor_ratio(tokens_per_second: float, prior_params: int, hidden_size: int, context: int = 0,
                        num_layers: int = 0) -> dict:
    """Achieved generation FLOP/s (2 * params per token + 4 * layers * context * hidden for attention) over the
    measured matmul FLOP/s of a `hidden_size` square `torch.mm` (same process, same threads)."""
    flops_per_token = 2 * prior_params + 4 * num_layers * context * hidden_size
    peak = matmul_flops_per_second(max(hidden_size, 64))
    achieved = tokens_per_second * flops_per_token
    return {"compute_floor_ratio": achieved / peak, "achieved_flops_per_second": achieved,
            "matmul_flops_per_second": peak, "flops_per_token": flops_per_token}


def batch_throughput(generator, task: Task, architecture: str, batch: int, seed: int = 0) -> dict:
    """Codes per second of one `generate_codes` call sampling `batch` networks for `task` (prior only, no decoding)."""
    layout = ParamLayout.from_module(build_model(architecture, num_classes=task.num_classes))
    cond = generator.encode(layout, task.task_text, few_shot_samples(task, per_class=5, split="train"))
    tok = generator.param_tokenizer.config
    start = time.perf_counter()
    codes = generator.prior.generate_codes(**cond, layout=layout, chunk_size=tok.chunk_size,
                                           aggregation=tok.aggregation, seed=seed, do_sample=True, top_k=0,
                                           num_candidates=batch)
    seconds = time.perf_counter() - start
    return {"batch": batch, "tokens": int(codes.numel()), "seconds": seconds,
            "tokens_per_second": codes.numel() / seconds, "task": task.task_id, "architecture": architecture}


class GenerationTimer:
    """Wraps a generator call `fn(task, arch, num_candidates, seed) -> (state_dicts, num_tokens)` as a
    `generate_fn` that records wall time and generated tokens (codes) for `tokens_per_second`."""

    def __init__(self, fn: Callable[[Task, str, int, int], tuple[list[StateDict], int]]):
        self.fn, self.seconds, self.tokens, self.tokens_per_sample = fn, 0.0, 0, 0

    def __call__(self, task: Task, architecture: str, num_candidates: int, seed: int) -> list[StateDict]:
        start = time.perf_counter()
        state_dicts, tokens = self.fn(task, architecture, num_candidates, seed)
        self.seconds += time.perf_counter() - start
        self.tokens += int(tokens)
        return state_dicts

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None


def generator_fn(generator, **generate_kwargs) -> GenerationTimer:
    """A timed `generate_fn` around a `ParamGenerator`: `generate_for_task(task, architecture, num_candidates, seed,
    select_on=None, **generate_kwargs)` (selection is done by the evaluation, on the validation split;
    `generate_kwargs`: decoding and sampling options); tokens = generated codes (k x N x T)."""

    def call(task: Task, architecture: str, num_candidates: int, seed: int) -> tuple[list[StateDict], int]:
        from ..generate import generate_for_task

        out = generate_for_task(generator, task, architecture, num_candidates, seed, select_on=None, **generate_kwargs)
        codes = torch.as_tensor(out.codes)  # (k, N, T)
        timer.tokens_per_sample = int(codes[0].numel()) if codes.ndim else 0
        return list(out.state_dicts), int(codes.numel())

    timer = GenerationTimer(call)
    return timer


def prior_size(generator) -> tuple[int, int, int, int]:
    """(parameters, hidden size, layers, context length) of the generator's prior (`generator.prior`); zeros if
    unknown."""
    prior = getattr(generator, "prior", None)
    if not isinstance(prior, torch.nn.Module):
        return 0, 0, 0, 0
    config = getattr(prior, "config", None)
    decoder = getattr(config, "decoder_config", None)
    decoder = decoder() if callable(decoder) else decoder
    if getattr(decoder, "hidden_size", None) is None:  # a decoder sub-config under another name, else the config
        decoder = next((c for c in (getattr(config, n, None) for n in ("transformer", "text_config"))
                        if getattr(c, "hidden_size", None) is not None), config)
    return (sum(p.numel() for p in prior.parameters()), int(getattr(decoder, "hidden_size", 0) or 0),
            int(getattr(decoder, "num_hidden_layers", 0) or 0), int(getattr(config, "max_position_embeddings", 0) or 0))
