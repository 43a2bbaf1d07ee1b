"""`hf-paramgen demo`: the README's main job, end to end on an embedded default.

zoo (480 ordered 4-class MNIST tasks x cnn-mnist, one shared initialisation) -> weight corpus ->
ParamTokenizer -> prior (the whole 1,138-code network in one context) -> generation for held-out
tasks (mean decoding, best of k on validation) -> a table (generated vs random init vs retrieval vs
ridge vs trained) and a PNG. Every stage writes into `--output_dir` and is skipped when its output is already there, so
a second run reuses finished stages (and a killed run resumes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..utils import atomic_write_json


def _stage(name: str, done: bool) -> bool:
    print(f"\n=== {name}: {'reusing finished output' if done else 'running'} ===", flush=True)
    return not done


def run_demo(output_dir: str | Path, tokenizer_steps: int = 1500, prior_steps: int = 1500,
             stage_seconds: int = 150, num_tasks: int = 4, k: int = 4, prior_seconds: int = 300) -> dict:
    """Run (or resume) the whole chain; returns the evaluation summary written to `results.json`."""
    from ..data.corpus import build_corpus
    from .zoo import build_zoo

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    zoo_dir, corpus_dir = out / "zoo", out / "corpus"
    tok_dir, gen_dir = out / "param_tokenizer", out / "generator"
    if _stage("zoo", (zoo_dir / "manifest.json").exists()):
        timed("zoo", build_zoo, zoo_dir, preset="demo", num_workers=2)
    if _stage("corpus", (corpus_dir / "corpus_config.json").exists()):
        timed("corpus", build_corpus, [str(zoo_dir)], corpus_dir, chunk_size=64)
    if _stage("param_tokenizer", (tok_dir / "config.json").exists()):
        from ..training.tokenizer import cli_train_tokenizer

        argv = ["--corpus", str(corpus_dir), "--output_dir", str(tok_dir), "--max_steps", str(tokenizer_steps),
                "--max_time_s", str(stage_seconds)]
        timed("param_tokenizer", cli_train_tokenizer, argv)
    if _stage("prior", (gen_dir / "config.json").exists()):
        from ..training.prior import cli_train_prior

        argv = ["--corpus", str(corpus_dir), "--param_tokenizer", str(tok_dir), "--output_dir", str(gen_dir),
                "--sample_datasets", "mnist", "--max_steps", str(prior_steps), "--max_time_s", str(prior_seconds),
                "--context", "1184", "--batch_size", "8", "--num_layers", "3",
                "--structure_embedding", "tables",  # one architecture: the A/B-tested tables (README)
                "--lr", "2e-3", "--warmup_steps", "50",
                "--eval_every", "50", "--log_every", "25"]
        timed("prior", cli_train_prior, argv)
    results_path = out / "results.json"
    if _stage("evaluation", results_path.exists()):
        from .evaluation import cli_evaluate

        argv = ["--generator", str(gen_dir), "--zoo_dir", str(zoo_dir), "--json", str(results_path),
                "--png", str(out / "finetune_curves.png"), "--architectures", "cnn-mnist",
                "--heldout_architectures", "--num_tasks", str(num_tasks), "--k", str(k)]
        timed("evaluation", cli_evaluate, argv)
    results = json.loads(results_path.read_text())
    results["stage_seconds"] = {**results.get("stage_seconds", {}), **timings}
    atomic_write_json(results_path, results)
    return results


def cli_demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hf-paramgen demo", description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="outputs/demo")
    p.add_argument("--tokenizer_steps", type=int, default=1500)
    p.add_argument("--prior_steps", type=int, default=1500)
    p.add_argument("--stage_seconds", type=int, default=150, help="time cap of the ParamTokenizer's training")
    p.add_argument("--prior_seconds", type=int, default=300, help="time cap of the prior's training")
    p.add_argument("--num_tasks", type=int, default=4, help="held-out tasks evaluated")
    p.add_argument("--k", type=int, default=4, help="candidates generated per instruction (best of k on validation)")
    args = p.parse_args(argv)
    for name in ("tokenizer_steps", "prior_steps", "stage_seconds", "prior_seconds", "num_tasks", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        p.error(f"--output_dir {args.output_dir} is a file; expected a folder (new, or a demo run to resume).")
    start = time.perf_counter()
    results = run_demo(args.output_dir, args.tokenizer_steps, args.prior_steps, args.stage_seconds, args.num_tasks,
                       args.k, args.prior_seconds)
    print(f"\nresults: {Path(args.output_dir) / 'results.json'}  (wall {time.perf_counter() - start:.0f} s)")
    from .evaluation import format_table

    splits = tuple(s for s in ("seen_tasks", "heldout_tasks", "heldout_classes", "heldout_dataset") if s in results)
    print(format_table(results, splits))
    return 0
