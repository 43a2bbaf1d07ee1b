"""Generation for `ParamPriorForCausalLM`: whole networks of codes, block by block (Algorithm 1 of IGPG).

`ParamPriorGenerationMixin.generate_codes` samples the codes of a network for a layout, feeding each
step's `code_structure` rows through `prepare_inputs_for_generation` to transformers' `generate`. A
network longer than the context is generated in blocks that keep a window of the previous block's steps.

With `codes_per_step` = G > 1 `generate` runs on (B*G, T) ids (row i*G+g: code slot g of network i; see
`modeling_param_prior`): its logits processors and sampler treat each code as a token, the decoder and its KV cache
run at batch B, and one `generate` step writes G codes of every network.

KV cache: unless the caller passes `cache_implementation` (or `cache`, or `use_cache=False`), a network longer than
one block is generated with a static cache and one that fits a block with transformers' dynamic cache
(`DEFAULT_CACHE`). A static cache is sized to the block (`max_cache_len`, the condition prefix included) and is
not compiled unless the caller passes `disable_compile=False`. This module is part of the prior's Hub remote code.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from .code_structure import step_structure, structure_for_layout

# `cache_implementation` when the caller names none, measured by examples/benchmark_prior_speed.py on CPU (random
# 256 x 4 Llama prior, batch 8, context 1280): blocks of a network longer than the context fill most of it; there the
# DynamicCache re-allocates every layer's whole cache each step (`torch.cat`), which in a fresh process (and always for
# caches beyond the C allocator's mmap ceiling) page-faults on every step: 28.4 ms CPU per step against 13.9 ms with a
# StaticCache written in place. Once the allocator has served cache-sized blocks, the DynamicCache is 5-13 % faster
# (11.3 vs 11.9 ms). The static cache is chosen for that robustness; codes are identical for the same seed. A network
# that fits one block keeps the DynamicCache: a static cache attends over its whole (masked) length, and transformers
# reuses the longest length a model has allocated (2x slower per step for a short network after a long one).
DEFAULT_CACHE: dict[str, str | None] = {"blockwise": "static", "single_block": None}


class ParamPriorGenerationMixin:
    """Mixed into `ParamPriorForCausalLM` (before `GenerationMixin`): code generation for a target layout."""

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, code_structure=None, **kwargs):
        """Default preparation, plus the rows of `code_structure` for the ids fed at this step."""
        inputs = super().prepare_inputs_for_generation(input_ids, next_sequence_length=next_sequence_length, **kwargs)
        if code_structure is not None:
            q, end = inputs["input_ids"].shape[1], input_ids.shape[1]
            if code_structure.shape[1] < end:
                raise ValueError(f"code_structure covers {code_structure.shape[1]} positions, generation reached "
                                 f"{end}.")
            inputs["code_structure"] = code_structure[:, end - q : end]
        return inputs

    def create_masks_for_generate(self, attention_mask=None, **kwargs):
        """Hook of `prepare_inputs_for_generation` for compileable (static) caches: keep the 2D mask (or None), since
        `forward` prepends the condition prefix to it and the decoder builds its own 4D mask from the cache."""
        return attention_mask

    @torch.no_grad()
    def generate_codes(
        self,
        condition_embeds: torch.Tensor | None = None,
        layout=None,
        chunk_size: int | None = None,
        aggregation: str | None = None,
        num_candidates: int = 1,
        condition_types: torch.Tensor | None = None,
        condition_mask: torch.Tensor | None = None,
        seed: int | None = None,
        block_window: int | None = None,
        show_progress: bool = False,
        return_probs: bool = False,
        num_samples: int | None = None,
        **sampling,
    ) -> torch.LongTensor | tuple[torch.LongTensor, torch.Tensor]:
        """Sample the codes of a whole network: LongTensor (b * num_candidates, N, l), instruction-major.

        One `generate` step writes `config.codes_per_step` codes of each network; the result is the same for any.

        Args:
            condition_embeds: (b, n_cond, d) (None: unconditional).
            layout: the target `ParamLayout` (or a name in `config.layouts`); with `chunk_size` and `aggregation`
                (defaults from the config) it fixes N chunks and the structure of every code.
            num_candidates: networks sampled per instruction (`num_samples`: its old name, deprecated).
            seed: seeds `torch.manual_seed` for this call only (global RNG state is restored).
            block_window: decoding steps (codes when codes_per_step=1) of the previous block kept as context when the
                network is longer than a block.
            return_probs: also return the distribution each code was drawn from, (b * num_candidates, N, l, K)
                float (after temperature/top-k/top-p), e.g. for `ParamTokenizer.decode_expected`.
            **sampling: `GenerationMixin.generate` options (do_sample, top_k, top_p, temperature, cache_implementation
                ("static" or "dynamic"; default `DEFAULT_CACHE`: static for networks longer than a block), ...).
        """
        if "num_return_sequences" in sampling:
            raise TypeError("Pass num_candidates, not num_return_sequences, to generate_codes.")
        if num_samples is not None:
            warnings.warn("generate_codes(num_samples=...) is deprecated: use num_candidates.", FutureWarning,
                          stacklevel=2)
            num_candidates = num_samples
        if not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}.")
        layout = self.config.get_layout(layout) if isinstance(layout, str) else layout
        chunk_size = chunk_size or self.config.chunk_size
        if layout is None or chunk_size is None:
            raise ValueError(f"generate_codes needs a layout and a chunk_size, got {type(layout).__name__}, "
                             f"{chunk_size}.")
        per_chunk = self.config.codes_per_chunk
        structure = structure_for_layout(layout, chunk_size, per_chunk, aggregation or self.config.aggregation)
        device = self.lm_head.weight.device
        b = 1 if condition_embeds is None else condition_embeds.shape[0]
        cond = {"condition_embeds": condition_embeds, "condition_types": condition_types,
                "condition_mask": condition_mask}
        cond = {k: v.to(device).repeat_interleave(num_candidates, dim=0) for k, v in cond.items() if v is not None}
        rng = contextlib.nullcontext()
        if seed is not None:
            rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            codes, probs = self._generate_blocks(cond, structure.to(device), b * num_candidates, block_window,
                                                 show_progress, sampling, return_probs)
        codes = codes.view(b * num_candidates, -1, per_chunk)
        if return_probs:
            return codes, probs.view(b * num_candidates, -1, per_chunk, self.config.codebook_size)
        return codes

    def _generate_blocks(self, cond: dict, structure: torch.Tensor, batch: int, window, show_progress, sampling,
                         return_probs: bool = False):
        """Algorithm 1 of IGPG: one block if the network fits the context, else blocks with a window; blocks, windows
        and the context count decoding steps of `codes_per_step` codes. `structure`: (N*l, 10) per code.

        Returns codes (B, N*l) and, with `return_probs`, their distributions (B, N*l, K) (else None).
        """
        from transformers.utils.logging import tqdm

        per_step = self.config.codes_per_step
        steps = step_structure(structure, per_step)  # (S, 10): the structure row of each step's first code
        total = steps.shape[0]
        n_cond = cond["condition_embeds"].shape[1] if "condition_embeds" in cond else 0
        capacity = self.config.max_position_embeddings - n_cond - 1
        if window is None:
            window = self.config.block_window if self.config.block_window is not None else capacity // 2
        if not 0 <= window < capacity:
            unit = "steps" if per_step > 1 else "codes"
            raise ValueError(f"block_window must lie in [0, {capacity}) ({unit} per block), got {window}.")
        sampling = dict(sampling)
        named = {"cache_implementation", "cache", "past_key_values"} & set(sampling)
        if not named and sampling.get("use_cache", True):
            sampling["cache_implementation"] = DEFAULT_CACHE["blockwise" if total > capacity else "single_block"]
        codes = torch.empty(batch, 0, dtype=torch.long, device=structure.device)
        probs = [] if return_probs else None
        with tqdm(total=total * per_step, desc="codes", unit="code", disable=not show_progress) as bar:
            while codes.shape[1] < total * per_step:
                done = codes.shape[1] // per_step  # steps written
                w = min(window, done)
                new = min(capacity - w, total - done)
                block = self._generate_block(cond, codes[:, (done - w) * per_step :], steps[done - w : done + new], new,
                                             sampling, return_probs)
                if return_probs:
                    block, block_probs = block
                    probs.append(block_probs)
                codes = torch.cat([codes, block], dim=1)
                bar.update(new * per_step)
        return codes, (torch.cat(probs, dim=1) if return_probs else None)

    def _generate_block(self, cond: dict, prompt: torch.Tensor, structure: torch.Tensor, new: int, sampling: dict,
                        return_probs: bool = False):
        """`new` steps after `[BOS] + prompt`; `prompt` (B, w*G) codes; `structure` (w+new, 10) holds the absolute rows
        of the prompt's and the new steps.

        Returns the new codes (B, new*G), and with `return_probs` also their distributions (B, new*G, K).
        """
        batch, per_step = prompt.shape[0], self.config.codes_per_step
        prompt = self.codes_to_input_ids(prompt).view(batch, -1, per_step).transpose(1, 2)  # (B, G, w)
        prompt = prompt.reshape(batch * per_step, -1)  # (B*G, w): row i*G+g = slot g of network i
        bos = torch.full((batch * per_step, 1), self.config.bos_token_id, dtype=torch.long, device=prompt.device)
        input_ids = torch.cat([bos, prompt], dim=1)  # (B*G, 1+w)
        sampling = dict(sampling)
        if sampling.get("cache_implementation") == "static":  # room for the condition prefix too; no auto-compile
            n_cond = cond["condition_embeds"].shape[1] if "condition_embeds" in cond else 0
            sampling.setdefault("max_cache_len", n_cond + input_ids.shape[1] + new)
            sampling.setdefault("disable_compile", True)
        out = self.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            code_structure=structure[None].expand(batch, -1, -1).contiguous(),
            max_new_tokens=new,
            min_new_tokens=None,
            eos_token_id=None,
            pad_token_id=self.config.pad_token_id,
            **cond,
            **sampling,
            **({"output_scores": True, "return_dict_in_generate": True} if return_probs else {}),
        )
        ids = out.sequences if return_probs else out
        codes = self.input_ids_to_codes(ids[:, input_ids.shape[1] :])  # (B*G, new)
        codes = codes.view(batch, per_step, new).transpose(1, 2).reshape(batch, new * per_step)  # flat code order
        if not return_probs:
            return codes
        scores = torch.stack(out.scores, dim=1).float()  # (B*G, new, V), processed as the sampler saw them
        probs = scores[..., self.config.code_offset :].softmax(-1)
        probs = probs.view(batch, per_step, new, -1).transpose(1, 2).reshape(batch, new * per_step, -1)
        return codes, probs
