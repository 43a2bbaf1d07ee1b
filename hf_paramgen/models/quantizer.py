"""Vector quantisers of the ParamTokenizer, always computed in float32 (also under autocast).

* `EMACodebook` — nearest-code VQ whose codebook follows an exponential moving average of the
  vectors assigned to it (no gradient), initialised by k-means on the first training batch, with
  dead codes restarted from random vectors of the current batch. Under `torch.distributed` the
  batch statistics are summed over processes and restarts are broadcast from rank 0, so every
  rank holds the same codebook.
* `ResidualVQ` — `num_quantizers` EMA codebooks, each quantising what the previous ones left.
  With one codebook it is plain EMA VQ.
* `GumbelQuantizer` — the IGPG paper's Gumbel-softmax quantiser (Eq. 1) with a cyclical
  temperature schedule and a KL-to-uniform term.

Every quantiser maps latents `z` (M, d) to `QuantizerOutput`, `encode(z)` -> codes (M, Q) and
`decode(codes)` -> vectors (M, d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """`quantized` (M, d) with straight-through gradient, `codes` (M, Q), scalar `loss`, `perplexity`, `usage`."""

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def code_statistics(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, fraction of codes used) of codes (M,), averaged over columns if (M, Q)."""
    codes = codes.reshape(codes.shape[0], -1)
    perplexities, usages = [], []
    for q in range(codes.shape[1]):
        counts = torch.bincount(codes[:, q], minlength=codebook_size).float()  # (K,)
        p = counts / counts.sum().clamp_min(1)
        perplexities.append(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()))
        usages.append((counts > 0).float().mean())
    return torch.stack(perplexities).mean(), torch.stack(usages).mean()


def kmeans(z: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on z (M, d) -> centroids (k, d); empty clusters keep their previous centroid."""
    idx = torch.randint(z.shape[0], (k,), generator=generator, device="cpu").to(z.device)
    centroids = z[idx].clone()  # (k, d)
    for _ in range(iters):
        assign = torch.cdist(z, centroids).argmin(dim=1)  # (M,)
        counts = torch.bincount(assign, minlength=k).float()  # (k,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, z)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
    return centroids


class EMACodebook(nn.Module):
    """One EMA-updated codebook of `codebook_size` vectors of size `dim`."""

    def __init__(self, codebook_size: int, dim: int, decay: float, dead_code_threshold: float,
                 kmeans_init: bool = True, kmeans_iters: int = 10, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.decay, self.eps = codebook_size, decay, eps
        self.dead_code_threshold, self.kmeans_iters = dead_code_threshold, kmeans_iters
        self.register_buffer("embed", torch.randn(codebook_size, dim))  # (K, d)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # (K,) EMA counts
        self.register_buffer("embed_sum", self.embed.clone())  # (K, d) EMA sums
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (M, d) -> nearest code ids (M,)."""
        return torch.cdist(z, self.embed).argmin(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (M,) -> code vectors (M, d)."""
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def _init(self, z: torch.Tensor) -> None:
        self.embed.copy_(kmeans(z, self.codebook_size, self.kmeans_iters))
        if _distributed():
            dist.broadcast(self.embed, 0)
        self.embed_sum.copy_(self.embed)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.codebook_size).float()  # (K,)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, z)  # (K, d)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n  # (K,)
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead(z, expected=float(counts.sum()) / self.codebook_size)

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor, expected: float) -> None:
        """Codes whose EMA count < threshold x (uniform share of the batch) take random batch vectors."""
        dead = self.cluster_size < self.dead_code_threshold * expected  # (K,)
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        samples = z[torch.randint(z.shape[0], (num_dead,), device=z.device)]  # (num_dead, d)
        self.embed[dead] = samples
        self.cluster_size[dead] = expected
        self.embed_sum[dead] = samples * expected
        if _distributed():
            for buf in (self.embed, self.cluster_size, self.embed_sum):
                dist.broadcast(buf, 0)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (M, d) -> (code vectors (M, d), codes (M,)); updates the codebook in training."""
        if self.training and not bool(self.initialized):
            self._init(z.detach())
        codes = self.encode(z.detach())
        if self.training:
            self._update(z.detach(), codes)
        return self.decode(codes), codes


class ResidualVQ(nn.Module):
    """`num_quantizers` EMA codebooks applied to successive residuals (plain EMA VQ when 1)."""

    def __init__(self, config):
        super().__init__()
        self.codebook_size = config.codebook_size
        self.layers = nn.ModuleList(
            EMACodebook(config.codebook_size, config.codebook_dim, config.ema_decay, config.dead_code_threshold,
                        config.kmeans_init, config.kmeans_iters)
            for _ in range(config.num_quantizers)
        )

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (M, d) -> codes (M, Q)."""
        residual, codes = z, []
        for layer in self.layers:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (M, Q) -> summed code vectors (M, d)."""
        return sum(layer.decode(codes[:, q]) for q, layer in enumerate(self.layers))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        residual, total, codes = z.detach(), torch.zeros_like(z), []
        for layer in self.layers:
            q, c = layer(residual)
            residual = residual - q
            total = total + q
            codes.append(c)
        codes = torch.stack(codes, dim=1)  # (M, Q)
        loss = F.mse_loss(z, total.detach())
        perplexity, usage = code_statistics(codes, self.codebook_size)
        return QuantizerOutput(z + (total - z).detach(), codes, loss, perplexity, usage)


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax VQ (IGPG Eq. 1): logits from z, soft codes in training, argmax at inference."""

    def __init__(self, config):
        super().__init__()
        self.codebook_size = config.codebook_size
        self.t_max, self.t_min = config.gumbel_temperature_max, config.gumbel_temperature_min
        self.cycle, self.kl_weight = config.gumbel_cycle_steps, config.gumbel_kl_weight
        self.to_logits = nn.Linear(config.codebook_dim, config.codebook_size)
        self.embed = nn.Parameter(torch.randn(config.codebook_size, config.codebook_dim))  # (K, d)
        self.register_buffer("num_steps", torch.tensor(0, dtype=torch.long))

    @property
    def temperature(self) -> float:
        """Cosine annealing from `t_max` to `t_min` (log-space), restarting every `cycle` steps."""
        phase = (int(self.num_steps) % self.cycle) / self.cycle
        lo, hi = math.log(self.t_min), math.log(self.t_max)
        log_t = lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * phase))
        return math.exp(log_t)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_logits(z).argmax(dim=-1, keepdim=True)  # (M, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes[:, 0], self.embed)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        logits = self.to_logits(z)  # (M, K)
        codes = logits.argmax(dim=-1, keepdim=True)  # (M, 1)
        if self.training:
            soft = F.gumbel_softmax(logits, tau=self.temperature, hard=False)  # (M, K)
            quantized = soft @ self.embed
            self.num_steps += 1
        else:
            quantized = self.decode(codes)
        probs = logits.softmax(dim=-1)
        kl = (probs * torch.log(probs * self.codebook_size + 1e-10)).sum(-1).mean()
        perplexity, usage = code_statistics(codes, self.codebook_size)
        return QuantizerOutput(quantized, codes, self.kl_weight * kl, perplexity, usage)


def build_quantizer(config) -> nn.Module:
    """The quantiser `config.quantizer` names."""
    return GumbelQuantizer(config) if config.quantizer == "gumbel" else ResidualVQ(config)
