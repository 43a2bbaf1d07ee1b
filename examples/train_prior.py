"""Train the instruction-conditioned prior and save a generator folder.

    accelerate launch examples/train_prior.py --corpus outputs/generator_work/corpus \
        --param_tokenizer outputs/tok_bench/final_runs/default --output_dir outputs/generator

A `--corpus` written by `hf-paramgen encode-corpus` with the same ParamTokenizer gives its cached codes.
All options: `hf-paramgen train-prior --help` (this script is that command).
"""

from __future__ import annotations

import sys

from hf_paramgen.training.prior import cli_train_prior

if __name__ == "__main__":
    sys.exit(cli_train_prior(sys.argv[1:]))
