"""`examples/benchmark_scale.py`: build (or reuse) everything the scale benchmark needs under one folder, then measure.

    fine-tune zoo (base of 11.2M parameters trained here on MNIST-5k digits 0-7; >= 200 real full fine-tunes, stored
    as float16 deltas) -> DeltaCodec fitted on the training fine-tunes -> coefficient zoo -> corpus ->
    ParamTokenizer -> prior (several codes per decoding step) -> DeltaGenerator -> evaluation:
    codec fidelity on unseen fine-tunes, generated vs fine-tuned / base-only / retrieval on held-out tasks and
    held-out classes, and one whole network generated, saved and reloaded in a fresh process (time, peak RSS).

Each stage writes into `--output_dir` and is skipped when its output is there (a killed run resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import shutil
import time
from pathlib import Path

from ..research.benchmark import _stage, stage_timer, train_tokenizer_stage
from ..utils import atomic_write_json

DEFAULT_OUTPUT_DIR = "outputs/scale"
FULL = {"preset": "full", "rank": 64, "head_rank": 32, "tok_chunk_size": 16, "tok_latents": 8, "tokenizer_steps": 4000,
        "tokenizer_seconds": 420, "codes_per_step": 8, "prior_steps": 4000, "prior_seconds": 1200, "context": 1024,
        "hidden_size": 192, "num_layers": 4, "prior_batch_size": 8, "num_tasks": 24, "k": 4, "text_encoder": None,
        "tokenizer_batch_size": None}
SMALL = {**FULL, "preset": "tiny", "rank": 8, "head_rank": 8, "tokenizer_steps": 20, "tokenizer_seconds": 60,
         "prior_steps": 10, "prior_seconds": 60, "context": 256, "hidden_size": 32, "num_layers": 1,
         "prior_batch_size": 2, "num_tasks": 2, "k": 2, "text_encoder": "hashing:384", "tokenizer_batch_size": 8}
TARGETS = {"largest_generated_params": (">=", 10_000_000), "codes_per_param": ("<=", 1 / 32),
           "heldout_mean_accuracy_drop_pp": ("<=", 1.0), "heldout_worst_accuracy_drop_pp": ("<=", 3.0),
           "seconds_per_network": ("<=", 60.0), "params_per_second": (">=", 170_000),
           "compute_floor_ratio": (">=", 0.3), "peak_rss_mb": ("<=", 4096)}


def _one_network_child(queue, *args):
    from .evaluation import one_network

    try:
        queue.put(one_network(*args))
    except BaseException as err:  # noqa: BLE001  (reported to the parent, which raises)
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_scale_benchmark(output_dir: str | Path = DEFAULT_OUTPUT_DIR, json_path: str | Path | None = None,
                        settings: dict | None = None, num_workers: int = 2) -> dict:
    """Run (or resume) every stage; returns the results (also written to `json_path`)."""
    from ..data.corpus import build_corpus
    from .coefficient_zoo import COEFFICIENT_ARCHITECTURE, fit_codec, write_coefficient_zoo
    from .finetune_zoo import build_finetune_zoo

    cfg = {**FULL, **(settings or {})}
    unknown = set(cfg) - set(FULL)
    if unknown:
        raise ValueError(f"Unknown scale benchmark settings {sorted(unknown)}; expected keys of {sorted(FULL)}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(json_path) if json_path else out / "results.json"
    zoo, codec_dir, coef_dir = out / "zoo", out / "delta_codec", out / "coefficients"
    corpus_dir, tok_dir, gen_dir = out / "corpus", out / "param_tokenizer", out / "generator"
    stage_file = out / "stage_seconds.json"
    timed = stage_timer(stage_file)

    if _stage(f"fine-tune zoo ({cfg['preset']})", (zoo / "manifest.json").exists()):
        timed("zoo", build_finetune_zoo, zoo, cfg["preset"], num_workers)
    if _stage("delta codec", (codec_dir / "delta_codec.json").exists()):
        timed("codec", fit_codec, zoo, codec_dir, cfg["rank"], cfg["head_rank"])
    codec = fit_codec(zoo, codec_dir, cfg["rank"], cfg["head_rank"])
    if _stage("coefficient zoo", (coef_dir / "manifest.json").exists()):
        timed("coefficients", write_coefficient_zoo, zoo, codec, coef_dir)
    if _stage("corpus", (corpus_dir / "corpus_config.json").exists()):
        timed("corpus", build_corpus, [str(coef_dir)], corpus_dir, chunk_size=64)
    if _stage("param_tokenizer", (tok_dir / "config.json").exists()):
        timed("param_tokenizer", train_tokenizer_stage, corpus_dir, tok_dir, cfg)
    if _stage("prior", (gen_dir / "config.json").exists()):
        from ..training.prior import cli_train_prior

        argv = ["--corpus", str(corpus_dir), "--param_tokenizer", str(tok_dir), "--output_dir", str(gen_dir),
                "--architectures", COEFFICIENT_ARCHITECTURE, "--sample_datasets", "mnist",
                "--structure_embedding", "factorised", "--codes_per_step", str(cfg["codes_per_step"]),
                "--max_steps", str(cfg["prior_steps"]), "--max_time_s", str(cfg["prior_seconds"]),
                "--context", str(cfg["context"]), "--batch_size", str(cfg["prior_batch_size"]),
                "--hidden_size", str(cfg["hidden_size"]), "--num_layers", str(cfg["num_layers"]), "--lr", "2e-3",
                "--warmup_steps", "50", "--eval_every", "100", "--log_every", "50", "--save_every", "200"]
        if cfg["text_encoder"]:
            argv += ["--text_encoder", cfg["text_encoder"]]
        timed("prior", cli_train_prior, argv)
    if not (gen_dir / "delta_codec").is_dir():
        shutil.copytree(codec_dir, gen_dir / "delta_codec")
    results = timed("evaluation", evaluate, gen_dir, zoo, out, cfg)
    results.update(stage_seconds=json.loads(stage_file.read_text()), benchmark_settings=cfg, output_dir=str(out),
                   zoo=_zoo_summary(zoo))
    atomic_write_json(json_path, results, indent=1)
    print_table(results)
    return results


def evaluate(gen_dir: Path, zoo: Path, out: Path, cfg: dict) -> dict:
    from .delta_generator import DeltaGenerator
    from .evaluation import codec_fidelity, evaluate_splits

    ctx = mp.get_context("spawn")  # one network, generated in a fresh process: its peak RSS is generation's own
    queue = ctx.Queue()
    child = ctx.Process(target=_one_network_child, args=(queue, str(gen_dir), str(zoo), str(out / "generated_network"),
                                                        cfg["codes_per_step"]))
    child.start()
    speed = queue.get()
    child.join()
    if "error" in speed:
        raise RuntimeError(f"Generating one network failed: {speed['error']}")
    generator = DeltaGenerator.from_pretrained(gen_dir)
    tok = generator.generator.param_tokenizer.config
    results = {**speed, **codec_fidelity(generator, zoo)}
    results["codes_per_param"] = speed["codes_per_network"] / speed["largest_generated_params"]
    results["bits_per_param"] = results["codes_per_param"] * math.log2(tok.codebook_size)
    results["codes_per_step"] = cfg["codes_per_step"]
    results.update(evaluate_splits(generator, zoo, cfg["num_tasks"], cfg["k"]))
    results["targets"] = check_targets(results)
    return results


def check_targets(results: dict) -> list[dict]:
    rows = []
    for key, (op, bar) in TARGETS.items():
        value = results.get(key)
        met = None if value is None else (value >= bar if op == ">=" else value <= bar)
        rows.append({"target": key, "value": value, "bar": f"{op} {bar:g}", "met": met})
    for split in ("heldout_tasks", "heldout_classes"):
        s = results.get(split) or {}
        if s:
            met = s["generated_zero_shot"] >= 0.9 * s["finetuned"] and s["generated_zero_shot"] > max(
                s["retrieval"], s["base_only"])
            rows.append({"target": f"{split}: generated >= 0.9 x finetuned, above retrieval and base_only",
                         "value": round(s["generated_over_finetuned"], 3), "bar": ">= 0.9 and above baselines",
                         "met": bool(met)})
    return rows


def _zoo_summary(zoo: Path) -> dict:
    manifest = json.loads((zoo / "manifest.json").read_text())
    return {k: manifest[k] for k in ("base", "num_finetunes", "num_per_split", "disk_bytes", "build_seconds",
                                     "finetune_recipe", "storage")}


def print_table(results: dict) -> None:
    keys = ["largest_generated_params", "codes_per_network", "codes_per_param", "bits_per_param",
            "heldout_mean_accuracy_drop_pp", "heldout_worst_accuracy_drop_pp", "seconds_per_network",
            "params_per_second", "compute_floor_ratio", "peak_rss_mb"]
    print("\n| metric | value |\n|---|---|")
    for k in keys:
        v = results.get(k)
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    print("\n| split | generated | finetuned | base_only | retrieval | gen/ft | tasks |\n|---|---|---|---|---|---|---|")
    for split in ("heldout_tasks", "heldout_classes"):
        s = results.get(split) or {}
        if s:
            print(f"| {split} | {s['generated_zero_shot']:.3f} | {s['finetuned']:.3f} | {s['base_only']:.3f} | "
                  f"{s['retrieval']:.3f} | {s['generated_over_finetuned']:.3f} | {s['num_tasks']} |")
    print("\n| target | value | bar | met |\n|---|---|---|---|")
    for t in results.get("targets", []):
        v = t["value"]
        print(f"| {t['target']} | {v:.4g} | {t['bar']} | {t['met']} |" if isinstance(v, float) else
              f"| {t['target']} | {v} | {t['bar']} | {t['met']} |")


def cli_benchmark_scale(argv: list[str]) -> int:
    """`python examples/benchmark_scale.py [--json out.json] [--output_dir DIR] [--small]`."""
    p = argparse.ArgumentParser(prog="benchmark_scale.py", description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="results JSON (default: <output_dir>/results.json)")
    p.add_argument("--output_dir", default=None, help=f"stage folder (default {DEFAULT_OUTPUT_DIR}; "
                                                      f"{DEFAULT_OUTPUT_DIR}-small with --small)")
    p.add_argument("--small", action="store_true", help="tiny base, few fine-tunes, few steps (tests)")
    p.add_argument("--num_workers", type=int, default=2, help="fine-tuning processes")
    args = p.parse_args(argv)
    if args.num_workers < 1:
        p.error(f"--num_workers must be >= 1, got {args.num_workers}.")
    output_dir = args.output_dir or (DEFAULT_OUTPUT_DIR + "-small" if args.small else DEFAULT_OUTPUT_DIR)
    start = time.perf_counter()
    run_scale_benchmark(output_dir, args.json, SMALL if args.small else None, args.num_workers)
    print(f"wall {time.perf_counter() - start:.0f} s")
    return 0
