"""Scale benchmark: a base network of 11.2M parameters, >= 200 real fine-tunes of it, a delta codec, a prior that
writes several codes per step, and whole networks generated for held-out instructions.

    python examples/benchmark_scale.py --json outputs/scale/results.json   # builds or reuses outputs/scale/
    python examples/benchmark_scale.py --small                               # the same chain in seconds (tests)

Writes largest_generated_params, codes_per_param, bits_per_param, heldout_mean/worst_accuracy_drop_pp,
seconds_per_network, params_per_second, compute_floor_ratio, peak_rss_mb, and per split (heldout_tasks,
heldout_classes): generated_zero_shot, finetuned, base_only, retrieval, num_tasks; prints the tables.
"""

import sys

from hf_paramgen.scale.benchmark import cli_benchmark_scale

if __name__ == "__main__":
    sys.exit(cli_benchmark_scale(sys.argv[1:]))
