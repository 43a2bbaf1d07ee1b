"""Generation for zoo tasks: `generate_for_task` and the `hf-paramgen generate` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from ..generation.generator import DECODINGS, GenerationResult, ParamGenerator
from .architectures import build_model
from .tasks import Task, few_shot_samples, load_task_split
from .zoo import evaluate_accuracy


def generate_for_task(generator: ParamGenerator, task: Task, architecture: str, num_samples: int = 4,
                      seed: int | None = None, select_on: str | None = "validation", decoding: str | None = None,
                      **sampling) -> GenerationResult:
    """Zoo convenience: conditions on the task's text + 5 train samples per class; best-of-k on `select_on`."""
    template = build_model(architecture, num_classes=task.num_classes)
    samples = few_shot_samples(task, per_class=5, split="train")
    validation = load_task_split(task, select_on) if select_on else None
    return generator.generate(template, task.instruction, samples=samples, num_samples=num_samples, seed=seed,
                              validation=validation, decoding=decoding, **sampling)


# ------------------------------------------------------------------------------------------------ CLI
def cli_generate(argv: list[str]) -> int:
    """`hf-paramgen generate`: generate nets for a zoo task and save the best one (a `ZooNet` folder)."""
    parser = argparse.ArgumentParser(prog="hf-paramgen generate", description=cli_generate.__doc__)
    parser.add_argument("--generator", required=True, help="generator folder or Hub repo id")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dataset", default="mnist", help="mnist or digits")
    parser.add_argument("--classes", required=True, help="comma-separated class ids in output order, e.g. 3,7,1,0")
    parser.add_argument("--transform", default="none")
    parser.add_argument("--architecture", required=True, help="an architecture name of hf_paramgen.research.architectures")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--decoding", choices=DECODINGS, default=None,
                        help="weights of the sampled codes, or their expectation (default: mean where possible)")
    parser.add_argument("--output_dir", default=None, help="save the best network here (save_pretrained)")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON report only (loaders print notices)
        gen = ParamGenerator.from_pretrained(args.generator, revision=args.revision)
    task = Task.make(args.dataset, [int(c) for c in args.classes.split(",")], args.transform)
    start = time.perf_counter()
    result = generate_for_task(gen, task, args.architecture, args.num_samples, args.seed, temperature=args.temperature,
                               decoding=args.decoding)
    report = {"task": task.task_id, "architecture": args.architecture, "validation_scores": result.scores,
              "best_index": result.best_index, "seconds": time.perf_counter() - start,
              "best_test_accuracy": evaluate_accuracy(result.model, task, "test")}
    if args.output_dir:
        result.model.save_pretrained(args.output_dir)
        report["output_dir"] = args.output_dir
    print(json.dumps(report, indent=2))
    return 0
