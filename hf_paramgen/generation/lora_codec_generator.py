"""`LoraCodecGenerator`: a `ParamGenerator` whose prior writes `LoraCodec` coefficients, so a `(base, LoraConfig)`
target of a stock transformers class gets a whole PEFT adapter (LoRA on every attention and MLP linear plus the
classifier), from a task text and a few labelled texts.

    coefficients ~ prior(task text, few-shot texts, coefficient layout)            (a few thousand values)
    LoRA factors = LoraCodec.decode_body(coefficients)                            (A0 + a Q^T, P b per module)
    classifier   = prototype classifier of the few-shot texts on the *decoded* encoder + the coded delta

A generator folder is a `ParamGenerator` folder plus `lora_codec/` (the codec and the base's tokenizer); the prior's
config names it (`lora_codec_subfolder`), so `ParamGenerator.from_pretrained` and `pipeline("parameter-generation",
model=...)` return this class for it. Validation data for best-of-k may be texts (tokenised with the base's tokenizer).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.lora_codec import (
    CONFIG_NAME,
    TOKENIZER_SUBFOLDER,
    WEIGHTS_NAME,
    LoraCodec,
    LoraCodecError,
    classifier_inputs,
    load_tokenizer,
    prototype_classifier,
    saved_module,
)
from .generation_checks import check_task_text, check_word_lengths
from .generation_targets import GenerationError, check_pair, is_texts, resolve_target
from .generator import GenerationResult, ParamGenerator

CODEC_SUBFOLDER = "lora_codec"
MAX_LENGTH = 128  # tokens per text read by the adapter, unless the codec records the length its zoo used


class LoraCodecGenerator(ParamGenerator):
    """Instruction -> a full LoRA adapter of the codec's base (see the module docstring).

    Args (beyond `ParamGenerator`'s):
        codec: the `LoraCodec` the prior's coefficients are decoded with.
        base_tokenizer: the base model's tokenizer (few-shot and validation texts are read with it).
    """

    def __init__(self, *args, codec: LoraCodec, base_tokenizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.codec, self.base_tokenizer = codec, base_tokenizer

    @classmethod
    def attach(cls, generator: ParamGenerator, codec: LoraCodec, base_tokenizer) -> LoraCodecGenerator:
        """This class around an existing generator's components (prior, ParamTokenizer, encoders)."""
        out = cls.__new__(cls)
        out.__dict__.update(generator.__dict__)
        out.codec, out.base_tokenizer = codec, base_tokenizer
        out.prior.config.lora_codec_subfolder = CODEC_SUBFOLDER
        return out

    @classmethod
    def load_codec(cls, source) -> tuple[LoraCodec, Any]:
        """The codec and base tokenizer of a generator source (`GeneratorSource`: folder or Hub repo)."""
        try:
            config_path = source.download(f"{CODEC_SUBFOLDER}/{CONFIG_NAME}")
            files = json.loads(Path(config_path).read_text()).get("tokenizer_files", [])
            paths = [source.download(f"{CODEC_SUBFOLDER}/{WEIGHTS_NAME}")]
            paths += [source.download(f"{CODEC_SUBFOLDER}/{TOKENIZER_SUBFOLDER}/{f}") for f in files]
        except Exception as err:  # noqa: BLE001  (a missing or unreachable file: said with its cause)
            raise GenerationError(f"The generator's LoRA codec ({CODEC_SUBFOLDER}/) does not load from "
                                  f"{source.name!r}: {type(err).__name__}: {err}") from err
        folder = Path(config_path).parent
        return LoraCodec.from_pretrained(folder), load_tokenizer(folder) if files else None

    def _extra_files(self, folder: Path) -> None:
        """Write the codec and the base tokenizer into a generator folder being saved."""
        tokenizer_files = []
        with tempfile.TemporaryDirectory() as tmp:
            if self.base_tokenizer is not None:
                self.base_tokenizer.save_pretrained(tmp)
                tokenizer_files = sorted(p.name for p in Path(tmp).iterdir() if p.is_file())
            self.codec.config["tokenizer_files"] = tokenizer_files
            self.codec.save_pretrained(folder / CODEC_SUBFOLDER)
            if tokenizer_files:
                shutil.copytree(tmp, folder / CODEC_SUBFOLDER / TOKENIZER_SUBFOLDER)
        self.prior.config.lora_codec_subfolder = CODEC_SUBFOLDER

    # -------------------------------------------------------------- the three steps, for LoRA targets
    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        max_length = int(self.codec.config.get("max_length") or MAX_LENGTH)  # what the zoo's adapters read
        return self.base_tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt")

    def prepare(self, target, task_text: str, samples=None, validation=None, on_unseen_layout: str = "warn",
                num_candidates: int | None = None, decoding: str | None = None) -> dict[str, Any]:
        if not (isinstance(target, (tuple, list)) and len(target) == 2 and type(target[1]).__name__ == "LoraConfig"):
            raise GenerationError(f"This generator writes LoRA adapters for {self._base_name()}: the target must be "
                                  f"(base_model, LoraConfig), got {type(target).__name__}.")
        base = target[0]
        try:
            self.codec.check_base(base)
            adapter_layout, template = resolve_target(target)
            self.codec.check_adapter_layout(adapter_layout)
        except LoraCodecError as err:
            raise GenerationError(str(err)) from err
        check_task_text(task_text)
        texts, y = check_pair(samples, None, "samples") if samples is not None else (None, None)
        if not is_texts(texts):
            raise GenerationError(f"This generator needs samples=(texts, labels): a few labelled texts of every class "
                                  f"(the classifier is built from them), got {type(samples).__name__}.")
        check_word_lengths(list(texts), "samples X")
        num_labels = int(getattr(base.config, "num_labels", 0))
        present = sorted(set(y.tolist()))
        if present != list(range(num_labels)):
            raise GenerationError(f"The base has num_labels={num_labels} (classes 0..{num_labels - 1}), but the "
                                  f"samples' labels are {present} ({len(present)} classes): load the base with "
                                  f"num_labels={len(present)}, or give samples of every class 0..{num_labels - 1}.")
        layout = self.codec.layout(num_labels)
        self.check_layout(layout)
        if num_candidates is not None:
            self.check_memory(layout, num_candidates, decoding)
        ood_reasons = self.check_in_distribution(layout, on_unseen_layout)
        if validation is not None:
            validation = check_pair(validation, None, "validation")
            if not is_texts(validation[0]):
                raise GenerationError("validation must be (texts, labels) for a text classifier adapter, got "
                                      f"{type(validation[0]).__name__} inputs.")
            if int(validation[1].max()) >= num_labels:
                raise GenerationError(f"validation labels go up to {int(validation[1].max())}, but the base has "
                                      f"num_labels={num_labels}.")
        condition = self.encode(layout, task_text, (list(texts), y))
        return {"condition": condition, "layout": layout, "adapter_layout": adapter_layout, "template": template,
                "samples": (list(texts), y), "validation": validation, "ood_reasons": ood_reasons}

    @torch.no_grad()
    def select(self, prepared: dict[str, Any], codes: torch.LongTensor, state_dicts: list[dict[str, torch.Tensor]],
               build: bool = True) -> GenerationResult:
        """Decode every candidate's coefficients into an adapter (classifier from the few-shot texts on the decoded
        encoder), score it on the validation texts (if any) and keep the best, built into a `PeftModel`."""
        from peft import set_peft_model_state_dict

        from ..adapters.lora import apply_adapter

        (base, lora_config), samples = prepared["template"], prepared["samples"]
        support = self.encode_texts(samples[0])
        model, adapters, scores = None, [], [None] * len(state_dicts)

        def head_reference(body: dict[str, torch.Tensor]):  # the few-shot prototypes on the decoded encoder
            nonlocal model
            if model is None:
                model = apply_adapter(copy.deepcopy(base), body, lora_config)
            else:
                set_peft_model_state_dict(model, body)
            features = classifier_inputs(model, support, saved_module(model, self.codec.head[0]))
            return prototype_classifier(features, samples[1], int(base.config.num_labels),
                                        self.codec.config.get("classifier_init_scale", 2.0))

        for i, coefs in enumerate(state_dicts):
            adapters.append(self.codec.decode(coefs, head_reference))
            if prepared["validation"] is not None:
                set_peft_model_state_dict(model, adapters[-1])
                scores[i] = self.text_accuracy(model, *prepared["validation"])
        best = max(range(len(scores)), key=scores.__getitem__) if prepared["validation"] is not None else 0
        set_peft_model_state_dict(model, adapters[best])
        reasons = list(prepared.get("ood_reasons") or [])
        return GenerationResult(adapters, codes, scores, best, model.eval() if build else None, bool(reasons), reasons)

    @torch.no_grad()
    def text_accuracy(self, model: nn.Module, texts: list[str], labels: torch.Tensor, batch_size: int = 64) -> float:
        """Accuracy of `model` on labelled texts (tokenised with the base's tokenizer)."""
        model.eval()
        logits = torch.cat([model(**self.encode_texts(texts[i:i + batch_size])).logits
                            for i in range(0, len(texts), batch_size)])
        return float((logits.argmax(-1) == torch.as_tensor(labels)).float().mean())

    def _base_name(self) -> str:
        base = self.codec.config.get("base") or {}
        return f"{base.get('class', 'a stock class')} of {base.get('name_or_path') or 'its base'}"


def attach_codec(generator: ParamGenerator, source) -> ParamGenerator:
    """`generator` as a `LoraCodecGenerator` when its prior names a LoRA codec subfolder (else unchanged)."""
    if not getattr(generator.prior.config, "lora_codec_subfolder", None) or isinstance(generator, LoraCodecGenerator):
        return generator
    with contextlib.redirect_stdout(sys.stderr):
        codec, tokenizer = LoraCodecGenerator.load_codec(source)
    return LoraCodecGenerator.attach(generator, codec, tokenizer)
