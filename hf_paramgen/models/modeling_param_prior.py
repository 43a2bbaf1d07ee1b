"""`ParamPriorForCausalLM`: a decoder-only prior over ParamTokenizer codes, conditioned by a prefix.

The decoder is a stock transformers model (`AutoModel.from_config(config.decoder_config())`, e.g.
`LlamaModel` or `GPT2Model`) fed with `inputs_embeds`:

    prefix   = proj(condition_embeds) + type_embed(condition_types)            (b, n_cond, h)
    tokens   = token_embed(input_ids) + structure_embed(code_structure)        (b, q, h)
             + token_condition(mean of proj(condition_embeds))                 (condition_injection)
             + class_condition(proj(prototype of the token's class))           (head tokens only)
    decoder([prefix; tokens]) -> lm_head -> logits over the vocabulary (specials are never predicted)

With `config.condition_injection` (default) every code token also sees the instruction directly, not
only through attention to the prefix, and a token of the classifier head (structure field
`class_slot` = 1 + i) sees the projected prototype of class i: the condition decides the head rows
class by class, which is what lets a generated head follow a new label order (DESIGN.md section 1).

`input_ids` never contain the prefix: they are `[BOS, code_0 + code_offset, ...]`. Row `p` of
`code_structure` describes the code **predicted** at position `p` (the target), i.e. code `p`:
`STRUCTURE_FIELDS` (where it lies, and the shape of its tensor), so the prior always knows where in the network
the next code lies, also in block-wise generation where positions in the decoder are relative.

Several codes per decoding step (`config.codes_per_step` = G > 1): position p of the decoder is **step** p, the G
consecutive codes `p*G ... p*G+G-1` of the flat code sequence (G divides `codes_per_chunk`, so they lie in one
chunk). `input_ids` are (b*G, q): row `i*G + g` is code slot g of network i (`[BOS, code_g of step 0, code_g of
step 1, ...]`), the layout MusicGen uses for its codebooks, so transformers' `generate`, its logits processors and
its sampler act on each code as on a token, while the decoder (and its KV cache) runs at batch b:

    step     = G**-0.5 * sum_g embed_tokens(g * vocab_size + id_g)          (b, q, h)  one table per slot
             + structure_embed(code_structure) (+ injection, as above)     structure row of the step's first code
    logits   = lm_head(hidden) (b, q, G*V) -> (b*G, q, V)                   G linear read-outs of one hidden state

Per-slot tables rather than a shared table plus a per-slot vector: summed over the slots, an added per-slot vector
is one constant, so the step embedding could not tell which code sits in which slot. G read-outs (one Linear of
G*V outputs) rather than `lm_head(hidden + slot_query[g])`: a linear head maps that to `lm_head(hidden) +
lm_head(slot_query[g])`, the same distribution up to a per-slot bias. The G codes of a step are drawn
independently given the hidden state (the price of writing them in one step); the loss is the mean cross-entropy
over all codes. `code_structure` (b, q, 10) has one row per step; `attention_mask` is (b, L) or (b*G, L).

The structure rows and their embedding live in `code_structure`, whole-network generation
(`generate_codes`) in `generation_param_prior`; both are re-exported / mixed in here.

How the training collator builds a batch (`hf_paramgen.data.collate.PriorCollator` does this):

* ``condition_embeds`` (b, n_max, d) float: each row's condition vectors, right-padded with zeros;
  ``condition_types`` (b, n_max) long (0 text, 1 architecture, 2+i class i; 0 on padding);
  ``condition_mask`` (b, n_max) long, 0 on padding. Padded prefix slots are masked out and skipped
  by the position ids, so a row's result does not depend on its batch mates.
* ``input_ids`` (b, 1+T_max): ``[BOS] + codes_to_input_ids(codes)``, right-padded with ``pad_token_id``;
  ``attention_mask`` (b, 1+T_max): 1 on real tokens.
* ``code_structure`` (b, 1+T_max, 10): ``structure_for_layout(...)`` of the row's network (row p =
  code p), one pad row (zeros) appended and right-padded with zeros.
* ``labels`` (b, 1+T_max): ``input_ids`` with -100 on BOS and padding (shifted inside `forward`).
* Networks longer than a block: crop a random window of ``codes[a:a+m]`` (structure rows ``a:a+m``
  kept absolute), as block-wise generation sees it.
* G > 1: T counts steps; ``input_ids`` / ``labels`` are (b*G, 1+S_max) (row i*G+g: slot g of network i),
  ``attention_mask`` (b, 1+S_max), ``code_structure`` (b, 1+S_max, 10) (the rows ``structure[::G]``), and crop
  windows start at a multiple of G.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..hub.remote_code import RemoteCodeMixin
from .code_structure import (  # noqa: F401  re-exported: callers import them from here
    NUM_STRUCTURE_FIELDS,
    STRUCTURE_FIELDS,
    STRUCTURE_WIDTHS,
    CodeStructureEmbedding,
    FactorisedStructureEmbedding,
    class_slots,
    head_tensors,
    structure_embedding,
    structure_for_layout,
)
from .configuration_param_prior import ParamPriorConfig
from .generation_param_prior import ParamPriorGenerationMixin


class ParamPriorForCausalLM(RemoteCodeMixin, ParamPriorGenerationMixin, PreTrainedModel, GenerationMixin):
    """Autoregressive prior p(code_i | code_<i, condition) on a stock transformers decoder."""

    remote_auto_map = {"AutoConfig": "configuration_param_prior.ParamPriorConfig",
                       "AutoModelForCausalLM": "modeling_param_prior.ParamPriorForCausalLM"}

    config_class = ParamPriorConfig
    base_model_prefix = "prior"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: ParamPriorConfig):
        super().__init__(config)
        self.decoder = AutoModel.from_config(config.decoder_config())
        hidden = int(self.decoder.config.hidden_size)
        self.condition_proj = nn.Sequential(nn.LayerNorm(config.condition_dim), nn.Linear(config.condition_dim, hidden))
        self.condition_type_embed = nn.Embedding(config.num_condition_types, hidden)
        self.structure_embed = structure_embedding(config, hidden)  # tables or factorised (code_structure)
        self.lm_head = nn.Linear(hidden, config.vocab_size * config.codes_per_step, bias=False)  # G read-outs
        if config.condition_injection:
            self.token_condition = nn.Linear(hidden, hidden)
            self.class_condition = nn.Linear(hidden, hidden)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for the prior's own Linear/Embedding layers; lm_head scaled down by
        sqrt(2*layers)."""
        from transformers import initialization as init

        std = self.config.initializer_range
        if module is self.lm_head:
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.decoder.config.num_hidden_layers))
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    # ------------------------------------------------------------------ ids <-> codes
    def codes_to_input_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes in [0, codebook_size) (any shape) -> input ids (same shape), `codes + code_offset`."""
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.codebook_size):
            raise ValueError(
                f"codes must lie in [0, codebook_size={self.config.codebook_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )
        return codes.long() + self.config.code_offset

    def input_ids_to_codes(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Inverse of `codes_to_input_ids`; raises if any id is a special token."""
        input_ids = torch.as_tensor(input_ids)
        lo, hi = self.config.code_offset, self.config.vocab_size
        bad = (input_ids < lo) | (input_ids >= hi)
        if bad.any():
            raise ValueError(
                f"input_ids hold {int(bad.sum())} non-code ids (e.g. {input_ids[bad][:5].tolist()}); "
                f"code ids lie in [{lo}, {hi})."
            )
        return input_ids.long() - lo

    # ------------------------------------------------------------------ forward
    def _prefix(self, condition_embeds: torch.Tensor, condition_types: torch.Tensor | None) -> torch.Tensor:
        b, n, d = condition_embeds.shape
        if d != self.config.condition_dim:
            raise ValueError(f"condition_embeds have width {d}, this prior expects "
                             f"condition_dim={self.config.condition_dim}.")
        if n > self.config.max_condition_tokens:
            raise ValueError(f"{n} condition tokens exceed max_condition_tokens={self.config.max_condition_tokens}.")
        if condition_types is None:
            condition_types = torch.zeros(b, n, dtype=torch.long, device=condition_embeds.device)
        if condition_types.shape != (b, n):
            raise ValueError(f"condition_types must be (b, n_cond)={(b, n)}, got {tuple(condition_types.shape)}.")
        if n and int(condition_types.max()) >= self.config.num_condition_types:
            raise ValueError(
                f"condition type {int(condition_types.max())} >= num_condition_types={self.config.num_condition_types} "
                "(too many classes for this prior?)."
            )
        proj = self.condition_proj(condition_embeds.to(self.lm_head.weight.dtype))
        return proj + self.condition_type_embed(condition_types)  # (b, n, h)

    def _injection(self, condition_embeds, condition_types, condition_mask, code_structure) -> torch.Tensor:
        """What every code token adds to its embedding: (b, 1 or q, h) (see the module docstring)."""
        b, n, _ = condition_embeds.shape
        proj = self.condition_proj(condition_embeds.to(self.lm_head.weight.dtype))  # (b, n, h)
        mask = condition_mask.to(proj.dtype)[..., None]  # (b, n, 1)
        proj = proj * mask
        out = self.token_condition(proj.sum(1) / mask.sum(1).clamp(min=1))[:, None]  # (b, 1, h)
        if code_structure is None or code_structure.shape[-1] < 5:  # no class_slot field
            return out
        if condition_types is None:
            condition_types = torch.zeros(b, n, dtype=torch.long, device=proj.device)
        h, types = proj.shape[-1], self.config.num_condition_types
        table = proj.new_zeros(b, types, h).scatter_add_(1, condition_types[..., None].expand(-1, -1, h), proj)
        cls = code_structure[..., 4]  # (b, q): 1 + class index in the head, 0 elsewhere
        is_head = (cls > 0)[..., None].to(proj.dtype)
        index = torch.where(cls > 0, (cls + 1).clamp(max=types - 1), 0)  # class i is condition type 2 + i
        vectors = table.gather(1, index[..., None].expand(-1, -1, h))  # (b, q, h)
        return out + self.class_condition(vectors) * is_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        condition_embeds: torch.Tensor | None = None,
        condition_types: torch.LongTensor | None = None,
        condition_mask: torch.Tensor | None = None,
        code_structure: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for every position of `input_ids` (b, q); the prefix is only fed when the cache is empty.

        Args:
            input_ids: (b, q) `[BOS, codes + code_offset ...]`, or only the new ids when `cache` holds the past; with
                codes_per_step=G > 1, (b*G, q), row i*G+g = code slot g of network i (module docstring).
            condition_embeds / condition_types / condition_mask: (b, n_cond, d) / (b, n_cond) / (b, n_cond);
                types default to 0 (text), the mask to all ones.
            code_structure: (b, q, 10) `STRUCTURE_FIELDS` (4 or 5 accepted: no shape fields), row p = structure of
                the code (step: its first code) predicted at position p.
            attention_mask: (b, past_ids + q) over `input_ids` only, or (b, n_cond + past_ids + q) including the prefix
                (b*G rows accepted: slot 0's are used).
            labels: like `input_ids`, -100 where ignored; shifted inside (position p predicts labels[p+1]).
            cache / past_key_values: a transformers `Cache` (`past_key_values` is the older name).
            logits_to_keep: if > 0, logits only for the last `logits_to_keep` positions.
            num_items_in_batch: if given, the loss is summed and divided by it (gradient accumulation).
        """
        kwargs.pop("return_dict", None)
        cache = cache if cache is not None else past_key_values
        if use_cache is None and labels is not None:
            use_cache = False  # training: no cache to build
        b, q = self._check_inputs(input_ids, code_structure, condition_embeds)  # b networks (input_ids: b*G rows)
        past = int(cache.get_seq_length()) if cache is not None else 0  # a static cache counts in a tensor
        if attention_mask is not None and attention_mask.shape[0] != b:  # (b*G, L) as generate() keeps it
            attention_mask = attention_mask[:: self.config.codes_per_step]
        if condition_embeds is None or condition_mask is None:  # no condition: an empty mask
            n_cond = 0 if condition_embeds is None else condition_embeds.shape[1]
            condition_mask = torch.ones(b, n_cond, dtype=torch.long, device=input_ids.device)
        condition_mask = condition_mask.long()
        embeds = self._embed(input_ids, code_structure, condition_embeds, condition_types, condition_mask, past)
        mask = self._full_attention_mask(attention_mask, condition_mask, past, b, q)  # (b, past + len)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]  # padded prefix slots skipped
        out = self.decoder(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=use_cache,
            **kwargs,
        )
        logits = self._logits(out.last_hidden_state[:, -q:], logits_to_keep)  # the prefix dropped
        loss = None if labels is None else self._loss(logits, labels, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=out.cache if use_cache is not False else None,
            hidden_states=getattr(out, "hidden_states", None), attentions=getattr(out, "attentions", None),
        )

    def _check_inputs(self, input_ids, code_structure, condition_embeds) -> tuple[int, int]:
        """(b, q) of `input_ids` (b networks, q positions), after checking that the structure and condition rows match
        them; with codes_per_step=G > 1 `input_ids` hold b*G rows."""
        if input_ids is None or input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (b, q), got {None if input_ids is None else tuple(input_ids.shape)}.")
        rows, q = input_ids.shape
        per_step = self.config.codes_per_step
        if rows % per_step:
            raise ValueError(f"input_ids must hold b * codes_per_step rows (row i*{per_step}+g: code slot g of network "
                             f"i), got {rows} rows with codes_per_step={per_step}.")
        b = rows // per_step
        if code_structure is not None and (
            code_structure.ndim != 3 or code_structure.shape[:2] != (b, q)
            or code_structure.shape[2] not in STRUCTURE_WIDTHS
        ):
            raise ValueError(
                f"code_structure must be (b, q, {NUM_STRUCTURE_FIELDS})={(b, q, NUM_STRUCTURE_FIELDS)} (or 4 / 5 "
                f"fields), got {tuple(code_structure.shape)}."
            )
        if condition_embeds is not None and condition_embeds.shape[0] != b:
            raise ValueError(f"condition_embeds hold {condition_embeds.shape[0]} rows, input_ids {b}.")
        return b, q

    def _embed(self, input_ids, code_structure, condition_embeds, condition_types, condition_mask, past: int):
        """Decoder inputs (b, [n_cond +] q, h): token + structure (+ injected condition) embeddings, with the
        condition prefix in front when the cache is empty."""
        embeds = self._step_embeddings(input_ids)  # (b, q, h)
        if code_structure is not None:
            embeds = embeds + self.structure_embed(code_structure)
        n_cond = condition_mask.shape[1]
        if self.config.condition_injection and n_cond:
            embeds = embeds + self._injection(condition_embeds, condition_types, condition_mask, code_structure)
        if past == 0 and n_cond:
            embeds = torch.cat([self._prefix(condition_embeds, condition_types), embeds], dim=1)
        return embeds

    def _step_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(b*G, q) ids -> (b, q, h): the token embedding (G = 1), else G**-0.5 * the sum over slots g of the slot-g
        table's embedding of id_g (rows `g * vocab_size + id` of the decoder's input table)."""
        table, per_step = self.get_input_embeddings(), self.config.codes_per_step
        if per_step == 1:
            return table(input_ids)
        offsets = self.config.vocab_size * torch.arange(per_step, device=input_ids.device)[:, None]  # (G, 1)
        ids = input_ids.view(-1, per_step, input_ids.shape[1]) + offsets  # (b, G, q)
        return table(ids).sum(1) * per_step**-0.5  # (b, G, q, h) -> (b, q, h)

    def _logits(self, hidden: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """Float logits over the vocabulary (b*G, q or logits_to_keep, V); special ids are never predicted."""
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()  # (b, q, G*V)
        per_step = self.config.codes_per_step
        if per_step > 1:  # (b, q, G, V) -> (b, G, q, V) -> (b*G, q, V): row i*G+g is slot g of network i
            b, q = logits.shape[:2]
            logits = logits.view(b, q, per_step, -1).transpose(1, 2).reshape(b * per_step, q, -1)
        logits[..., : self.config.code_offset] = torch.finfo(logits.dtype).min
        return logits

    def _full_attention_mask(self, attention_mask, condition_mask, past: int, b: int, q: int) -> torch.Tensor:
        n_cond = condition_mask.shape[1]
        total = past + q + (n_cond if past == 0 else 0)  # keys the decoder attends to
        if attention_mask is None:
            attention_mask = torch.ones(b, total - n_cond, dtype=torch.long, device=condition_mask.device)
        attention_mask = attention_mask.long()
        if attention_mask.shape[1] == total - n_cond:
            attention_mask = torch.cat([condition_mask, attention_mask], dim=1)
        if attention_mask.shape != (b, total):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (b, {total - n_cond}) over input "
                "ids "
                f"or (b, {total}) including the {n_cond} condition tokens."
            )
        return attention_mask

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | None) -> torch.Tensor:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must be shaped like input_ids {tuple(logits.shape[:2])}, got "
                             f"{tuple(labels.shape)}.")
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # (b*(q-1), V)
        shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
        if num_items_in_batch is None:
            return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum") / num_items_in_batch


def register() -> None:
    """Register `param_prior` with `AutoConfig` and `AutoModelForCausalLM` (idempotent)."""
    try:
        AutoConfig.register(ParamPriorConfig.model_type, ParamPriorConfig)
    except ValueError:
        pass  # already registered
    try:
        AutoModelForCausalLM.register(ParamPriorConfig, ParamPriorForCausalLM)
    except ValueError:
        pass


