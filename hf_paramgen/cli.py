"""`hf-paramgen` console command: one subcommand per stage, each parsed by the module that owns it."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function taking argv: list[str]), imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build-zoo": ("hf_paramgen.research.zoo", "cli_build_zoo", "train a model zoo of small nets on real data"),
    "build-finetune-zoo": ("hf_paramgen.scale.finetune_zoo", "cli_build_finetune_zoo",
                           "train a base of millions of parameters and real fine-tunes of it (float16 deltas)"),
    "build-adapter-zoo": ("hf_paramgen.research.adapter_zoo", "cli_build_adapter_zoo",
                          "train LoRA adapter zoos (MNIST MLP base, MiniLM base)"),
    "build-corpus": ("hf_paramgen.data.corpus", "cli_build_corpus",
                     "turn checkpoints (Hub ids or folders) into a weight corpus"),
    "train-tokenizer": ("hf_paramgen.training.tokenizer", "cli_train_tokenizer",
                        "train the ParamTokenizer (VQ-VAE) on a corpus"),
    "encode-corpus": ("hf_paramgen.data.encoding", "cli_encode_corpus", "add ParamTokenizer codes to a corpus"),
    "train-prior": ("hf_paramgen.training.prior", "cli_train_prior", "train the instruction-conditioned prior"),
    "train-diffusion": ("hf_paramgen.diffusion.cli", "cli_train_diffusion",
                        "train a diffusion generator (diffusers pipeline) on a corpus"),
    "generate": ("hf_paramgen.research.generate", "cli_generate", "generate a network from an instruction"),
    "evaluate": ("hf_paramgen.research.evaluation", "cli_evaluate", "evaluate generated nets against baselines"),
    "demo": ("hf_paramgen.research.demo", "cli_demo", "run the whole chain end to end on the embedded default"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
        msg = "usage: hf-paramgen <command> [options]\n\ncommands:\n" + "\n".join(lines)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{msg}\n\nhf-paramgen: error: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}.",
                  file=sys.stderr)
            return 2
        print(msg)
        return 0
    module, func, _ = COMMANDS[argv[0]]
    result = getattr(importlib.import_module(module), func)(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
