"""PEFT LoRA adapters as generation targets: their layouts, and reading and writing them in PEFT's format."""

from .lora import (
    AdapterBaseMismatchError,
    adapter_state_dict,
    apply_adapter,
    base_model_identity,
    check_base_model,
    class_aligned_init,
    load_adapter,
    load_adapter_info,
    load_adapter_state_dict,
    lora_layout,
    save_adapter,
)

__all__ = ["AdapterBaseMismatchError", "adapter_state_dict", "apply_adapter", "base_model_identity",
           "check_base_model", "class_aligned_init", "load_adapter", "load_adapter_info", "load_adapter_state_dict",
           "lora_layout", "save_adapter"]
