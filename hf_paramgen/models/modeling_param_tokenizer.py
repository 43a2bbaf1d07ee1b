"""`ParamTokenizer`: a VQ-VAE that turns weight chunks into discrete codes and back (IGPG stage one).

Weights in, codes out, and back — like a text tokenizer:

    codes = param_tokenizer.encode(model, layout)          # LongTensor (N, codes_per_chunk)
    state_dict = param_tokenizer.decode(codes, layout)     # exact shapes and dtypes

Weights are normalised by `sqrt(fan_in)` of their tensor (`ParamLayout.fan_in_scale`), a scale
derived from shapes alone, so decoding needs nothing but the layout. Each chunk is encoded together
with its position `(tensor_index, chunk_in_tensor, kind_id)`; the decoder sees the position too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..hub.remote_code import RemoteCodeMixin
from ..layout.chunking import chunk, chunk_positions, num_chunks, unchunk
from ..layout.param_layout import LayoutError, ParamLayout
from .configuration_param_tokenizer import ParamTokenizerConfig
from .quantizer import EMACodebook, GumbelQuantizer, build_quantizer


@dataclass
class ParamTokenizerOutput(ModelOutput):
    """`loss` = reconstruction + commitment; `codes` (B, T); `reconstruction` (B, C) normalised chunks."""

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    commitment_loss: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    codebook_usage: torch.Tensor | None = None


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: x + W2 gelu(W1 LN(x))."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, 2 * hidden_size)
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ChunkPositionEmbedding(nn.Module):
    """(B, 3) `(tensor_index, chunk_in_tensor, kind_id)` -> (B, H); indices past a table are clipped."""

    def __init__(self, config: ParamTokenizerConfig):
        super().__init__()
        self.tensor = nn.Embedding(config.max_tensors, config.hidden_size)
        self.chunk = nn.Embedding(config.max_chunks_per_tensor, config.hidden_size)
        self.kind = nn.Embedding(config.num_kinds, config.hidden_size)

    def forward(self, chunk_position: torch.Tensor) -> torch.Tensor:
        tables = (self.tensor, self.chunk, self.kind)
        return sum(t(chunk_position[:, i].clamp(0, t.num_embeddings - 1)) for i, t in enumerate(tables))


class MLPCoder(nn.Module):
    """in_dim -> hidden (+ position) -> residual blocks -> out_dim; the encoder and the decoder."""

    def __init__(self, config: ParamTokenizerConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, config.hidden_size)
        self.position = ChunkPositionEmbedding(config)
        self.blocks = nn.ModuleList(ResidualBlock(config.hidden_size) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.proj_out = nn.Linear(config.hidden_size, out_dim)

    def forward(self, x: torch.Tensor, chunk_position: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x) + self.position(chunk_position)  # (B, H)
        for block in self.blocks:
            h = block(h)
        return self.proj_out(self.norm(h))


class ParamTokenizerPreTrainedModel(PreTrainedModel):
    config_class = ParamTokenizerConfig
    base_model_prefix = "param_tokenizer"
    main_input_name = "chunks"

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default Linear init (not N(0, 0.02)), N(0, 0.02) position tables, fresh codebooks."""
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, EMACodebook):
            init.normal_(module.embed)
            init.zeros_(module.cluster_size)
            init.copy_(module.embed_sum, module.embed)
            init.constant_(module.initialized, not self.config.kmeans_init)
        elif isinstance(module, GumbelQuantizer):
            init.normal_(module.embed)
            init.zeros_(module.num_steps)


class ParamTokenizer(RemoteCodeMixin, ParamTokenizerPreTrainedModel):
    """VQ-VAE over weight chunks: encoder -> `latents_per_chunk` latents -> quantiser -> decoder.

    `forward` trains it (masked reconstruction loss, padding never counts); `encode` / `decode`
    (state_dicts, modules) and `encode_chunks` / `decode_codes` (normalised chunks) use it.
    """

    remote_auto_map = {"AutoConfig": "configuration_param_tokenizer.ParamTokenizerConfig",
                       "AutoModel": "modeling_param_tokenizer.ParamTokenizer"}

    def __init__(self, config: ParamTokenizerConfig):
        super().__init__(config)
        latent = config.latents_per_chunk * config.codebook_dim
        self.encoder = MLPCoder(config, config.chunk_size, latent)
        self.quantizer = build_quantizer(config)
        self.decoder = MLPCoder(config, latent, config.chunk_size)
        self.post_init()

    # ------------------------------------------------------------------ training
    def forward(self, chunks: torch.Tensor, chunk_mask: torch.Tensor | None = None,
                chunk_position: torch.Tensor | None = None, **kwargs) -> ParamTokenizerOutput:
        """chunks (B, C) normalised, chunk_mask (B, C) bool, chunk_position (B, 3) long."""
        chunk_position = self._positions(chunk_position, chunks.shape[0], chunks.device)
        z = self._latents(chunks, chunk_position)  # (B*l, d)
        with torch.autocast(device_type=chunks.device.type, enabled=False):
            q = self.quantizer(z.float())
        zq = q.quantized.view(chunks.shape[0], -1)  # (B, l*d)
        reconstruction = self.decoder(zq.to(z.dtype), chunk_position)  # (B, C)
        mask = torch.ones_like(chunks, dtype=torch.bool) if chunk_mask is None else chunk_mask.bool()
        err = (reconstruction.float() - chunks.float()).pow(2) * mask
        reconstruction_loss = err.sum() / mask.sum().clamp_min(1)
        weight = self.config.commitment_weight if self.config.quantizer == "ema" else 1.0
        loss = reconstruction_loss + weight * q.loss
        return ParamTokenizerOutput(loss, reconstruction_loss, q.loss, q.codes.view(chunks.shape[0], -1),
                                    reconstruction, q.perplexity, q.usage)

    def _positions(self, chunk_position: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if chunk_position is None:
            return torch.zeros(n, 3, dtype=torch.long, device=device)
        if chunk_position.shape != (n, 3):
            raise ValueError(f"chunk_position must be ({n}, 3) (tensor, chunk, kind), "
                             f"got {tuple(chunk_position.shape)}.")
        return chunk_position.long()

    def _latents(self, chunks: torch.Tensor, chunk_position: torch.Tensor) -> torch.Tensor:
        if chunks.ndim != 2 or chunks.shape[1] != self.config.chunk_size:
            raise ValueError(f"chunks must be (N, {self.config.chunk_size}), got {tuple(chunks.shape)}.")
        z = self.encoder(chunks.to(self.dtype), chunk_position)  # (B, l*d)
        return z.reshape(-1, self.config.codebook_dim)

    # ------------------------------------------------------------------ chunk-level API
    @torch.no_grad()
    def encode_chunks(self, chunks: torch.Tensor, chunk_position: torch.Tensor | None = None,
                      batch_size: int = 65536) -> torch.Tensor:
        """Normalised chunks (N, C) -> codes (N, T) long (CPU); never updates the codebooks."""
        out = []
        for start in range(0, chunks.shape[0], batch_size):
            x = chunks[start : start + batch_size].to(self.device)
            pos = None if chunk_position is None else chunk_position[start : start + batch_size].to(self.device)
            pos = self._positions(pos, x.shape[0], self.device)
            z = self._latents(x, pos).float()  # (b*l, d)
            out.append(self.quantizer.encode(z).reshape(x.shape[0], -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.codes_per_chunk, dtype=torch.long)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, chunk_position: torch.Tensor | None = None,
                     batch_size: int = 65536) -> torch.Tensor:
        """Codes (N, T) -> normalised chunks (N, C) float32 (CPU)."""
        self._check_codes(codes)
        out = []
        for start in range(0, codes.shape[0], batch_size):
            c = codes[start : start + batch_size].to(self.device).long()
            pos = None if chunk_position is None else chunk_position[start : start + batch_size].to(self.device)
            pos = self._positions(pos, c.shape[0], self.device)
            zq = self.quantizer.decode(c.reshape(-1, self.config.num_quantizers)).float()  # (b*l, d)
            out.append(self.decoder(zq.view(c.shape[0], -1).to(self.dtype), pos).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.chunk_size)

    def _check_codes(self, codes: torch.Tensor) -> None:
        t, k = self.config.codes_per_chunk, self.config.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[1] != t:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"codes must be a (N, {t}) integer tensor (codes_per_chunk={t}), got {got}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must have an integer dtype, got {codes.dtype}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must lie in [0, {k}) (codebook_size={k}), got range "
                             f"[{int(codes.min())}, {int(codes.max())}].")

    # ------------------------------------------------------------------ state_dict-level API
    def _check_layout(self, layout: ParamLayout) -> None:
        if not isinstance(layout, ParamLayout):
            raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}.")
        for key in ("chunk_size", "aggregation"):
            expected, got = getattr(self.config, key), layout.metadata.get(key, getattr(self.config, key))
            if got != expected:
                raise LayoutError(f"layout was chunked with {key}={got!r} but this ParamTokenizer uses "
                                  f"{key}={expected!r}.")

    def _normalised_chunks(self, state_dict_or_module, layout: ParamLayout | None):
        if isinstance(state_dict_or_module, nn.Module):
            layout = layout or ParamLayout.from_module(state_dict_or_module)
            state_dict = state_dict_or_module.state_dict()
        elif isinstance(state_dict_or_module, dict):
            state_dict = state_dict_or_module
            layout = layout or ParamLayout.from_state_dict(state_dict)
        else:
            raise TypeError(f"expected a state_dict (dict) or an nn.Module, got {type(state_dict_or_module).__name__}.")
        self._check_layout(layout)
        weights = layout.flatten(state_dict) * layout.fan_in_scale()  # (D,)
        return chunk(weights, layout, self.config.chunk_size, self.config.aggregation)

    def encode(self, state_dict_or_module, layout: ParamLayout | None = None) -> torch.Tensor:
        """A state_dict or module (of `layout`; built from it when None) -> codes (N, T) long."""
        c = self._normalised_chunks(state_dict_or_module, layout)
        return self.encode_chunks(c.chunks, c.chunk_position)

    def decode(self, codes: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
        """Codes (N, T) -> the `state_dict` of `layout` (its shapes and dtypes), denormalised."""
        return self.decode_batch([codes], [layout])[0]

    def encode_batch(self, items: list,
                     layouts: list[ParamLayout | None] | ParamLayout | None = None) -> list[torch.Tensor]:
        """Several state_dicts/modules -> a list of codes (N_i, T), encoded in one pass."""
        layouts = layouts if isinstance(layouts, list) else [layouts] * len(items)
        parts = [self._normalised_chunks(item, lay) for item, lay in zip(items, layouts, strict=True)]
        codes = self.encode_chunks(torch.cat([p.chunks for p in parts]), torch.cat([p.chunk_position for p in parts]))
        return list(codes.split([len(p) for p in parts]))

    def decode_batch(self, codes: list[torch.Tensor],
                     layouts: list[ParamLayout] | ParamLayout) -> list[dict[str, torch.Tensor]]:
        """A list of codes (N_i, T) -> a list of state_dicts, decoded in one pass."""
        layouts = layouts if isinstance(layouts, list) else [layouts] * len(codes)
        c, agg = self.config.chunk_size, self.config.aggregation
        positions = []
        for i, (item, layout) in enumerate(zip(codes, layouts, strict=True)):
            self._check_layout(layout)
            self._check_codes(item)
            if item.shape[0] != num_chunks(layout, c, agg):
                raise LayoutError(f"codes[{i}] has {item.shape[0]} rows but the layout needs "
                                  f"{num_chunks(layout, c, agg)} chunks of size {c} ({agg}).")
            positions.append(chunk_positions(layout, c, agg)[0])
        chunks = self.decode_codes(torch.cat(codes), torch.cat(positions)).split([len(x) for x in codes])
        return [lay.unflatten(unchunk(ch, lay, agg) / lay.fan_in_scale())
                for ch, lay in zip(chunks, layouts, strict=True)]

    @torch.no_grad()
    def decode_expected(self, probs: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
        """A distribution over each chunk's code (N, 1, K) (or (N, K)) -> the state_dict of the expected weights.

        Chunk n becomes `sum_k probs[n, k] * decode(k at n's position)`: the posterior mean of the weights
        under the prior's per-code distribution instead of one draw from it (one code per chunk and a
        single codebook only; the decoder is a per-chunk MLP, so each distinct position is decoded for
        all K codes once).
        """
        cfg = self.config
        if cfg.codes_per_chunk != 1 or cfg.num_quantizers != 1:
            raise ValueError(f"decode_expected needs one code per chunk and one codebook; this ParamTokenizer has "
                             f"codes_per_chunk={cfg.codes_per_chunk}, num_quantizers={cfg.num_quantizers}.")
        self._check_layout(layout)
        probs = torch.as_tensor(probs)
        probs = probs[:, 0] if probs.ndim == 3 else probs
        n, k = num_chunks(layout, cfg.chunk_size, cfg.aggregation), cfg.codebook_size
        if probs.shape != (n, k) or not probs.is_floating_point():
            raise ValueError(f"probs must be a float (N, 1, K) or (N, K) tensor with N={n} chunks and K={k} codes, "
                             f"got {tuple(probs.shape)} {probs.dtype}.")
        position = chunk_positions(layout, cfg.chunk_size, cfg.aggregation)[0]
        table_keys = position.clone()
        for i, size in enumerate((cfg.max_tensors, cfg.max_chunks_per_tensor, cfg.num_kinds)):
            table_keys[:, i] = table_keys[:, i].clamp(0, size - 1)  # positions the decoder cannot tell apart
        unique, inverse = torch.unique(table_keys, dim=0, return_inverse=True)  # (U, 3), (N,)
        codes = torch.arange(k).repeat(unique.shape[0])[:, None]  # (U*K, 1)
        table = self.decode_codes(codes, unique.repeat_interleave(k, dim=0)).view(unique.shape[0], k, -1)  # (U, K, C)
        chunks = torch.einsum("nk,nkc->nc", probs.float().cpu(), table[inverse])
        weights = unchunk(chunks, layout, cfg.aggregation) / layout.fan_in_scale()
        return layout.unflatten(weights)

    def reconstruct(self, state_dict_or_module, layout: ParamLayout | None = None) -> dict[str, torch.Tensor]:
        """`decode(encode(x))`: the state_dict the codes of `x` stand for."""
        if layout is None:
            layout = (ParamLayout.from_module(state_dict_or_module) if isinstance(state_dict_or_module, nn.Module)
                      else ParamLayout.from_state_dict(state_dict_or_module))
        return self.decode(self.encode(state_dict_or_module, layout), layout)




def register() -> None:
    """Make `AutoConfig` / `AutoModel` resolve `model_type="param_tokenizer"` without remote code."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register("param_tokenizer", ParamTokenizerConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModel.register(ParamTokenizerConfig, ParamTokenizer)
    except ValueError:
        pass
