"""Checks a generation request passes before any work starts: the seed, the task text, the caller's data (finite,
shaped as the target reads it) and the memory the request needs (KV cache, probabilities, decoded weights) against
a limit (`max_memory_bytes`, default half the available memory)."""

from __future__ import annotations

import math
import numbers
import os
import re

import torch
from torch import nn

from ..layout.chunking import num_chunks
from ..layout.param_layout import ParamLayout
from .generation_targets import GenerationError, check_finite  # noqa: F401  (re-exported)

MAX_INSTRUCTION_WORDS = 200  # MiniLM reads 256 word pieces; longer texts would be silently truncated
MAX_INSTRUCTION_CHARS = 2000  # ~200 words; a longer text is truncated or unreadable
MAX_WORD_CHARS = 100  # BERT-style word-piece tokenizers read a longer word as one unknown token
MEMORY_FRACTION = 0.5  # default limit: this share of the available memory
FALLBACK_MEMORY_BYTES = 8 << 30  # when the available memory cannot be read
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed accepts


def check_seed(seed) -> int | None:
    """`seed` as an int (None passes: a random draw); `TypeError` for anything but an integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int (or None for a random draw), got {type(seed).__name__} {seed!r}.")
    if not _SEED_RANGE[0] <= int(seed) <= _SEED_RANGE[1]:
        raise ValueError(f"seed must lie in [{_SEED_RANGE[0]}, {_SEED_RANGE[1]}] (torch.manual_seed), got {seed}.")
    return int(seed)


SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")  # sampling options a generation call takes


def check_sampling(sampling: dict, extra: tuple[str, ...] = ()) -> dict:
    """`sampling` checked before any work: only `SAMPLING_KEYS` (and `extra`) with `do_sample` a bool,
    `temperature` a finite number > 0, `top_k` an int >= 0 (0: off) and `top_p` a number in (0, 1]; None values
    are dropped. `TypeError` for an unknown option or a value of the wrong type, `ValueError` for one out of range."""
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS) - set(extra))
    if unknown:
        raise TypeError(f"Unknown generation options {unknown}; expected the sampling options {list(SAMPLING_KEYS)}"
                        f"{f' or {list(extra)}' if extra else ''}.")
    out = {k: v for k, v in sampling.items() if v is not None}

    def number(name: str, integer: bool = False):
        value = out[name]
        kinds = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kinds):
            want = "an int" if integer else "a number"
            raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}.")
        return value

    if "do_sample" in out and not isinstance(out["do_sample"], bool):
        raise TypeError(f"do_sample must be True or False, got {type(out['do_sample']).__name__} "
                        f"{out['do_sample']!r}.")
    if "temperature" in out and not (math.isfinite(number("temperature")) and out["temperature"] > 0):
        raise ValueError(f"temperature must be a finite number > 0 (1.0: the prior's distribution), got "
                         f"{out['temperature']!r}.")
    if "top_k" in out and number("top_k", integer=True) < 0:
        raise ValueError(f"top_k must be an int >= 0 (0: no top-k filtering), got {out['top_k']!r}.")
    if "top_p" in out and not (math.isfinite(number("top_p")) and 0 < out["top_p"] <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] (1: no nucleus filtering), got {out['top_p']!r}.")
    return out


def check_flag(value, name: str) -> bool:
    """A boolean option (`TypeError` for anything else)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")
    return value


def check_task_text(task_text) -> str:
    """Refuse a task text the text encoder would truncate or read as unknown tokens (no silent loss)."""
    if not isinstance(task_text, str) or not task_text.strip():
        raise GenerationError(f"task_text must be a non-empty string, got {task_text!r}.")
    limits = (f"the text encoder reads at most {MAX_INSTRUCTION_WORDS} words, {MAX_INSTRUCTION_CHARS} characters, "
              f"{MAX_WORD_CHARS} characters per word")
    if len(task_text) > MAX_INSTRUCTION_CHARS:
        raise GenerationError(f"task_text has {len(task_text)} characters, more than {MAX_INSTRUCTION_CHARS} "
                              f"({limits}); a longer text would be truncated: shorten it.")
    words = len(task_text.split())
    if words > MAX_INSTRUCTION_WORDS:
        raise GenerationError(f"task_text has {words} words, more than {MAX_INSTRUCTION_WORDS} ({limits}); it would "
                              "be truncated: shorten it.")
    check_word_lengths([task_text], "task_text")
    return task_text


def check_word_lengths(texts: list[str], name: str) -> None:
    """Refuse texts holding a word longer than `MAX_WORD_CHARS`: the text encoder reads it as one unknown token."""
    for i, text in enumerate(texts):
        longest = max(re.findall(r"\w+", text), key=len, default="")
        if len(longest) > MAX_WORD_CHARS:
            where = name if len(texts) == 1 else f"{name} text {i}"
            raise GenerationError(f"{where} holds a word of {len(longest)} characters ({longest[:20]!r}...), more "
                                  f"than {MAX_WORD_CHARS}: the text encoder would read it as one unknown token; split "
                                  "it into words.")


def check_forward(template, X, name: str) -> None:
    """Feed two inputs of `X` to an `nn.Module` target (eval mode, no grad, modes restored) so that inputs of the
    wrong shape fail here, named, not after sampling inside scoring."""
    if not isinstance(template, nn.Module) or not isinstance(X, torch.Tensor) or X.ndim == 0:
        return
    modes = {m: m.training for m in template.modules()}
    try:
        template.eval()
        with torch.no_grad():
            template(X[:2].float())
    except Exception as err:
        raise GenerationError(f"{name} X of shape {tuple(X.shape)} cannot be fed to the target "
                              f"{type(template).__name__} ({type(err).__name__}: {err}); give inputs shaped "
                              "(n, *input shape) as the target reads them.") from err
    finally:
        for module, mode in modes.items():
            module.training = mode


# ------------------------------------------------------------------------------ memory
def available_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Free memory of `device`: `torch.cuda.mem_get_info` on a GPU; else `MemAvailable` of /proc/meminfo, else
    `os.sysconf` (available pages); None when it cannot be read."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_memory_limit(device: torch.device | str | None = None) -> int:
    """`MEMORY_FRACTION` of the available memory of `device`, or `FALLBACK_MEMORY_BYTES`."""
    available = available_memory_bytes(device)
    return int(MEMORY_FRACTION * available) if available else FALLBACK_MEMORY_BYTES


def estimate_generation_bytes(prior_config, tokenizer_config, layout: ParamLayout, num_candidates: int,
                              mean: bool, dtype_bytes: int = 4) -> dict[str, int]:
    """Bytes a generation call needs, by part: `kv_cache` (2 x layers x candidates x context x kv width x dtype),
    `probabilities` (kept scores and probabilities for mean decoding: 2 x candidates x codes x vocabulary x 4; else
    one step's) and `weights` (codes and decoded candidates, and the expected-weights table of mean decoding).
    Transient attention scores are left out (SDPA kernels do not materialise them)."""
    dec = prior_config.transformer
    layers = int(getattr(dec, "num_hidden_layers", 1))
    heads = int(getattr(dec, "num_attention_heads", 1))
    head_dim = int(getattr(dec, "head_dim", None) or int(dec.hidden_size) // heads)
    kv_width = int(getattr(dec, "num_key_value_heads", None) or heads) * head_dim
    n = num_chunks(layout, tokenizer_config.chunk_size, tokenizer_config.aggregation)
    codes = n * prior_config.codes_per_chunk
    context = min(prior_config.max_position_embeddings, prior_config.max_condition_tokens + 1 + codes)
    k, vocab = num_candidates, prior_config.vocab_size
    table = n * tokenizer_config.codebook_size * tokenizer_config.chunk_size * 4 if mean else 0
    return {"kv_cache": 2 * layers * k * context * kv_width * dtype_bytes,
            "probabilities": (2 * k * codes * vocab * 4) if mean else k * vocab * 4,
            "weights": 2 * k * n * tokenizer_config.chunk_size * 4 + k * codes * 8 + table}


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def check_memory(prior, tokenizer_config, layout: ParamLayout, num_candidates: int, mean: bool,
                 limit: int | None = None) -> dict[str, int]:
    """Raise `GenerationError` before any work when the request's estimated bytes exceed `limit` (default:
    `default_memory_limit` of the prior's device); returns the estimate."""
    dtype_bytes = torch.finfo(prior.dtype).bits // 8 if prior.dtype.is_floating_point else 4
    parts = estimate_generation_bytes(prior.config, tokenizer_config, layout, num_candidates, mean, dtype_bytes)
    total = sum(parts.values())
    limit = default_memory_limit(prior.device) if limit is None else int(limit)
    if total <= limit:
        return parts
    one = sum(estimate_generation_bytes(prior.config, tokenizer_config, layout, 1, mean, dtype_bytes).values())
    shown = ", ".join(f"{name.replace('_', ' ')} {_gb(v)}" for name, v in parts.items())
    sample = ", use decoding='sample' (keeps no probabilities)" if mean else ""
    raise GenerationError(
        f"Generating {num_candidates} candidates for this target ({layout.num_params} parameters) needs an estimated "
        f"{_gb(total)} ({shown}), more than the limit of {_gb(limit)} (max_memory_bytes; default "
        f"{MEMORY_FRACTION:.0%} of the available memory). Lower num_candidates (about {max(limit // one, 0)} fit)"
        f"{sample}, or raise the generator's max_memory_bytes.")
