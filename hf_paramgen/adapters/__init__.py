"""PEFT LoRA adapters as generation targets: their layouts and applying weights (`lora`), reading and writing
them in PEFT's format (`adapter_io`), and whole adapters as a few thousand coefficients (`lora_codec`)."""

from .adapter_io import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_INFO_FILE,
    ADAPTER_WEIGHTS_FILE,
    adapter_checkpoint,
    load_adapter,
    load_adapter_info,
    load_adapter_state_dict,
    save_adapter,
)
from .lora import (
    AdapterBaseMismatchError,
    adapter_state_dict,
    apply_adapter,
    base_model_identity,
    check_base_model,
    check_target_modules,
    class_aligned_init,
    lora_config_dict,
    lora_layout,
    peft_config_copy,
    target_modules,
    targetable_modules,
)
from .lora_codec import LoraCodec, LoraCodecError, prototype_classifier

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_INFO_FILE", "ADAPTER_WEIGHTS_FILE", "AdapterBaseMismatchError", "LoraCodec",
           "LoraCodecError", "prototype_classifier",
           "adapter_checkpoint", "adapter_state_dict", "apply_adapter", "base_model_identity", "check_base_model",
           "check_target_modules", "class_aligned_init", "load_adapter", "load_adapter_info",
           "load_adapter_state_dict", "lora_config_dict", "lora_layout", "peft_config_copy", "save_adapter",
           "target_modules", "targetable_modules"]
