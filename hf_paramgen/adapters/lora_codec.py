"""`LoraCodec`: a LoRA adapter of hundreds of thousands of values as a few thousand coefficients, so the IGPG
tokenizer and prior generate the coefficients instead of the adapter.

An adapter zoo whose adapters all start from one LoRA initialisation (lora_A = A0, lora_B = 0, the same seed) has no
gauge freedom left (B A = B M M^-1 A): each module m's factors are coded against that start in shared bases,

    A_m = A0_m + a_m Q_m^T          a_m = (A_m - A0_m) Q_m          (r x R)     Q_m: (in_m x R)
    B_m = P_m b_m                   b_m = P_m^T B_m                 (R x r)     P_m: (out_m x R)
    W   = W_ref(samples) + h H^T    h   = (W - W_ref(samples)) H    (k x R_h)   H:   (d x R_h)   (classifier)
    c   = c_ref(samples) + e        e   = c - c_ref(samples)        (k,)                        (classifier bias)

with P_m, Q_m, H orthonormal, fitted once on the training adapters (`LoraCodec.fit`: top singular vectors of their
stacked factors). The classifier's reference (W_ref, c_ref) is stated by the instruction: the prototype classifier of
its few labelled samples on the features the *decoded* encoder feeds the classifier (`prototype_classifier`, the zoo's
own initialisation recipe), so a decoded adapter is an exact rank-r PEFT adapter of the stock class.

The coefficients form a small module (`coefficient_module`: a `Linear(R, M r)` holding the a_m of the M modules
stacked, a `Linear(r, M R)` holding the b_m, then the `head` `Linear(R_h, k)`), so `ParamLayout`, corpora, the
ParamTokenizer and the prior handle them as any other network; each tensor is rescaled (`coef_scales`) to the RMS of
a freshly initialised layer of its shape.

A codec folder holds `lora_codec.json` (config: LoRA config, base identity, module names, ranks, scales) and
`lora_codec.safetensors` (`ref.<lora_A key>`, `P.<module>`, `Q.<module>`, `H`), and, for text bases, the base's
tokenizer in `tokenizer/`. `from_pretrained` checks a digest of every tensor, so a corrupt or replaced file is refused.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..layout.bases import load_codec_folder, save_codec_folder, top_left_singular, weights_digest
from ..layout.param_layout import ParamLayout

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_SUBFOLDER = "lora_codec.json", "lora_codec.safetensors", "tokenizer"
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
BASE_CONFIG_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads")


class LoraCodecError(ValueError):
    """An adapter, base model, LoraConfig or codec folder the codec cannot use; the message says what was expected."""


def coefficient_module(rank: int, head_rank: int, lora_rank: int, num_modules: int, num_classes: int) -> nn.Sequential:
    """The module whose parameters are an adapter's coefficients: `a` Linear(R, M r) (the a_m of the M LoRA modules,
    stacked), `b` Linear(r, M R) (the b_m, stacked), then `head` Linear(R_h, k) (the last Linear: its rows are the
    classes). Four tensors whatever M is, so the layout's description stays short (it conditions the prior)."""
    return nn.Sequential(OrderedDict([("a", nn.Linear(rank, num_modules * lora_rank, bias=False)),
                                      ("b", nn.Linear(lora_rank, num_modules * rank, bias=False)),
                                      ("head", nn.Linear(head_rank, num_classes))]))


def prototype_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The prototype classifier of labelled features (n, d): rows = the centred class means, L2-normalised and scaled
    (k, d); bias = -rows @ the mean feature (k,), so the logits are centred on the samples."""
    labels = torch.as_tensor(labels)
    means = torch.stack([features[labels == k].mean(0) for k in range(num_classes)])  # (k, d)
    weight = F.normalize(means - means.mean(0), dim=-1) * scale
    return weight, -(weight @ features.mean(0))


@torch.no_grad()
def classifier_inputs(model: nn.Module, batch: dict, classifier: nn.Module) -> torch.Tensor:
    """What `classifier` (a submodule of `model`) reads when `model(**batch)` runs: (n, d) features."""
    seen = []
    handle = classifier.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        model.eval()
        model(**batch)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise LoraCodecError(f"The classifier ran {len(seen)} times in one forward pass; expected once.")
    return seen[0].reshape(seen[0].shape[0], -1).float()


def saved_module(peft_model: nn.Module, key: str) -> nn.Module:
    """The active copy of the `modules_to_save` module an adapter key (`base_model.model.classifier.weight`) belongs
    to (PEFT wraps it in a `ModulesToSaveWrapper`), or the plain module."""
    name = key.removeprefix("base_model.model.").rsplit(".", 1)[0]
    module = peft_model.base_model.model.get_submodule(name)
    return module.modules_to_save["default"] if hasattr(module, "modules_to_save") else module


def encoder_identity(base: nn.Module, classifier: str = "classifier") -> dict:
    """What a LoRA codec's base must match: its class, the architecture keys of its config and a fingerprint of its
    weights outside the classifier (which the adapter replaces, and whose size follows num_labels)."""
    from .lora import base_model_identity

    config = getattr(base, "config", None)
    identity = base_model_identity(base, [classifier])
    return {"class": type(base).__name__, "config": {k: getattr(config, k, None) for k in BASE_CONFIG_KEYS},
            "weights_fingerprint": identity["weights_fingerprint"],
            "name_or_path": identity["name_or_path"], "classifier": classifier}


class LoraCodec:
    """Codes a LoRA adapter as coefficients against the zoo's common initialisation (module docstring).

    Args:
        config: `{"rank", "head_rank", "lora_rank", "modules": [LoRA module key prefixes], "head": [classifier weight
            key, bias key], "lora_config": dict, "base": `encoder_identity`, "classifier_init_scale",
            "coef_scales": {coefficient tensor: factor}, "digest"}`.
        tensors: `ref.<lora_A key>` (A0), `P.<module>`, `Q.<module>`, `H`.
    """

    def __init__(self, config: dict, tensors: dict[str, torch.Tensor]):
        self.config, self.tensors = config, tensors
        self.reference = {k[4:]: v for k, v in tensors.items() if k.startswith("ref.")}

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, reference: dict[str, torch.Tensor], head: list[str], examples, rank: int = 16, head_rank: int = 32,
            lora_config: dict | None = None, base: dict | None = None, classifier_init_scale: float = 2.0) -> LoraCodec:
        """Fit the shared bases on training adapters.

        Args:
            reference: `<module>.lora_A.weight` -> A0 (r, in) for every LoRA module: the zoo's common initialisation.
            head: the classifier's weight and bias keys (in the adapter state_dict).
            examples: iterable of `(state_dict, (W_ref, c_ref))`: training adapters and their classifier reference
                (streamed: one adapter in memory at a time).
            rank, head_rank: R (per module, for A's rows and B's columns) and R_h.
            lora_config, base: recorded (`lora_config_dict`, `encoder_identity`) for the checks at generation.
        """
        modules = [k[:-len(LORA_A)] for k in reference if k.endswith(LORA_A)]
        if not modules:
            raise LoraCodecError(f"The reference holds no '*{LORA_A}' tensors; expected the LoRA initialisation.")
        left = {m: [] for m in modules}
        right = {m: [] for m in modules}
        head_rows = []
        for state, (w_ref, _) in examples:
            cls._check_keys(state, modules, head)
            for m in modules:
                left[m].append(state[m + LORA_B].float())  # (out, r)
                right[m].append((state[m + LORA_A].float() - reference[m + LORA_A].float()).T)  # (in, r)
            head_rows.append(state[head[0]].float() - w_ref)
        if not head_rows:
            raise LoraCodecError("LoraCodec.fit needs at least one training adapter, got none.")
        lora_rank = int(reference[modules[0] + LORA_A].shape[0])
        tensors = {f"ref.{k}": v.detach().float().contiguous() for k, v in reference.items()}
        for m in modules:
            tensors[f"P.{m}"] = top_left_singular(torch.cat(left[m], 1), rank)
            tensors[f"Q.{m}"] = top_left_singular(torch.cat(right[m], 1), rank)
        tensors["H"] = top_left_singular(torch.cat(head_rows, 0).T, head_rank)
        config = {"format": "hf_paramgen-lora-codec/1", "rank": rank, "head_rank": head_rank, "lora_rank": lora_rank,
                  "modules": modules, "head": list(head), "lora_config": lora_config or {}, "base": base or {},
                  "classifier_init_scale": classifier_init_scale, "num_training_adapters": len(head_rows),
                  "coef_scales": {}}
        codec = cls(config, tensors)
        codec.config["digest"] = weights_digest(tensors)
        return codec

    def calibrate(self, coefficient_states) -> None:
        """Set `coef_scales` from raw coefficients of training adapters: factor = target RMS / measured RMS, the target
        being the RMS of a PyTorch-initialised Linear of the same fan-in (1 / sqrt(3 fan_in))."""
        sums, counts = {}, {}
        for coefs in coefficient_states:
            for k, v in coefs.items():
                sums[k] = sums.get(k, 0.0) + float(v.float().pow(2).sum())
                counts[k] = counts.get(k, 0) + v.numel()
        fan_in = {"a": self.config["rank"], "b": self.config["lora_rank"], "h": self.config["head_rank"]}
        scales = {}
        for k in sums:
            rms = math.sqrt(sums[k] / max(counts[k], 1))
            scales[k] = (1.0 / math.sqrt(3 * fan_in[k[0]])) / rms if rms > 0 else 1.0
        self.config["coef_scales"] = scales

    # ------------------------------------------------------------------ code
    @property
    def modules(self) -> list[str]:
        return list(self.config["modules"])

    @property
    def head(self) -> list[str]:
        return list(self.config["head"])

    def layout(self, num_classes: int) -> ParamLayout:
        """The `ParamLayout` of the coefficients of a `num_classes`-way adapter."""
        cfg = self.config
        return ParamLayout.from_module(coefficient_module(cfg["rank"], cfg["head_rank"], cfg["lora_rank"],
                                                          len(cfg["modules"]), num_classes))

    @staticmethod
    def _check_keys(state: dict[str, torch.Tensor], modules: list[str], head: list[str]) -> None:
        wanted = [m + s for m in modules for s in (LORA_A, LORA_B)] + list(head)
        missing = [k for k in wanted if k not in state]
        if missing:
            raise LoraCodecError(f"The adapter lacks {len(missing)} tensors the codec codes, such as {missing[:3]}; "
                                 f"expected the {len(modules)} LoRA modules and classifier the codec was fitted on.")

    def encode(self, state: dict[str, torch.Tensor], head_reference: tuple[torch.Tensor, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
        """An adapter state_dict and its classifier reference `(W_ref, c_ref)` -> its (scaled) coefficients."""
        self._check_keys(state, self.modules, self.head)
        a = [(state[m + LORA_A].float() - self.reference[m + LORA_A]) @ self.tensors[f"Q.{m}"] for m in self.modules]
        b = [self.tensors[f"P.{m}"].T @ state[m + LORA_B].float() for m in self.modules]
        out = {"a.weight": torch.cat(a), "b.weight": torch.cat(b)}  # (M r, R), (M R, r)
        w_ref, c_ref = head_reference
        out["head.weight"] = (state[self.head[0]].float() - w_ref) @ self.tensors["H"]
        out["head.bias"] = state[self.head[1]].float() - c_ref
        return self._scaled(out, 1.0)

    def decode_body(self, coefficients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Coefficients (scaled) -> the LoRA tensors of the adapter (no classifier)."""
        coefs = self._scaled({k: v for k, v in coefficients.items() if not k.startswith("head")}, -1.0)
        a = coefs["a.weight"].split(self.config["lora_rank"])  # M x (r, R)
        b = coefs["b.weight"].split(self.config["rank"])  # M x (R, r)
        state = {}
        for i, m in enumerate(self.modules):
            state[m + LORA_A] = self.reference[m + LORA_A] + a[i] @ self.tensors[f"Q.{m}"].T
            state[m + LORA_B] = self.tensors[f"P.{m}"] @ b[i]
        return state

    def decode_head(self, coefficients: dict[str, torch.Tensor], head_reference: tuple[torch.Tensor, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
        """Coefficients (scaled) and the classifier reference -> the classifier's weight and bias."""
        coefs = self._scaled({k: coefficients[k] for k in ("head.weight", "head.bias")}, -1.0)
        w_ref, c_ref = head_reference
        if tuple(coefs["head.weight"].shape[:1]) != tuple(w_ref.shape[:1]):
            raise LoraCodecError(f"The coefficients are for {coefs['head.weight'].shape[0]} classes, the classifier "
                                 f"reference for {w_ref.shape[0]}.")
        return {self.head[0]: w_ref + coefs["head.weight"] @ self.tensors["H"].T,
                self.head[1]: c_ref + coefs["head.bias"]}

    def decode(self, coefficients: dict[str, torch.Tensor], head_reference) -> dict[str, torch.Tensor]:
        """Coefficients (scaled) -> a whole adapter. `head_reference(body)` gets the decoded LoRA tensors with a zero
        classifier (the encoder the classifier will read) and returns the classifier reference `(W_ref, c_ref)`."""
        body = self.decode_body(coefficients)
        k, d = int(coefficients["head.bias"].shape[0]), int(self.tensors["H"].shape[0])
        placeholder = {self.head[0]: torch.zeros(k, d), self.head[1]: torch.zeros(k)}
        return {**body, **self.decode_head(coefficients, head_reference({**body, **placeholder}))}

    def _scaled(self, coefs: dict[str, torch.Tensor], power: float) -> dict[str, torch.Tensor]:
        scales = self.config.get("coef_scales") or {}
        return {k: (v.float() * scales.get(k, 1.0) ** power).contiguous() for k, v in coefs.items()}

    # ------------------------------------------------------------------ checks
    def check_base(self, base: nn.Module) -> None:
        """`LoraCodecError` unless `base` is the (plain) base model the codec's adapters were trained on."""
        expected = self.config.get("base") or {}
        if not expected:
            return
        received = encoder_identity(base, expected.get("classifier", "classifier"))
        name = expected.get("name_or_path") or expected["class"]
        if received["class"] != expected["class"] or received["config"] != expected["config"]:
            diffs = {k: (expected["config"].get(k), received["config"].get(k)) for k in expected["config"]
                     if expected["config"].get(k) != received["config"].get(k)}
            raise LoraCodecError(f"This generator writes adapters for a {expected['class']} of {name} "
                                 f"({expected['config']}); received a {received['class']} "
                                 f"({received['config']}): differences (expected, received) {diffs}. Load the base "
                                 f"with AutoModelForSequenceClassification.from_pretrained({name!r}, num_labels=k).")
        if expected.get("weights_fingerprint") and received["weights_fingerprint"] != expected["weights_fingerprint"]:
            raise LoraCodecError(f"The base has the architecture of {name} but other weights (fingerprint "
                                 f"{received['weights_fingerprint'][:12]}…, expected "
                                 f"{expected['weights_fingerprint'][:12]}…): the generator's adapters were trained "
                                 f"on {name} and would not fit another checkpoint.")

    def check_adapter_layout(self, layout: ParamLayout) -> None:
        """`LoraCodecError` unless a target adapter layout (from the user's `LoraConfig`) has the codec's LoRA
        modules and rank: names the target modules and rank the generator knows and those received."""
        lora = self.config.get("lora_config") or {}
        known = sorted(lora.get("target_modules") or [])
        got_modules = [n[:-len(LORA_A)] for n in layout.names if n.endswith(LORA_A)]
        received = (layout.metadata.get("lora_config") or {})
        got_targets = received.get("target_modules")
        got_targets = sorted(got_targets) if isinstance(got_targets, (list, tuple, set)) else got_targets
        shapes = {n: tuple(s.shape) for n, s in zip(layout.names, layout.specs, strict=True)}
        rank = {tuple(shapes[m + LORA_A])[0] for m in got_modules if m + LORA_A in shapes}
        if got_modules != self.modules or rank != {self.config["lora_rank"]}:
            unseen = sorted(set(got_modules) - set(self.modules))
            raise LoraCodecError(
                f"This generator writes LoRA adapters with target_modules={known}, r={self.config['lora_rank']} "
                f"({len(self.modules)} modules); the LoraConfig asks for target_modules={got_targets}, "
                f"r={sorted(rank) if rank else None} ({len(got_modules)} modules"
                + (f"; never seen: {[u.split('.')[-1] for u in unseen][:6]}" if unseen else "") + "). "
                f"Use LoraConfig(task_type='SEQ_CLS', r={self.config['lora_rank']}, target_modules={known}, "
                f"modules_to_save=['{self.head[0].split('.')[-2]}']).")
        missing = [h for h in self.head if h not in shapes]
        if missing:
            raise LoraCodecError(f"The LoraConfig saves no classifier {missing}; expected modules_to_save with the "
                                 f"classifier (PEFT's task_type='SEQ_CLS' adds it).")

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `lora_codec.json` and `lora_codec.safetensors` atomically, as one folder (a `tokenizer/` already
        there is kept)."""
        save_codec_folder(folder, self.config, self.tensors, CONFIG_NAME, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> LoraCodec:
        folder = Path(folder)
        config, tensors = load_codec_folder(folder, CONFIG_NAME, WEIGHTS_NAME, LoraCodecError, "LoRA codec")
        digest = weights_digest(tensors)
        if digest != config.get("digest"):
            raise LoraCodecError(f"The tensors in {folder / WEIGHTS_NAME} do not match the digest the codec was "
                                 f"fitted with ({str(config.get('digest'))[:12]}…, got {digest[:12]}…): the file is "
                                 "corrupt or was replaced.")
        return cls(config, tensors)


def load_tokenizer(folder: str | os.PathLike):
    """The base's tokenizer saved beside a codec (`<folder>/tokenizer/`)."""
    from transformers import AutoTokenizer

    path = Path(folder) / TOKENIZER_SUBFOLDER
    if not path.is_dir():
        raise LoraCodecError(f"{Path(folder)} holds no {TOKENIZER_SUBFOLDER}/ (the base's tokenizer).")
    return AutoTokenizer.from_pretrained(str(path))
