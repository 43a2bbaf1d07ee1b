"""`ParamTokenizerConfig`: the shape of the VQ-VAE that turns weight chunks into codes and back."""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

QUANTIZERS: tuple[str, ...] = ("ema", "gumbel")
AGGREGATIONS: tuple[str, ...] = ("layer", "architecture")
NUM_KINDS = 13  # len(hf_paramgen.layout.param_layout.KINDS); kept literal so this file loads as Hub remote code alone


class ParamTokenizerConfig(PreTrainedConfig):
    """Configuration of a `ParamTokenizer`.

    Rate: each chunk of `chunk_size` weights becomes `latents_per_chunk` latents, each quantised by
    `num_quantizers` codebooks of `codebook_size` codes (residual VQ when `num_quantizers > 1`), so a
    chunk is `codes_per_chunk = latents_per_chunk * num_quantizers` codes (what the prior generates per
    chunk, its own `codes_per_chunk`) and the rate is
    `bits_per_param = codes_per_chunk * log2(codebook_size) / chunk_size`.

    Compatibility: config.json files written before the rename name the latents `codes_per_chunk`; a
    `codes_per_chunk` argument without `latents_per_chunk` is read that way, so they load unchanged.
    `tokens_per_chunk` is a read-only alias of `codes_per_chunk`.

    Positions: a chunk's `(tensor_index, chunk_in_tensor, kind_id)` is embedded with tables of
    `max_tensors`, `max_chunks_per_tensor` and `num_kinds` rows. Indices beyond a table are
    **clipped** to its last row (so networks longer than the tables still encode, sharing that row);
    a table of one row therefore ignores that index. The defaults keep only the tensor *kind*
    (`max_tensors = max_chunks_per_tensor = 1`): on a small digits zoo with a held-out CNN, tensor-
    and chunk-index tables memorised the training architectures and reconstructed held-out nets
    worse; on the MNIST zoo the two were within noise (examples/benchmark_tokenizer.py,
    `default` vs `vq-K256-C2-fullpos`). Raise both for networks whose chunks need their place.

    Defaults (measured with examples/benchmark_tokenizer.py on the model zoo): 2-weight chunks, one
    EMA codebook of 256 codes -> 4 bits per parameter, 0.5 codes per parameter.

    Args:
        chunk_size: weights per chunk (C).
        latents_per_chunk: latent vectors per chunk (l).
        codebook_size: codes per codebook (K).
        codebook_dim: dimension of each latent / code vector.
        num_quantizers: residual VQ depth: each latent is quantised by this many EMA codebooks in turn,
            each coding the residual the previous ones left (1 = plain VQ; only with `quantizer="ema"`).
        hidden_size: width of the encoder / decoder MLPs.
        num_layers: residual MLP blocks in the encoder and in the decoder.
        quantizer: "ema" (EMA codebooks, k-means init, dead-code restart) or "gumbel"
            (Gumbel-softmax, as in the IGPG paper).
        num_kinds: rows of the tensor-kind embedding (`len(layout.KINDS)`).
        max_tensors: rows of the tensor-index embedding.
        max_chunks_per_tensor: rows of the chunk-in-tensor embedding.
        aggregation: chunking mode the tokenizer is trained for ("layer" or "architecture").
        commitment_weight: weight of the commitment loss ||z - sg(z_q)||^2.
        ema_decay: EMA decay of codebook statistics.
        dead_code_threshold: a code whose EMA count falls below this fraction of the uniform share
            (batch latents / `codebook_size`) is restarted from a random latent of the current batch.
        kmeans_init: initialise codebooks by k-means on the first batch.
        kmeans_iters: Lloyd iterations of that k-means.
        gumbel_temperature_max / gumbel_temperature_min / gumbel_cycle_steps: cyclical (cosine)
            temperature schedule of the Gumbel quantiser, annealed from max to min each cycle.
        gumbel_kl_weight: weight of the KL(q || uniform) term of the Gumbel quantiser.
    """

    model_type = "param_tokenizer"

    def __init__(
        self,
        chunk_size: int = 2,
        latents_per_chunk: int | None = None,
        codebook_size: int = 256,
        codebook_dim: int = 2,
        num_quantizers: int = 1,
        hidden_size: int = 128,
        num_layers: int = 2,
        quantizer: str = "ema",
        num_kinds: int = NUM_KINDS,
        max_tensors: int = 1,
        max_chunks_per_tensor: int = 1,
        aggregation: str = "layer",
        commitment_weight: float = 0.25,
        ema_decay: float = 0.95,
        dead_code_threshold: float = 0.05,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        gumbel_temperature_max: float = 1.0,
        gumbel_temperature_min: float = 1e-4,
        gumbel_cycle_steps: int = 2000,
        gumbel_kl_weight: float = 5e-4,
        **kwargs,
    ):
        legacy = kwargs.pop("codes_per_chunk", None)  # the field's name before the rename (it meant latents)
        if latents_per_chunk is None:
            latents_per_chunk = 1 if legacy is None else legacy
        self.chunk_size = chunk_size
        self.latents_per_chunk = latents_per_chunk
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_quantizers = num_quantizers
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.quantizer = quantizer
        self.num_kinds = num_kinds
        self.max_tensors = max_tensors
        self.max_chunks_per_tensor = max_chunks_per_tensor
        self.aggregation = aggregation
        self.commitment_weight = commitment_weight
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.gumbel_temperature_max = gumbel_temperature_max
        self.gumbel_temperature_min = gumbel_temperature_min
        self.gumbel_cycle_steps = gumbel_cycle_steps
        self.gumbel_kl_weight = gumbel_kl_weight
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        positive = ("chunk_size", "latents_per_chunk", "codebook_size", "codebook_dim", "num_quantizers",
                    "hidden_size", "num_kinds", "max_tensors", "max_chunks_per_tensor", "gumbel_cycle_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ParamTokenizerConfig.{name} must be a positive int, got {value!r}.")
        if not isinstance(self.num_layers, int) or self.num_layers < 0:
            raise ValueError(f"ParamTokenizerConfig.num_layers must be an int >= 0, got {self.num_layers!r}.")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"ParamTokenizerConfig.quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}.")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"ParamTokenizerConfig.aggregation must be one of {AGGREGATIONS}, "
                             f"got {self.aggregation!r}.")
        if self.quantizer == "gumbel" and self.num_quantizers != 1:
            raise ValueError(
                f"num_quantizers={self.num_quantizers} (residual VQ) needs quantizer='ema', got quantizer='gumbel' "
                "(use num_quantizers=1 with Gumbel)."
            )
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}.")
        if not 0.0 < self.gumbel_temperature_min <= self.gumbel_temperature_max:
            raise ValueError(
                f"need 0 < gumbel_temperature_min <= gumbel_temperature_max, got min={self.gumbel_temperature_min} "
                f"and max={self.gumbel_temperature_max}."
            )
        if self.commitment_weight < 0 or self.dead_code_threshold < 0:
            raise ValueError(
                f"commitment_weight and dead_code_threshold must be >= 0, got {self.commitment_weight} "
                f"and {self.dead_code_threshold}."
            )

    def to_dict(self) -> dict:
        """As the base class, with `auto_map` entries as plain strings.

        transformers' `custom_object_save` treats every class whose name contains "Tokenizer" as a
        text tokenizer and writes a `[slow, fast]` pair into `auto_map`, which `AutoConfig` /
        `AutoModel` then cannot load; this writes `"module.Class"` instead.
        """
        out = super().to_dict()
        if isinstance(out.get("auto_map"), dict):
            out["auto_map"] = {k: v[0] if isinstance(v, (list, tuple)) else v for k, v in out["auto_map"].items()}
        return out

    @property
    def codes_per_chunk(self) -> int:
        """Codes per chunk (the prior's `codes_per_chunk`): `latents_per_chunk * num_quantizers`."""
        return self.latents_per_chunk * self.num_quantizers

    @property
    def tokens_per_chunk(self) -> int:
        """Read-only alias of `codes_per_chunk` (the name before the rename)."""
        return self.codes_per_chunk

    @property
    def bits_per_param(self) -> float:
        """`codes_per_chunk * log2(codebook_size) / chunk_size`."""
        return self.codes_per_chunk * math.log2(self.codebook_size) / self.chunk_size
