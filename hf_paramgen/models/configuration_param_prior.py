"""`ParamPriorConfig`: the autoregressive prior over ParamTokenizer codes.

Vocabulary: `num_special_tokens` special ids first (`bos_token_id`, `pad_token_id`), then the
`codebook_size` codes at `code_offset = num_special_tokens`. The decoder is a **stock transformers
decoder** (Llama or GPT-2) whose config is a sub-config (`transformer`, transformers' `sub_configs`, like
the text config of a composite model); the prior builds it with `AutoModel.from_config` and feeds it
`inputs_embeds`. A config saved with `transformer` as a plain dict (with its `model_type`) loads the same.

The generator settings (text encoder, sample encoders, where the ParamTokenizer lives, the layouts) are
declared fields too, so a generator repo's `config.json` says everything needed to load it.
"""

from __future__ import annotations

import copy

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

NUM_KINDS = 13  # len(hf_paramgen.layout.param_layout.KINDS); literal so this file loads as Hub remote code alone
AGGREGATIONS: tuple[str, ...] = ("layer", "architecture")
DEFAULT_DECODER: dict = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
# keys of `transformer` the prior sets itself (they follow from the prior's own fields)
_MANAGED_KEYS = ("vocab_size", "max_position_embeddings", "n_positions", "bos_token_id", "pad_token_id",
                 "eos_token_id", "tie_word_embeddings")
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# names saved by earlier versions -> Hub id (literal, so this file loads as Hub remote code alone)
TEXT_ENCODER_ALIASES = {"all-MiniLM-L6-v2": DEFAULT_TEXT_ENCODER}


class ParamPriorConfig(PreTrainedConfig):
    """Configuration of a `ParamPriorForCausalLM`.

    Sequence fed to the decoder: `[condition prefix (n_cond)] [BOS] [step_0 ... step_{S-1}]`, where a decoding step
    holds `codes_per_step` (G) consecutive codes of the flat code sequence (G = 1: one code per position, as in
    IGPG; G = codes_per_chunk: one whole chunk per position; see `modeling_param_prior`). The context
    `max_position_embeddings` counts all of it (in positions = steps); networks with more steps than fit are
    generated block by block (each block: prefix, BOS, the last `block_window` steps of the previous block, new steps).

    Structure: every code token carries `STRUCTURE_FIELDS` (`code_structure`). With `structure_embedding="tables"`
    (the default of older configs) the prior embeds `(tensor_index, chunk_in_tensor, kind_id, slot)` by tables whose
    indices beyond `max_tensors` / `max_chunks_per_tensor` are **clipped** to the last row (capped); with
    `"factorised"` it embeds sinusoidal features of the position and shape fields (row, column, fan-in, fan-out,
    tensors after), so no tensor size, width or depth overflows a table.

    Args:
        codebook_size: codes per ParamTokenizer codebook (K).
        codes_per_chunk: codes per chunk = the ParamTokenizer's `codes_per_chunk` (latents_per_chunk * num_quantizers).
        codes_per_step: codes written per decoding step (G, default 1); must divide `codes_per_chunk`, so the G codes of
            a step always lie in one chunk. A network of N*l codes then takes N*l/G decoding steps.
        num_special_tokens: ids below `code_offset`; must hold `bos_token_id` and `pad_token_id`.
        bos_token_id / pad_token_id: special ids.
        condition_dim: width of the condition vectors (`ConditionEncoder.dim`).
        max_condition_tokens: most condition tokens one instruction may bring.
        num_condition_types: rows of the condition-type table (0 text, 1 architecture, 2+i class i).
        num_kinds / max_tensors / max_chunks_per_tensor: structure table sizes (see above; the last two are unused
            by the factorised embedding).
        structure_embedding: "tables" or "factorised" (see above).
        transformer: the decoder's transformers config, or its dict (needs `model_type`; default a small Llama);
            vocabulary, context and special ids are set from this config.
        max_position_embeddings: context length (prefix + BOS + steps; a step is one code when codes_per_step=1).
        block_window: decoding steps (codes when codes_per_step=1) of the previous block kept as context in
            block-wise generation (default: half of a block).
        chunk_size / aggregation: chunking the codes were made with (defaults for `generate_codes`).
        param_tokenizer_repo_id / param_tokenizer_revision / param_tokenizer_subfolder: where the
            matching ParamTokenizer lives (subfolder of the generator repo, or a pinned repo + revision).
        param_tokenizer_sha256: sha256 of the pinned ParamTokenizer's weights file: offline, a pinned
            revision that is not cached resolves to the generator snapshot's own subfolder when it matches.
        text_encoder: the text encoder, a Hub id or folder (default MiniLM), or "hashing:<dim>" (tests).
            The name "all-MiniLM-L6-v2" of earlier versions loads as its Hub id.
        sample_encoders: names of the generator's `sample_encoders/<name>/` (a `SampleEncoder` each).
        layouts: architecture name -> `ParamLayout.to_json()` of the architectures it was trained on.
        initializer_range: std of the normal init of the prior's own layers.
        condition_injection: also add the instruction to every code token (and each class's prototype to
            the head tokens of that class), not only as a prefix (see `modeling_param_prior`).
    """

    model_type = "param_prior"
    sub_configs_defaults = {"transformer": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    def __init__(
        self,
        codebook_size: int = 256,
        codes_per_chunk: int = 1,
        codes_per_step: int = 1,
        num_special_tokens: int = 2,
        bos_token_id: int = 0,
        pad_token_id: int = 1,
        condition_dim: int = 384,
        max_condition_tokens: int = 34,
        num_condition_types: int = 34,
        num_kinds: int = NUM_KINDS,
        max_tensors: int = 64,
        max_chunks_per_tensor: int = 4096,
        structure_embedding: str = "tables",
        transformer: dict | PreTrainedConfig | None = None,
        max_position_embeddings: int = 1024,
        block_window: int | None = None,
        chunk_size: int | None = None,
        aggregation: str = "layer",
        param_tokenizer_repo_id: str | None = None,
        param_tokenizer_revision: str | None = None,
        param_tokenizer_subfolder: str | None = None,
        param_tokenizer_sha256: str | None = None,
        text_encoder: str = DEFAULT_TEXT_ENCODER,
        sample_encoders: list[str] | None = None,
        layouts: dict[str, str] | None = None,
        initializer_range: float = 0.02,
        condition_injection: bool = True,
        **kwargs,
    ):
        self.codebook_size = codebook_size
        self.codes_per_chunk = codes_per_chunk
        self.codes_per_step = codes_per_step
        self.num_special_tokens = num_special_tokens
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = None  # a network has a known number of codes: never stop early
        self.condition_dim = condition_dim
        self.max_condition_tokens = max_condition_tokens
        self.num_condition_types = num_condition_types
        self.num_kinds = num_kinds
        self.max_tensors = max_tensors
        self.max_chunks_per_tensor = max_chunks_per_tensor
        if structure_embedding not in ("tables", "factorised"):
            raise ValueError(f"structure_embedding must be 'tables' or 'factorised', got {structure_embedding!r}.")
        self.structure_embedding = structure_embedding
        self.transformer, decoder_vocab = self._decoder(transformer)
        self.max_position_embeddings = max_position_embeddings
        self.block_window = block_window
        self.chunk_size = chunk_size
        self.aggregation = aggregation
        self.param_tokenizer_repo_id = param_tokenizer_repo_id
        self.param_tokenizer_revision = param_tokenizer_revision
        self.param_tokenizer_subfolder = param_tokenizer_subfolder
        self.param_tokenizer_sha256 = param_tokenizer_sha256
        self.text_encoder = TEXT_ENCODER_ALIASES.get(text_encoder, text_encoder or DEFAULT_TEXT_ENCODER)
        if sample_encoders is not None and (not isinstance(sample_encoders, (list, tuple))
                                            or not all(isinstance(n, str) for n in sample_encoders)):
            raise ValueError(f"ParamPriorConfig.sample_encoders must be a list of encoder names, got "
                             f"{sample_encoders!r}.")
        if layouts is not None and not isinstance(layouts, dict):
            raise ValueError(f"ParamPriorConfig.layouts must be a dict name -> layout JSON, got "
                             f"{type(layouts).__name__} {layouts!r:.80}.")
        self.sample_encoders = list(sample_encoders or [])
        self.layouts = dict(layouts or {})
        self.initializer_range = initializer_range
        self.condition_injection = bool(condition_injection)
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(**kwargs)
        self.tie_word_embeddings = False
        self._validate(decoder_vocab)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As `PreTrainedConfig.from_dict`; a saved config without `condition_injection` predates it: prefix only."""
        if "condition_injection" not in config_dict and "condition_injection" not in kwargs:
            config_dict = {**config_dict, "condition_injection": False}
        return super().from_dict(config_dict, **kwargs)

    # ------------------------------------------------------------------ derived
    @property
    def code_offset(self) -> int:
        """Input id of code 0."""
        return self.num_special_tokens

    @property
    def vocab_size(self) -> int:
        """Special tokens + codes."""
        return self.num_special_tokens + self.codebook_size

    @property
    def hidden_size(self) -> int:
        return int(self.transformer.hidden_size)

    @property
    def max_block_steps(self) -> int:
        """Decoding steps one block can hold with a full condition prefix: context - max_condition_tokens - 1."""
        return self.max_position_embeddings - self.max_condition_tokens - 1

    @property
    def max_block_codes(self) -> int:
        """Codes one block can hold with a full condition prefix: `max_block_steps * codes_per_step`."""
        return self.max_block_steps * self.codes_per_step

    @staticmethod
    def _decoder(transformer: dict | PreTrainedConfig | None) -> tuple[PreTrainedConfig, int | None]:
        """(decoder sub-config, the vocab_size it was given) from a config, a config dict (a saved sub-config or the
        plain dict of earlier versions) or None (the default Llama)."""
        if isinstance(transformer, PreTrainedConfig):
            return copy.deepcopy(transformer), None
        transformer = dict(transformer if transformer is not None else DEFAULT_DECODER)
        if "model_type" not in transformer:
            raise ValueError(f"ParamPriorConfig.transformer must be a config dict with a 'model_type', "
                             f"got {transformer!r}.")
        kwargs = {k: v for k, v in transformer.items()
                  if k not in _MANAGED_KEYS and k not in ("model_type", "transformers_version")}
        return AutoConfig.for_model(transformer["model_type"], **copy.deepcopy(kwargs)), transformer.get("vocab_size")

    @property
    def decoder_vocab_size(self) -> int:
        """Rows of the decoder's input embedding table: one table of `vocab_size` ids per code slot of a step
        (row `g * vocab_size + id` embeds `id` in slot g; `vocab_size` when codes_per_step=1)."""
        return self.vocab_size * self.codes_per_step

    def _sync_decoder(self) -> None:
        """Vocabulary, context and special ids of the decoder follow this config."""
        config = self.transformer
        config.vocab_size = self.decoder_vocab_size
        config.max_position_embeddings = self.max_position_embeddings  # GPT-2 maps this to n_positions
        config.bos_token_id, config.pad_token_id, config.eos_token_id = self.bos_token_id, self.pad_token_id, None
        config.tie_word_embeddings = False

    def decoder_config(self) -> PreTrainedConfig:
        """The decoder's sub-config (`transformer`), with vocabulary and context set by this config."""
        self._sync_decoder()
        return self.transformer

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The decoder's config: what generation utilities (e.g. `DynamicCache`) size the cache from."""
        return self.decoder_config()

    def get_layout(self, name: str):
        """The `ParamLayout` stored under `name` in `layouts`."""
        from ..layout.param_layout import ParamLayout

        if name not in self.layouts:
            raise KeyError(f"No layout named {name!r} in this prior; it knows {sorted(self.layouts)}.")
        value = self.layouts[name]
        return ParamLayout.from_json(value) if isinstance(value, str) else ParamLayout.from_dict(value)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_layout_entry(name, value) -> None:
        """One `layouts` entry: a name and a layout as `ParamLayout.to_json()` writes it (or its dict)."""
        import json

        data = value
        if isinstance(value, str):
            try:
                data = json.loads(value)
            except ValueError as err:
                raise ValueError(f"ParamPriorConfig.layouts[{name!r}] is not layout JSON ({err}); expected "
                                 "ParamLayout.to_json().") from err
        specs = data.get("specs") if isinstance(data, dict) else None
        if not isinstance(name, str) or not isinstance(specs, list) or not all(isinstance(x, dict) for x in specs):
            raise ValueError(f"ParamPriorConfig.layouts[{name!r}] must be a layout (ParamLayout.to_json(): an object "
                             f"with a list of 'specs'), got {value!r:.120}.")

    def _validate(self, decoder_vocab: int | None = None) -> None:
        positive = ("codebook_size", "codes_per_chunk", "codes_per_step", "num_special_tokens", "condition_dim",
                    "max_condition_tokens", "num_condition_types", "num_kinds", "max_tensors", "max_chunks_per_tensor",
                    "max_position_embeddings")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ParamPriorConfig.{name} must be a positive int, got {value!r}.")
        if self.codebook_size < 2:
            raise ValueError(f"ParamPriorConfig.codebook_size must be >= 2, got {self.codebook_size}.")
        if self.codes_per_chunk % self.codes_per_step:
            raise ValueError(
                f"ParamPriorConfig.codes_per_step={self.codes_per_step} must divide codes_per_chunk="
                f"{self.codes_per_chunk} (a decoding step holds codes of one chunk only); divisors: "
                f"{[g for g in range(1, self.codes_per_chunk + 1) if self.codes_per_chunk % g == 0]}."
            )
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.num_special_tokens:
                raise ValueError(
                    f"ParamPriorConfig.{name} must be a special id in "
                    f"[0, num_special_tokens={self.num_special_tokens}), got {value!r}."
                )
        if self.bos_token_id == self.pad_token_id:
            raise ValueError(f"bos_token_id and pad_token_id must differ, both are {self.bos_token_id}.")
        if self.num_condition_types < 2:
            raise ValueError(f"num_condition_types must be >= 2 (text, architecture), got {self.num_condition_types}.")
        if self.max_block_steps < 2:
            steps = f" ({self.max_block_steps} steps of {self.codes_per_step})" if self.codes_per_step > 1 else ""
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} leaves {self.max_block_codes} codes{steps} "
                f"per block after max_condition_tokens={self.max_condition_tokens} + BOS; need at least 2 decoding "
                "steps."
            )
        if self.block_window is not None and not 0 <= self.block_window < self.max_block_steps:
            name = "max_block_codes" if self.codes_per_step == 1 else "max_block_steps"
            raise ValueError(
                f"block_window must lie in [0, {name}={self.max_block_steps}), got {self.block_window}."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"ParamPriorConfig.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if decoder_vocab is not None and decoder_vocab != self.decoder_vocab_size:
            per_step = f" x codes_per_step={self.codes_per_step}" if self.codes_per_step > 1 else ""
            raise ValueError(
                f"transformer['vocab_size']={decoder_vocab} disagrees with the prior's vocabulary "
                f"{self.decoder_vocab_size} (num_special_tokens + codebook_size{per_step}); leave it out of "
                "`transformer`."
            )
        self._sync_decoder()
        if not isinstance(self.text_encoder, str) or not self.text_encoder:
            raise ValueError(f"ParamPriorConfig.text_encoder must be a Hub id, folder or 'hashing:<dim>', "
                             f"got {self.text_encoder!r}.")
        if self.text_encoder.startswith("hashing:"):
            dim = self.text_encoder.split(":", 1)[1]
            if not dim.isdigit() or int(dim) <= 0:
                raise ValueError(f"ParamPriorConfig.text_encoder {self.text_encoder!r} must be 'hashing:<dim>' with "
                                 f"dim a positive int (the condition_dim, {self.condition_dim}).")
        for name, value in self.layouts.items():
            self._check_layout_entry(name, value)
