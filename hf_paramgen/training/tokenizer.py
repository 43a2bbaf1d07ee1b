"""`hf-paramgen train-tokenizer`: train a ParamTokenizer (VQ-VAE) on the train split of a weight corpus.

The command line is a `transformers.HfArgumentParser` over three dataclasses: `TokenizerScriptArguments`
(corpus, augmentation), `ParamTokenizerArguments` (the `ParamTokenizerConfig` fields) and `TrainingConfig`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser

from ..data.collate import TokenizerCollator, split_rows
from .loop import TrainingConfig, train


@dataclass
class TokenizerScriptArguments:
    """What `train-tokenizer` reads and how it augments the chunks."""

    corpus: str = field(metadata={"help": "corpus folder (save_to_disk) or Hub dataset id"})
    sign_flip: bool = field(default=True,
                            metadata={"help": "augment with random chunk sign flips (--no_sign_flip: off)"})
    scale_jitter: float = field(default=0.5, metadata={"help": "augment: rescale chunks by up to 1+this (0: off)"})


@dataclass
class ParamTokenizerArguments:
    """The `ParamTokenizerConfig` fields settable on the command line; None keeps the config's default."""

    chunk_size: int | None = None
    latents_per_chunk: int | None = None
    codes_per_chunk: int | None = field(default=None, metadata={"help": "deprecated name of --latents_per_chunk"})
    codebook_size: int | None = None
    codebook_dim: int | None = None
    num_quantizers: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    quantizer: str | None = None
    commitment_weight: float | None = None
    ema_decay: float | None = None
    dead_code_threshold: float | None = None
    max_tensors: int | None = None
    max_chunks_per_tensor: int | None = None

    def to_config(self, corpus):
        """A `ParamTokenizerConfig` for `corpus` (aggregation taken from it); its chunk size must fit the rows.

        Raises:
            ValueError: if `chunk_size` does not divide the corpus rows' length (or, unless the corpus is
                layer-aggregated, differs from it).
        """
        from ..models.configuration_param_tokenizer import ParamTokenizerConfig

        kwargs = {k: v for k, v in asdict(self).items() if v is not None}
        if "codes_per_chunk" in kwargs:
            warnings.warn("--codes_per_chunk of train-tokenizer is deprecated (it counts latents per chunk); use "
                          "--latents_per_chunk.", FutureWarning, stacklevel=2)
            kwargs.setdefault("latents_per_chunk", kwargs.pop("codes_per_chunk"))
            kwargs.pop("codes_per_chunk", None)
        length = corpus["chunks"].features["chunk"].length
        models = corpus["models"]
        aggregation = models[0]["aggregation"] if "aggregation" in models.column_names else "layer"
        config = ParamTokenizerConfig(aggregation=aggregation, **kwargs)
        if length % config.chunk_size or (aggregation != "layer" and length != config.chunk_size):
            raise ValueError(f"chunk_size {config.chunk_size} does not fit the corpus, whose rows hold {length} "
                             f"weights ({aggregation} aggregation): it must divide {length} (equal it unless "
                             "aggregation is layer).")
        return config


def tokenizer_arg_parser() -> HfArgumentParser:
    """The parser of `train-tokenizer`: script arguments, `ParamTokenizerArguments`, `TrainingConfig`."""
    parser = HfArgumentParser((TokenizerScriptArguments, ParamTokenizerArguments, TrainingConfig))
    parser.prog = "hf-paramgen train-tokenizer"
    parser.description = "Train a ParamTokenizer (VQ-VAE) on the train split of a weight corpus."
    return parser


def cli_train_tokenizer(argv: list[str]) -> int:
    """`hf-paramgen train-tokenizer --corpus PATH --output_dir DIR [...]` (also under `accelerate launch`)."""
    from ..data.corpus import load_corpus
    from ..jobs import clear_job_errors
    from ..models.modeling_param_tokenizer import ParamTokenizer

    script, tokenizer_args, config = tokenizer_arg_parser().parse_args_into_dataclasses(args=argv)
    torch.manual_seed(config.seed)  # the same initial weights on every process
    corpus = load_corpus(script.corpus)
    model = ParamTokenizer(tokenizer_args.to_config(corpus))
    validation = split_rows(corpus["chunks"], "validation")
    collator = TokenizerCollator(model.config.chunk_size, sign_flip=script.sign_flip, scale_jitter=script.scale_jitter)
    with clear_job_errors(tokenizer_arg_parser().prog, config.output_dir):
        result = train(model, split_rows(corpus["chunks"], "train"), collator, config,
                       eval_dataset=validation if len(validation) else None)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    return 0
