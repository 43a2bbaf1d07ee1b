"""`examples/benchmark_generation.py` with no generator: build (or reuse) everything the generalisation benchmark
needs under one folder, then evaluate every split.

zoo (`--preset generalise`: six training architectures — MLPs and CNNs of several widths and depths, heads of 2-8
classes, nested shared initialisation — and six held-out architectures; digits 8 and 9 in no training task;
horizontally flipped digits as an unseen data family) -> weight corpus -> ParamTokenizer -> **one** prior trained on
the six training architectures (factorised structure: no table caps a tensor's size) -> evaluation of every split
(`seen_tasks`, `heldout_tasks`, `heldout_classes`, `heldout_dataset`, `heldout_architectures`) against every baseline.

Each stage writes into `--output_dir` and is skipped when its output is there, so a second run reuses finished stages
and a killed run resumes (the zoo per checkpoint, the trainings from their last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..utils import atomic_write_json

DEFAULT_OUTPUT_DIR = "outputs/benchmark_generation"
# the diffusion generator of the full run: the prior's wall-time budget, a denoiser of the prior's width and depth
DIFFUSION_FULL = {"diffusion_steps": 20000, "diffusion_seconds": 2100, "diffusion_hidden_size": 128,
                  "diffusion_num_layers": 4, "diffusion_batch_size": 16, "diffusion_sampling_steps": 50}
# settings of the full run (the note and README quote them) and of `--small` (tests: seconds, not minutes)
FULL = {"preset": "generalise", "tokenizer_steps": 3000, "tokenizer_seconds": 300, "prior_steps": 6000,
        "prior_seconds": 2100, "num_tasks": 4, "k": 4, "finetune_steps": 20, "max_steps": 100,
        "text_encoder": None, "hidden_size": 128, "num_layers": 4, "tokenizer_batch_size": None,
        "prior_batch_size": 8, **DIFFUSION_FULL}
SMALL = {"preset": "tiny-generalise", "tokenizer_steps": 20, "tokenizer_seconds": 60, "prior_steps": 10,
         "prior_seconds": 60, "num_tasks": 1, "k": 2, "finetune_steps": 5, "max_steps": 10,
         "text_encoder": "hashing:384", "hidden_size": 32, "num_layers": 1, "tokenizer_batch_size": 8,
         "prior_batch_size": 2, "diffusion_steps": 10, "diffusion_seconds": 60, "diffusion_hidden_size": 32,
         "diffusion_num_layers": 1, "diffusion_batch_size": 2, "diffusion_sampling_steps": 5}


def _stage(name: str, done: bool) -> bool:
    print(f"\n=== {name}: {'reusing finished output' if done else 'running'} ===", flush=True)
    return not done


def stage_timer(stage_file: Path):
    """`timed(name, fn, *args, **kwargs)`: run one benchmark stage and record its wall time under `name` in
    `stage_file` (kept across resumed runs; written atomically); returns what `fn` returns."""

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        stages = json.loads(stage_file.read_text()) if stage_file.is_file() else {}
        atomic_write_json(stage_file, {**stages, name: round(time.perf_counter() - start, 1)})
        return result

    return timed


def train_tokenizer_stage(corpus_dir: Path, tok_dir: Path, cfg: dict) -> None:
    """`train-tokenizer` on a coefficient corpus with a benchmark's settings (`tokenizer_steps`, `tokenizer_seconds`,
    `tok_chunk_size`, `tok_latents`, `tokenizer_batch_size`; 2-dimensional codebook vectors)."""
    from ..training.tokenizer import cli_train_tokenizer

    argv = ["--corpus", str(corpus_dir), "--output_dir", str(tok_dir), "--max_steps", str(cfg["tokenizer_steps"]),
            "--max_time_s", str(cfg["tokenizer_seconds"]), "--chunk_size", str(cfg["tok_chunk_size"]),
            "--latents_per_chunk", str(cfg["tok_latents"]), "--codebook_dim", "2"]
    if cfg["tokenizer_batch_size"]:
        argv += ["--batch_size", str(cfg["tokenizer_batch_size"])]
    cli_train_tokenizer(argv)


def zoo_architectures(zoo_dir: str | Path) -> tuple[list[str], list[str]]:
    """(training architectures, held-out architectures) of a built zoo, from its manifest."""
    from .zoo import load_manifest

    manifest = load_manifest(zoo_dir)
    held = list(manifest["heldout_architectures"])
    return [a for a in manifest["architectures"] if a not in held], held


def run_benchmark(output_dir: str | Path = DEFAULT_OUTPUT_DIR, json_path: str | Path | None = None,
                  settings: dict | None = None, num_workers: int = 2) -> dict:
    """Run (or resume) zoo -> corpus -> ParamTokenizer -> prior -> evaluation; returns the evaluation results.

    Args:
        output_dir: where every stage writes (`zoo/`, `corpus/`, `param_tokenizer/`, `generator/`).
        json_path: the results JSON (default `<output_dir>/results.json`); its PNG lies beside it.
        settings: `FULL` (default) or `SMALL`, or a dict overriding some of `FULL`'s keys.
        num_workers: zoo training processes.
    """
    from ..data.corpus import build_corpus
    from .zoo import build_zoo

    cfg = {**FULL, **(settings or {})}
    unknown = set(cfg) - set(FULL)
    if unknown:
        raise ValueError(f"Unknown benchmark settings {sorted(unknown)}; expected keys of {sorted(FULL)}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(json_path) if json_path else out / "results.json"
    zoo_dir, corpus_dir, tok_dir, gen_dir = out / "zoo", out / "corpus", out / "param_tokenizer", out / "generator"
    stage_file = out / "stage_seconds.json"  # each finished stage's wall time, kept across resumed runs
    timed = stage_timer(stage_file)

    if _stage(f"zoo ({cfg['preset']})", (zoo_dir / "manifest.json").exists()):
        timed("zoo", build_zoo, zoo_dir, preset=cfg["preset"], num_workers=num_workers)
    trained, held = zoo_architectures(zoo_dir)
    if _stage("corpus", (corpus_dir / "corpus_config.json").exists()):
        timed("corpus", build_corpus, [str(zoo_dir)], corpus_dir, chunk_size=64)
    if _stage("param_tokenizer", (tok_dir / "config.json").exists()):
        from ..training.tokenizer import cli_train_tokenizer

        argv = ["--corpus", str(corpus_dir), "--output_dir", str(tok_dir), "--max_steps", str(cfg["tokenizer_steps"]),
                "--max_time_s", str(cfg["tokenizer_seconds"])]
        if cfg["tokenizer_batch_size"]:
            argv += ["--batch_size", str(cfg["tokenizer_batch_size"])]
        timed("param_tokenizer", cli_train_tokenizer, argv)
    if _stage(f"prior ({len(trained)} architectures)", (gen_dir / "config.json").exists()):
        from ..training.prior import cli_train_prior

        argv = ["--corpus", str(corpus_dir), "--param_tokenizer", str(tok_dir), "--output_dir", str(gen_dir),
                "--architectures", *trained, "--sample_datasets", "mnist", "--structure_embedding", "factorised",
                "--max_steps", str(cfg["prior_steps"]), "--max_time_s", str(cfg["prior_seconds"]),
                "--context", "1184", "--batch_size", str(cfg["prior_batch_size"]),
                "--hidden_size", str(cfg["hidden_size"]),
                "--num_layers", str(cfg["num_layers"]), "--lr", "2e-3", "--warmup_steps", "50",
                "--eval_every", "100", "--log_every", "50", "--save_every", "200"]
        if cfg["text_encoder"]:
            argv += ["--text_encoder", cfg["text_encoder"]]
        timed("prior", cli_train_prior, argv)
    diff_dir = out / "diffusion_generator"
    if _stage(f"diffusion generator ({len(trained)} architectures)", (diff_dir / "model_index.json").exists()):
        timed("diffusion", train_benchmark_diffusion, out, trained, cfg)
    from .evaluation import cli_evaluate

    argv = ["--generator", str(gen_dir), "--zoo_dir", str(zoo_dir), "--json", str(json_path),
            "--architectures", *trained, "--heldout_architectures", *held, "--num_tasks", str(cfg["num_tasks"]),
            "--num_classes", "0", "--k", str(cfg["k"]), "--finetune_steps", str(cfg["finetune_steps"]),
            "--max_steps", str(cfg["max_steps"]), "--throughput_batch", "8",
            "--diffusion_generator", str(diff_dir), "--diffusion_steps", str(cfg["diffusion_sampling_steps"])]
    if cfg["text_encoder"]:
        argv += ["--hashing_conditions"]
    timed("evaluation", cli_evaluate, argv)
    results = json.loads(json_path.read_text())
    stages = json.loads(stage_file.read_text())
    results.update(stage_seconds=stages, benchmark_settings=cfg, output_dir=str(out),
                   autoregressive_training_seconds=stages.get("prior"),
                   diffusion_training_seconds=results.get("diffusion_training_seconds") or stages.get("diffusion"))
    atomic_write_json(json_path, results, indent=1)
    return results


def train_benchmark_diffusion(output_dir: str | Path, architectures: list[str], settings: dict | None = None,
                              max_time_s: float | None = None) -> int:
    """Train (or resume) the benchmark's diffusion generator `<output_dir>/diffusion_generator` on its corpus, with
    the prior's sample encoders, text encoder and cached conditions (`--reference_generator`)."""
    from ..diffusion.cli import cli_train_diffusion

    cfg, out = {**FULL, **(settings or {})}, Path(output_dir)
    argv = ["--corpus", str(out / "corpus"), "--output_dir", str(out / "diffusion_generator"),
            "--reference_generator", str(out / "generator"), "--architectures", *architectures,
            "--sample_datasets", "mnist", "--max_steps", str(cfg["diffusion_steps"]),
            "--max_time_s", str(max_time_s or cfg["diffusion_seconds"]),
            "--batch_size", str(cfg["diffusion_batch_size"]),
            "--hidden_size", str(cfg["diffusion_hidden_size"]), "--num_layers", str(cfg["diffusion_num_layers"]),
            "--num_heads", "2" if cfg["diffusion_hidden_size"] < 64 else "4",
            "--num_inference_steps", str(cfg["diffusion_sampling_steps"]), "--lr", "1e-3", "--warmup_steps", "50",
            "--eval_every", "100", "--log_every", "50", "--save_every", "200"]
    return cli_train_diffusion(argv)


def cli_benchmark(argv: list[str]) -> int:
    """`python examples/benchmark_generation.py [--json out.json] [--output_dir DIR] [--small]`."""
    p = argparse.ArgumentParser(prog="benchmark_generation.py", description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="results JSON (default: <output_dir>/results.json)")
    p.add_argument("--output_dir", default=None, help=f"stage folder (default {DEFAULT_OUTPUT_DIR}; "
                                                      f"{DEFAULT_OUTPUT_DIR}-small with --small)")
    p.add_argument("--small", action="store_true", help="tiny zoo, hashing text encoder, few steps (tests)")
    p.add_argument("--num_workers", type=int, default=2, help="zoo training processes")
    args = p.parse_args(argv)
    output_dir = args.output_dir or (DEFAULT_OUTPUT_DIR + "-small" if args.small else DEFAULT_OUTPUT_DIR)
    start = time.perf_counter()
    run_benchmark(output_dir, args.json, SMALL if args.small else None, args.num_workers)
    print(f"wall {time.perf_counter() - start:.0f} s")
    return 0
