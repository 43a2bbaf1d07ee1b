"""Train the diffusion generator on the benchmark's corpus and put it beside the autoregressive prior.

    # train (or resume) for a wall-time budget on outputs/benchmark_generation/{corpus,generator}:
    python examples/train_diffusion.py --benchmark_dir outputs/benchmark_generation --max_time_s 3900
    # then evaluate only the diffusion rows, merged into a copy of results.json (no baseline recomputed):
    python examples/train_diffusion.py --benchmark_dir outputs/benchmark_generation --evaluate \
        --json outputs/benchmark_generation/results_diffusion.json --autoregressive_training_seconds 3902

Training resumes from its last checkpoint when run again (`<benchmark_dir>/diffusion_generator-work/training`); its
summed wall time is recorded and reported as `diffusion_training_seconds`. Without `--benchmark_dir` this is
`hf-paramgen train-diffusion` (all its options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_paramgen.diffusion.cli import cli_train_diffusion
from hf_paramgen.research.benchmark import FULL, SMALL, train_benchmark_diffusion, zoo_architectures
from hf_paramgen.research.evaluation.diffusion_rows import cli_evaluate_diffusion


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--benchmark_dir" not in " ".join(argv):
        return cli_train_diffusion(argv)
    p = argparse.ArgumentParser(prog="train_diffusion.py", description=__doc__.splitlines()[0])
    p.add_argument("--benchmark_dir", required=True, help="a benchmark_generation output folder")
    p.add_argument("--max_time_s", type=float, default=None, help="training wall time of this run")
    p.add_argument("--small", action="store_true", help="the --small benchmark's settings (tests)")
    p.add_argument("--evaluate", action="store_true", help="evaluate the diffusion rows instead of training")
    p.add_argument("--json", default=None, help="merged results (default <benchmark_dir>/results_diffusion.json)")
    p.add_argument("--num_inference_steps", type=int, default=None)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--autoregressive_training_seconds", type=float, default=None)
    args = p.parse_args(argv)
    out = Path(args.benchmark_dir)
    if not args.evaluate:
        trained, _ = zoo_architectures(out / "zoo")
        return train_benchmark_diffusion(out, trained, SMALL if args.small else FULL, args.max_time_s)
    eval_argv = ["--results", str(out / "results.json"), "--diffusion_generator", str(out / "diffusion_generator"),
                 "--json", args.json or str(out / "results_diffusion.json"), "--zoo_dir", str(out / "zoo"),
                 "--ar_generator", str(out / "generator")]
    for flag in ("num_inference_steps", "scheduler", "autoregressive_training_seconds"):
        if getattr(args, flag) is not None:
            eval_argv += [f"--{flag}", str(getattr(args, flag))]
    return cli_evaluate_diffusion(eval_argv)


if __name__ == "__main__":
    sys.exit(main())
