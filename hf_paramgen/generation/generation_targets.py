"""Generation targets: what a generator builds weights for (an `nn.Module` template, a transformers config, a
`ParamLayout` or a LoRA target `(base_model, LoraConfig)`), the checks of the caller's data against it, and
building the generated weights into a model."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from ..layout.chunking import num_chunks
from ..layout.param_layout import KINDS, LayoutError, ParamLayout


class GenerationError(ValueError):
    """The instruction, target or generator pieces cannot produce parameters."""


def is_texts(X) -> bool:
    """True for a non-empty list/tuple of strings (labelled texts as few-shot samples)."""
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(x, str) for x in X)


def check_finite(X: torch.Tensor, name: str) -> None:
    """`GenerationError` when float inputs hold NaN or Inf (in float32, as the encoders and the target read them)."""
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        n = int(bad.sum())
        raise GenerationError(f"{name} X holds {n} non-finite value{'s' * (n > 1)} (NaN or Inf, or beyond the float32 "
                              f"range) among {X.numel()}; expected finite numbers: clean or drop those inputs.")


def _describe(obj) -> str:
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return f"a {type(obj).__name__} of shape {tuple(shape)}"
    return f"a {type(obj).__name__} of length {len(obj)}" if isinstance(obj, (tuple, list)) else type(obj).__name__


def check_pair(samples, layout: ParamLayout | None, name: str) -> tuple[Any, torch.Tensor]:
    """`(X, y)`: inputs (numeric, finite, at least one) or texts, and as many integer labels (>= 0, below the
    output units of `layout` when given). Raises `TypeError` for anything but a pair, `ValueError`
    (`GenerationError` for NaN/Inf inputs) naming what was expected and what was received."""
    if not (isinstance(samples, (tuple, list)) and len(samples) == 2):
        raise TypeError(f"{name} must be a pair (X, y) of inputs and their labels, got {_describe(samples)}: pass "
                        f"{name}=(X, y).")
    X, y = samples
    if X is None or y is None:
        raise TypeError(f"{name} must be a pair (X, y) of inputs and their labels, got X={_describe(X)} and "
                        f"y={_describe(y)}: give both.")
    if not is_texts(X):
        if isinstance(X, torch.Tensor) and (X.is_meta or X.is_complex()):
            raise TypeError(f"{name} X must be real numbers with values, got a {'meta' if X.is_meta else X.dtype} "
                            f"tensor of shape {tuple(X.shape)}: pass real-valued inputs.")
        try:
            values = torch.as_tensor(X) if not isinstance(X, torch.Tensor) else X.detach()
            if values.is_complex():
                raise TypeError(f"complex values ({values.dtype}) have no real order")
            values = values.float()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} X must be numeric inputs (n, ...) (a tensor or an array) or a list of texts, "
                            f"got {_describe(X)} ({err}).") from err
        if values.ndim == 0 or values.shape[0] == 0:
            raise ValueError(f"{name} X must hold at least one input (n, ...), got {_describe(X)}.")
        check_finite(values, name)
    try:
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} y must be integer labels (n,), got {_describe(y)} ({err}).") from err
    if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
        raise ValueError(f"{name} y must be integer class labels, got non-integer values such as "
                         f"{y[~(torch.isfinite(y) & (y == y.round()))].flatten()[0].item()}: pass {name}=(X, y) with "
                         "y the labels.")
    if y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} y must be integer class labels, got {y.dtype}.")
    y = y.long().reshape(-1)
    if len(X) != y.numel():
        raise ValueError(f"{name} must hold as many labels as inputs, got {len(X)} inputs and {y.numel()} labels.")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} labels must be >= 0 (class ids in the target's output order), got {int(y.min())}.")
    out = layout.output_size if layout is not None else None
    if out is not None and y.numel() and int(y.max()) >= out:
        raise ValueError(f"{name} labels go up to {int(y.max())}, but the target has {out} output units "
                         f"(labels must lie in 0..{out - 1}).")
    return X, y


def check_adapter_base(base: nn.Module, known_layouts: dict) -> None:
    """A LoRA target's base must be the base of the adapter layouts the generator knows (if it knows any)."""
    from ..adapters.lora import AdapterBaseMismatchError, check_base_model

    errors = []
    for name, value in known_layouts.items():
        layout = ParamLayout.from_json(value) if isinstance(value, str) else ParamLayout.from_dict(value)
        if layout.metadata.get("peft_type") != "LORA" or not layout.metadata.get("base"):
            continue
        try:
            check_base_model(base, layout, source=f"generator adapter layout {name!r}")
            return
        except AdapterBaseMismatchError as err:
            errors.append(str(err))
    if errors:
        raise AdapterBaseMismatchError(f"The base model matches none of the generator's adapter corpora: {errors}")


def build_model(template, state_dict: dict[str, torch.Tensor], layout: ParamLayout) -> nn.Module:
    """A fresh model of the target with `state_dict` loaded: a copy of an `nn.Module` template, `AutoModel` of a
    transformers config, or a PeftModel around a copy of the base for a `(base, LoraConfig)` target."""
    if isinstance(template, tuple):
        from ..adapters.lora import apply_adapter

        base, lora_config = template
        return apply_adapter(copy.deepcopy(base), state_dict, lora_config, expected_base=layout)
    if isinstance(template, PreTrainedConfig):
        from transformers import AutoModel

        model = AutoModel.from_config(template)
    else:
        model = copy.deepcopy(template)
    result = model.load_state_dict(state_dict, strict=False)
    names = set(layout.names)
    missing = [k for k in result.missing_keys if k in names]
    if missing or result.unexpected_keys:
        raise LayoutError(f"Generated weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}.")
    return model.eval()


def reload_model(model: nn.Module, template, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A model `build_model` made for `template`, with another generated `state_dict` loaded in place (the adapter
    of a PeftModel for a LoRA target); the same checks already passed for this layout."""
    if isinstance(template, tuple):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state_dict)
    else:
        model.load_state_dict(state_dict, strict=False)
    return model.eval()


def resolve_target(target: Any, known_layouts: dict | None = None) -> tuple[ParamLayout, Any]:
    """`target` -> (layout, template): template is the `nn.Module`, transformers config or `(base, LoraConfig)`
    the weights are built into, None for a bare `ParamLayout`. A LoRA target's base must be the base of the adapter
    layouts in `known_layouts` (name -> layout JSON), if any is one."""
    if isinstance(target, ParamLayout):
        return target, None
    if isinstance(target, (tuple, list)) and len(target) == 2 and type(target[1]).__name__ == "LoraConfig":
        from ..adapters.lora import check_target_modules, lora_layout

        base, lora_config = target
        if not isinstance(base, nn.Module):
            raise TypeError(f"A LoRA target is (base_model: nn.Module, LoraConfig), "
                            f"got ({type(base).__name__}, ...).")
        try:
            check_target_modules(base, lora_config)  # a partly misspelt target list is refused, not half applied
            layout = lora_layout(base, lora_config)
        except ValueError as err:
            raise LayoutError(f"LoraConfig target_modules={lora_config.target_modules!r} do not fit the base "
                              f"model {type(base).__name__}: {err}") from err
        check_adapter_base(base, known_layouts or {})
        return layout, (base, lora_config)
    if isinstance(target, nn.Module):
        return ParamLayout.from_module(target), target
    if isinstance(target, PreTrainedConfig):
        return ParamLayout.from_config(target), target
    raise TypeError("target must be an nn.Module template, a transformers config, a ParamLayout or "
                    f"(base_model, LoraConfig); got {type(target).__name__}.")


# ------------------------------------------------------------------------------ what the generator can serve
ON_UNSEEN_LAYOUT = ("warn", "error")  # a target whose tensor shapes match no trained layout: flag it, or refuse


def check_layout(layout: ParamLayout, prior_config, tokenizer_config) -> None:
    """Raise `GenerationError` (`LayoutError`) when the prior (the ParamTokenizer) cannot express `layout`."""
    cfg, tok = prior_config, tokenizer_config
    if len(layout) == 0:
        raise GenerationError("The target layout has no tensors: expected a target with at least one parameter.")
    if layout.num_params == 0:
        raise GenerationError(f"The target layout has no weights to generate: its {len(layout)} tensors are all of "
                              "size 0; expected a target with at least one parameter.")
    kinds = {s.kind for s in layout.specs}
    bad = sorted(k for k in kinds if KINDS.index(k) >= cfg.num_kinds)
    if bad:
        raise GenerationError(f"Tensor kinds {bad} are beyond the prior's kind table ({cfg.num_kinds} kinds).")
    if getattr(cfg, "structure_embedding", "tables") == "tables":  # factorised structure has no table to overflow
        if len(layout) > cfg.max_tensors:
            raise GenerationError(f"The target has {len(layout)} tensors; the prior's table holds "
                                  f"max_tensors={cfg.max_tensors}.")
        # chunks of the longest tensor ("layer"), or of the whole network ("architecture": one global index);
        # counted, not built, so a huge target costs nothing here
        most = (max(-(-s.numel // tok.chunk_size) for s in layout.specs) if tok.aggregation == "layer"
                else num_chunks(layout, tok.chunk_size, tok.aggregation))
        if most > cfg.max_chunks_per_tensor:
            raise GenerationError(f"A tensor of the target spans {most} chunks; the prior's table holds "
                                  f"max_chunks_per_tensor={cfg.max_chunks_per_tensor}.")
    for key in ("chunk_size", "aggregation"):
        want = getattr(tok, key)
        got = layout.metadata.get(key, want)
        if got != want:
            raise LayoutError(f"The target layout was chunked with {key}={got!r}; this generator uses {want!r}.")
    floats = ("float", "bfloat", "torch.float", "torch.bfloat")
    bad = [s.name for s in layout.specs if not str(s.dtype).startswith(floats)]
    if bad:
        raise LayoutError(f"The generator only expresses floating-point tensors; the target has {bad[:5]}.")


def known_layouts(prior_config) -> dict[str, ParamLayout]:
    """The layouts the prior was trained on (`config.layouts`: name -> layout)."""
    def load(value) -> ParamLayout:
        if isinstance(value, ParamLayout):
            return value
        return ParamLayout.from_json(value) if isinstance(value, str) else ParamLayout.from_dict(value)

    return {name: load(value) for name, value in (prior_config.layouts or {}).items()}


def check_in_distribution(layout: ParamLayout, known: dict[str, ParamLayout],
                          on_unseen_layout: str = "warn") -> list[str]:
    """Compare `layout` with the trained layouts (tensor kinds and shapes, in order; names may differ).

    Returns the reasons it is out of distribution ([] when it matches a trained layout, or when the generator
    records none). A tensor kind no trained layout has is always refused; other differences (widths, depth,
    head size) are refused when `on_unseen_layout="error"`, else warned about (`UserWarning`) and returned.
    """
    if on_unseen_layout not in ON_UNSEEN_LAYOUT:
        raise ValueError(f"on_unseen_layout must be one of {ON_UNSEEN_LAYOUT}, got {on_unseen_layout!r}.")
    if not known:
        return []
    signature = _signature(layout)
    if any(_signature(k) == signature for k in known.values()):
        return []
    names = sorted(known)
    known_kinds = sorted({s.kind for k in known.values() for s in k.specs if not s.is_buffer})
    unseen = sorted({kind for kind, _ in signature} - set(known_kinds))
    if unseen:
        raise GenerationError(f"The target has tensor kinds {unseen} that no layout of this generator has (it "
                              f"knows kinds {known_kinds}, layouts {names}); it cannot generate them.")
    shapes = [list(shape) for _, shape in signature]
    shown = f"{shapes[:6]}{' ...' if len(shapes) > 6 else ''}"
    reasons = [f"its {len(shapes)} tensors {shown} match none of the {len(names)} layouts the generator was trained "
               f"on ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})"]
    if on_unseen_layout == "error":
        raise GenerationError(f"Out of distribution: {reasons[0]}. Pass on_unseen_layout='warn' to generate "
                              "anyway (flagged out_of_distribution), or target a trained layout.")
    warnings.warn(f"Generating for a layout out of distribution: {reasons[0]}; the network is flagged "
                  "out_of_distribution and may be poor: check it on validation data.", UserWarning, stacklevel=4)
    return reasons


def _signature(layout: ParamLayout) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, shape) of each generated tensor, in order: what a layout is, whatever its tensor names."""
    return [(s.kind, tuple(s.shape)) for s in layout.specs if not s.is_buffer]


def check_input_size(layout: ParamLayout, pair, name: str, template=None) -> None:
    """Numeric inputs of `pair` must have the target's input size: `template.input_shape` where the target model
    declares one (e.g. a network that pools its input before its first layer), else what a linear first layer
    takes."""
    if pair is None or layout.metadata.get("peft_type") or not isinstance(pair, (tuple, list)) or not len(pair):
        return
    X = pair[0]
    if is_texts(X) or not hasattr(X, "__len__") or not len(X):
        return
    features = int(torch.as_tensor(X[0]).numel())
    declared = getattr(template, "input_shape", None)
    if declared is not None and all(isinstance(d, int) for d in declared):
        expected = math.prod(declared)
        if features != expected:
            raise GenerationError(f"{name} have {features} features per input, but the target reads inputs of shape "
                                  f"{list(declared)} ({expected} features): give inputs of the target's input size.")
        return
    first = next((s for s in layout.specs if not s.is_buffer), None)
    if first is None or first.kind != "linear.weight" or len(first.shape) != 2:
        return
    if features != first.shape[1]:
        raise GenerationError(f"{name} have {features} features per input, but the target's first layer "
                              f"{first.name!r} takes {first.shape[1]}: give inputs of the target's input size.")
