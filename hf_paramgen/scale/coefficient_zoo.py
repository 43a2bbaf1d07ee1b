"""Fit a `DeltaCodec` on a fine-tune zoo's training split, and write every fine-tune's coefficients as a zoo of
ordinary checkpoint folders (`config.json`, `param_layout.json`, `model.safetensors`, card), so `build_corpus`,
`train-tokenizer` and `train-prior` take them unchanged.

Coefficient splits use the corpus's model split names: "train", "heldout_task", "heldout_class".
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file

from ..data.checkpoints import LAYOUT_FILE
from ..research.tasks import Task, few_shot_samples
from ..utils import atomic_write_json, replace_dir, temporary_sibling
from .delta_codec import DeltaCodec
from .finetune_zoo import FINETUNE_RECIPE, load_base_state, load_finetune

CORPUS_SPLIT = {"train": "train", "heldout_tasks": "heldout_task", "heldout_classes": "heldout_class"}
COEFFICIENT_ARCHITECTURE = "delta-coefficients"


def finetune_entries(zoo_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The manifest entries of a fine-tune zoo (of one split)."""
    manifest = json.loads((Path(zoo_dir) / "manifest.json").read_text())
    return [e for e in manifest["checkpoints"] if split is None or e["split"] == split]


def task_of(card: dict) -> Task:
    return Task.make(card["dataset"], card["classes"], card["transform"])


def samples_of(task: Task):
    """The few-shot samples a fine-tune's head started from (and a generator is given)."""
    return few_shot_samples(task, FINETUNE_RECIPE["few_shot_per_class"], "train", seed=0)


def iter_finetunes(zoo_dir: str | os.PathLike, split: str | None = None, limit: int | None = None):
    """Yield `(entry, state_dict, card, task, samples)` one fine-tune at a time."""
    for entry in finetune_entries(zoo_dir, split)[:limit]:
        state, _, card = load_finetune(Path(zoo_dir) / entry["path"])
        task = task_of(card)
        yield entry, state, card, task, samples_of(task)


def fit_codec(zoo_dir: str | os.PathLike, output_dir: str | os.PathLike, rank: int, head_rank: int,
              calibration: int = 64) -> DeltaCodec:
    """Fit (or reuse) the codec on the zoo's "train" fine-tunes; saved to `output_dir`."""
    output_dir = Path(output_dir)
    if (output_dir / "delta_codec.json").is_file():
        return DeltaCodec.from_pretrained(output_dir)
    base_dir = Path(zoo_dir) / "base"
    base, config = load_base_state(str(base_dir.resolve()))
    first = finetune_entries(zoo_dir, "train")[0]
    head_names = json.loads((Path(zoo_dir) / first["path"] / "config.json").read_text())["head"]
    codec = DeltaCodec.fit(base, config, head_names, ((s, x) for _, s, _, _, x in iter_finetunes(zoo_dir, "train")),
                           rank=rank, head_rank=head_rank, reference_name=str(base_dir))
    codec.calibrate(codec.encode(s, x) for _, s, _, _, x in iter_finetunes(zoo_dir, "train", calibration))
    codec.save_pretrained(output_dir)
    return codec


def write_coefficient_zoo(zoo_dir: str | os.PathLike, codec: DeltaCodec, output_dir: str | os.PathLike) -> dict:
    """Encode every fine-tune of the zoo into `output_dir/checkpoints/<id>` (skipping finished ones); returns the
    manifest (`checkpoints`: path + corpus split)."""
    output_dir = Path(output_dir)
    entries = []
    for entry in finetune_entries(zoo_dir):
        final = output_dir / "checkpoints" / entry["id"]
        entries.append({"path": f"checkpoints/{entry['id']}", "split": CORPUS_SPLIT[entry["split"]],
                        "model_id": entry["id"]})
        if (final / "README.md").is_file():
            continue
        state, _, card = load_finetune(Path(zoo_dir) / entry["path"])
        task = task_of(card)
        coefs = codec.encode(state, samples_of(task))
        tmp = temporary_sibling(final)
        try:
            tmp.mkdir(parents=True)
            save_file(coefs, str(tmp / "model.safetensors"))
            (tmp / LAYOUT_FILE).write_text(codec.layout(task.num_classes).to_json(), encoding="utf-8")
            (tmp / "config.json").write_text(json.dumps({"kind": COEFFICIENT_ARCHITECTURE, "rank": codec.config["rank"],
                                                         "head_rank": codec.config["head_rank"],
                                                         "num_layers": codec.num_layers,
                                                         "num_classes": task.num_classes}))
            meta = {k: card[k] for k in ("task_id", "instruction", "dataset", "classes", "transform", "num_classes",
                                         "val_accuracy", "test_accuracy")}
            meta.update(split=CORPUS_SPLIT[entry["split"]], architecture=COEFFICIENT_ARCHITECTURE,
                        finetune=str(Path(zoo_dir) / entry["path"]))
            ModelCard.from_template(ModelCardData(library_name="hf_paramgen", tags=["hf_paramgen", "delta-codes"],
                                                  **meta), template_str="---\n{{ card_data }}\n---\n").save(
                tmp / "README.md")
            replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"codec": str(codec.config.get("reference")), "checkpoints": entries}
    atomic_write_json(output_dir / "manifest.json", manifest, indent=1)
    return manifest
