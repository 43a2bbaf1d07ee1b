"""`ParamDenoiser`: a diffusers model (`ModelMixin` + `ConfigMixin`) that denoises a whole network at once.

One token per chunk of `chunk_size` normalised weights (each tensor padded to whole chunks, as the ParamTokenizer
chunks them, `"layer"` aggregation), so a network of N chunks is N tokens:

    [time token] [condition tokens (n)] [chunk tokens (N)]  -> bidirectional transformer -> (N, chunk_size)

* chunk token  = Linear(noisy chunk) + `FactorisedStructureEmbedding(code_structure)` + time embedding: the same
  per-chunk structure rows the prior gets (`structure_for_layout`), so any width, depth or tensor size has a token;
* condition tokens = Linear(condition_embeds) + type embedding: the same condition vectors (task text, architecture
  text, class prototypes in class order) the prior's prefix gets (`encode_instruction`);
* time token = diffusers `Timesteps` + `TimestepEmbedding` of the scheduler's timestep (DDPM: integer step; flow
  matching: sigma x 1000).

The model computes its own loss (masked MSE against `target`: padding never counts), so `training.loop.train` trains
it unchanged. What the target is (noise, velocity, clean chunks) is the scheduler's business (`schedulers.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn

from ..layout.param_layout import KINDS
from ..models.code_structure import NUM_STRUCTURE_FIELDS, FactorisedStructureEmbedding


@dataclass
class ParamDenoiserOutput(BaseOutput):
    """`loss` (masked MSE to the target, when one is given) and `sample` (b, N, chunk_size): the prediction."""

    loss: torch.Tensor | None = None
    sample: torch.Tensor | None = None


class ParamDenoiser(ModelMixin, ConfigMixin):
    """Transformer denoiser over a network's chunk tokens, conditioned by an instruction prefix.

    Args:
        chunk_size: weights per token (C).
        hidden_size / num_layers / num_heads / intermediate_size: the transformer (pre-norm, GELU, no dropout).
        condition_dim: width of the condition vectors (the text encoder's).
        num_condition_types: rows of the condition-type table (text, architecture, class 0, class 1, ...).
        num_kinds: rows of the tensor-kind table (`len(KINDS)`).
        max_chunks: longest network (in chunks) the generator accepts; longer targets are refused.
        data_scale: the fan-in-normalised weights are divided by this (their std over the training set), so the
            diffusion runs on unit-scale data; generated chunks are multiplied back.
        layouts: name -> layout JSON of the networks it was trained on (what "in distribution" means).
        aggregation: chunking mode (only "layer": every tensor padded to whole chunks).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, chunk_size: int = 16, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                 intermediate_size: int | None = None, condition_dim: int = 384, num_condition_types: int = 34,
                 num_kinds: int = len(KINDS), max_chunks: int = 4096, data_scale: float = 1.0,
                 layouts: dict[str, str] | None = None, aggregation: str = "layer"):
        super().__init__()
        _check_shape(chunk_size, hidden_size, num_layers, num_heads, max_chunks, data_scale, aggregation)
        h = hidden_size
        self.chunk_in = nn.Linear(chunk_size, h)
        self.structure = FactorisedStructureEmbedding(SimpleNamespace(num_kinds=num_kinds, codes_per_chunk=1), h)
        self.condition_in = nn.Linear(condition_dim, h)
        self.condition_type = nn.Embedding(num_condition_types, h)
        self.time_proj = Timesteps(h, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(h, h)
        layer = nn.TransformerEncoderLayer(h, num_heads, intermediate_size or 4 * h, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(h)
        self.chunk_out = nn.Linear(h, chunk_size)

    # ------------------------------------------------------------------------------------------ layouts
    def known_layouts(self) -> dict[str, str]:
        """name -> layout JSON of the networks the denoiser was trained on (`config.layouts`)."""
        return dict(self.config.layouts or {})

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, code_structure: torch.Tensor,
                chunk_mask: torch.Tensor, condition_embeds: torch.Tensor, condition_types: torch.Tensor,
                target: torch.Tensor | None = None, **kwargs) -> ParamDenoiserOutput:
        """Predict the scheduler's target from noisy chunks.

        Args:
            sample: noisy chunks (b, N, C).
            timestep: (b,) or scalar: the scheduler's timestep of each network.
            code_structure: (b, N, 10) long: `structure_for_layout(layout, C, 1)` of each network (zero-padded).
            chunk_mask: (b, N, C) bool: real weights (False: padding inside a chunk, or a padded chunk).
            condition_embeds: (b, n, d) float; condition_types: (b, n) long, -1 for padded condition tokens.
            target: (b, N, C) what the scheduler trains against (noise, velocity or clean chunks); with it, `loss`.

        Returns:
            `ParamDenoiserOutput(loss, sample)`: sample (b, N, C), zero on padding.
        """
        b, n_chunks, _ = sample.shape
        if code_structure.shape[-1] != NUM_STRUCTURE_FIELDS:
            raise ValueError(f"code_structure must be (b, N, {NUM_STRUCTURE_FIELDS}), got "
                             f"{tuple(code_structure.shape)}.")
        dtype = self.chunk_in.weight.dtype
        timestep = torch.as_tensor(timestep, device=sample.device).float().reshape(-1).expand(b)
        time = self.time_embedding(self.time_proj(timestep).to(dtype))  # (b, h)
        chunks = self.chunk_in(sample.to(dtype)) + self.structure(code_structure.long()) + time[:, None]  # (b, N, h)
        types = condition_types.long()
        cond = self.condition_in(condition_embeds.to(dtype)) + self.condition_type(types.clamp(min=0))  # (b, n, h)
        tokens = torch.cat([time[:, None], cond, chunks], dim=1)  # (b, 1 + n + N, h)
        valid_chunks = chunk_mask.bool().any(-1)  # (b, N)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=sample.device), types >= 0, valid_chunks], dim=1)
        hidden = self.transformer(tokens, src_key_padding_mask=~keep)  # (b, 1 + n + N, h)
        out = self.chunk_out(self.norm_out(hidden[:, -n_chunks:]))  # (b, N, C)
        out = out * chunk_mask.to(out.dtype)
        loss = None
        if target is not None:
            mask = chunk_mask.to(torch.float32)
            loss = ((out.float() - target.float()) ** 2 * mask).sum() / mask.sum().clamp_min(1)
        return ParamDenoiserOutput(loss=loss, sample=out)


def _check_shape(chunk_size, hidden_size, num_layers, num_heads, max_chunks, data_scale, aggregation) -> None:
    """Refuse a config that would fail deep inside torch, naming the field, what it needs and what it got."""
    for name, value in (("chunk_size", chunk_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("max_chunks", max_chunks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ParamDenoiser {name} must be an int >= 1, got {value!r}.")
    if hidden_size % num_heads:
        raise ValueError(f"ParamDenoiser hidden_size {hidden_size} must be a multiple of num_heads {num_heads}.")
    if not isinstance(data_scale, (int, float)) or not data_scale > 0:
        raise ValueError(f"ParamDenoiser data_scale must be a positive number, got {data_scale!r}.")
    if aggregation != "layer":
        raise ValueError(f"ParamDenoiser supports aggregation='layer' only (every tensor padded to whole chunks), "
                         f"got {aggregation!r}.")


def layouts_json(layouts: dict) -> dict[str, str]:
    """name -> layout JSON string (layouts given as `ParamLayout`, dict or JSON)."""
    out = {}
    for name, layout in layouts.items():
        out[name] = layout if isinstance(layout, str) else (
            json.dumps(layout) if isinstance(layout, dict) else layout.to_json())
    return out
