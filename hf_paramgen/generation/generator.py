"""`ParamGenerator`: prior + ParamTokenizer + condition encoders -> ready-to-use network parameters.

The one path into generation: `ParameterGenerationPipeline` delegates to it. A generator repo
(`save_pretrained`) is a complete pipeline repo: the prior at its root (`config.json` with
`custom_pipelines` and `auto_map`, `model.safetensors`), the flat remote code of the pipeline and both
models, the matching ParamTokenizer in `param_tokenizer/` and the sample encoders in
`sample_encoders/<name>/`. Every setting needed to load it is a declared `ParamPriorConfig` field
(`text_encoder`, `sample_encoders`, `param_tokenizer_*`, `layouts`). Components load as diffusers'
pipelines load theirs: `from_pretrained(repo, subfolder=..., revision=...)`, with cache, token and
revision passed through.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..conditioning.instruction import Instruction, InstructionEncoders, encode_instruction
from ..conditioning.samples import TEXT_SAMPLES, SampleEncoder
from ..conditioning.text import make_text_encoder
from ..layout.param_layout import ParamLayout
from ..models.modeling_param_prior import ParamPriorForCausalLM
from ..models.modeling_param_tokenizer import ParamTokenizer
from ..utils import accuracy, replace_dir, temporary_sibling
from .generation_checks import (
    check_flag,
    check_forward,
    check_memory,
    check_sampling,
    check_seed,
    check_task_text,
    check_word_lengths,
)
from .generation_targets import (
    GenerationError,
    build_model,
    check_in_distribution,
    check_input_size,
    check_layout,
    check_pair,
    is_texts,
    known_layouts,
    reload_model,
    resolve_target,
)
from .generator_loading import (
    SAMPLE_ENCODERS_SUBFOLDER,
    TOKENIZER_SUBFOLDER,
    WEIGHTS_NAME,
    GeneratorSource,
    check_compatible,  # noqa: F401  (re-exported: callers import it from here)
    file_sha256,
    load_param_tokenizer,
    load_prior,
    load_sample_encoders,
    resolve_commit,
)

DEFAULT_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0}
DECODINGS = ("sample", "mean")
EXTRA_SAMPLING = ("block_window",)  # generate_codes options accepted next to the sampling options


def resolve_decoding(param_tokenizer_config, decoding: str | None) -> str:
    """`decoding`, or for None: "mean" when the ParamTokenizer allows it (one code per chunk), else "sample"."""
    if decoding is None:
        return "mean" if param_tokenizer_config.codes_per_chunk == 1 else "sample"
    if decoding not in DECODINGS:
        raise GenerationError(f"decoding must be one of {DECODINGS}, got {decoding!r}.")
    return decoding


def resolve_num_candidates(num_candidates: int | None, num_samples: int | None, default: int | None = 1) -> int | None:
    """`num_candidates`, or the deprecated alias `num_samples` (FutureWarning); checked to be a positive int."""
    if num_samples is not None:
        warnings.warn("num_samples is deprecated: it is now num_candidates (networks generated per instruction).",
                      FutureWarning, stacklevel=3)
        if num_candidates is not None and num_candidates != num_samples:
            raise TypeError(f"Pass num_candidates only, got num_candidates={num_candidates} and "
                            f"num_samples={num_samples}.")
        num_candidates = num_samples
    if num_candidates is None:
        return default
    if not isinstance(num_candidates, int) or isinstance(num_candidates, bool) or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}.")
    return num_candidates


@dataclass
class GenerationResult:
    """`state_dicts` (k), `codes` LongTensor (k, N, T), validation `scores` (None without validation),
    `best_index` (argmax of the scores, 0 without validation), `model`: the target built with the best
    candidate (a PeftModel for a LoRA target; None for a bare `ParamLayout` or when not asked for).
    `out_of_distribution`: the target's layout matches none the generator was trained on (`ood_reasons` says
    how); such networks are generated with a warning and should be validated before use."""

    state_dicts: list[dict[str, torch.Tensor]]
    codes: torch.LongTensor
    scores: list[float | None]
    best_index: int
    model: nn.Module | None = None
    out_of_distribution: bool = False
    ood_reasons: list[str] = field(default_factory=list)

    @property
    def best_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dicts[self.best_index]


# ------------------------------------------------------------------------------------------- helpers
def output_size(layout: ParamLayout) -> int:
    """`layout.output_size`, raising `GenerationError` for a layout without weight matrices (kept for callers of
    earlier versions; use `ParamLayout.output_size`)."""
    size = layout.output_size
    if size is None:
        raise GenerationError(f"Cannot tell the output size of a layout without weight matrices: {layout.names}.")
    return size


# ------------------------------------------------------------------------------------------- generator
class ParamGenerator:
    """Instruction (task text + few labelled samples + target architecture) -> parameters.

    Args:
        prior: the trained `ParamPriorForCausalLM`.
        param_tokenizer: the ParamTokenizer whose codes the prior models (checked).
        text_encoder_name: the text encoder's Hub id or folder, or `"hashing:<dim>"` (tests); recorded as the
            prior's `config.text_encoder` (default: what the config already names).
        sample_encoders: name -> `SampleEncoder` (picked by the samples' feature count; "text" for texts).
        text_encoder: an already-built text encoder (else built lazily from the name).
        text_encoder_kwargs: passed to `TextEncoder` (e.g. `cache_dir`, `token`).
        max_memory_bytes: a generation call whose estimated memory (KV cache, probabilities, decoded weights)
            exceeds this is refused before any work (`GenerationError`); None (default): half the memory available
            on the prior's device at call time.

    Thread safety: one generator may serve several threads. Checks, encoding and validation scoring run
    concurrently; sampling (`sample`: the global RNG seeded for the call, the prior's `generate`) holds a lock, so a
    seeded call gives the same weights whatever runs beside it.
    """

    def __init__(self, prior: ParamPriorForCausalLM, param_tokenizer: ParamTokenizer,
                 text_encoder_name: str | None = None,
                 sample_encoders: dict[str, SampleEncoder] | None = None, text_encoder=None,
                 text_encoder_kwargs: dict | None = None, max_memory_bytes: int | None = None):
        check_compatible(prior.config, param_tokenizer.config)
        self.prior, self.param_tokenizer = prior.eval(), param_tokenizer.eval()
        self.max_memory_bytes = max_memory_bytes
        if text_encoder_name:
            self.prior.config.text_encoder = text_encoder_name
        self.sample_encoders = dict(sample_encoders or {})
        self._text_encoder = text_encoder
        self._text_encoder_kwargs = dict(text_encoder_kwargs or {})
        self._lock = threading.RLock()  # sampling is not reentrant: the global RNG and the prior's generate

    @property
    def text_encoder_name(self) -> str:
        return self.prior.config.text_encoder

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            with self._lock:  # built once, even when threads ask at the same time
                if self._text_encoder is None:
                    self._text_encoder = make_text_encoder(self.text_encoder_name, **self._text_encoder_kwargs)
        return self._text_encoder

    # -------------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write a complete pipeline repo, atomically (temporary folder, then rename): the prior with
        `custom_pipelines` + `auto_map`, the flat remote code of the pipeline and both models, the ParamTokenizer in
        its subfolder (its weights' sha256 in the config) and the sample encoders."""
        from ..hub.remote_code import write_remote_code
        from .pipeline_parameter_generation import PIPELINE_FILE, custom_pipelines

        config = self.prior.config
        sub = config.param_tokenizer_subfolder or TOKENIZER_SUBFOLDER
        tmp = temporary_sibling(save_directory)
        try:
            self.param_tokenizer.save_pretrained(tmp / sub)
            for name, encoder in self.sample_encoders.items():
                encoder.save_pretrained(tmp / SAMPLE_ENCODERS_SUBFOLDER / name)
            config.param_tokenizer_subfolder, config.chunk_size = sub, self.param_tokenizer.config.chunk_size
            config.param_tokenizer_sha256 = file_sha256(tmp / sub / WEIGHTS_NAME)
            config.sample_encoders = sorted(self.sample_encoders)
            config.custom_pipelines = custom_pipelines()
            self._extra_files(tmp)
            self.prior.save_pretrained(tmp)  # + auto_map and the models' remote code
            write_remote_code(tmp, [PIPELINE_FILE])
            replace_dir(tmp, save_directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _extra_files(self, folder) -> None:
        """Write a subclass's own components into the generator folder being saved (a LoRA codec); none here."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, subfolder: str | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        token: str | bool | None = None, local_files_only: bool = False, **kwargs) -> ParamGenerator:
        """Load a generator from a folder or a Hub repo, each component as its own `from_pretrained` does.

        Args:
            name_or_path: generator folder or Hub repo id (a missing folder given as a path is "no such folder").
            subfolder: the generator's folder inside the repo (relative, no `..`).
            revision / cache_dir / token / local_files_only: as in `from_pretrained`; the revision is resolved to
                one commit, from which the prior, the ParamTokenizer (unless pinned) and the sample encoders load.
            **kwargs: `param_tokenizer`, `text_encoder`, `sample_encoders` objects to use instead of loading them;
                `max_memory_bytes`.

        Raises:
            GenerationError: a missing folder, an invalid repo id, subfolder or revision, a component that does not
                load (naming the truncated file or the config field that does not match the weights), or a
                ParamTokenizer whose weights are not those the prior was trained with (`param_tokenizer_sha256`).
        """
        if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
            raise GenerationError(f"Expected a generator folder or a Hub repo id 'org/name', got "
                                  f"{type(name_or_path).__name__} {name_or_path!r}.")
        GeneratorSource(name_or_path, subfolder, revision, cache_dir, token, local_files_only)  # checks the names
        revision = resolve_commit(name_or_path, revision, cache_dir, token, local_files_only)
        hub = {"revision": revision, "cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}
        prior = load_prior(GeneratorSource(name_or_path, subfolder, **hub))
        return cls.from_prior(prior, name_or_path=name_or_path, subfolder=subfolder, **hub, **kwargs)

    @classmethod
    def from_prior(cls, prior: ParamPriorForCausalLM, *, name_or_path: str | os.PathLike | None = None,
                   subfolder: str | None = None, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                   local_files_only: bool = False, param_tokenizer: ParamTokenizer | None = None, text_encoder=None,
                   sample_encoders: dict[str, SampleEncoder] | None = None,
                   max_memory_bytes: int | None = None) -> ParamGenerator:
        """A generator around a loaded prior: the other components from the repo or folder it came from
        (`name_or_path`, default the prior's `name_or_path`), as its config says. A ParamTokenizer loaded from
        there must be the one the prior records (`param_tokenizer_sha256`); one passed as an object is used as is."""
        if param_tokenizer is None or sample_encoders is None:
            source = GeneratorSource(name_or_path or getattr(prior, "name_or_path", None), subfolder, revision,
                                     cache_dir, token, local_files_only)
            if param_tokenizer is None:
                param_tokenizer = load_param_tokenizer(source, prior.config)
            if sample_encoders is None:
                sample_encoders = load_sample_encoders(source, prior.config)
        text_kwargs = {k: v for k, v in (("cache_dir", cache_dir), ("token", token)) if v is not None}
        generator = cls(prior, param_tokenizer, None, sample_encoders, text_encoder=text_encoder,
                        text_encoder_kwargs=text_kwargs, max_memory_bytes=max_memory_bytes)
        if getattr(prior.config, "lora_codec_subfolder", None):  # coefficients of full LoRA adapters
            from .lora_codec_generator import attach_codec

            generator = attach_codec(generator, GeneratorSource(name_or_path or getattr(prior, "name_or_path", None),
                                                                subfolder, revision, cache_dir, token,
                                                                local_files_only))
        return generator

    # -------------------------------------------------------------- checks
    def check_layout(self, layout: ParamLayout) -> None:
        """Raise `GenerationError` (`LayoutError`) when the prior (the ParamTokenizer) cannot express `layout`."""
        check_layout(layout, self.prior.config, self.param_tokenizer.config)

    def known_layouts(self) -> dict[str, ParamLayout]:
        """The layouts the prior was trained on (`config.layouts`: name -> layout)."""
        return known_layouts(self.prior.config)

    def check_in_distribution(self, layout: ParamLayout, on_unseen_layout: str = "warn") -> list[str]:
        """Why `layout` is out of distribution ([] when it matches a trained layout); see `check_in_distribution`."""
        return check_in_distribution(layout, self.known_layouts(), on_unseen_layout)

    def resolve_target(self, target: Any) -> tuple[ParamLayout, Any]:
        """`target` -> (layout, template) (`resolve_target`; a LoRA base is checked against the prior's layouts)."""
        return resolve_target(target, self.prior.config.layouts or {})

    def _sample_encoder(self, X: torch.Tensor, texts: bool = False) -> SampleEncoder:
        if texts:
            if TEXT_SAMPLES not in self.sample_encoders:
                raise GenerationError(f"The samples are texts, but this generator has no {TEXT_SAMPLES!r} sample "
                                      f"encoder (it has {sorted(self.sample_encoders)}); "
                                      "pass numeric features instead.")
            return self.sample_encoders[TEXT_SAMPLES]
        features = int(X[0].numel())
        for enc in self.sample_encoders.values():
            if enc.num_features == features:
                return enc
        known = {n: e.num_features for n, e in self.sample_encoders.items()}
        raise GenerationError(f"No sample encoder takes {features} features per sample; known: {known}.")

    def _check_samples(self, samples, num_classes: int):
        X, y = check_pair(samples, None, "samples")
        if is_texts(X):  # labelled texts: embedded by the generator's text encoder
            check_word_lengths(list(X), "samples X")
            X = self.text_encoder(list(X))[:, 0]  # (n, dim)
        X = X.detach().float() if isinstance(X, torch.Tensor) else torch.as_tensor(X, dtype=torch.float32)
        if X.shape[0] != y.shape[0] or X.shape[0] == 0:
            raise GenerationError(f"samples must be (X, y) with as many labels as inputs (>0), got {X.shape[0]} "
                                  f"and {y.shape[0]}.")
        present = sorted(set(y.tolist()))
        if present != list(range(num_classes)):
            raise GenerationError(f"The target has {num_classes} output units: samples need labels exactly "
                                  f"0..{num_classes - 1}, got labels {present}.")
        return X.reshape(X.shape[0], -1), y

    def encode(self, layout: ParamLayout, task_text: str, samples=None) -> dict[str, torch.Tensor]:
        """The prior's condition kwargs for one instruction (validated)."""
        check_task_text(task_text)
        num_classes = output_size(layout)
        enc = InstructionEncoders(text=self.text_encoder)
        if samples is not None:
            texts = isinstance(samples, (tuple, list)) and len(samples) == 2 and is_texts(samples[0])
            samples = self._check_samples(samples, num_classes)
            enc.samples = self._sample_encoder(samples[0], texts)
        inst = Instruction(task_text=task_text, samples=samples, architecture=layout.describe(),
                           num_classes=num_classes)
        try:
            out = encode_instruction(inst, enc, self.prior.config.max_condition_tokens)
        except ValueError as err:
            raise GenerationError(str(err)) from err
        width, expected = out.condition_embeds.shape[-1], self.prior.config.condition_dim
        if width != expected:
            raise GenerationError(f"The condition encoders give vectors of width {width} (text encoder "
                                  f"{self.text_encoder_name!r}), but the prior reads condition_dim={expected}: the "
                                  "generator's text encoder or sample encoders are not the ones it was trained with.")
        return out.as_model_kwargs()

    # -------------------------------------------------------------- generation, in three steps
    def check_memory(self, layout: ParamLayout, num_candidates: int, decoding: str | None = None) -> dict[str, int]:
        """Refuse (`GenerationError`) a request whose estimated memory exceeds `max_memory_bytes`; the estimate."""
        mean = resolve_decoding(self.param_tokenizer.config, decoding) == "mean"
        return check_memory(self.prior, self.param_tokenizer.config, layout, num_candidates, mean,
                            getattr(self, "max_memory_bytes", None))

    def prepare(self, target, task_text: str, samples=None, validation=None, on_unseen_layout: str = "warn",
                num_candidates: int | None = None, decoding: str | None = None) -> dict[str, Any]:
        """Check an instruction (and, given `num_candidates`, the memory it needs) and encode it:
        `{"condition", "layout", "template", "validation", "ood_reasons"}`."""
        layout, template = self.resolve_target(target)
        if validation is not None and template is None:
            raise GenerationError("validation scoring needs a target that builds a model (an nn.Module template, a "
                                  "config or a LoRA target), got a bare ParamLayout.")
        self.check_layout(layout)
        check_task_text(task_text)
        if num_candidates is not None:
            self.check_memory(layout, num_candidates, decoding)
        ood_reasons = self.check_in_distribution(layout, on_unseen_layout)
        if samples is not None:
            check_pair(samples, None, "samples")
        if validation is not None:
            validation = check_pair(validation, layout, "validation")
            if is_texts(validation[0]):
                raise GenerationError("validation scoring calls the built model on validation[0], so it needs "
                                      "tensors, got texts; tokenize them yourself, or score the state_dicts yourself.")
        for name, pair in (("samples", samples), ("validation", validation)):
            check_input_size(layout, pair, name, template)
        if validation is not None:
            X = validation[0] if isinstance(validation[0], torch.Tensor) else torch.as_tensor(validation[0])
            check_forward(template, X, "validation")
            validation = (X, validation[1])
        condition = self.encode(layout, task_text, samples)
        return {"condition": condition, "layout": layout, "template": template, "validation": validation,
                "ood_reasons": ood_reasons}

    @torch.no_grad()
    def sample(self, condition: dict[str, torch.Tensor], layout: ParamLayout, num_candidates: int = 1,
               seed: int | None = None, decoding: str | None = None, show_progress: bool = False,
               **sampling) -> tuple[torch.LongTensor, list[dict[str, torch.Tensor]]]:
        """Sample `num_candidates` code sequences and decode them: (codes (k, N, T), k state_dicts), on the CPU.
        The request's memory is checked first (`check_memory`)."""
        tok = self.param_tokenizer.config
        seed = check_seed(seed)
        sampling = check_sampling(sampling, EXTRA_SAMPLING)
        check_flag(show_progress, "show_progress")
        mean = resolve_decoding(tok, decoding) == "mean"
        self.check_memory(layout, num_candidates, decoding)
        with self._lock:  # the RNG is global and seeded per call: one sampling at a time
            out = self.prior.generate_codes(**condition, layout=layout, chunk_size=tok.chunk_size,
                                            aggregation=tok.aggregation, num_candidates=num_candidates, seed=seed,
                                            show_progress=show_progress, return_probs=mean,
                                            **{**DEFAULT_SAMPLING, **sampling})  # codes (k, N, T) [, probs]
            if mean:
                codes, probs = out  # probs (k, N, T, K)
                state_dicts = [self.param_tokenizer.decode_expected(p, layout) for p in probs]
            else:
                codes = out
                state_dicts = [self.param_tokenizer.decode(c, layout) for c in codes]
        return codes.cpu(), [{k: v.cpu() for k, v in sd.items()} for sd in state_dicts]

    def select(self, prepared: dict[str, Any], codes: torch.LongTensor, state_dicts: list[dict[str, torch.Tensor]],
               build: bool = True) -> GenerationResult:
        """Score the candidates on the validation data (if any), keep the best, build it into the target."""
        template, layout, validation = prepared["template"], prepared["layout"], prepared["validation"]
        scores: list[float | None] = [None] * len(state_dicts)
        best, model = 0, None
        if validation is not None:  # one copy of the target, reloaded with each candidate
            for i, sd in enumerate(state_dicts):
                model = build_model(template, sd, layout) if model is None else reload_model(model, template, sd)
                try:
                    scores[i] = accuracy(model, *validation)
                except (RuntimeError, TypeError, ValueError) as err:
                    shape = tuple(getattr(validation[0], "shape", ()))
                    raise GenerationError(f"validation X of shape {shape} cannot be fed to the target "
                                          f"{type(model).__name__} ({type(err).__name__}: {err}); give inputs shaped "
                                          "(n, *input shape) as the target reads them.") from err
            best = max(range(len(scores)), key=scores.__getitem__)
        if not build or template is None:
            model = None
        elif model is None:
            model = build_model(template, state_dicts[best], layout)
        else:
            model = reload_model(model, template, state_dicts[best])
        reasons = list(prepared.get("ood_reasons") or [])
        return GenerationResult(state_dicts, codes, scores, best, model, bool(reasons), reasons)

    def generate(self, target, task_text: str, samples=None, num_candidates: int | None = None,
                 seed: int | None = None, validation=None, decoding: str | None = None, *,
                 num_samples: int | None = None, show_progress: bool = False, on_unseen_layout: str = "warn",
                 **sampling) -> GenerationResult:
        """Generate `num_candidates` parameter sets for `target` and keep the best on `validation`.

        Args:
            target: an `nn.Module` template, a transformers config, a `ParamLayout` or `(base_model, LoraConfig)`.
            task_text: the natural-language task description.
            samples: few labelled samples `(X, y)`, y in 0..num_classes-1 in the target's output order. X may be
                a list of texts: they are embedded by the text encoder (needs the generator's "text" sample encoder).
            num_candidates: networks generated for the instruction (best-of-k); default 1.
            validation: `(X, y)` of the caller's validation data: scores every candidate, returns the best built
                into the target (needs a target that builds a model). Never pass test data.
            decoding: "sample" decodes the sampled codes; "mean" decodes, chunk by chunk, the expected weights
                under the distribution each code was sampled from (`ParamTokenizer.decode_expected`): the codes
                still follow one sampled path, the weights are its posterior mean (less sampling noise).
                None (default): "mean" where the ParamTokenizer allows it, else "sample".
            num_samples: deprecated name of `num_candidates` (FutureWarning).
            on_unseen_layout: a target whose tensor shapes match no layout the generator was trained on is
                generated with a `UserWarning` and flagged `out_of_distribution` ("warn", default) or refused
                ("error"). Tensor kinds it never saw are always refused.
            **sampling: `do_sample`, `temperature`, `top_k`, `top_p` (default `do_sample=True, temperature=1.0,
                top_k=0`) and `block_window` (codes of the previous block kept when the network spans several).
        """
        num_candidates = resolve_num_candidates(num_candidates, num_samples)
        decoding = resolve_decoding(self.param_tokenizer.config, decoding)
        seed = check_seed(seed)
        sampling = check_sampling(sampling, EXTRA_SAMPLING)
        check_flag(show_progress, "show_progress")
        prepared = self.prepare(target, task_text, samples, validation, on_unseen_layout, num_candidates, decoding)
        codes, state_dicts = self.sample(prepared["condition"], prepared["layout"], num_candidates, seed, decoding,
                                         show_progress, **sampling)
        return self.select(prepared, codes, state_dicts)
