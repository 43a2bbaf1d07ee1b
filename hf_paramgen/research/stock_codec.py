"""The stock-class adapter zoo (`adapter_zoo_stock`) as coefficients: fit a `LoraCodec` on its training adapters,
write every adapter's coefficients as ordinary checkpoint folders (so `build_corpus`, `train-tokenizer` and
`train-prior` take them unchanged), serve the few-shot texts of its tasks (`StockSamples`), and measure what the codec
loses (`codec_fidelity`).

The classifier's reference of every adapter is the prototype classifier of its task's 5 few-shot training texts per
class on that adapter's own encoder (what a generator computes on the encoder it decodes).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file

from ..adapters.adapter_io import load_adapter_info, load_adapter_state_dict
from ..adapters.lora import adapter_state_dict, apply_adapter, lora_config_dict, peft_config_copy
from ..adapters.lora_codec import (
    LORA_A,
    LoraCodec,
    classifier_inputs,
    encoder_identity,
    prototype_classifier,
    saved_module,
)
from ..conditioning.samples import TEXT_SAMPLES, SampleEncoder
from ..data.checkpoints import LAYOUT_FILE
from ..utils import atomic_write_json, replace_dir, temporary_sibling
from .adapter_zoo_stock import LORA_INIT_SEED, RECIPE, TEXT_DATASET, TEXTS_FILE, StockContext, draw_texts

FEW_SHOT = 5
COEFFICIENT_ARCHITECTURE = "lora-coefficients"
CORPUS_SPLIT = {"train": "train", "validation": "validation", "heldout_task": "heldout_task",
                "heldout_topic": "heldout_topic"}


def stock_context(zoo_dir: str | os.PathLike) -> StockContext:
    """The zoo's base, tokenizer and frozen text pools (`texts.json`), at the zoo's token length."""
    zoo_dir = Path(zoo_dir)
    manifest = json.loads((zoo_dir / "manifest.json").read_text())
    pools = json.loads((zoo_dir / TEXTS_FILE).read_text())
    return StockContext(manifest["config"]["max_length"], pools=pools)


def few_shot(ctx: StockContext, task: dict) -> tuple[list[str], torch.Tensor]:
    """The task's few-shot texts (5 training texts per class, seed 0): what a generator and `prototype_head` get."""
    return ctx.examples(task, "train", FEW_SHOT, seed=0)


class StockSamples:
    """`SamplesProvider` of the stock zoo's tasks (`train-prior --samples`): its few-shot texts, embedded by the
    text encoder, with the identity "text" sample encoder."""

    def __init__(self, zoo_dir: str | os.PathLike, datasets: tuple[str, ...] = (TEXT_SAMPLES,)):
        self.zoo_dir, self.datasets = Path(zoo_dir), datasets
        self._pools = json.loads((self.zoo_dir / TEXTS_FILE).read_text())

    def sample_encoders(self, dim: int) -> dict[str, SampleEncoder]:
        return {TEXT_SAMPLES: SampleEncoder.for_texts(dim)}

    def __call__(self, task: dict, text_encoder):
        if task.get("dataset") != TEXT_DATASET or not task.get("classes"):
            return None
        texts, labels = draw_texts(self._pools, task["classes"], "train", FEW_SHOT, seed=0)  # what `few_shot` draws
        return text_encoder(texts)[:, 0], labels, TEXT_SAMPLES


def lora_init_reference(ctx: StockContext) -> dict[str, torch.Tensor]:
    """The LoRA initialisation every adapter of the zoo started from (lora_A under `LORA_INIT_SEED`)."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LORA_INIT_SEED)  # as StockContext.train does
        model = get_peft_model(copy.deepcopy(ctx.base), peft_config_copy(ctx.lora_config))
    return {k: v for k, v in adapter_state_dict(model).items() if k.endswith(LORA_A)}


class AdapterRunner:
    """One PeftModel of the zoo's base, reloaded with adapter after adapter; reads classifier inputs and accuracy."""

    def __init__(self, ctx: StockContext):
        self.ctx, self.model = ctx, None

    def load(self, state: dict[str, torch.Tensor]):
        from peft import set_peft_model_state_dict

        if self.model is None:
            self.model = apply_adapter(copy.deepcopy(self.ctx.base), state, self.ctx.lora_config)
        else:
            set_peft_model_state_dict(self.model, state)
        return self.model.eval()

    def head_reference(self, task: dict, state: dict[str, torch.Tensor] | None = None):
        """`(W_ref, c_ref)`: the prototype classifier of the task's few-shot texts on the loaded (or given) adapter."""
        if state is not None:
            self.load(state)
        texts, labels = few_shot(self.ctx, task)
        features = classifier_inputs(self.model, self.ctx.encode(texts), saved_module(self.model, "classifier.weight"))
        return prototype_classifier(features, labels, len(task["classes"]), RECIPE["classifier_init_scale"])

    def accuracy(self, task: dict, split: str, state: dict[str, torch.Tensor] | None = None,
                 per_class: int = 25) -> float:
        if state is not None:
            self.load(state)
        texts, labels = self.ctx.examples(task, split, per_class)
        return self.ctx.accuracy(self.model, texts, labels)


def adapter_entries(zoo_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The zoo's adapters (of one split), each with its task under "task" (one read of the manifest)."""
    manifest = json.loads((Path(zoo_dir) / "manifest.json").read_text())
    tasks = {t["task_id"]: t for t in manifest["tasks"]}
    return [{**a, "task": tasks[a["task_id"]]} for a in manifest["adapters"] if split is None or a["split"] == split]


def fit_stock_codec(zoo_dir: str | os.PathLike, output_dir: str | os.PathLike | None, rank: int = 16,
                    head_rank: int = 32, calibration: int = 64, ctx: StockContext | None = None) -> LoraCodec:
    """Fit (or reuse, when `output_dir` holds one) the codec on the zoo's "train" adapters."""
    if output_dir is not None and (Path(output_dir) / "lora_codec.json").is_file():
        return LoraCodec.from_pretrained(output_dir)
    ctx = ctx or stock_context(zoo_dir)
    runner = AdapterRunner(ctx)
    entries = adapter_entries(zoo_dir, "train")

    def examples(limit=None):
        for entry in entries[:limit]:
            state, _ = load_adapter_state_dict(Path(zoo_dir) / entry["path"])
            yield state, runner.head_reference(entry["task"], state)

    head = list(load_adapter_info(Path(zoo_dir) / entries[0]["path"])["layout"]["metadata"]["head"])
    codec = LoraCodec.fit(lora_init_reference(ctx), head, examples(), rank, head_rank,
                          lora_config=lora_config_dict(ctx.lora_config), base=encoder_identity(ctx.base),
                          classifier_init_scale=RECIPE["classifier_init_scale"])
    codec.config["max_length"] = json.loads((Path(zoo_dir) / "manifest.json").read_text())["config"]["max_length"]
    codec.calibrate(codec.encode(s, ref) for s, ref in examples(calibration))
    if output_dir is not None:
        codec.save_pretrained(output_dir)
    return codec


def decode_adapter(codec: LoraCodec, coefs: dict[str, torch.Tensor], runner: AdapterRunner, task: dict
                   ) -> dict[str, torch.Tensor]:
    """Coefficients -> a whole adapter: the decoded LoRA factors, the classifier from the few-shot texts on them."""
    return codec.decode(coefs, lambda body: runner.head_reference(task, body))


def write_stock_coefficient_zoo(zoo_dir: str | os.PathLike, codec: LoraCodec, output_dir: str | os.PathLike,
                                ctx: StockContext | None = None) -> dict:
    """Encode every adapter of the zoo into `output_dir/checkpoints/<id>` (finished ones skipped); returns the
    manifest (`checkpoints`: path + corpus split)."""
    output_dir, ctx = Path(output_dir), ctx or stock_context(zoo_dir)
    runner, entries = AdapterRunner(ctx), []
    for entry in adapter_entries(zoo_dir):
        name = Path(entry["path"]).name
        final = output_dir / "checkpoints" / name
        entries.append({"path": f"checkpoints/{name}", "split": CORPUS_SPLIT[entry["split"]], "model_id": name})
        if (final / "README.md").is_file():
            continue
        task = entry["task"]
        state, _ = load_adapter_state_dict(Path(zoo_dir) / entry["path"])
        coefs = codec.encode(state, runner.head_reference(task, state))
        tmp = temporary_sibling(final)
        try:
            tmp.mkdir(parents=True)
            save_file(coefs, str(tmp / "model.safetensors"))
            (tmp / LAYOUT_FILE).write_text(codec.layout(len(task["classes"])).to_json(), encoding="utf-8")
            (tmp / "config.json").write_text(json.dumps({"kind": COEFFICIENT_ARCHITECTURE, **{
                k: codec.config[k] for k in ("rank", "head_rank", "lora_rank")}, "num_classes": len(task["classes"])}))
            meta = {"task_id": task["task_id"], "instruction": task["instruction"], "dataset": task["dataset"],
                    "classes": task["classes"], "num_classes": len(task["classes"]),
                    "val_accuracy": entry.get("val_accuracy"), "test_accuracy": entry.get("test_accuracy"),
                    "split": CORPUS_SPLIT[entry["split"]], "architecture": COEFFICIENT_ARCHITECTURE,
                    "adapter": str(Path(zoo_dir) / entry["path"])}
            ModelCard.from_template(ModelCardData(library_name="hf_paramgen", tags=["hf_paramgen", "lora-codes"],
                                                  **meta), template_str="---\n{{ card_data }}\n---\n").save(
                tmp / "README.md")
            replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"zoo": str(zoo_dir), "checkpoints": entries}
    atomic_write_json(output_dir / "manifest.json", manifest, indent=1)
    return manifest


def codec_fidelity(codec: LoraCodec, zoo_dir: str | os.PathLike, splits=("validation", "heldout_task", "heldout_topic"),
                   limit: int | None = None, ctx: StockContext | None = None) -> dict:
    """Test accuracy of adapters the codec never saw, as trained and after encode + decode (the classifier rebuilt
    from the few-shot texts on the decoded encoder, as at generation): mean / worst drop in points."""
    ctx = ctx or stock_context(zoo_dir)
    runner, drops, rows = AdapterRunner(ctx), [], []
    for split in splits:
        for entry in adapter_entries(zoo_dir, split)[:limit]:
            task = entry["task"]
            state, _ = load_adapter_state_dict(Path(zoo_dir) / entry["path"])
            trained = runner.accuracy(task, "test", state)
            coefs = codec.encode(state, runner.head_reference(task, state))
            coded = runner.accuracy(task, "test", decode_adapter(codec, coefs, runner, task))
            drops.append(100 * (trained - coded))
            rows.append({"task_id": task["task_id"], "split": split, "trained": trained, "coded": coded})
    return {"codec_mean_accuracy_drop_pp": sum(drops) / max(len(drops), 1),
            "codec_worst_accuracy_drop_pp": max(drops, default=0.0), "codec_rows": rows,
            "coefficients": codec.layout(4).num_params}
