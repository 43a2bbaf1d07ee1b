"""`SampleEncoder`: few labelled samples -> **one prototype per class, in class order**, so the prior can
tell which output unit is which class (the paper mean-pools and loses it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

TEXT_SAMPLES = "text"  # name of the sample encoder of labelled texts (identity on the text encoder's vectors)


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return x.detach().to("cpu", dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=dtype)


class SampleEncoder(nn.Module, PyTorchModelHubMixin, library_name="hf_paramgen", tags=["hf_paramgen"]):
    """Few labelled samples -> per-class prototypes in class order: `(1, num_classes, dim)`.

    Features: `(X - mean) @ projection`, a fixed linear map stored as buffers (saved with
    `save_pretrained`): a seeded random orthonormal projection (`method="random"`, needs no data), the
    identity (`method="identity"`, for samples that already are text-encoder vectors: `for_texts`)
    or a PCA fit once on an unlabelled reference set (`fit`; columns past the data's rank are zero). Each
    class's features are averaged and L2-normalised. Inputs must be scaled like the reference set.

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
    def for_texts(cls, dim: int) -> SampleEncoder:
        """The identity on text-encoder vectors of width `dim`: labelled texts, embedded by the text encoder."""
        return cls(num_features=dim, dim=dim, method="identity")

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
