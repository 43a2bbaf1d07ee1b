"""Benchmark generated networks against baselines on seen tasks, held-out tasks and held-out architectures.

    python examples/benchmark_generation.py --generator outputs/generator --zoo_dir outputs/zoo --json out.json \\
        [--num_tasks 4 --k 4 --finetune_steps 20] [--architectures cnn-mnist mlp-784-32]
    python examples/benchmark_generation.py --baselines_only --zoo_dir outputs/zoo --json baselines.json
    python examples/benchmark_generation.py --small ...   # 1 task per split, k = 2, short curves

Prints a table (rows = methods, columns = splits), writes the JSON (keys per split: generated_zero_shot,
generated_finetuned, trained, random_init, zoo_average, retrieval, retrieval_noise, linear_hypernetwork,
shuffled_instruction, finetune_steps_ratio, novelty_ratio; top level: tokens_per_second, compute_floor_ratio)
and a PNG of fine-tuning curves. Same as `hf-paramgen evaluate`; see `hf_paramgen.research.evaluation`.
"""

from __future__ import annotations

import sys

from hf_paramgen.research.evaluation import cli_evaluate


def main(argv: list[str] | None = None) -> int:
    return cli_evaluate(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
