"""Generation for zoo tasks: `generate_for_task` and the `hf-paramgen generate` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..generation.generator import DECODINGS, GenerationResult, ParamGenerator, resolve_num_candidates
from ..jobs import clear_job_errors, output_lock
from ..utils import replace_dir, temporary_sibling
from .architectures import build_model
from .samples import FEW_SHOT_PER_CLASS
from .tasks import Task, few_shot_samples, load_task_split
from .zoo import evaluate_accuracy

__all__ = ["generate_for_task", "save_model_folder", "cli_generate"]


def generate_for_task(generator: ParamGenerator, task: Task, architecture: str, num_candidates: int | None = None,
                      seed: int | None = None, select_on: str | None = "validation", decoding: str | None = None, *,
                      num_samples: int | None = None, **sampling) -> GenerationResult:
    """Generate `num_candidates` nets of `architecture` for a zoo task and keep the best on `select_on`.

    Args:
        generator: a `ParamGenerator`.
        task: the zoo task; the instruction is its task text + `FEW_SHOT_PER_CLASS` train samples per class.
        architecture: a name of `research.architectures.ARCHITECTURES` (the output size is the task's).
        num_candidates: networks generated (best of k; default 4). `num_samples`: its deprecated old name.
        select_on: the task's data split that picks the best candidate (None: no selection; never "test").
        decoding / **sampling: passed to `ParamGenerator.generate`.
    """
    num_candidates = resolve_num_candidates(num_candidates, num_samples, default=4)
    template = build_model(architecture, num_classes=task.num_classes)
    samples = few_shot_samples(task, per_class=FEW_SHOT_PER_CLASS, split="train")
    validation = load_task_split(task, select_on) if select_on else None
    return generator.generate(template, task.task_text, samples, num_candidates, seed=seed, validation=validation,
                              decoding=decoding, **sampling)


def save_model_folder(model, output_dir: str | os.PathLike) -> None:
    """`model.save_pretrained` into a temporary sibling of `output_dir`, then swapped in whole (`replace_dir`), under
    the folder's lock: a kill or a full disk never leaves a half-written network under `output_dir`."""
    with output_lock(output_dir):
        tmp = temporary_sibling(output_dir)
        try:
            model.save_pretrained(tmp)
            replace_dir(tmp, output_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-paramgen generate", description=cli_generate.__doc__)
    parser.add_argument("--generator", required=True, help="generator folder or Hub repo id")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dataset", default="mnist", help="mnist or digits")
    parser.add_argument("--classes", required=True, help="comma-separated class ids in output order, e.g. 3,7,1,0")
    parser.add_argument("--transform", default="none")
    parser.add_argument("--architecture", required=True,
                        help="an architecture name of hf_paramgen.research.architectures")
    parser.add_argument("--num_candidates", "--num_samples", type=int, default=4, dest="num_candidates",
                        help="networks generated, the best on the validation split kept (--num_samples: old name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--decoding", choices=DECODINGS, default=None,
                        help="weights of the sampled codes, or their expectation (default: mean where possible)")
    parser.add_argument("--output_dir", default=None, help="save the best network here (save_pretrained)")
    return parser


def cli_generate(argv: list[str]) -> int:
    """`hf-paramgen generate`: generate nets for a zoo task and save the best one (a `ZooNet` folder)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        classes = [int(c) for c in args.classes.split(",")]
    except ValueError:
        parser.error(f"--classes must be comma-separated class ids in output order, e.g. 3,7,1,0; got "
                     f"{args.classes!r}.")
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} is a file; expected a folder for the generated network.")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON report only (loaders print notices)
        gen = ParamGenerator.from_pretrained(args.generator, revision=args.revision)
    task = Task.make(args.dataset, classes, args.transform)
    start = time.perf_counter()
    result = generate_for_task(gen, task, args.architecture, args.num_candidates, args.seed,
                               temperature=args.temperature, decoding=args.decoding)
    seconds = time.perf_counter() - start
    report = {"task": task.task_id, "task_text": task.task_text, "architecture": args.architecture,
              "validation_scores": result.scores, "best_index": result.best_index, "seconds": seconds,
              "best_test_accuracy": evaluate_accuracy(result.model, task, "test")}
    if args.output_dir:
        with clear_job_errors("hf-paramgen generate", args.output_dir):
            save_model_folder(result.model, args.output_dir)
        report["output_dir"] = args.output_dir
    print(json.dumps(report, indent=2))
    return 0
