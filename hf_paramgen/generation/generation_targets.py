"""Generation targets: what a generator builds weights for (an `nn.Module` template, a transformers config, a
`ParamLayout` or a LoRA target `(base_model, LoraConfig)`), the checks of the caller's data against it, and
building the generated weights into a model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from ..layout.param_layout import LayoutError, ParamLayout


class GenerationError(ValueError):
    """The instruction, target or generator pieces cannot produce parameters."""


def is_texts(X) -> bool:
    """True for a non-empty list/tuple of strings (labelled texts as few-shot samples)."""
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(x, str) for x in X)


def check_pair(samples, layout: ParamLayout, name: str) -> tuple[Any, torch.Tensor]:
    """`(X, y)` with as many labels as inputs, labels below the target's output units."""
    if not (isinstance(samples, (tuple, list)) and len(samples) == 2):
        raise TypeError(f"{name} must be a pair (X, y), got {type(samples).__name__}.")
    X, y = samples
    y = torch.as_tensor(y).long().reshape(-1)
    if len(X) != y.numel():
        raise ValueError(f"{name} must hold as many labels as inputs, got {len(X)} inputs and {y.numel()} labels.")
    out = layout.output_size
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


def resolve_target(target: Any, known_layouts: dict | None = None) -> tuple[ParamLayout, Any]:
    """`target` -> (layout, template): template is the `nn.Module`, transformers config or `(base, LoraConfig)`
    the weights are built into, None for a bare `ParamLayout`. A LoRA target's base must be the base of the adapter
    layouts in `known_layouts` (name -> layout JSON), if any is one."""
    if isinstance(target, ParamLayout):
        return target, None
    if isinstance(target, (tuple, list)) and len(target) == 2 and type(target[1]).__name__ == "LoraConfig":
        from ..adapters.lora import lora_layout

        base, lora_config = target
        if not isinstance(base, nn.Module):
            raise TypeError(f"A LoRA target is (base_model: nn.Module, LoraConfig), "
                            f"got ({type(base).__name__}, ...).")
        try:
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
