"""Benchmark generated networks against baselines on every evaluation split.

    python examples/benchmark_generation.py --json out.json     # builds or reuses everything under outputs/
    python examples/benchmark_generation.py --small --json out.json   # the same chain on a tiny zoo (seconds)
    python examples/benchmark_generation.py --generator outputs/generator --zoo_dir outputs/zoo --json out.json \\
        [--num_tasks 4 --k 4 --finetune_steps 20] [--architectures cnn-mnist mlp-784-32]
    python examples/benchmark_generation.py --baselines_only --zoo_dir outputs/zoo --json baselines.json

Without `--generator` / `--baselines_only` it runs `hf_paramgen.research.benchmark`: the "generalise" zoo (six
training architectures, six held-out ones, held-out classes, a held-out data family), its corpus, a ParamTokenizer
and one prior for all six architectures, under `outputs/benchmark_generation/` (each stage reused when finished),
then the evaluation. With a generator it is `hf-paramgen evaluate` (see `hf_paramgen.research.evaluation`).

Prints a table (rows = methods, columns = splits) and writes the JSON (keys per split: generated_zero_shot, trained,
random_init, retrieval, permuted_retrieval, class_row_composition, prototype_head, linear_hypernetwork,
shuffled_instruction, novelty_ratio, num_tasks, ci95, rows ...; top level: num_architectures_trained,
num_architectures_heldout, tokens_per_second, compute_floor_ratio) and a PNG of fine-tuning curves.
"""

from __future__ import annotations

import sys

from hf_paramgen.research.benchmark import cli_benchmark
from hf_paramgen.research.evaluation import cli_evaluate


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] in ("--generator", "--baselines_only", "-h", "--help") for a in argv):
        return cli_evaluate(argv)
    return cli_benchmark(argv)


if __name__ == "__main__":
    sys.exit(main())
