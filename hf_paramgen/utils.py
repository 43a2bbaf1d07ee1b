"""Small helpers shared by the core: atomic writes (a reader never sees a half-written file or folder)
and the accuracy of a classifier."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from torch import nn


def temporary_sibling(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden path beside `target` (same filesystem, so `os.replace` onto `target` is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace`."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """`atomic_write_text` of `json.dumps(obj)` (sorted keys stay as given)."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` onto `final`; an existing `final` is swapped out first and then removed."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = temporary_sibling(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def accuracy(model: nn.Module, X, y) -> float:
    """Fraction of `X` whose argmax output (or `.logits`) equals `y`; the model is put in eval mode."""
    model.eval()
    out = model(torch.as_tensor(X, dtype=torch.float32) if not isinstance(X, torch.Tensor) else X.float())
    logits = getattr(out, "logits", out)
    y = torch.as_tensor(y).long().cpu().reshape(-1)
    return int((logits.argmax(-1).cpu() == y).sum()) / max(len(y), 1)  # the exact fraction, not a float32 mean
