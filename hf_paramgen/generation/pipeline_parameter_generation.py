"""`ParameterGenerationPipeline`: the `parameter-generation` task (instruction in, weights out).

    import hf_paramgen  # registers the task
    from transformers import pipeline

    gen = pipeline("parameter-generation", model="org/igpg")          # or a folder, or a loaded prior
    out = gen({"target": net, "task": "classify digits 0-4", "samples": (X, y), "validation": (Xv, yv)},
              num_samples=4, seed=0, do_sample=True, top_k=20, decoding="mean")
    out["model"]        # `net`'s class with the best generated weights loaded (a PeftModel for a LoRA target)
    out["state_dict"], out["codes"], out["scores"], out["best_index"]

`decoding="mean"` (the default where the ParamTokenizer has one code per chunk) loads the expected
weights under each sampled code's distribution; `decoding="sample"` the sampled codes' weights.

The pipeline's `model` is the prior (`ParamPriorForCausalLM`); the ParamTokenizer is loaded from the
generator folder's `param_tokenizer/` subfolder or from the repo + revision pinned in the prior's
config; sample encoders from `sample_encoders/<dataset>/`. A saved pipeline (`save_pretrained`)
holds `custom_pipelines` in its config and this module's code, so a fresh process can run
`pipeline(model=folder, trust_remote_code=True)` without importing hf_paramgen.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, Pipeline, PreTrainedConfig

from ..hub.remote_code import module_file, write_remote_code
from ..adapters.lora import AdapterBaseMismatchError, apply_adapter, check_base_model, lora_layout
from ..conditioning.samples import SampleEncoder
from .generator import DEFAULT_SAMPLING, GenerationError, ParamGenerator, _is_texts, resolve_decoding
from ..layout.param_layout import LayoutError, ParamLayout
from ..models.modeling_param_tokenizer import ParamTokenizer

TASK = "parameter-generation"
# Key of `custom_pipelines` in saved configs. It must differ from TASK: transformers' `pipeline()` treats a
# task named in `custom_pipelines` as remote code (trust_remote_code required) even when the task is
# registered locally, which would break `pipeline(TASK, model=repo)` after `import hf_paramgen`.
REMOTE_TASK = "remote-parameter-generation"
PARAM_TOKENIZER_SUBFOLDER = "param_tokenizer"
SAMPLE_ENCODERS_FOLDER = "sample_encoders"
OUTPUTS = ("model", "peft", "state_dict")
SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")


# ---------------------------------------------------------------------------------------- loading
def _generator_root(model) -> Path | None:
    """Local folder of the generator the prior was loaded from (a folder or a cached Hub snapshot)."""
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not name:
        return None
    if os.path.isdir(name):
        return Path(name)
    from ..hub.cards import fetch_snapshot

    revision = getattr(model.config, "_commit_hash", None)  # the commit the prior was loaded from
    return fetch_snapshot(name, revision=revision,
                          allow_patterns=[f"{PARAM_TOKENIZER_SUBFOLDER}/*", f"{SAMPLE_ENCODERS_FOLDER}/**"])


def load_param_tokenizer(model, root: Path | None = None) -> ParamTokenizer:
    """The ParamTokenizer of a prior: `<root>/param_tokenizer` of a local folder, else the repo + revision
    pinned in its config, else the subfolder of the Hub snapshot the prior came from."""
    config = model.config
    subfolder = getattr(config, "param_tokenizer_subfolder", None) or PARAM_TOKENIZER_SUBFOLDER
    repo_id = getattr(config, "param_tokenizer_repo_id", None)
    local = root is not None and os.path.isdir(getattr(model, "name_or_path", "") or "")
    if repo_id and not (local and (root / subfolder / "config.json").is_file()):
        from ..hub.cards import fetch_snapshot

        folder = fetch_snapshot(repo_id, revision=getattr(config, "param_tokenizer_revision", None),
                                allow_patterns=[f"{subfolder}/*"]) / subfolder
    else:
        if root is None:
            raise ValueError("The prior has no param_tokenizer_repo_id in its config and was not loaded from a folder "
                             "or repo: pass param_tokenizer= to the pipeline.")
        folder = root / subfolder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No ParamTokenizer at {folder} (expected config.json + weights); the generator folder "
                                f"must hold it in {subfolder!r} or pin param_tokenizer_repo_id/revision.")
    return ParamTokenizer.from_pretrained(folder).eval()


def load_sample_encoders(model, root: Path | None) -> dict[str, SampleEncoder]:
    """`sample_encoders/<name>/` of the generator folder (those the config lists, else every subfolder)."""
    folder = root / SAMPLE_ENCODERS_FOLDER if root is not None else None
    if folder is None or not folder.is_dir():
        return {}
    names = getattr(model.config, "sample_encoders", None) or sorted(p.name for p in folder.iterdir() if p.is_dir())
    return {name: SampleEncoder.from_pretrained(folder / name) for name in names}


def build_generator(model, param_tokenizer: ParamTokenizer | None = None, text_encoder=None,
                    sample_encoders: dict[str, SampleEncoder] | None = None) -> ParamGenerator:
    """A `ParamGenerator` around a loaded prior: the ParamTokenizer and encoders as its config and folder say."""
    root = None
    if param_tokenizer is None or sample_encoders is None:
        root = _generator_root(model)
    if param_tokenizer is None:
        param_tokenizer = load_param_tokenizer(model, root)
    name = getattr(model.config, "text_encoder", None)
    if not name and text_encoder is None:
        raise GenerationError("The prior's config records no text_encoder (e.g. 'all-MiniLM-L6-v2' or 'hashing:384'); "
                              "pass text_encoder= to the pipeline.")
    if sample_encoders is None:
        sample_encoders = load_sample_encoders(model, root)
    return ParamGenerator(model, param_tokenizer, name or "custom", sample_encoders, text_encoder=text_encoder)


# ---------------------------------------------------------------------------------------- targets
def _output_size(layout: ParamLayout) -> int | None:
    """Output units of a network: first dim of its last bias or matrix."""
    for spec in reversed(layout.specs):
        if spec.kind.endswith("bias") or len(spec.shape) >= 2:
            return int(spec.shape[0])
    return None


def resolve_target(target: Any, known_layouts: dict | None = None) -> tuple[ParamLayout, Any]:
    """`target` -> (layout, template) where template is a module, config, (base, LoraConfig) or None."""
    from peft import LoraConfig

    if isinstance(target, ParamLayout):
        return target, None
    if isinstance(target, (tuple, list)) and len(target) == 2 and isinstance(target[1], LoraConfig):
        base, lora_config = target
        if not isinstance(base, nn.Module):
            raise TypeError(f"A LoRA target is (base_model: nn.Module, LoraConfig), got ({type(base).__name__}, ...).")
        try:
            layout = lora_layout(base, lora_config)
        except ValueError as err:
            raise LayoutError(f"LoraConfig target_modules={lora_config.target_modules!r} do not fit the base model "
                              f"{type(base).__name__}: {err}") from err
        _check_adapter_base(base, known_layouts or {})
        return layout, (base, lora_config)
    if isinstance(target, nn.Module):
        return ParamLayout.from_module(target), target
    if isinstance(target, PreTrainedConfig):
        return ParamLayout.from_config(target), target
    raise TypeError("target must be an nn.Module, a transformers config, a ParamLayout or (base_model, LoraConfig); "
                    f"got {type(target).__name__}.")


def _check_adapter_base(base: nn.Module, known_layouts: dict) -> None:
    """A LoRA target's base must be the base of the adapter layouts the generator knows (if it knows any)."""
    bases = []
    for name, value in known_layouts.items():
        layout = ParamLayout.from_json(value) if isinstance(value, str) else ParamLayout.from_dict(value)
        if layout.metadata.get("peft_type") == "LORA" and layout.metadata.get("base"):
            bases.append((name, layout))
    errors = []
    for name, layout in bases:
        try:
            check_base_model(base, layout, source=f"generator adapter layout {name!r}")
            return
        except AdapterBaseMismatchError as err:
            errors.append(str(err))
    if errors:
        raise AdapterBaseMismatchError(f"The base model matches none of the generator's adapter corpora: {errors}")


def _check_layout(layout: ParamLayout, param_tokenizer: ParamTokenizer) -> None:
    cfg = param_tokenizer.config
    for key in ("chunk_size", "aggregation"):
        want = getattr(cfg, key)
        got = layout.metadata.get(key, want)
        if got != want:
            raise LayoutError(f"The target layout was chunked with {key}={got!r}; this generator uses {want!r}.")
    floats = ("float", "bfloat", "torch.float", "torch.bfloat")
    bad = [s.name for s in layout.specs if not str(s.dtype).startswith(floats)]
    if bad:
        raise LayoutError(f"The generator only expresses floating-point tensors; the target has {bad[:5]}.")


def _check_samples(samples, layout: ParamLayout, name: str) -> tuple[Any, Any]:
    if not (isinstance(samples, (tuple, list)) and len(samples) == 2):
        raise TypeError(f"{name} must be a pair (X, y), got {type(samples).__name__}.")
    X, y = samples
    y = torch.as_tensor(y).long().reshape(-1)
    if len(X) != y.numel():
        raise ValueError(f"{name} must hold as many labels as inputs, got {len(X)} inputs and {y.numel()} labels.")
    out = _output_size(layout)
    if out is not None and y.numel() and int(y.max()) >= out:
        raise ValueError(f"{name} labels go up to {int(y.max())}, but the target has {out} output units "
                         f"(labels must lie in 0..{out - 1}).")
    return X, y


# ---------------------------------------------------------------------------------------- pipeline
class ParameterGenerationPipeline(Pipeline):
    """Generate the weights of a target network (or LoRA adapter) from an instruction.

    Args:
        model: a `ParamPriorForCausalLM`.
        param_tokenizer: the matching `ParamTokenizer` (default: loaded as the prior's config says).
        text_encoder: a text encoder (default: built from `config.text_encoder`).
        sample_encoders: dataset name -> `SampleEncoder` (default: the folder's `sample_encoders/`).

    Conditioning, target checks and default sampling are those of `ParamGenerator` (`self.generator`).
    """

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(self, model, param_tokenizer: ParamTokenizer | None = None, text_encoder=None,
                 sample_encoders: dict[str, SampleEncoder] | None = None, **kwargs):
        super().__init__(model=model, **kwargs)
        self.generator = build_generator(self.model, param_tokenizer, text_encoder, sample_encoders)
        self.param_tokenizer = self.generator.param_tokenizer.to(self.device)

    def _sanitize_parameters(self, num_samples=None, seed=None, output=None, show_progress=None, decoding=None,
                             **sampling):
        unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise TypeError(f"Unknown parameter-generation options {unknown}; expected num_samples, seed, output, "
                            f"show_progress, decoding or sampling options {list(SAMPLING_KEYS)}.")
        forward = {k: v for k, v in sampling.items() if v is not None}
        if decoding is not None:
            forward["decoding"] = resolve_decoding(self.param_tokenizer.config, decoding)
        if num_samples is not None:
            if not isinstance(num_samples, int) or num_samples < 1:
                raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
            forward["num_samples"] = num_samples
        if seed is not None:
            forward["seed"] = seed
        if show_progress is not None:
            forward["show_progress"] = show_progress
        post = {}
        if output is not None:
            if output not in OUTPUTS:
                raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
            post["output"] = output
        return {}, forward, post

    def preprocess(self, inputs: dict) -> dict:
        if not isinstance(inputs, dict) or "target" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise TypeError(f"parameter-generation expects a dict with 'target' (and 'task', 'samples', 'validation'), "
                            f"got {got}.")
        layout, template = resolve_target(inputs["target"], getattr(self.model.config, "layouts", None))
        self.generator.check_layout(layout)
        _check_layout(layout, self.param_tokenizer)
        validation = inputs.get("validation")
        if validation is not None and template is None:
            raise GenerationError("validation scoring needs a target that builds a model, got a bare ParamLayout.")
        validation = _check_samples(validation, layout, "validation") if validation is not None else None
        if validation is not None and _is_texts(validation[0]):
            raise GenerationError("validation scoring calls the built model on validation[0], so it needs tensors, "
                                  "got texts; tokenize them yourself, or score out['state_dicts'] with your own loop.")
        condition = self.generator.encode(layout, inputs.get("task"), inputs.get("samples"))
        return {"condition": condition, "layout": layout, "template": template, "validation": validation}

    def _forward(self, model_inputs: dict, num_samples: int = 1, seed: int | None = None, show_progress: bool = False,
                 decoding: str | None = None, **sampling) -> dict:
        layout = model_inputs["layout"]
        cfg = self.param_tokenizer.config
        mean = resolve_decoding(cfg, decoding) == "mean"
        out = self.model.generate_codes(layout=layout, chunk_size=cfg.chunk_size, aggregation=cfg.aggregation,
                                        num_samples=num_samples, seed=seed, show_progress=show_progress,
                                        return_probs=mean, **model_inputs["condition"],
                                        **{**DEFAULT_SAMPLING, **sampling})  # codes (n, N, l) [, probs (n, N, l, K)]
        if mean:
            codes, probs = out
            state_dicts = [self.param_tokenizer.decode_expected(p, layout) for p in probs]
        else:
            codes = out
            state_dicts = self.param_tokenizer.decode_batch(list(codes), layout)
        return {**model_inputs, "codes": codes.cpu(), "state_dicts": [{k: v.cpu() for k, v in sd.items()}
                                                                      for sd in state_dicts]}

    def postprocess(self, model_outputs: dict, output: str = "model") -> dict:
        template, state_dicts = model_outputs["template"], model_outputs["state_dicts"]
        is_lora = isinstance(template, tuple)
        if output == "peft" and not is_lora:
            raise ValueError("output='peft' needs a LoRA target (base_model, LoraConfig).")
        scores: list[float | None] = [None] * len(state_dicts)
        best, validation = 0, model_outputs["validation"]
        if validation is not None:
            scores = [_accuracy(_build(template, sd, model_outputs["layout"]), *validation) for sd in state_dicts]
            best = max(range(len(scores)), key=scores.__getitem__)
        model = None
        if output != "state_dict" and template is not None:
            model = _build(template, state_dicts[best], model_outputs["layout"])
        return {"state_dict": state_dicts[best], "model": model, "codes": model_outputs["codes"], "scores": scores,
                "best_index": best, "state_dicts": state_dicts}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """A complete pipeline repo: the prior with `custom_pipelines` + `auto_map`, the flat remote code of
        this pipeline and the two models, the ParamTokenizer subfolder and the sample encoders.

        `custom_pipelines` names the task `REMOTE_TASK`, so a fresh process runs
        `pipeline(model=folder, trust_remote_code=True)` and `pipeline(TASK, model=folder)` still uses
        the installed package after `import hf_paramgen`.
        """
        self.model.config.custom_pipelines = {REMOTE_TASK: {
            "impl": f"{Path(module_file(self)).stem}.{type(self).__name__}", "pt": ["AutoModelForCausalLM"],
            "tf": [], "type": "multimodal"}}
        self.model.save_pretrained(save_directory, **kwargs)
        write_remote_code(save_directory, [module_file(self)])
        if not getattr(self.model.config, "param_tokenizer_repo_id", None):
            self.param_tokenizer.save_pretrained(Path(save_directory) / PARAM_TOKENIZER_SUBFOLDER)
        for name, encoder in self.generator.sample_encoders.items():
            encoder.save_pretrained(Path(save_directory) / SAMPLE_ENCODERS_FOLDER / name)


def _build(template, state_dict: dict[str, torch.Tensor], layout: ParamLayout) -> nn.Module:
    """A fresh copy of the template with `state_dict` loaded (a PeftModel for a LoRA target)."""
    if isinstance(template, tuple):
        base, lora_config = template
        return apply_adapter(copy.deepcopy(base), state_dict, lora_config, expected_base=layout)
    if isinstance(template, PreTrainedConfig):
        from transformers import AutoModel

        model = AutoModel.from_config(template)
    else:
        model = copy.deepcopy(template)
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if k in set(layout.names)]
    if missing or result.unexpected_keys:
        raise LayoutError(f"Generated weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}.")
    return model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, X, y: torch.Tensor) -> float:
    """Fraction of `X` whose argmax output equals `y`."""
    out = model(torch.as_tensor(X, dtype=torch.float32))
    logits = getattr(out, "logits", out)
    return float((logits.argmax(-1).cpu() == y).float().mean())


def register() -> None:
    """Register the `parameter-generation` task with transformers' pipeline registry (idempotent)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ParameterGenerationPipeline,
                                        pt_model=AutoModelForCausalLM, type="multimodal")
