"""Train a ParamTokenizer (VQ-VAE) on the train split of a weight corpus.

    accelerate launch examples/train_tokenizer.py --corpus outputs/corpus --output_dir outputs/param_tokenizer \
        --codebook_size 256 --num_quantizers 4 --max_steps 2000

Runs unchanged on one CPU, several processes (`accelerate launch --multi_gpu --num_processes 2`) or
GPUs. The result loads with `AutoModel.from_pretrained(output_dir, trust_remote_code=True)`; resumable
checkpoints go to `output_dir/checkpoints/checkpoint_<i>` (accelerate states, each with a `model/` folder).
All options: `hf-paramgen train-tokenizer --help` (this script is that command).
"""

import sys

from hf_paramgen.training.tokenizer import cli_train_tokenizer

if __name__ == "__main__":
    sys.exit(cli_train_tokenizer(sys.argv[1:]))
