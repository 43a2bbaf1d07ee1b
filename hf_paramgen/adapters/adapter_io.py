"""PEFT LoRA adapter folders: writing and reading them in PEFT's on-disk format.

An adapter folder is PEFT's own (`adapter_config.json` + `adapter_model.safetensors`, loadable with
`PeftModel.from_pretrained(base, folder)`) plus `adapter_info.json` (instruction, base-model identity,
layout, free metadata) and a `README.md` card. Layouts and applying weights: `lora`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from ..layout.param_layout import LayoutError, ParamLayout
from ..utils import replace_dir, temporary_sibling
from .lora import apply_adapter, check_base_model, lora_layout, target_modules

ADAPTER_INFO_FILE = "adapter_info.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def _card(lora_config: LoraConfig, instruction: str | None, metadata: dict) -> ModelCard:
    base = lora_config.base_model_name_or_path
    data = ModelCardData(library_name="peft", base_model=base, tags=["hf_paramgen", "lora", "adapter-zoo"])
    rows = "\n".join(f"| {k} | {v} |" for k, v in metadata.items() if not isinstance(v, (dict, list)))
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# LoRA adapter\n\nA PEFT LoRA adapter (rank {lora_config.r}) on "
        f"`{base}`, targets {target_modules(lora_config)}.\n\n**Instruction:** {instruction or '(none)'}\n\n"
        f"| field | value |\n| --- | --- |\n{rows}\n\nLoad it with `PeftModel.from_pretrained(base_model, path)`.\n"
    )
    return ModelCard(text)


def save_adapter(
    state_dict: dict[str, torch.Tensor],
    lora_config: LoraConfig,
    adapter_dir: str | os.PathLike,
    instruction: str | None = None,
    metadata: dict | None = None,
    layout: ParamLayout | None = None,
) -> Path:
    """Write an adapter folder in PEFT's format, atomically (a temporary folder, then a rename).

    Args:
        state_dict: adapter tensors keyed as PEFT saves them.
        lora_config: its `LoraConfig` (written with `save_pretrained`).
        adapter_dir: destination folder (replaced if it exists).
        instruction: the instruction text the adapter answers.
        metadata: JSON-serialisable extras (task, metrics, split, ...), kept in `adapter_info.json` and the card.
        layout: the adapter's layout (`lora_layout`); when given, `state_dict` is validated against it and
            its base identity is recorded.

    Returns:
        The folder path.
    """
    adapter_dir = Path(adapter_dir)
    if layout is not None:
        layout.validate(state_dict, source=f"adapter for {adapter_dir}")
    tmp = temporary_sibling(adapter_dir)
    try:
        tmp.mkdir()
        lora_config.save_pretrained(str(tmp))
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        info = {
            "instruction": instruction,
            "metadata": metadata or {},
            "base": (layout.metadata.get("base") if layout is not None else None),
            "layout": layout.to_dict() if layout is not None else None,
        }
        (tmp / ADAPTER_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        _card(lora_config, instruction, metadata or {}).save(str(tmp / "README.md"))
        replace_dir(tmp, adapter_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter_dir


def _require_adapter_dir(adapter_dir: Path) -> None:
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter folder: {name} is missing.")


def load_adapter_state_dict(adapter_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """Read `(state_dict, lora_config)` from a PEFT adapter folder (keys as saved)."""
    adapter_dir = Path(adapter_dir)
    _require_adapter_dir(adapter_dir)
    lora_config = LoraConfig.from_pretrained(str(adapter_dir))
    return load_file(str(adapter_dir / ADAPTER_WEIGHTS_FILE)), lora_config


def load_adapter_info(adapter_dir: str | os.PathLike) -> dict:
    """`adapter_info.json` of an adapter folder (instruction, metadata, base, layout); {} if absent."""
    path = Path(adapter_dir) / ADAPTER_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_adapter(base_model: nn.Module, adapter_dir: str | os.PathLike, check_base: bool = True) -> PeftModel:
    """`apply_adapter` from a folder, checking the base against the identity the folder records."""
    state_dict, lora_config = load_adapter_state_dict(adapter_dir)
    expected = load_adapter_info(adapter_dir).get("base") if check_base else None
    return apply_adapter(base_model, state_dict, lora_config, expected_base=expected)


def adapter_checkpoint(
    path: str | os.PathLike, base_model: nn.Module, check_base: bool = True
) -> tuple[dict[str, torch.Tensor], ParamLayout, dict]:
    """One adapter folder as a corpus record: `(state_dict, layout, info)`.

    The layout is rebuilt from `base_model` and the folder's `LoraConfig` (never from key names) and the
    state_dict is validated against it; `info` holds the instruction and metadata of `adapter_info.json`
    plus `path`, `format="peft-lora"` and the base identity.
    """
    path = Path(path)
    state_dict, lora_config = load_adapter_state_dict(path)
    saved = load_adapter_info(path)
    if check_base and saved.get("base"):
        check_base_model(base_model, saved["base"], source=f"adapter {path}")
    layout = lora_layout(base_model, lora_config)
    extra = sorted(set(state_dict) - set(layout.names))
    if extra:
        raise LayoutError(f"{path}: {ADAPTER_WEIGHTS_FILE} has tensors the LoraConfig does not create: {extra[:10]}.")
    layout.validate(state_dict, source=str(path / ADAPTER_WEIGHTS_FILE))
    info = {
        "path": str(path),
        "format": "peft-lora",
        "instruction": saved.get("instruction"),
        "metadata": saved.get("metadata", {}),
        "base": layout.metadata["base"],
    }
    return {n: state_dict[n] for n in layout.names}, layout, info
