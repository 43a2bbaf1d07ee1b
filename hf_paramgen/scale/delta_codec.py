"""`DeltaCodec`: a network of millions of parameters as a few thousand coefficients of its difference from a stated
reference, so the IGPG tokenizer and prior code and generate the coefficients instead of the weights.

For a reference network (the base a zoo was fine-tuned from) with body matrices W_l (out_l x in_l), biases b_l and a
classifier head, a network W' is coded as

    W'_l = W_l + P_l C_l Q_l^T            C_l = P_l^T (W'_l - W_l) Q_l         core, (R x R)
    b'_l = b_l + P_l c_l                  c_l = P_l^T (b'_l - b_l)             (R,)
    H'   = H_0(samples) + A B^T           A = (H' - H_0(samples)) B            head coefficients, (k x R_h)
    h'   = a                              the head bias, (k,)

P_l (out_l x R), Q_l (in_l x R) and B (d x R_h) are orthonormal bases shared by every network, fitted once on the
training fine-tunes (`DeltaCodec.fit`: the top singular vectors of their stacked low-rank deltas), so the
coefficients of different networks live in one space and a prior can model them. H_0(samples) is the prototype head
(`finetune_zoo.prototype_head`) of the instruction's few labelled samples on the reference's features: the head's
reference is stated by the instruction, the delta by the coefficients.

The coefficients form a small module (`coefficient_module`: one `Linear(R, R)` per body layer — weight = core,
bias = bias coefficients — then a `Linear(R_h, k)` head), so `ParamLayout`, corpora, the ParamTokenizer and the prior
handle them as any other network; each tensor is rescaled (`coef_scales`) to the RMS of a freshly initialised
layer of its shape (what the tokenizer's chunk normalisation expects).

A codec folder holds `delta_codec.json` (config) and `delta_codec.safetensors` (reference tensors `ref.*`, bases
`P.*`, `Q.*`, `B`). `from_pretrained` checks the reference digest, so a corrupt or truncated file is refused.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..layout.bases import load_codec_folder, save_codec_folder, weights_digest
from ..layout.bases import top_left_singular as _top_left
from ..layout.param_layout import ParamLayout
from .finetune_zoo import head_input_features, prototype_head

CONFIG_NAME, WEIGHTS_NAME = "delta_codec.json", "delta_codec.safetensors"


class DeltaCodecError(ValueError):
    """A network, reference or codec folder the codec cannot use; the message says what was expected."""


def coefficient_module(rank: int, head_rank: int, num_layers: int, num_classes: int) -> nn.Sequential:
    """The module whose parameters are a network's coefficients: `body.<l>` Linear(R, R) per body layer, then `head`
    Linear(R_h, k) (the last Linear: its rows are the classes, as the prior's class conditioning expects)."""
    layers = [(f"body{i}", nn.Linear(rank, rank)) for i in range(num_layers)] + [("head", nn.Linear(head_rank,
                                                                                                   num_classes))]
    return nn.Sequential(OrderedDict(layers))


class DeltaCodec:
    """Codes a network as coefficients of its delta from a reference (module docstring).

    Args:
        config: `{"rank", "head_rank", "matrices": [body weight names], "biases": {bias: weight}, "head": [weight,
            bias], "model_config": the network's config (ZooNet kwargs, any num_classes), "reference_digest",
            "coef_scales": {coefficient tensor: factor}, "reference": where the reference came from}`.
        tensors: `ref.<name>` (reference body tensors), `P.<weight>`, `Q.<weight>`, `B`.
    """

    def __init__(self, config: dict, tensors: dict[str, torch.Tensor]):
        self.config, self.tensors = config, tensors
        self.reference = {k[4:]: v for k, v in tensors.items() if k.startswith("ref.")}

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, reference: dict[str, torch.Tensor], model_config: dict, heads: list[str], examples,
            rank: int = 64, head_rank: int = 64, per_example_rank: int = 24, reference_name: str = "") -> DeltaCodec:
        """Fit the shared bases on training networks.

        Args:
            reference: the reference state_dict (body and head; the head is ignored).
            model_config: the network's config (ZooNet kwargs).
            heads: names of the head weight and bias.
            examples: iterable of `(state_dict, samples)`: training networks and the few-shot samples (X, y) their
                head started from (streamed: one network in memory at a time).
            rank, head_rank: R and R_h. per_example_rank: singular vectors kept per network and matrix.
        """
        matrices = [k for k, v in reference.items() if v.ndim == 2 and k not in heads]
        biases = {k: k.rsplit(".", 1)[0] + ".weight" for k, v in reference.items()
                  if v.ndim == 1 and k not in heads and k.rsplit(".", 1)[0] + ".weight" in matrices}
        left = {m: [] for m in matrices}
        right = {m: [] for m in matrices}
        head_rows = []
        probe = _reference_model(reference, {**model_config, "num_classes": 2}, heads)
        for state, samples in examples:
            for m in matrices:
                delta = state[m].float() - reference[m].float()
                U, S, V = torch.svd_lowrank(delta, q=min(per_example_rank, *delta.shape), niter=2)
                left[m].append(U * S)
                right[m].append(V * S)
            for b, m in biases.items():
                left[m].append((state[b].float() - reference[b].float())[:, None])
            proto, _ = _prototype(probe, samples)
            head_rows.append(state[heads[0]].float() - proto)
        if not head_rows:
            raise DeltaCodecError("DeltaCodec.fit needs at least one training network, got none.")
        tensors = {f"ref.{k}": v.detach().float().contiguous() for k, v in reference.items() if k not in heads}
        for m in matrices:
            tensors[f"P.{m}"] = _top_left(torch.cat(left[m], 1), rank)
            tensors[f"Q.{m}"] = _top_left(torch.cat(right[m], 1), rank)
        tensors["B"] = _top_left(torch.cat(head_rows, 0).T, head_rank)
        config = {"rank": rank, "head_rank": head_rank, "matrices": matrices, "biases": biases, "head": list(heads),
                  "model_config": {k: v for k, v in model_config.items() if k != "num_classes"},
                  "reference": reference_name, "reference_digest": weights_digest(
                      {k: v for k, v in reference.items() if k not in heads}),
                  "num_training_networks": len(head_rows), "coef_scales": {}}
        return cls(config, tensors)

    def calibrate(self, coefficient_states) -> None:
        """Set `coef_scales` from raw coefficients of training networks: factor = target RMS / measured RMS, the
        target being the RMS of a PyTorch-initialised Linear of the same fan-in (1 / sqrt(3 fan_in))."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for coefs in coefficient_states:
            for k, v in coefs.items():
                sums[k] = sums.get(k, 0.0) + float(v.float().pow(2).sum())
                counts[k] = counts.get(k, 0) + v.numel()
        scales = {}
        for k in sums:
            fan_in = self.config["head_rank"] if k.startswith("head") else self.config["rank"]
            rms = math.sqrt(sums[k] / max(counts[k], 1))
            scales[k] = (1.0 / math.sqrt(3 * fan_in)) / rms if rms > 0 else 1.0
        self.config["coef_scales"] = scales

    # ------------------------------------------------------------------ code
    @property
    def bias_of(self) -> dict[str, str]:
        """Body weight name -> the name of its bias (weights without one are absent)."""
        return {w: b for b, w in self.config["biases"].items()}

    @property
    def num_layers(self) -> int:
        return len(self.config["matrices"])

    def layout(self, num_classes: int) -> ParamLayout:
        """The `ParamLayout` of the coefficients of a `num_classes`-way network."""
        return ParamLayout.from_module(coefficient_module(self.config["rank"], self.config["head_rank"],
                                                          self.num_layers, num_classes))

    def model_config(self, num_classes: int) -> dict:
        return {**self.config["model_config"], "num_classes": int(num_classes)}

    def check_state(self, state: dict[str, torch.Tensor]) -> None:
        """The network's body tensors must match the reference's names and shapes (first difference named)."""
        for name, ref in self.reference.items():
            if name not in state:
                raise DeltaCodecError(f"The network has no tensor {name!r}, which the codec's reference holds; "
                                      f"expected a network with the reference's layout "
                                      f"({len(self.reference)} body tensors).")
            if tuple(state[name].shape) != tuple(ref.shape):
                raise DeltaCodecError(f"Tensor {name!r} has shape {tuple(state[name].shape)}, the reference's is "
                                      f"{tuple(ref.shape)}: the network does not match the codec's reference.")

    def encode(self, state: dict[str, torch.Tensor], samples) -> dict[str, torch.Tensor]:
        """A network's state_dict -> its (scaled) coefficient state_dict (the `layout(k)` tensors)."""
        self.check_state(state)
        P = {m: self.tensors[f"P.{m}"] for m in self.config["matrices"]}
        Q = {m: self.tensors[f"Q.{m}"] for m in self.config["matrices"]}
        out = {}
        for i, m in enumerate(self.config["matrices"]):
            out[f"body{i}.weight"] = P[m].T @ (state[m].float() - self.reference[m]) @ Q[m]
            bias = self.bias_of.get(m)
            out[f"body{i}.bias"] = (P[m].T @ (state[bias].float() - self.reference[bias]) if bias
                                    else torch.zeros(self.config["rank"]))
        w, b = self.config["head"]
        proto, _ = _prototype(self._probe(state[w].shape[0]), samples)
        out["head.weight"] = (state[w].float() - proto) @ self.tensors["B"]
        out["head.bias"] = state[b].float().clone()
        return self._scaled(out, 1.0)

    def decode(self, coefficients: dict[str, torch.Tensor], samples) -> dict[str, torch.Tensor]:
        """Coefficients (scaled, as `encode` gives and a tokenizer decodes) -> the network's full state_dict."""
        coefs = self._scaled(coefficients, -1.0)
        num_classes = int(coefs["head.bias"].shape[0])
        state = {k: v.clone() for k, v in self.reference.items()}
        for i, m in enumerate(self.config["matrices"]):
            P, Q = self.tensors[f"P.{m}"], self.tensors[f"Q.{m}"]
            state[m] = state[m] + P @ coefs[f"body{i}.weight"] @ Q.T
            bias = self.bias_of.get(m)
            if bias:
                state[bias] = state[bias] + P @ coefs[f"body{i}.bias"]
        w, b = self.config["head"]
        proto, _ = _prototype(self._probe(num_classes), samples)
        state[w] = proto + coefs["head.weight"] @ self.tensors["B"].T
        state[b] = coefs["head.bias"].clone()
        return state

    def reference_model(self, num_classes: int, samples) -> nn.Module:
        """The reference alone: reference body + prototype head of `samples` (what the codec adds deltas to)."""
        from .finetune_zoo import with_prototype_head

        return with_prototype_head(self.reference, self.model_config(num_classes), samples)

    def _scaled(self, coefs: dict[str, torch.Tensor], power: float) -> dict[str, torch.Tensor]:
        scales = self.config.get("coef_scales") or {}
        return {k: (v.float() * scales.get(k, 1.0) ** power).contiguous() for k, v in coefs.items()}

    def _probe(self, num_classes: int = 2) -> nn.Module:
        """The reference body with a throw-away head (only its features are read)."""
        if getattr(self, "_probe_model", None) is None:
            self._probe_model = _reference_model(self.reference, self.model_config(2), self.config["head"])
        return self._probe_model

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `delta_codec.json` and `delta_codec.safetensors` into `folder` (atomically, as one folder)."""
        save_codec_folder(folder, self.config, self.tensors, CONFIG_NAME, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> DeltaCodec:
        folder = Path(folder)
        config, tensors = load_codec_folder(folder, CONFIG_NAME, WEIGHTS_NAME, DeltaCodecError, "delta codec")
        codec = cls(config, tensors)
        missing = [f"{p}.{m}" for m in config["matrices"] for p in ("P", "Q") if f"{p}.{m}" not in tensors]
        if missing or "B" not in tensors:
            raise DeltaCodecError(f"{folder / WEIGHTS_NAME} lacks bases {missing or ['B']}: corrupt or truncated.")
        digest = weights_digest(codec.reference)
        if digest != config.get("reference_digest"):
            raise DeltaCodecError(f"The reference tensors in {folder / WEIGHTS_NAME} do not match the digest the codec "
                                  f"was fitted with ({config.get('reference_digest', '')[:12]}…, got {digest[:12]}…): "
                                  "the file is corrupt or was replaced.")
        return codec


# ---------------------------------------------------------------------------------------------- helpers
def _reference_model(reference: dict[str, torch.Tensor], model_config: dict, heads: list[str]) -> nn.Module:
    from ..research.architectures import ZooNet

    model = ZooNet(**model_config)
    state = model.state_dict()
    state.update({k: v for k, v in reference.items() if k not in heads})
    model.load_state_dict(state)
    return model.eval()


def _prototype(probe: nn.Module, samples) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = samples
    X = torch.as_tensor(X, dtype=torch.float32)
    y = torch.as_tensor(y)
    return prototype_head(head_input_features(probe, X), y, int(y.max()) + 1)
