"""Generate a LoRA adapter for all-MiniLM-L6-v2 from a task text and a few labelled texts, save it, reload it with PEFT.

Needs the MiniLM adapter zoo (its base) and a generator trained on it (see `benchmark_lora.py`):

    python examples/generate_minilm_adapter.py --topics networking mathematics concurrency "data formats" \
        --output_dir outputs/my_minilm_adapter

Prints the adapter's test accuracy on the topics' held-out docstrings next to the base model's.

`--stock`: the stock-class path on `AutoModelForSequenceClassification` (PEFT's SEQ_CLS recipe, LoRA on every
attention and MLP linear plus the classifier: 333,316 values). The generator of `benchmark_lora.py --base
minilm-seqcls` writes the whole adapter from the task text and 5 docstrings per topic; it is saved in PEFT's format
and reloaded with transformers and peft alone:

    python examples/generate_minilm_adapter.py --stock --topics networking mathematics concurrency "email and mime"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import pipeline

import hf_paramgen  # noqa: F401  (registers the "parameter-generation" task)
from hf_paramgen.research.adapter_zoo import (
    MINILM_CLASSES,
    STDLIB_TOPICS,
    TEXT_DATASET,
    adapter_zoo_context,
    load_zoo_base,
    text_few_shot_samples,
)
from hf_paramgen.research.adapter_zoo_minilm import EXTRA_TOPICS


def stock(args) -> int:
    """Generate a stock-class adapter (pipeline, `(base, LoraConfig)` target, output="peft"), save it in PEFT's format,
    reload it as a user would and print its accuracy beside the few-shot prototype baseline."""
    import time

    from transformers import AutoModelForSequenceClassification

    from hf_paramgen.research.adapter_zoo_stock import (
        NUM_LABELS,
        TEXT_DATASET,
        TEXTS_FILE,
        StockContext,
        instruction_for,
        load_stock_base,
        stock_lora_config,
    )

    if not (Path(args.stock_generator) / "lora_codec").is_dir():
        raise SystemExit(f"no stock-class generator at {args.stock_generator}; build it with "
                         "`python examples/benchmark_lora.py --json outputs/stock_bench/benchmark_lora.json "
                         "--base minilm-seqcls`")
    pools = json.loads((Path(args.stock_zoo) / TEXTS_FILE).read_text())  # the zoo's frozen docstring pools
    ctx = StockContext(pools=pools)
    task = {"task_id": "custom", "classes": list(args.topics), "dataset": TEXT_DATASET,
            "instruction": instruction_for(list(args.topics))}
    samples = ctx.examples(task, "train", 5)  # 5 labelled docstrings per topic
    validation = ctx.examples(task, "validation", 25)  # picks the best of --num_candidates
    start = time.perf_counter()
    generate = pipeline("parameter-generation", model=args.stock_generator)
    out = generate({"target": (load_stock_base(NUM_LABELS), stock_lora_config()), "task_text": task["instruction"],
                    "samples": samples, "validation": validation}, num_candidates=args.num_candidates,
                   seed=args.seed, output="peft")
    out["model"].save_pretrained(args.output_dir)  # PEFT's own format, base_model_name_or_path = the Hub id
    seconds = time.perf_counter() - start
    base = AutoModelForSequenceClassification.from_pretrained(ctx.folder, num_labels=NUM_LABELS)  # as a user would
    model = PeftModel.from_pretrained(base, args.output_dir)
    texts, labels = ctx.examples(task, "test", 25)
    baselines = ctx.baselines(task, "test", 25)  # base_only, prototype_head (the same 5 texts per class)
    result = {"task_text": task["instruction"], "adapter": args.output_dir,
              "base_model": model.peft_config["default"].base_model_name_or_path,
              "adapter_values": sum(v.numel() for v in out["state_dict"].values()),
              "seconds_to_generate_and_save": round(seconds, 1), "validation_scores": out["scores"],
              "test_accuracy": round(ctx.accuracy(model, texts, labels), 4),
              **{f"{k}_test_accuracy": round(v, 4) for k, v in baselines.items()}}
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topics", nargs=MINILM_CLASSES, required=True, metavar="TOPIC",
                   help=f"{MINILM_CLASSES} topics in output order, from: {', '.join(STDLIB_TOPICS)} (--stock: also "
                        f"{', '.join(EXTRA_TOPICS)})")
    p.add_argument("--stock", action="store_true", help="the stock AutoModelForSequenceClassification path")
    p.add_argument("--stock_generator", default="outputs/stock_bench/generator", help="stock-class generator folder")
    p.add_argument("--stock_zoo", default="outputs/stock_zoo", help="stock adapter zoo (its frozen text pools)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine shared with other jobs)")
    p.add_argument("--generator", default="outputs/lora_bench_shared/minilm/generator")
    p.add_argument("--zoo_dir", default="outputs/adapter_zoo_shared/minilm", help="adapter zoo whose base to adapt")
    p.add_argument("--output_dir", default="outputs/my_minilm_adapter")
    p.add_argument("--num_candidates", "--num_samples", type=int, default=4, dest="num_candidates",
                   help="adapters generated, best of them kept (--num_samples: the old name)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    known = [*STDLIB_TOPICS, *EXTRA_TOPICS] if args.stock else list(STDLIB_TOPICS)
    unknown = [t for t in args.topics if t not in known]
    if unknown:
        p.error(f"unknown topics {unknown}; expected {MINILM_CLASSES} of {known}")
    torch.set_num_threads(args.threads)
    if args.stock:
        return stock(args)
    for path, what in ((args.generator, "generator"), (args.zoo_dir, "adapter zoo")):
        if not Path(path).is_dir():
            p.error(f"no {what} at {path}; build it with the commands in examples/benchmark_lora.py")
    task_text = ("Classify a Python standard-library docstring by topic: "
                 + ", ".join(f"output {k} for {t}" for k, t in enumerate(args.topics)) + ".")
    task = {"task_id": "custom", "classes": list(args.topics), "dataset": TEXT_DATASET, "num_classes": MINILM_CLASSES,
            "instruction": task_text}
    texts, labels = text_few_shot_samples(task, per_class=5)  # 5 training docstrings per topic
    generate = pipeline("parameter-generation", model=args.generator)
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["head"])
    out = generate({"target": (load_zoo_base(args.zoo_dir), lora_config), "task_text": task_text,
                    "samples": (texts, labels)}, num_candidates=args.num_candidates, seed=args.seed, output="peft")
    out["model"].save_pretrained(args.output_dir)  # PEFT's own format
    model = PeftModel.from_pretrained(load_zoo_base(args.zoo_dir), args.output_dir)
    ctx = adapter_zoo_context("minilm", Path(args.zoo_dir))
    result = {"task_text": task_text, "adapter": args.output_dir,
              "test_accuracy": round(ctx.accuracy(model, task, "test"), 4),
              "base_only_test_accuracy": round(ctx.accuracy(load_zoo_base(args.zoo_dir), task, "test"), 4)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
