"""PEFT LoRA adapters as a generation target: base-model identity, adapter layouts, applying generated weights.

With `adapter_io` (PEFT folders on disk), the only modules of the core that import `peft`. An adapter is described by a
`ParamLayout` built by peft itself (`get_peft_model` on a weightless meta-device copy of the base,
then `get_peft_model_state_dict`), so tensor names are exactly the keys PEFT writes to
`adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight`, ...). LoRA's B matrices start
at zero in PEFT; a generator writes both A and B.

This module is part of a generator's remote code (the pipeline imports it): torch, peft and the layout only.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import re
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from ..layout.param_layout import LayoutError, ParamLayout

# module types LoRA can wrap (what the "could be targeted" hint lists)
_TARGETABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_KIND_ATTRS = {"lora_A": "lora_A", "lora_B": "lora_B", "lora_embedding_A": "lora_A", "lora_embedding_B": "lora_B"}


class AdapterBaseMismatchError(ValueError):
    """An adapter is applied to a base model other than the one it was made for."""


# ---------------------------------------------------------------------------------------- base identity
def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def base_model_identity(base_model: nn.Module, fingerprint_excludes: Sequence[str] = ()) -> dict:
    """What identifies a base model: class, name/path, parameter count, structure hash, weight fingerprint.

    The structure hash covers every parameter's name, shape and dtype; the fingerprint hashes the first
    64 values of each parameter (as float32), so a differently trained base with the same architecture
    is told apart. It is `None` for a model on the meta device.

    `fingerprint_excludes`: names of modules whose parameters the fingerprint skips (an adapter's
    `modules_to_save`, e.g. a freshly initialised `classifier` that the adapter replaces); recorded as
    `fingerprint_excludes` when not empty, so `check_base_model` skips them too.
    """
    if isinstance(base_model, PeftModel):
        raise TypeError("base_model must be the plain base model, got a PeftModel; pass `peft_model.get_base_model()`.")
    excludes = sorted(set(fingerprint_excludes))
    skipped = lambda name: any(name.startswith(m + ".") for m in excludes)  # noqa: E731
    params = list(base_model.named_parameters())
    structure = json.dumps([(n, list(p.shape), str(p.dtype)) for n, p in params])
    fingerprint = None
    if params and not any(p.is_meta for _, p in params):
        digest = hashlib.sha256()
        for name, p in params:
            if skipped(name):
                continue
            digest.update(name.encode())
            digest.update(p.detach().reshape(-1)[:64].to(torch.float32).cpu().numpy().tobytes())
        fingerprint = digest.hexdigest()
    config = getattr(base_model, "config", None)
    name_or_path = getattr(config, "_name_or_path", None) or getattr(base_model, "name_or_path", None)
    identity = {
        "class": f"{type(base_model).__module__}.{type(base_model).__qualname__}",
        "name_or_path": str(name_or_path) if name_or_path else None,
        "num_params": sum(p.numel() for _, p in params),
        "structure_sha256": _sha256(structure),
        "weights_fingerprint": fingerprint,
    }
    if excludes:
        identity["fingerprint_excludes"] = excludes
    return identity


def check_base_model(base_model: nn.Module, expected: dict | ParamLayout, source: str = "adapter") -> None:
    """Raise `AdapterBaseMismatchError` if `base_model` is not the base recorded in `expected`.

    Args:
        base_model: the model the adapter is about to be applied to.
        expected: a base identity dict (`base_model_identity`) or an adapter layout holding one in `metadata["base"]`.
        source: what the adapter is (a folder name), for the message.
    """
    if isinstance(expected, ParamLayout):
        expected = expected.metadata.get("base") or {}
    if not expected:
        raise AdapterBaseMismatchError(f"{source}: no base-model identity recorded; cannot check the base model.")
    received = base_model_identity(base_model, expected.get("fingerprint_excludes") or ())
    keys = ["class", "num_params", "structure_sha256"]
    if expected.get("weights_fingerprint") and received["weights_fingerprint"]:
        keys.append("weights_fingerprint")
    diffs = [k for k in keys if expected.get(k) != received[k]]
    if diffs:
        lines = [f"  {k}: expected {expected.get(k)!r}, received {received[k]!r}" for k in diffs]
        if diffs == ["weights_fingerprint"]:
            lines.append("  (same architecture, different weights: the adapter was trained on another checkpoint)")
        raise AdapterBaseMismatchError(
            f"{source} was made for base model {expected.get('name_or_path') or expected.get('class')!r} "
            f"but is applied to {received['name_or_path'] or received['class']!r}:\n" + "\n".join(lines)
        )


# ---------------------------------------------------------------------------------------- layout
def _meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose parameters and buffers live on the meta device (no memory)."""
    memo: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def targetable_modules(base_model: nn.Module) -> list[str]:
    """Names of the modules of `base_model` that LoRA can wrap (Linear, Embedding, Conv)."""
    return [name for name, mod in base_model.named_modules() if name and isinstance(mod, _TARGETABLE)]


def target_modules(lora_config: LoraConfig) -> str | list[str] | None:
    """`target_modules` of a `LoraConfig` for messages and cards: a regex string as is, a set sorted."""
    targets = lora_config.target_modules
    return targets if isinstance(targets, str) or targets is None else sorted(targets)


def peft_config_copy(lora_config: LoraConfig) -> LoraConfig:
    """A copy to give `get_peft_model` (which overwrites `base_model_name_or_path` with a warning)."""
    config = copy.deepcopy(lora_config)
    config.base_model_name_or_path = None
    return config




def _target_matches(target: str, name: str) -> bool:
    """PEFT's rule for one entry of a `target_modules` list: the module name or its dotted suffix."""
    return name == target or name.endswith("." + target)


def check_target_modules(base_model: nn.Module, lora_config: LoraConfig) -> None:
    """Raise `ValueError` unless every entry of `target_modules` and `modules_to_save` names a module of
    `base_model` (PEFT itself only fails when *no* entry matches, so a misspelt one would silently adapt less).

    The message names the entries that match nothing and the module name suffixes that exist.
    """
    names = [n for n, _ in base_model.named_modules() if n]
    targetable = targetable_modules(base_model)
    targets = lora_config.target_modules
    if isinstance(targets, str):
        missing_targets = [] if any(re.fullmatch(targets, n) for n in targetable) else [targets]
    else:
        missing_targets = sorted(t for t in targets or [] if not any(_target_matches(t, n) for n in targetable))
    missing_saved = sorted(m for m in lora_config.modules_to_save or [] if not any(_target_matches(m, n)
                                                                                 for n in names))
    if missing_targets or missing_saved:
        suffixes = sorted({".".join(n.split(".")[-2:]) for n in targetable})  # e.g. "self.query", "output.dense"
        raise ValueError(
            f"LoraConfig names modules {type(base_model).__name__} does not have: target_modules "
            f"{missing_targets or 'all found'}, modules_to_save {missing_saved or 'all found'}. Expected names "
            f"(or dotted suffixes) of its modules; LoRA can target {len(targetable)} modules, e.g. {targetable[:8]} "
            f"(suffixes: {suffixes[:40]}); top-level modules: {sorted({n.split('.')[0] for n in names})}."
        )


def _wrap(base_model: nn.Module, lora_config: LoraConfig) -> PeftModel:
    """`get_peft_model` with an error that lists what could be targeted when nothing matches."""
    try:
        with torch.random.fork_rng(devices=[]):  # LoRA init must not move the caller's RNG
            return get_peft_model(base_model, peft_config_copy(lora_config))
    except ValueError as err:
        if "not found in the base model" not in str(err) and "No modules were targeted" not in str(err):
            raise
        names = targetable_modules(base_model)
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(
            f"LoraConfig target_modules={target_modules(lora_config)!r} match no module of the base "
            f"model {type(base_model).__name__}. Modules LoRA can target: {names[:60]}"
            f"{' ...' if len(names) > 60 else ''} (name suffixes: {leaves})."
        ) from err


def lora_config_dict(lora_config: LoraConfig) -> dict:
    """JSON-safe dict of a `LoraConfig` (sets become sorted lists, enums their values)."""

    def default(obj):
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        if isinstance(obj, enum.Enum):
            return obj.value
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.loads(json.dumps(lora_config.to_dict(), default=default))


def _adapter_kinds(peft_model: PeftModel, adapter_name: str = "default") -> dict[str, str]:
    """Saved key -> layout kind for every LoRA A/B parameter, read off peft's `LoraLayer` modules."""
    kinds = {}
    for mod_name, mod in peft_model.named_modules():
        if not isinstance(mod, LoraLayer):
            continue
        for attr, kind in _KIND_ATTRS.items():
            container = getattr(mod, attr, None)
            if container is None or adapter_name not in container:
                continue
            entry = container[adapter_name]
            if isinstance(entry, nn.Parameter):  # ParameterDict (embedding LoRA): saved as `<mod>.<attr>`
                kinds[f"{mod_name}.{attr}"] = kind
            else:
                for p_name, _ in entry.named_parameters():
                    kinds[f"{mod_name}.{attr}.{p_name}"] = kind
    return kinds


def lora_layout(base_model: nn.Module, lora_config: LoraConfig) -> ParamLayout:
    """The `ParamLayout` of the LoRA adapter `lora_config` adds to `base_model`.

    Built by peft on a meta-device copy (the base is neither changed nor copied in memory). Names are
    the keys of PEFT's `adapter_model.safetensors`; kinds are "lora_A" / "lora_B" (others by rank).
    `metadata` holds `base` (see `base_model_identity`), `lora_config` (dict), `peft_type` and `head`
    (the adapter tensors whose rows are the base's output units, see `_head_tensor_names`). Modules in
    `modules_to_save` (whole copies the adapter saves, such as a classifier) are left out of the base's weight
    fingerprint: their base values never reach the adapted model.
    """
    if not isinstance(lora_config, LoraConfig):
        raise TypeError(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}.")
    peft_model = _wrap(_meta_copy(base_model), lora_config)
    state_dict = get_peft_model_state_dict(peft_model)
    kinds = _adapter_kinds(peft_model)
    layout = ParamLayout.from_state_dict(state_dict, kinds=kinds)
    saved_modules = _modules_to_save(peft_model)
    metadata = {
        "peft_type": "LORA",
        "base": base_model_identity(base_model, saved_modules),
        "lora_config": lora_config_dict(lora_config),
        "head": _head_tensor_names(base_model, layout),
    }
    return ParamLayout(layout.specs, metadata)


def _modules_to_save(peft_model: PeftModel) -> list[str]:
    """Base-model names of the modules PEFT saves whole (`modules_to_save`; for `task_type="SEQ_CLS"` peft adds
    `classifier`/`score` itself)."""
    prefix = "base_model.model."
    return sorted(n[len(prefix):] if n.startswith(prefix) else n
                  for n, m in peft_model.named_modules() if isinstance(m, ModulesToSaveWrapper))


def _head_tensor_names(base_model: nn.Module, layout: ParamLayout) -> list[str]:
    """Adapter tensors whose rows are the base model's output units: the `lora_B` of its last Linear, if adapted,
    and that layer's `lora_A` too when its rank equals the output count.

    Row i of that `lora_B` only changes output i, so a generator can tie it to class i of the task
    (`hf_paramgen.models.code_structure.class_slots`). A rank-equals-outputs head adapter trained from
    `class_aligned_init` (lora_A = 0, lora_B = I) learns class i in rank i: row i of its
    `lora_A` is class i as well.
    """
    linears = [name for name, module in base_model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        return []
    match = lambda suffix: [n for n in layout.names if n == suffix or n.endswith("." + suffix)]  # noqa: E731
    saved = match(f"{linears[-1]}.weight")  # the last Linear in `modules_to_save`: its weight and bias, whole
    if len(saved) == 1:
        return saved + match(f"{linears[-1]}.bias")
    heads = match(f"{linears[-1]}.lora_B.weight")
    if len(heads) == 1:
        shape = tuple(layout.specs[layout.names.index(heads[0])].shape)  # (out, r)
        if len(shape) == 2 and shape[0] == shape[1]:
            heads = match(f"{linears[-1]}.lora_A.weight") + heads
    return heads


def class_aligned_init(peft_model: torch.nn.Module, module_name: str = "head", adapter_name: str = "default") -> None:
    """Initialise the LoRA of `module_name` (rank r = its output count) with lora_A = 0 and lora_B = I.

    The adapter starts as the base (B A = 0, like PEFT's default init), but the gradient of row r of A is
    then the gradient of output r: rank r learns class r, so A's rows are class-indexed like B's rows
    (what `adapters.lora_layout` records as the head when r equals the output count).
    """
    layers = [m for n, m in peft_model.named_modules() if n.split(".")[-1] == module_name and hasattr(m, "lora_A")]
    if len(layers) != 1:
        raise ValueError(f"Expected one LoRA layer named {module_name!r}, found {len(layers)}.")
    lora_A, lora_B = layers[0].lora_A[adapter_name].weight, layers[0].lora_B[adapter_name].weight  # (r, in), (out, r)
    if lora_B.shape[0] != lora_B.shape[1]:
        raise ValueError(f"class_aligned_init needs rank == output count, got lora_B of shape {tuple(lora_B.shape)}.")
    with torch.no_grad():
        lora_A.zero_()
        lora_B.copy_(torch.eye(lora_B.shape[0]))


# ---------------------------------------------------------------------------------------- apply
def apply_adapter(
    base_model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    lora_config: LoraConfig,
    expected_base: dict | ParamLayout | None = None,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap `base_model` (in place, as `PeftModel` does) with a LoRA adapter holding `state_dict`.

    Args:
        base_model: the plain base model.
        state_dict: adapter tensors keyed as PEFT saves them (a layout's `unflatten` output).
        lora_config: the adapter's `LoraConfig`.
        expected_base: identity of the base the adapter was made for (a dict or a layout with
            `metadata["base"]`); when given, a different base raises `AdapterBaseMismatchError`.
        adapter_name: PEFT adapter name.

    Returns:
        A `PeftModel` whose adapter weights equal `state_dict` exactly.
    """
    if expected_base is not None:
        check_base_model(base_model, expected_base)
    layout = lora_layout(base_model, lora_config)
    extra = sorted(set(state_dict) - set(layout.names))
    if extra:
        raise LayoutError(f"adapter state_dict has tensors the LoraConfig does not create: {extra[:10]}.")
    layout.validate(state_dict, source="adapter state_dict")
    # low_cpu_mem_usage: adapter tensors start on meta and are assigned from `state_dict` (no RNG, no init)
    with torch.random.fork_rng(devices=[]):
        peft_model = get_peft_model(base_model, peft_config_copy(lora_config), adapter_name=adapter_name,
                                    low_cpu_mem_usage=True)
    peft_model.peft_config[adapter_name].base_model_name_or_path = lora_config.base_model_name_or_path
    # low_cpu_mem_usage assigns the given tensors as the parameters: copies, so the caller's tensors never alias them
    # (a later `set_peft_model_state_dict` on the model would otherwise overwrite the caller's dict in place)
    owned = {k: v.detach().clone() for k, v in state_dict.items()}
    result = set_peft_model_state_dict(peft_model, owned, adapter_name=adapter_name, low_cpu_mem_usage=True)
    missing = [k for k in result.missing_keys if "lora_" in k and adapter_name in k]
    if missing or result.unexpected_keys:
        raise LayoutError(
            f"peft did not load the adapter exactly: missing {missing}, unexpected {result.unexpected_keys}."
        )
    return peft_model


def adapter_state_dict(peft_model: PeftModel, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter tensors of `peft_model`, keyed as PEFT saves them (detached CPU copies)."""
    state_dict = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    return {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
