"""Benchmark: how fast the prior writes a network, by codes per decoding step, batch and KV-cache kind.

    python examples/benchmark_prior_speed.py --json outputs/benchmark_prior_speed.json       # <= ~3 min on 2 CPU cores
    python examples/benchmark_prior_speed.py --quick --json /tmp/speed.json                 # seconds, for the tests
    python examples/benchmark_prior_speed.py --device cuda --max_steps 0 --json speed.json  # whole networks on a GPU
    python examples/benchmark_prior_speed.py --cold --caches dynamic --codes_per_step 1 --batches 8 --context 1280
        # the first generation of a fresh process (run once per cache)

Random priors (no training: speed only; hidden 256, 4 layers, context 512 by default) write a network of ~20k codes
(`--num_codes`; chunks of `--codes_per_chunk` codes) with `generate_codes` (block-wise: the network is longer than the
context, so every run continues blocks with a window), sampling with top-k, side by side for every G in
`--codes_per_step`, batch (`num_candidates`) in `--batches` and cache in `--caches` ("dynamic": transformers'
DynamicCache, which grows by `torch.cat` every step; "static": a StaticCache sized to the block, written in place).
A run stops after `--max_steps` decoding steps (a network of that many steps, still longer than a block); the time of
the whole network is then extrapolated from its steps/s (`network_seconds`, `extrapolated` = true). Before the timed
runs the C allocator is primed with cache-sized blocks (`prime_allocator`), so rows compare warm caches; `--cold`
leaves it fresh, as a one-shot `hf-paramgen generate` finds it.

Per row: steps/s, codes/s (= steps/s x G x batch), wall and CPU (process) ms per step (on shared cores the CPU time
is the steadier measure), the share of a step spent in the prior's forward and in the decoder (CPU only: timed by
forward hooks; the rest is `generate`'s loop: logits processors, sampling, bookkeeping), and `compute_floor_ratio`:
achieved FLOP/s (`hf_paramgen.research.evaluation.speed.compute_floor_ratio`, steps as its tokens) over the FLOP/s of
a square matmul of the hidden size on the same threads (the best of 5 measurements, taken once), where

    flops per step = 2 * (weights of the Linear layers: decoder, head of G*V outputs, condition injection)
                     + 4 * layers * (mean attended context) * hidden        (per network)
    flops per code = flops per step / G,  achieved FLOP/s = codes/s * flops per code = steps/s * batch * flops per step

(the static cache attends over its whole length, masked; only the attended context counts as useful work).
Seeded samples of the two caches are compared (`same_codes_as_other_cache`, on the row measured second).
Prints a table on stdout and writes the JSON (`--json`): {"settings": ..., "rows": [...]}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hf_paramgen import ParamLayout
from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
from hf_paramgen.models.modeling_param_prior import ParamPriorForCausalLM
from hf_paramgen.research.evaluation.speed import compute_floor_ratio, matmul_flops_per_second
from hf_paramgen.utils import atomic_write_json

NUM_COND = 4  # condition tokens of the (random) instruction
COLUMNS = ("G", "batch", "cache", "steps", "steps_per_s", "codes_per_s", "ms_per_step", "cpu_ms_per_step",
           "forward_share", "decoder_share", "network_seconds", "compute_floor_ratio", "same_codes_as_other_cache")


def make_prior(args, codes_per_step: int) -> ParamPriorForCausalLM:
    """A random prior of the benchmark's size writing `codes_per_step` codes per step."""
    torch.manual_seed(0)
    decoder = {"model_type": "llama", "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden,
               "num_hidden_layers": args.layers, "num_attention_heads": args.heads, "num_key_value_heads": args.heads}
    config = ParamPriorConfig(codebook_size=args.codebook_size, codes_per_chunk=args.codes_per_chunk,
                              codes_per_step=codes_per_step, chunk_size=args.chunk_size, condition_dim=32,
                              max_condition_tokens=NUM_COND, transformer=decoder,
                              max_position_embeddings=args.context, structure_embedding="factorised")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    return ParamPriorForCausalLM(config).to(args.device, dtype).eval()


def network(args, steps: int, codes_per_step: int) -> ParamLayout:
    """A layer of `steps * G / codes_per_chunk` rows of `chunk_size` weights: one chunk per row."""
    chunks = -(-steps * codes_per_step // args.codes_per_chunk)
    return ParamLayout.from_module(nn.Linear(args.chunk_size, chunks, bias=False))


def mean_context(capacity: int, total: int, window: int) -> float:
    """Mean attended positions (prefix + BOS + steps) over the generated steps of the block schedule of
    `generate_codes` (blocks of `capacity` steps keeping `window`)."""
    done, attended = 0, 0.0
    while done < total:
        w = min(window, done)
        new = min(capacity - w, total - done)
        attended += sum(NUM_COND + 1 + w + i for i in range(new))
        done += new
    return attended / total


class StepTimer:
    """Forward hooks timing the prior's forward and its decoder (seconds, summed); CPU only."""

    def __init__(self, prior: ParamPriorForCausalLM):
        self.seconds = {"forward": 0.0, "decoder": 0.0}
        self.handles = []
        for name, module in (("forward", prior), ("decoder", prior.decoder)):
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))
        self.started: dict[str, float] = {}

    def _start(self, name: str):
        return lambda *_: self.started.__setitem__(name, time.perf_counter())

    def _stop(self, name: str):
        def hook(*_):
            self.seconds[name] += time.perf_counter() - self.started[name]
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_run(prior, layout, args, batch: int, cache: str, **sampling) -> tuple[torch.Tensor, float, dict]:
    """(codes, wall seconds, {forward, decoder, cpu} seconds) of one `generate_codes` call."""
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, NUM_COND, 32, generator=g).to(args.device)
    timer = StepTimer(prior) if args.device == "cpu" else None
    if args.device != "cpu":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    codes = prior.generate_codes(cond, layout, num_candidates=batch, cache_implementation=cache, **sampling)
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    parts = {**(timer.seconds if timer else {}), "cpu": time.process_time() - cpu}
    if timer:
        timer.remove()
    return codes, seconds, parts


def matmul_params(prior: ParamPriorForCausalLM) -> int:
    """Weights of the matmuls one step runs: every Linear layer (decoder, head with G*V outputs, condition
    injection); embeddings are lookups."""
    return sum(m.weight.numel() for m in prior.modules() if isinstance(m, nn.Linear))


def matmul_peak(args) -> float:
    """The best of 5 `matmul_flops_per_second` of a hidden-size square matmul on `args.device` (one measurement
    swings several-fold on shared cores)."""
    return max(matmul_flops_per_second(max(args.hidden, 64), repeats=20, device=args.device) for _ in range(5))


def floor_ratio(args, steps_per_second: float, params: int, context: float, peak: float) -> dict:
    """`compute_floor_ratio` with steps as its tokens (flops per token = flops per step), its ratio taken over
    `peak` (`matmul_peak`) rather than its own single measurement."""
    out = compute_floor_ratio(steps_per_second, params, args.hidden, int(round(context)), args.layers)
    out.update(matmul_flops_per_second=peak, compute_floor_ratio=out["achieved_flops_per_second"] / peak)
    return out


def bench_one(args, codes_per_step: int, peak: float) -> list[dict]:
    """The rows of one G: a random prior writing the network with every batch and cache."""
    prior = make_prior(args, codes_per_step)
    total_steps = -(-args.num_codes // codes_per_step)
    steps = total_steps if not args.max_steps else min(total_steps, args.max_steps)
    layout = network(args, steps, codes_per_step)
    steps = layout.num_params // args.chunk_size * args.codes_per_chunk // codes_per_step
    capacity = args.context - NUM_COND - 1
    context = mean_context(capacity, steps, capacity // 2)
    params = matmul_params(prior)
    rows, reference = [], {}
    sampling = {"do_sample": True, "top_k": 50, "seed": 0}
    prior.generate_codes(None, network(args, 8, codes_per_step))  # warm-up (allocator, kernels)
    for batch in args.batches:
        for cache in args.caches:
            codes, seconds, parts = time_run(prior, layout, args, batch, cache, **sampling)
            key = (batch, cache)
            reference[key] = codes
            other = (batch, "static" if cache == "dynamic" else "dynamic")
            same = bool(torch.equal(codes, reference[other])) if other in reference else None
            steps_per_s = steps / seconds
            floor = floor_ratio(args, steps_per_s * batch, params, context, peak)
            rows.append({
                "G": codes_per_step, "batch": batch, "cache": cache, "steps": steps, "total_steps": total_steps,
                "steps_per_s": steps_per_s, "codes_per_s": steps_per_s * codes_per_step * batch,
                "ms_per_step": 1000 * seconds / steps, "cpu_ms_per_step": 1000 * parts["cpu"] / steps,
                "forward_share": parts["forward"] / seconds if "forward" in parts else None,
                "decoder_share": parts["decoder"] / seconds if "decoder" in parts else None,
                "network_seconds": total_steps / steps_per_s, "extrapolated": steps < total_steps,
                "compute_floor_ratio": floor["compute_floor_ratio"], "flops_per_step": floor["flops_per_token"],
                "flops_per_code": floor["flops_per_token"] / codes_per_step, "mean_context": context,
                "matmul_params": params, "same_codes_as_other_cache": same,
            })
            print(f"G={codes_per_step} batch={batch} {cache}: {steps_per_s:.0f} steps/s", file=sys.stderr, flush=True)
    return rows


def prime_allocator(args) -> None:
    """Run one long prefill and two steps per batch size with a dynamic cache, so that the C allocator has served
    cache-sized blocks before any timed run: otherwise the first run in a process pays page faults for every
    `torch.cat` of a growing cache (measured 2.5x slower per step at batch 8, context 1280), whichever cache it uses
    second. `--cold` skips this (the first `generate_codes` of a fresh process, as `hf-paramgen generate` runs)."""
    prior = make_prior(args, 1)
    length = args.context - NUM_COND - 3
    cond = torch.randn(1, NUM_COND, 32).to(args.device)
    structure = torch.zeros(1, length + 2, 10, dtype=torch.long, device=args.device)
    for batch in sorted(set(args.batches)):
        ids = torch.full((batch, length), prior.config.code_offset, device=args.device)
        prior.generate(input_ids=ids, condition_embeds=cond.expand(batch, -1, -1),
                       code_structure=structure.expand(batch, -1, -1), max_new_tokens=2, eos_token_id=None,
                       pad_token_id=prior.config.pad_token_id)


def format_table(rows: list[dict]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "-" if v is None else str(v)

    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    lines += [" | ".join(cell(r[c]) + ("*" if c == "network_seconds" and r["extrapolated"] else "") for c in COLUMNS)
              for r in rows]
    return "\n".join(lines) + "\n(* extrapolated from the measured steps/s)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="a tiny prior and network: seconds (tests)")
    parser.add_argument("--codes_per_step", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--caches", nargs="+", default=["dynamic", "static"], choices=["dynamic", "static"])
    parser.add_argument("--num_codes", type=int, default=20_480)
    parser.add_argument("--max_steps", type=int, default=768, help="decoding steps timed per run (0: all)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--codebook_size", type=int, default=256)
    parser.add_argument("--codes_per_chunk", type=int, default=16)
    parser.add_argument("--chunk_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: shared CPU cores make more threads far slower)")
    parser.add_argument("--cold", action="store_true",
                        help="do not prime the allocator: the first run pays for a fresh process's page faults")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.heads, args.context, args.codebook_size = 32, 2, 2, 64, 16
        args.num_codes, args.max_steps, args.codes_per_chunk, args.chunk_size = 384, 96, 4, 4
        args.codes_per_step = [g for g in args.codes_per_step if g <= 4] or [1]
        args.batches = [min(b, 2) for b in args.batches]
    bad = [g for g in args.codes_per_step if args.codes_per_chunk % g]
    if bad:
        parser.error(f"--codes_per_step {bad} must divide --codes_per_chunk {args.codes_per_chunk}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    peak = matmul_peak(args)
    if not args.cold:
        prime_allocator(args)
    rows = [row for g in args.codes_per_step for row in bench_one(args, g, peak)]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(torch=torch.__version__, threads=torch.get_num_threads(), seconds=time.perf_counter() - start,
                    load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, {"settings": settings, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
