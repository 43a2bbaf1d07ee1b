"""`ParamGenerator`: prior + ParamTokenizer + condition encoders -> ready-to-use network parameters.

A generator folder (`save_pretrained`) holds the prior at its root (`config.json`,
`model.safetensors`), the matching ParamTokenizer in `param_tokenizer/` and the sample encoders in
`sample_encoders/<dataset>/`. The prior's config records `param_tokenizer_subfolder`, the text
encoder (`text_encoder`), and the layouts it was trained on (`layouts`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..layout.chunking import chunk_positions
from ..conditioning.instruction import Instruction, InstructionEncoders, encode_instruction
from ..conditioning.samples import SampleEncoder, TEXT_SAMPLES
from ..conditioning.text import make_text_encoder
from ..layout.param_layout import KINDS, ParamLayout
from ..models.modeling_param_prior import ParamPriorForCausalLM
from ..models.modeling_param_tokenizer import ParamTokenizer

TOKENIZER_SUBFOLDER = "param_tokenizer"
SAMPLE_ENCODERS_SUBFOLDER = "sample_encoders"
MAX_INSTRUCTION_WORDS = 200  # MiniLM reads 256 word pieces; longer texts would be silently truncated
DEFAULT_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0}
DECODINGS = ("sample", "mean")


def resolve_decoding(param_tokenizer_config, decoding: str | None) -> str:
    """`decoding`, or for None: "mean" when the ParamTokenizer allows it (one code per chunk, one codebook), else "sample"."""
    if decoding is None:
        single = param_tokenizer_config.tokens_per_chunk == 1 and param_tokenizer_config.num_quantizers == 1
        return "mean" if single else "sample"
    if decoding not in DECODINGS:
        raise GenerationError(f"decoding must be one of {DECODINGS}, got {decoding!r}.")
    return decoding


class GenerationError(ValueError):
    """The instruction, target or generator pieces cannot produce parameters."""


@dataclass
class GenerationResult:
    """`state_dicts` (k), `codes` LongTensor (k, N, T), validation `scores` (None without validation),
    `best_index` (argmax of the scores, 0 without validation), `model`: the template loaded with the best
    sample (None when the target was a bare `ParamLayout`)."""

    state_dicts: list[dict[str, torch.Tensor]]
    codes: torch.LongTensor
    scores: list[float | None]
    best_index: int
    model: nn.Module | None = None

    @property
    def best_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dicts[self.best_index]


# ------------------------------------------------------------------------------------------- helpers
def check_compatible(prior_config, tokenizer_config) -> None:
    """Raise `GenerationError` unless the prior models this ParamTokenizer's codes."""
    pairs = [("codebook_size", prior_config.codebook_size, tokenizer_config.codebook_size),
             ("codes per chunk", prior_config.codes_per_chunk, tokenizer_config.tokens_per_chunk)]
    if prior_config.chunk_size is not None:
        pairs.append(("chunk_size", prior_config.chunk_size, tokenizer_config.chunk_size))
    pairs.append(("aggregation", prior_config.aggregation, tokenizer_config.aggregation))
    bad = [f"{name}: prior {p!r} vs ParamTokenizer {t!r}" for name, p, t in pairs if p != t]
    if bad:
        raise GenerationError("The prior was not trained on this ParamTokenizer's codes (" + "; ".join(bad) + ").")


def output_size(layout: ParamLayout) -> int:
    """Output units of a classifier layout: first dim of its last weight tensor (ndim >= 2)."""
    weights = [s for s in layout.specs if len(s.shape) >= 2 and not s.is_buffer]
    if not weights:
        raise GenerationError(f"Cannot tell the output size of a layout without weight matrices: {layout.names}.")
    return int(weights[-1].shape[0])


def _is_texts(X) -> bool:
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(x, str) for x in X)


def _atomic_dir(target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).float().mean())


# ------------------------------------------------------------------------------------------- generator
class ParamGenerator:
    """Instruction (task text + few labelled samples + target architecture) -> parameters.

    Args:
        prior: the trained `ParamPriorForCausalLM`.
        param_tokenizer: the ParamTokenizer whose codes the prior models (checked).
        text_encoder_name: `TextEncoder` model name, or `"hashing:<dim>"` (tests).
        sample_encoders: dataset name -> `SampleEncoder` (picked by the samples' feature count).
        text_encoder: an already-built text encoder (else built lazily from the name).
    """

    def __init__(self, prior: ParamPriorForCausalLM, param_tokenizer: ParamTokenizer, text_encoder_name: str,
                 sample_encoders: dict[str, SampleEncoder] | None = None, text_encoder=None):
        check_compatible(prior.config, param_tokenizer.config)
        self.prior, self.param_tokenizer = prior.eval(), param_tokenizer.eval()
        self.text_encoder_name = text_encoder_name
        self.sample_encoders = dict(sample_encoders or {})
        self._text_encoder = text_encoder
        self.prior.config.text_encoder = text_encoder_name
        self.prior.config.chunk_size = param_tokenizer.config.chunk_size
        self.prior.config.param_tokenizer_subfolder = TOKENIZER_SUBFOLDER

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = make_text_encoder(self.text_encoder_name)
        return self._text_encoder

    # -------------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the generator folder atomically (temporary folder, then rename)."""
        target = Path(save_directory)
        tmp = _atomic_dir(target)
        try:
            self.prior.config.sample_encoders = sorted(self.sample_encoders)
            self.prior.save_pretrained(tmp)
            self.param_tokenizer.save_pretrained(tmp / TOKENIZER_SUBFOLDER)
            for name, enc in self.sample_encoders.items():
                enc.save_pretrained(tmp / SAMPLE_ENCODERS_SUBFOLDER / name)
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None) -> ParamGenerator:
        """Load a generator folder, local or a Hub repo (`snapshot_download`)."""
        path = Path(path_or_repo_id)
        from_hub = not path.is_dir()
        if from_hub:
            from ..hub.cards import fetch_snapshot

            path = fetch_snapshot(str(path_or_repo_id), revision=revision)
        prior = ParamPriorForCausalLM.from_pretrained(path)
        cfg = prior.config
        sub = path / (cfg.param_tokenizer_subfolder or TOKENIZER_SUBFOLDER)
        pinned = cfg.param_tokenizer_repo_id and cfg.param_tokenizer_revision
        if from_hub and pinned:  # a Hub generator uses the ParamTokenizer revision it pins, not whatever is at HEAD
            tok_dir = fetch_snapshot(cfg.param_tokenizer_repo_id, revision=cfg.param_tokenizer_revision)
            tok_dir = tok_dir / cfg.param_tokenizer_subfolder if cfg.param_tokenizer_subfolder else tok_dir
            tokenizer = ParamTokenizer.from_pretrained(tok_dir)
        elif sub.is_dir():
            tokenizer = ParamTokenizer.from_pretrained(sub)
        elif cfg.param_tokenizer_repo_id:
            tokenizer = ParamTokenizer.from_pretrained(cfg.param_tokenizer_repo_id, revision=cfg.param_tokenizer_revision)
        else:
            raise GenerationError(f"{path} has no {sub.name}/ folder and its config names no param_tokenizer_repo_id.")
        encoders = {}
        enc_dir = path / SAMPLE_ENCODERS_SUBFOLDER
        for name in getattr(cfg, "sample_encoders", None) or []:
            encoders[name] = SampleEncoder.from_pretrained(enc_dir / name)
        name = getattr(cfg, "text_encoder", None)
        if not name:
            raise GenerationError(f"{path}/config.json records no text_encoder.")
        return cls(prior, tokenizer, name, encoders)

    # -------------------------------------------------------------- checks
    def check_layout(self, layout: ParamLayout) -> None:
        """Raise `GenerationError` when the prior cannot express `layout`."""
        cfg, tok = self.prior.config, self.param_tokenizer.config
        if len(layout) == 0:
            raise GenerationError("The target layout has no tensors.")
        kinds = {s.kind for s in layout.specs}
        bad = sorted(k for k in kinds if KINDS.index(k) >= cfg.num_kinds)
        if bad:
            raise GenerationError(f"Tensor kinds {bad} are beyond the prior's kind table ({cfg.num_kinds} kinds).")
        if len(layout) > cfg.max_tensors:
            raise GenerationError(f"The target has {len(layout)} tensors; the prior's table holds max_tensors={cfg.max_tensors}.")
        position, _ = chunk_positions(layout, tok.chunk_size, tok.aggregation)  # (N, 3)
        most = int(position[:, 1].max()) + 1
        if most > cfg.max_chunks_per_tensor:
            raise GenerationError(f"A tensor of the target spans {most} chunks; the prior's table holds "
                                  f"max_chunks_per_tensor={cfg.max_chunks_per_tensor}.")

    def _sample_encoder(self, X: torch.Tensor, texts: bool = False) -> SampleEncoder:
        if texts:
            if TEXT_SAMPLES not in self.sample_encoders:
                raise GenerationError(f"The samples are texts, but this generator has no {TEXT_SAMPLES!r} sample encoder "
                                      f"(it has {sorted(self.sample_encoders)}); pass numeric features instead.")
            return self.sample_encoders[TEXT_SAMPLES]
        features = int(X[0].numel())
        for enc in self.sample_encoders.values():
            if enc.num_features == features:
                return enc
        known = {n: e.num_features for n, e in self.sample_encoders.items()}
        raise GenerationError(f"No sample encoder takes {features} features per sample; known: {known}.")

    def _check_samples(self, samples, num_classes: int):
        X = samples[0]
        if _is_texts(X):  # labelled texts: embedded by the generator's text encoder
            X = self.text_encoder(list(X))[:, 0]  # (n, dim)
        X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(samples[1], dtype=torch.long)
        if X.shape[0] != y.shape[0] or X.shape[0] == 0:
            raise GenerationError(f"samples must be (X, y) with as many labels as inputs (>0), got {X.shape[0]} and {y.shape[0]}.")
        present = sorted(set(y.tolist()))
        if present != list(range(num_classes)):
            raise GenerationError(f"The target has {num_classes} output units: samples need labels exactly "
                                  f"0..{num_classes - 1}, got labels {present}.")
        return X.reshape(X.shape[0], -1), y

    def encode(self, layout: ParamLayout, task_text: str, samples=None) -> dict[str, torch.Tensor]:
        """The prior's condition kwargs for one instruction (validated)."""
        if not isinstance(task_text, str) or not task_text.strip():
            raise GenerationError(f"task_text must be a non-empty string, got {task_text!r}.")
        words = len(task_text.split())
        if words > MAX_INSTRUCTION_WORDS:
            raise GenerationError(f"task_text has {words} words, more than {MAX_INSTRUCTION_WORDS} (it would be truncated).")
        num_classes = output_size(layout)
        enc = InstructionEncoders(text=self.text_encoder)
        if samples is not None:
            texts = _is_texts(samples[0])
            samples = self._check_samples(samples, num_classes)
            enc.samples = self._sample_encoder(samples[0], texts)
        inst = Instruction(task_text=task_text, samples=samples, architecture=layout.describe(), num_classes=num_classes)
        try:
            out = encode_instruction(inst, enc, self.prior.config.max_condition_tokens)
        except ValueError as err:
            raise GenerationError(str(err)) from err
        return out.as_model_kwargs()

    # -------------------------------------------------------------- generation
    def generate(self, target, task_text: str, samples=None, num_samples: int = 1, seed: int | None = None,
                 validation=None, decoding: str | None = None, **sampling) -> GenerationResult:
        """Sample `num_samples` parameter sets for `target` (an `nn.Module` template or a `ParamLayout`).

        Args:
            samples: few labelled samples `(X, y)`, y in 0..num_classes-1 in the target's output order. X may be
                a list of texts: they are embedded by the text encoder (needs the generator's "text" sample encoder).
            validation: `(X, y)` of the caller's validation data: scores every sample, returns the best loaded
                into a copy of the template (needs an `nn.Module` target). Never pass test data.
            decoding: "sample" decodes the sampled codes; "mean" decodes, chunk by chunk, the expected weights
                under the distribution each code was sampled from (`ParamTokenizer.decode_expected`): the codes
                still follow one sampled path, the weights are its posterior mean (less sampling noise).
                None (default): "mean" where the ParamTokenizer allows it, else "sample".
            **sampling: `generate` options (default `do_sample=True, temperature=1.0, top_k=0`).
        """
        decoding = resolve_decoding(self.param_tokenizer.config, decoding)
        template = target if isinstance(target, nn.Module) else None
        if template is not None:
            layout = ParamLayout.from_module(template)
        elif isinstance(target, ParamLayout):
            layout = target
        else:
            raise TypeError(f"target must be an nn.Module template or a ParamLayout, got {type(target).__name__}.")
        if validation is not None and template is None:
            raise GenerationError("validation scoring needs an nn.Module template as target, got a ParamLayout.")
        self.check_layout(layout)
        cond = self.encode(layout, task_text, samples)
        tok = self.param_tokenizer.config
        out = self.prior.generate_codes(**cond, layout=layout, chunk_size=tok.chunk_size, aggregation=tok.aggregation,
                                        num_samples=num_samples, seed=seed, return_probs=decoding == "mean",
                                        **{**DEFAULT_SAMPLING, **sampling})
        with torch.no_grad():
            if decoding == "mean":
                codes, probs = out
                state_dicts = [self.param_tokenizer.decode_expected(p, layout) for p in probs]  # probs (k, N, T, K)
            else:
                codes = out
                state_dicts = [self.param_tokenizer.decode(c, layout) for c in codes]  # codes (k, N, T)
        scores: list[float | None] = [None] * len(state_dicts)
        best, model = 0, None
        if template is not None:
            model = copy.deepcopy(template)
        if validation is not None:
            Xv, yv = torch.as_tensor(validation[0], dtype=torch.float32), torch.as_tensor(validation[1], dtype=torch.long)
            for i, sd in enumerate(state_dicts):
                model.load_state_dict(sd)
                scores[i] = _accuracy(model, Xv, yv)
            best = max(range(len(scores)), key=lambda i: scores[i])
        if model is not None:
            model.load_state_dict(state_dicts[best])
            model.eval()
        return GenerationResult(state_dicts, codes, scores, best, model)
