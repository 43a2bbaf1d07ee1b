"""Benchmark generated LoRA adapters against baselines on an adapter zoo's held-out tasks.

For each base ("mnist-mlp", "minilm") and each held-out task of its zoo (`outputs/adapter_zoo_shared/<base>` by
default):

* ``generated``: test accuracy of the best of k generated adapters (best picked on the task's validation split),
* ``base_only``: the base model without adapter,
* ``trained_adapter``: the zoo's trained adapters of that task (mean test accuracy),
* ``retrieval``: the train-split adapter whose instruction is nearest by MiniLM embedding cosine,
* ``seconds_per_adapter``: generation wall time per adapter (incl. decode), and
* ``seconds_to_train_adapter`` (zoo manifest).

A ParamTokenizer and a prior are trained (time-capped, resumable) under `outputs/lora_bench_shared/<base>/` by
default when missing.
If the generator cannot be built, the baselines are still reported with ``generated: null`` and the reason.

    hf-paramgen build-adapter-zoo --base mnist-mlp --preset shared --output_dir outputs/adapter_zoo_shared/mnist-mlp
    python examples/benchmark_lora.py --json outputs/lora_bench_shared/results.json --base mnist-mlp \
        --zoo_root outputs/adapter_zoo_shared --work_root outputs/lora_bench_shared --train_seconds 240 --k 4
    hf-paramgen build-adapter-zoo --base minilm --preset shared --num_workers 2 \
        --output_dir outputs/adapter_zoo_shared/minilm
    python examples/benchmark_lora.py --json outputs/lora_bench_shared/results.json --base minilm \
        --zoo_root outputs/adapter_zoo_shared --work_root outputs/lora_bench_shared --train_seconds 300 \
        --prior_seconds 1800 --k 4 --num_eval_tasks 60
    python examples/benchmark_lora.py --json /tmp/small.json --small   # tiny zoo, baselines only (tests)

Base "minilm-seqcls" (the stock class: `AutoModelForSequenceClassification` of all-MiniLM-L6-v2 with PEFT's SEQ_CLS
LoRA on every attention and MLP linear, 333,316 values) runs `hf_paramgen.research.stock_bench`: it builds or reuses
its zoo (`--stock_zoo`, default outputs/stock_zoo), LoRA codec, coefficient corpus, ParamTokenizer and prior
(`--stock_work`, default outputs/stock_bench), then reports `generated`, `generated_head_only`, `base_only`,
`trained_adapter`, `retrieval`, `permuted_retrieval`, `prototype_head`, `mean_adapter`, `seconds_per_adapter`,
`seconds_to_train_adapter`, `adapter_values`, `num_tasks` for held-out tasks, and the same under `heldout_topics`.
With no argument but `--json`, every base runs (a base whose zoo is missing and is not built here is skipped).

    python examples/benchmark_lora.py --json outputs/stock_bench/benchmark_lora.json --base minilm-seqcls
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hf_paramgen.adapters import apply_adapter, load_adapter, lora_layout
from hf_paramgen.conditioning import make_text_encoder
from hf_paramgen.research.adapter_zoo import PRESETS, adapter_zoo_context, build_adapter_zoo
from hf_paramgen.utils import atomic_write_json

BASES = ("mnist-mlp", "minilm", "minilm-seqcls")
STOCK_BASE = "minilm-seqcls"  # the stock-class base: its own stages (`hf_paramgen.research.stock_bench`)
KEYS = ("generated", "base_only", "trained_adapter", "retrieval", "seconds_per_adapter", "seconds_to_train_adapter")


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


class ZooBench:
    """One zoo: its manifest, base-model context and per-task accuracy on a split."""

    def __init__(self, zoo_dir: Path, num_eval_tasks: int | None = None):
        self.zoo_dir = zoo_dir
        self.manifest = json.loads((zoo_dir / "manifest.json").read_text())
        self.base = self.manifest["base"]
        self.ctx = adapter_zoo_context(self.base, zoo_dir)
        self.tasks = {t["task_id"]: t for t in self.manifest["tasks"]}
        heldout = list(self.manifest.get("heldout_tasks") or [])
        # tiny zoos have no held-out split: fall back to all tasks (retrieval still excludes the task itself)
        self.eval_ids = (heldout or list(self.tasks))[:num_eval_tasks]
        self.train_ids = [t for t, v in self.tasks.items() if v["split"] == "train"]

    def adapters_of(self, task_id: str) -> list[dict]:
        return [a for a in self.manifest["adapters"] if a["task_id"] == task_id]

    def accuracy(self, model: torch.nn.Module, task_id: str, split: str) -> float:
        return float(self.ctx.accuracy(model.eval(), self.tasks[task_id], split))

    def adapter_accuracy(self, adapter_path: str, task_id: str, split: str = "test") -> float:
        model = load_adapter(self.ctx.load_base(), self.zoo_dir / adapter_path)
        return self.accuracy(model, task_id, split)


def baselines(zb: ZooBench) -> dict:
    """base_only, trained_adapter and retrieval (mean test accuracy over the evaluated tasks)."""
    text = make_text_encoder("all-MiniLM-L6-v2")
    embed = lambda ids: torch.cat([text(zb.tasks[i]["instruction"]).reshape(1, -1) for i in ids])  # noqa: E731
    train_ids = zb.train_ids
    train_emb = torch.nn.functional.normalize(embed(train_ids), dim=-1)  # (n_train, d)
    base_only, trained, retrieval, retrieved, trained_per_task = [], [], [], {}, {}
    for task_id in tqdm(zb.eval_ids, desc=f"baselines ({zb.base})", unit="task"):
        base_only.append(zb.accuracy(zb.ctx.load_base(), task_id, "test"))
        trained.append(_mean([a["test_accuracy"] for a in zb.adapters_of(task_id)]))
        trained_per_task[task_id] = trained[-1]
        q = torch.nn.functional.normalize(embed([task_id]), dim=-1)  # (1, d)
        sims = (train_emb @ q.T).squeeze(-1)  # (n_train,)
        order = [train_ids[i] for i in sims.argsort(descending=True).tolist() if train_ids[i] != task_id]
        if order:
            retrieved[task_id] = order[0]
            retrieval.append(zb.adapter_accuracy(zb.adapters_of(order[0])[0]["path"], task_id))
    return {"base_only": _mean(base_only), "trained_adapter": _mean(trained), "retrieval": _mean(retrieval),
            "retrieved": retrieved, "trained_per_task": trained_per_task}


def build_generator(zb: ZooBench, work: Path, train_seconds: float, prior_seconds: float | None = None) -> Path:
    """Corpus -> ParamTokenizer -> prior under `work`, each step skipped when its output exists."""
    from hf_paramgen.data.corpus import build_corpus
    from hf_paramgen.training.prior import cli_train_prior
    from hf_paramgen.training.tokenizer import cli_train_tokenizer

    corpus, tok, gen = work / "corpus", work / "tokenizer", work / "generator"
    if not (corpus / "dataset_dict.json").is_file():
        build_corpus([str(zb.zoo_dir)], str(corpus), chunk_size=64, overwrite=True)
    if not (tok / "config.json").is_file():
        cli_train_tokenizer(["--corpus", str(corpus), "--output_dir", str(tok), "--max_time_s", str(train_seconds)])
    if not (gen / "config.json").is_file():
        from hf_paramgen.layout.chunking import num_chunks
        from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
        from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

        datasets = ["mnist"] if zb.base == "mnist-mlp" else ["text"]  # few-shot digits / labelled texts
        tok_config = ParamTokenizer.from_pretrained(tok).config
        layout = lora_layout(zb.ctx.load_base(), zb.ctx.lora_config)
        codes = num_chunks(layout, tok_config.chunk_size, tok_config.aggregation) * tok_config.codes_per_chunk
        context = codes + ParamPriorConfig().max_condition_tokens + 1  # the whole adapter in one block
        cli_train_prior(["--corpus", str(corpus), "--param_tokenizer", str(tok), "--output_dir", str(gen),
                         "--sample_datasets", *datasets, "--max_time_s", str(prior_seconds or train_seconds),
                         "--context", str(context),
                         "--batch_size", "8", "--num_layers", "3", "--lr", "2e-3", "--warmup_steps", "50",
                         "--max_steps", "4000", "--log_every", "25"])
    return gen


def generated(zb: ZooBench, gen_dir: Path, k: int) -> dict:
    """Best-of-k generated adapter per task (picked on validation), its test accuracy and seconds per adapter."""
    from hf_paramgen.generation.generator import ParamGenerator
    from hf_paramgen.research.adapter_zoo import text_few_shot_samples
    from hf_paramgen.research.tasks import Task, few_shot_samples

    generator = ParamGenerator.from_pretrained(gen_dir)
    lora_config = zb.ctx.lora_config
    layout = lora_layout(zb.ctx.load_base(), lora_config)
    tests, validations, seconds, per_task = [], [], [], {}
    for i, task_id in enumerate(tqdm(zb.eval_ids, desc=f"generate ({zb.base})", unit="task")):
        task = zb.tasks[task_id]
        if zb.base == "mnist-mlp":
            samples = few_shot_samples(Task.from_dict(task), per_class=5, split="train")
        else:  # 5 labelled training texts per topic, embedded by the generator's text encoder (timed below)
            samples = text_few_shot_samples(task, per_class=5)
        start = time.perf_counter()
        result = generator.generate(layout, task["instruction"], samples, k, seed=i)  # k candidates
        seconds.append((time.perf_counter() - start) / k)
        models = [apply_adapter(zb.ctx.load_base(), sd, lora_config) for sd in result.state_dicts]
        validation = [zb.accuracy(m, task_id, "validation") for m in models]
        best = int(np.argmax(validation))
        validations.append(validation[best])
        tests.append(zb.accuracy(models[best], task_id, "test"))
        per_task[task_id] = round(tests[-1], 4)
    from hf_paramgen.generation.generator import resolve_decoding

    return {"generated": _mean(tests), "generated_validation": _mean(validations),
            "seconds_per_adapter": _mean(seconds),
            "decoding": resolve_decoding(generator.param_tokenizer.config, None), "generated_per_task": per_task}


def bench_base(zoo_dir: Path, work: Path, train_seconds: float, k: int, skip_generator: str | None,
               num_eval_tasks: int | None = None, prior_seconds: float | None = None) -> dict:
    """Every metric of `KEYS` for one zoo (`generated: None` plus `generated_reason` when it could not run)."""
    zb = ZooBench(zoo_dir, num_eval_tasks)
    row = {"zoo_dir": str(zoo_dir), "num_eval_tasks": len(zb.eval_ids),
           "eval_split": "heldout_task" if zb.manifest.get("heldout_tasks") else "all (no held-out tasks)",
           "seconds_to_train_adapter": zb.manifest.get("seconds_to_train_adapter"), "k": k}
    row.update(baselines(zb))
    row.update({"generated": None, "seconds_per_adapter": None})
    if skip_generator:
        row["generated_reason"] = skip_generator
        return row
    try:
        row["generator_dir"] = str(build_generator(zb, work, train_seconds, prior_seconds))
        row.update(generated(zb, Path(row["generator_dir"]), k))
    except Exception as err:  # report the baselines anyway
        traceback.print_exc()
        row["generated_reason"] = f"{type(err).__name__}: {err}"
    row.update(by_unseen_classes(zb, row))
    return row


def by_unseen_classes(zb: ZooBench, row: dict) -> dict:
    """Generated vs trained accuracy by how many of a task's classes no training task has (zoos whose preset
    holds out classes, e.g. minilm `new-topics`); {} otherwise."""
    unseen = set(PRESETS[zb.base].get(zb.manifest.get("preset"), {}).get("heldout_classes") or [])
    if not unseen or not row.get("generated_per_task"):
        return {}
    groups: dict[str, list[str]] = {}
    for task_id in row["generated_per_task"]:
        groups.setdefault(str(len(set(zb.tasks[task_id]["classes"]) & unseen)), []).append(task_id)
    return {"unseen_classes": sorted(unseen), "by_unseen_classes": {
        n: {"num_tasks": len(ids), "generated": _mean([row["generated_per_task"][i] for i in ids]),
            "trained_adapter": _mean([row["trained_per_task"][i] for i in ids])} for n, ids in sorted(groups.items())}}


def _size_note(zoo_dir: Path) -> str:
    """How many 64-value chunks one adapter of the zoo is (the prior must emit codes for all of them)."""
    zb = ZooBench(zoo_dir)
    n = lora_layout(zb.ctx.load_base(), zb.ctx.lora_config).num_params
    return f"its LoRA adapter has {n} values = {-(-n // 64)} chunks of 64"


def _write_results(out: Path, results: dict) -> None:
    """Merge `results` into the JSON at `out` (other bases kept), atomically."""
    old = json.loads(out.read_text()) if out.is_file() else {}
    atomic_write_json(out, {**old, **results})


def print_table(results: dict) -> None:
    cols = ("generated", "base_only", "trained_adapter", "retrieval", "seconds_per_adapter", "seconds_to_train_adapter")
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| base | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for base, row in results.items():
        print(f"| {base} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
        if row.get("heldout_topics"):
            print(f"| {base} heldout_topics | " + " | ".join(fmt(row["heldout_topics"].get(c, row.get(c)))
                                                         for c in cols) + " |")
    for base, row in results.items():
        for n, group in (row.get("by_unseen_classes") or {}).items():
            print(f"{base}, tasks with {n} unseen class(es) ({group['num_tasks']} tasks): generated "
                  f"{fmt(group['generated'])}, trained_adapter {fmt(group['trained_adapter'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the results (keyed by base)")
    p.add_argument("--base", nargs="+", choices=BASES, default=list(BASES))
    p.add_argument("--train_seconds", type=float, default=180.0, help="time cap of each of tokenizer / prior training")
    p.add_argument("--prior_seconds", type=float, default=None,
                   help="time cap of prior training (default: --train_seconds)")
    p.add_argument("--k", type=int, default=4, help="generated adapters per task (best on validation)")
    p.add_argument("--zoo_root", default="outputs/adapter_zoo_shared", help="holds <base>/ adapter zoos")
    p.add_argument("--work_root", default="outputs/lora_bench_shared", help="corpus, tokenizer and generator per base")
    p.add_argument("--small", action="store_true", help="tiny mnist-mlp zoo under work_root, baselines only")
    p.add_argument("--num_eval_tasks", type=int, default=None,
                   help="evaluate the first N held-out tasks (default: all)")
    p.add_argument("--stock_zoo", default="outputs/stock_zoo", help="the minilm-seqcls adapter zoo (built if missing)")
    p.add_argument("--stock_work", default="outputs/stock_bench", help="minilm-seqcls codec, corpus and generator")
    p.add_argument("--stock_small", action="store_true", help="minilm-seqcls on a tiny zoo (tests)")
    p.add_argument("--generator_bases", nargs="*", default=list(BASES),
                   help="bases to train/run a generator for (others: baselines only, generated=null with the reason)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    bases = ["mnist-mlp"] if args.small else args.base
    for base in bases:
        if base == STOCK_BASE:
            from hf_paramgen.research.stock_bench import SMALL, print_stock_table, run_stock_benchmark

            settings = {**SMALL, "k": args.k} if args.stock_small else {"k": args.k, "num_tasks": args.num_eval_tasks}
            results[base] = run_stock_benchmark(args.stock_zoo, args.stock_work, settings)
            _write_results(Path(args.json), results)
            print_stock_table(results[base])
            continue
        work = Path(args.work_root) / (f"{base}-small" if args.small else base)
        zoo_dir = Path(args.zoo_root) / base
        skip = None if base in args.generator_bases else f"generator not attempted for {base} (--generator_bases)"
        if args.small:
            zoo_dir = work / "zoo"
            build_adapter_zoo(base, zoo_dir, preset="tiny")
            skip = "skipped (--small: baselines only)"
        elif not (zoo_dir / "manifest.json").is_file():
            print(f"no adapter zoo at {zoo_dir} (build it with `hf-paramgen build-adapter-zoo`)", file=sys.stderr)
            continue
        if skip and not args.small and zoo_dir.is_dir():
            skip += "; " + _size_note(zoo_dir)
        results[base] = bench_base(zoo_dir, work, args.train_seconds, args.k, skip, args.num_eval_tasks,
                                   args.prior_seconds)
        _write_results(Path(args.json), results)
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
