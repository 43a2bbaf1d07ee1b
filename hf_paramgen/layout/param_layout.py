"""`ParamLayout`: the exact list of tensors a generator produces, built from a real template.

A layout is never guessed from key names: it is read off a `state_dict`, an `nn.Module` (which also
tells each tensor's *kind* from the module that owns it), or a transformers config (instantiated on
the meta device, so no memory is spent). `flatten` / `unflatten` are exact inverses.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

# Tensor kinds, in a fixed order: the index is the id the models embed. Append only.
KINDS: tuple[str, ...] = (
    "other",
    "linear.weight",
    "linear.bias",
    "conv.weight",
    "conv.bias",
    "norm.weight",
    "norm.bias",
    "embedding.weight",
    "buffer",
    "lora_A",
    "lora_B",
    "matrix",
    "vector",
)
KIND_TO_ID = {k: i for i, k in enumerate(KINDS)}

_MODULE_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.modules.conv._ConvNd, "conv"),
    (nn.modules.batchnorm._NormBase, "norm"),
    (nn.LayerNorm, "norm"),
    (nn.GroupNorm, "norm"),
    (nn.Embedding, "embedding"),
)


class LayoutError(ValueError):
    """A state_dict or weight vector does not match the layout it is used with."""


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of a layout: `name`, `shape`, `dtype`, `offset` into the flat weights, `kind`."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    offset: int = 0
    kind: str = "other"
    is_buffer: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def kind_id(self) -> int:
        return KIND_TO_ID[self.kind]

    @property
    def fan_in(self) -> int:
        """Inputs per output unit (1 for vectors): a scale derived from the shape alone."""
        return math.prod(self.shape[1:]) if len(self.shape) >= 2 else 1


def _kind_for_ndim(ndim: int) -> str:
    return "matrix" if ndim >= 2 else "vector"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ParamLayout:
    """An ordered list of `ParamSpec`s with contiguous offsets.

    Build it with `from_state_dict`, `from_module`, `from_config` (transformers) or
    `hf_paramgen.adapters.lora.lora_layout` (base model + `LoraConfig`).
    """

    specs: tuple[ParamSpec, ...]
    metadata: dict = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_specs(cls, entries: list[tuple[str, tuple[int, ...], str, str, bool]], metadata: dict | None = None):
        """Build from `(name, shape, dtype, kind, is_buffer)` tuples, assigning offsets."""
        specs, offset = [], 0
        for name, shape, dtype, kind, is_buffer in entries:
            if kind not in KIND_TO_ID:
                raise LayoutError(f"Unknown tensor kind {kind!r} for {name!r}; expected one of {KINDS}.")
            spec = ParamSpec(name, tuple(int(s) for s in shape), dtype, offset, kind, is_buffer)
            specs.append(spec)
            offset += spec.numel
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise LayoutError(f"Duplicate tensor names in layout: {dup}.")
        return cls(tuple(specs), dict(metadata or {}))

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], kinds: dict[str, str] | None = None) -> ParamLayout:
        """Every floating-point tensor of `state_dict`, in its order. Kinds from `kinds` or tensor rank."""
        kinds = kinds or {}
        entries = []
        for name, tensor in state_dict.items():
            if not torch.is_floating_point(tensor):
                continue  # integer buffers (e.g. BatchNorm's num_batches_tracked) are not generated
            kind = kinds.get(name, _kind_for_ndim(tensor.ndim))
            entries.append((name, tuple(tensor.shape), _dtype_name(tensor.dtype), kind, kind == "buffer"))
        return cls.from_specs(entries)

    @classmethod
    def from_module(cls, module: nn.Module, include_buffers: bool = False) -> ParamLayout:
        """Parameters (and optionally floating-point buffers such as BatchNorm statistics) of `module`."""
        kinds: dict[str, str] = {}
        for mod_name, mod in module.named_modules():
            base = next((k for t, k in _MODULE_KINDS if isinstance(mod, t)), None)
            for p_name, _ in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                kind = f"{base}.{p_name}" if base else None
                kinds[full] = kind if kind in KIND_TO_ID else None
            for b_name, _ in mod.named_buffers(recurse=False):
                kinds[f"{mod_name}.{b_name}" if mod_name else b_name] = "buffer"
        state_dict = module.state_dict(keep_vars=True)
        entries = []
        for name, tensor in state_dict.items():
            kind = kinds.get(name)
            is_buffer = kind == "buffer"
            if (is_buffer and not include_buffers) or not torch.is_floating_point(tensor):
                continue
            kind = kind or _kind_for_ndim(tensor.ndim)
            entries.append((name, tuple(tensor.shape), _dtype_name(tensor.dtype), kind, is_buffer))
        return cls.from_specs(entries)

    @classmethod
    def from_config(cls, config, include_buffers: bool = False) -> ParamLayout:
        """Layout of the transformers model a `PreTrainedConfig` describes, built on the meta device."""
        from transformers import AutoModel

        with torch.device("meta"):
            model = AutoModel.from_config(config)
        layout = cls.from_module(model, include_buffers=include_buffers)
        return cls(layout.specs, {"model_type": getattr(config, "model_type", None)})

    # ------------------------------------------------------------------ properties
    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.specs)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def head_tensors(self) -> list[int]:
        """Indices of the classifier head's tensors: the last 2-D `linear.weight` and the `linear.bias` right after
        it (row i of these tensors is output unit i, i.e. class i). A layout may name its head in
        `metadata["head"]` instead (LoRA layouts: the `lora_B` of the base's output layer); adapters that do not
        touch the output layer have no head (`[]`)."""
        specs = self.specs
        if "head" in self.metadata:
            names = set(self.metadata["head"] or [])
            return [i for i, s in enumerate(specs) if s.name in names]
        weights = [i for i, s in enumerate(specs)
                   if s.kind == "linear.weight" and not s.is_buffer and len(s.shape) == 2]
        if not weights:
            return []
        w = weights[-1]
        head = [w]
        bias = specs[w + 1] if w + 1 < len(specs) else None
        if bias is not None and bias.kind == "linear.bias" and tuple(bias.shape) == (specs[w].shape[0],):
            head.append(w + 1)
        return head

    @property
    def output_size(self) -> int | None:
        """Output units of a classifier layout: the first dim of its last weight tensor (ndim >= 2, not a buffer);
        None for a layout without weight matrices. The labels of a task on this layout are 0..output_size-1."""
        weights = [s for s in self.specs if len(s.shape) >= 2 and not s.is_buffer]
        return int(weights[-1].shape[0]) if weights else None

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, name: str) -> ParamSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(f"{name!r} is not in the layout; tensors are {self.names}.")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {"specs": [dict(asdict(s), shape=list(s.shape)) for s in self.specs], "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict) -> ParamLayout:
        entries = [(s["name"], tuple(s["shape"]), s["dtype"], s["kind"], s["is_buffer"]) for s in data["specs"]]
        layout = cls.from_specs(entries, data.get("metadata"))
        for spec, s in zip(layout.specs, data["specs"], strict=True):
            if spec.offset != s["offset"]:
                raise LayoutError(f"Offset of {spec.name!r} is {s['offset']} in the JSON, expected {spec.offset}.")
        return layout

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ParamLayout:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """Canonical text rendering of the architecture (the architecture instruction)."""
        parts = [f"{s.name}: {s.kind} {list(s.shape)}" for s in self.specs]
        return f"params: {self.num_params}; tensors: {len(self.specs)}; " + "; ".join(parts)

    # ------------------------------------------------------------------ flatten / unflatten
    def validate(self, state_dict: dict[str, torch.Tensor], source: str = "state_dict") -> None:
        """Raise `LayoutError` naming the tensor if `state_dict` lacks, misshapes or corrupts a tensor."""
        missing = [n for n in self.names if n not in state_dict]
        if missing:
            raise LayoutError(f"{source}: missing tensors {missing} (layout expects {len(self.specs)} tensors).")
        for spec in self.specs:
            t = state_dict[spec.name]
            if tuple(t.shape) != spec.shape:
                raise LayoutError(f"{source}: tensor {spec.name!r} has shape {tuple(t.shape)}, expected {spec.shape}.")
            if not torch.is_floating_point(t):
                raise LayoutError(f"{source}: tensor {spec.name!r} has dtype {t.dtype}, "
                                  f"expected a float ({spec.dtype}).")
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise LayoutError(f"{source}: tensor {spec.name!r} holds {bad} NaN/inf values.")

    def flatten(self, state_dict: dict[str, torch.Tensor], source: str = "state_dict") -> torch.Tensor:
        """Concatenate the layout's tensors into flat float32 `weights` (D,). Exact for float32 inputs."""
        self.validate(state_dict, source)
        return torch.cat([state_dict[s.name].detach().reshape(-1).to(torch.float32).cpu() for s in self.specs])

    def unflatten(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of `flatten`: (D,) -> `state_dict` with each tensor's shape and dtype."""
        if weights.ndim != 1 or weights.numel() != self.num_params:
            raise LayoutError(f"weights must be a flat vector of {self.num_params} values, "
                              f"got shape {tuple(weights.shape)}.")
        return {
            s.name: weights[s.offset : s.offset + s.numel].reshape(s.shape).to(getattr(torch, s.dtype)).clone()
            for s in self.specs
        }

    def fan_in_scale(self) -> torch.Tensor:
        """(D,) per-weight `sqrt(fan_in)` of its tensor: multiplies weights to unit-ish scale, from shapes alone."""
        return torch.cat([torch.full((s.numel,), math.sqrt(s.fan_in)) for s in self.specs])
