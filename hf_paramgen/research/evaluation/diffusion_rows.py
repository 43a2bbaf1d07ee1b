"""The diffusion generator beside the autoregressive one, on the same rows of the same evaluation.

`add_diffusion_rows(result, generate_fn, zoo_dir)` takes an evaluation result (`evaluate_generator`, or a saved
`results.json`) and, for every (task, architecture) row of every split, generates k networks with the diffusion
generator (the same k, seed and best-of-k on the task's **validation** split as the autoregressive rows), then adds:

* per row: `diffusion_generated_zero_shot` (test accuracy), `diffusion_val_accuracies`, `diffusion_novelty`,
  `diffusion_seconds_per_network`;
* per split: `diffusion_generated_zero_shot` (mean), its `ci95`, `diffusion_fraction_of_trained`,
  `diffusion_novelty_ratio`, `diffusion_seconds_per_network`, and `autoregressive_seconds_per_network` when an
  autoregressive generate function is timed on the same rows (`ar_timing_rows` per split);
* top level: `diffusion_sampling_steps`, `diffusion_scheduler`, `diffusion_training_seconds`,
  `autoregressive_training_seconds` (from the result's stage times when known) and `diffusion_targets`.

`cli_evaluate_diffusion` (`python -m hf_paramgen.research.evaluation.diffusion_rows`, or `examples/train_diffusion.py
--evaluate`) runs it on a saved `results.json` and writes a merged copy: no baseline is recomputed. `hf-paramgen
evaluate --diffusion_generator DIR` runs it inside a full evaluation.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...utils import atomic_write_json
from ..zoo import evaluate_accuracy
from .baselines import BaselineCache
from .runner import _best_generated, ci95
from .zoo_index import EVAL_SPLITS, GenerateFn, ZooIndex

ERRORS = (ValueError, KeyError, NotImplementedError, RuntimeError)


class TimedGenerateFn:
    """A `GenerateFn` around a generator's `generate_for_task` that keeps the wall time of its last call."""

    def __init__(self, generator, **generate_kwargs):
        self.generator, self.generate_kwargs, self.last_seconds = generator, generate_kwargs, 0.0

    def __call__(self, task, architecture: str, num_candidates: int, seed: int):
        from ..generate import generate_for_task

        start = time.perf_counter()
        out = generate_for_task(self.generator, task, architecture, num_candidates, seed, select_on=None,
                                **self.generate_kwargs)
        self.last_seconds = time.perf_counter() - start
        return list(out.state_dicts)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _diffusion_row(row: dict, cache: BaselineCache, generate_fn: GenerateFn, k: int, seed: int) -> None:
    task, arch = cache.zoo.tasks[row["task_id"]], row["architecture"]
    notes = row.setdefault("notes", {})
    try:
        model, nets, validation = _best_generated(generate_fn, task, task, arch, k, seed)
    except ERRORS as err:
        row["diffusion_generated_zero_shot"] = None
        notes["diffusion_generated_zero_shot"] = f"diffusion generator cannot produce {arch}: {err}"
        return
    seconds = getattr(generate_fn, "last_seconds", None)
    row["diffusion_seconds_per_network"] = seconds / k if seconds else None
    row["diffusion_generated_zero_shot"] = evaluate_accuracy(model, task, "test")
    row["diffusion_val_accuracies"] = validation
    row["diffusion_novelty"] = cache.novelty(nets, arch, task)


def _time_autoregressive(rows: list[dict], cache: BaselineCache, ar_fn, k: int, seed: int) -> None:
    for row in rows:
        try:
            ar_fn(cache.zoo.tasks[row["task_id"]], row["architecture"], k, seed)
        except ERRORS:
            continue
        row["autoregressive_seconds_per_network"] = ar_fn.last_seconds / k


def summarise_diffusion(split: dict) -> None:
    """Per-split diffusion keys from its rows (see the module docstring)."""
    rows = split.get("rows", [])
    values = [r.get("diffusion_generated_zero_shot") for r in rows]
    split["diffusion_generated_zero_shot"] = _mean(values)
    split.setdefault("ci95", {})["diffusion_generated_zero_shot"] = ci95(values)
    paired = [r for r in rows if r.get("diffusion_generated_zero_shot") is not None]
    g, t = _mean([r["diffusion_generated_zero_shot"] for r in paired]), _mean([r.get("trained") for r in paired])
    split["diffusion_fraction_of_trained"] = g / t if g is not None and t else None
    split["diffusion_novelty_ratio"] = _mean([r["diffusion_novelty"]["novelty_ratio"] for r in paired
                                              if r.get("diffusion_novelty")])
    split["diffusion_seconds_per_network"] = _mean([r.get("diffusion_seconds_per_network") for r in rows])
    ar = _mean([r.get("autoregressive_seconds_per_network") for r in rows])
    if ar is not None:
        split["autoregressive_seconds_per_network"] = ar
    notes = {m: n for r in rows for m, n in r.get("notes", {}).items() if m.startswith("diffusion")}
    split.setdefault("notes", {}).update(notes)


def diffusion_targets(result: dict) -> list[dict]:
    """The issue's bars per split: the better family meets the generalisation target (`fraction_of_trained`); the
    diffusion generator beats retrieval + noise on novelty at equal or better accuracy; it samples a network no slower
    than the prior (where both were timed)."""
    from .report import TARGETS

    out = []
    for name in (s for s in EVAL_SPLITS if s in result):
        r = result[name]
        fraction = TARGETS.get(name, (None, ()))[0]
        best = max((v for v in (r.get("fraction_of_trained"), r.get("diffusion_fraction_of_trained"))
                    if v is not None), default=None)
        if fraction is not None:
            out.append({"split": name, "target": f"better family fraction_of_trained >= {fraction}", "value": best,
                        "bar": fraction, "met": None if best is None else best >= fraction})
        nov, bar = r.get("diffusion_novelty_ratio"), r.get("novelty_ratio_retrieval_noise")
        acc, acc_bar = r.get("diffusion_generated_zero_shot"), r.get("retrieval_noise")
        met = None if None in (nov, bar, acc, acc_bar) else (nov > bar and acc >= acc_bar)
        out.append({"split": name, "target": "diffusion novelty > retrieval_noise's at accuracy >= retrieval_noise",
                    "value": [nov, acc], "bar": [bar, acc_bar], "met": met})
        d, a = r.get("diffusion_seconds_per_network"), r.get("autoregressive_seconds_per_network")
        out.append({"split": name, "target": "diffusion seconds_per_network <= autoregressive", "value": d, "bar": a,
                    "met": None if d is None or a is None else d <= a})
    return out


def add_diffusion_rows(result: dict, generate_fn: GenerateFn, zoo_dir, *, k: int | None = None,
                       seed: int | None = None, sampling: dict | None = None, training_seconds: float | None = None,
                       ar_fn=None, ar_timing_rows: int = 0) -> dict:
    """Add the diffusion generator's keys to `result` in place (see the module docstring) and return it.

    Args:
        result: an evaluation result with per-split `rows` (task_id, architecture, trained, ...).
        generate_fn: the diffusion generator's `GenerateFn` (a `TimedGenerateFn` also gives seconds per network).
        zoo_dir: the zoo the result was computed on.
        k / seed: best-of-k and seed (default: the result's own settings, so both families get the same budget).
        sampling: `{"num_inference_steps", "scheduler"}` used (recorded).
        training_seconds: the diffusion generator's training wall time.
        ar_fn / ar_timing_rows: an autoregressive `TimedGenerateFn`, timed on the first rows of each split.
    """
    settings = result.get("settings", {})
    k, seed = k or settings.get("k", 4), settings.get("seed", 0) if seed is None else seed
    cache = BaselineCache(ZooIndex(zoo_dir), lambda task: np.zeros(1), seed)  # novelty only: no conditions needed
    jobs = [(name, row) for name in EVAL_SPLITS if name in result for row in result[name].get("rows", [])]
    for _, row in tqdm(jobs, desc="diffusion rows", unit="task"):
        _diffusion_row(row, cache, generate_fn, k, seed)
    for name in (s for s in EVAL_SPLITS if s in result):
        if ar_fn is not None and ar_timing_rows:
            _time_autoregressive(result[name].get("rows", [])[:ar_timing_rows], cache, ar_fn, k, seed)
        summarise_diffusion(result[name])
    stages = result.get("stage_seconds") or {}
    result.update(diffusion_sampling_steps=(sampling or {}).get("num_inference_steps"),
                  diffusion_scheduler=(sampling or {}).get("scheduler"), diffusion_training_seconds=training_seconds,
                  autoregressive_training_seconds=result.get("autoregressive_training_seconds", stages.get("prior")))
    result["diffusion_settings"] = {"k": k, "seed": seed, "selection": "best of k on the validation split, never test",
                                    **(sampling or {})}
    result["diffusion_targets"] = diffusion_targets(result)
    return result


def format_diffusion_table(result: dict) -> str:
    """Markdown: per split, both families' accuracy, novelty and seconds per network."""
    lines = ["| split | autoregressive | diffusion | trained | novelty AR | novelty diffusion | novelty "
             "retrieval+noise | s/net AR | s/net diffusion |", "|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    for name in (s for s in EVAL_SPLITS if s in result):
        r = result[name]
        lines.append(f"| {name} | {f(r.get('generated_zero_shot'))} | {f(r.get('diffusion_generated_zero_shot'))} | "
                     f"{f(r.get('trained'))} | {f(r.get('novelty_ratio'))} | {f(r.get('diffusion_novelty_ratio'))} | "
                     f"{f(r.get('novelty_ratio_retrieval_noise'))} | "
                     f"{f(r.get('autoregressive_seconds_per_network'))} | "
                     f"{f(r.get('diffusion_seconds_per_network'))} |")
    return "\n".join(lines)


def diffusion_sampling(generator, num_inference_steps: int | None = None, scheduler: str | None = None) -> dict:
    """The sampling settings a diffusion generator will use: those given, else the pipeline's defaults."""
    from ...diffusion.schedulers import default_sampler

    config = generator.pipeline.config
    return {"num_inference_steps": num_inference_steps or config.default_num_inference_steps,
            "scheduler": scheduler or config.default_scheduler or default_sampler(generator.pipeline.scheduler)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hf_paramgen.research.evaluation.diffusion_rows",
                                description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="an evaluation results.json (read only)")
    p.add_argument("--diffusion_generator", required=True, help="diffusion generator folder or repo id")
    p.add_argument("--json", required=True, help="the merged copy to write (never the --results file itself)")
    p.add_argument("--zoo_dir", default=None, help="default: <results' output_dir>/zoo")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
    p.add_argument("--scheduler", default=None, help="ddim, ddpm, dpm_solver or flow_match_euler (default: the "
                                                     "pipeline's)")
    p.add_argument("--ar_generator", default=None, help="autoregressive generator to time on the same rows")
    p.add_argument("--ar_timing_rows", type=int, default=2, help="rows per split the autoregressive one is timed on")
    p.add_argument("--training_seconds", type=float, default=None,
                   help="diffusion training wall time (default: what train-diffusion recorded)")
    p.add_argument("--autoregressive_training_seconds", type=float, default=None,
                   help="the prior's training wall time (default: the results' stage_seconds['prior'])")
    return p


def cli_evaluate_diffusion(argv: list[str]) -> int:
    """Add the diffusion rows to a saved evaluation and write the merged copy (stdout: the comparison table)."""
    from ...diffusion.training import training_seconds
    from ...generation.generator_loading import load_generator

    args = _parser().parse_args(argv)
    if Path(args.json).resolve() == Path(args.results).resolve():
        raise SystemExit("evaluate-diffusion: error: --json must differ from --results (a merged copy "
                         "is written; the original stays as it is).")
    torch.set_num_threads(1)
    result = copy.deepcopy(json.loads(Path(args.results).read_text()))
    zoo_dir = args.zoo_dir or str(Path(result.get("output_dir", Path(args.results).parent)) / "zoo")
    generator = load_generator(args.diffusion_generator)
    sampling = diffusion_sampling(generator, args.num_inference_steps, args.scheduler)
    ar_fn = None
    if args.ar_generator:
        gen_settings = result.get("settings", {}).get("generation", {})
        ar_fn = TimedGenerateFn(load_generator(args.ar_generator), **gen_settings)
    if args.autoregressive_training_seconds is not None:
        result["autoregressive_training_seconds"] = args.autoregressive_training_seconds
    seconds = args.training_seconds
    if seconds is None and Path(args.diffusion_generator).is_dir():
        seconds = training_seconds(args.diffusion_generator)
    add_diffusion_rows(result, TimedGenerateFn(generator, **sampling), zoo_dir, sampling=sampling,
                       training_seconds=seconds, ar_fn=ar_fn, ar_timing_rows=args.ar_timing_rows)
    result["diffusion_command"] = "python -m hf_paramgen.research.evaluation.diffusion_rows " + " ".join(argv)
    atomic_write_json(Path(args.json), result, indent=1)
    print(format_diffusion_table(result))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli_evaluate_diffusion(sys.argv[1:]))
