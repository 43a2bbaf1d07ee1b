"""Evaluation of a `DeltaGenerator` on a fine-tune zoo's held-out splits, beside the real fine-tunes and baselines.

Per split ("heldout_tasks": new ordered class sets of the base's digits; "heldout_classes": tasks with a digit no
training fine-tune and not the base saw), test accuracy, mean over tasks:

* `generated_zero_shot` — best of k generated networks on the task's validation split;
* `finetuned` — the real fine-tune (what the generator should approach);
* `base_only` — the codec's reference alone: the base body with the prototype head of the same 5-shot samples (no
  training, no generator);
* `retrieval` — the k training fine-tunes whose instructions are nearest (text encoder, cosine), each with its own
  head when its class count matches, else its body with the prototype head; best of k on validation (the same
  selection budget as the generator);

and the codec's fidelity: every held-out fine-tune through the codec and the ParamTokenizer and back
(`heldout_*_accuracy_drop_pp`, test accuracy).
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ..research.architectures import ZooNet
from ..research.tasks import load_task_split
from ..utils import accuracy
from .coefficient_zoo import iter_finetunes, samples_of, task_of
from .finetune_zoo import load_finetune, with_prototype_head

SPLITS = ("heldout_tasks", "heldout_classes")


def _acc(model, task, split="test") -> float:
    return accuracy(model, *load_task_split(task, split))


def codec_fidelity(generator, zoo_dir: str | Path, limit: int | None = None) -> dict:
    """Accuracy drop (pp, test) of each held-out fine-tune after codec + ParamTokenizer round trip."""
    codec, tok = generator.codec, generator.generator.param_tokenizer
    drops, codec_only = [], []
    for split in SPLITS:
        for _, state, _card, task, samples in iter_finetunes(zoo_dir, split, limit):
            model = ZooNet(**codec.model_config(task.num_classes)).eval()
            model.load_state_dict(state)
            real = _acc(model, task)
            coefs = codec.encode(state, samples)
            model.load_state_dict(codec.decode(coefs, samples))
            codec_only.append(100 * (real - _acc(model, task)))
            layout = codec.layout(task.num_classes)
            with torch.no_grad():
                rec = tok.reconstruct(coefs, layout)
            model.load_state_dict(codec.decode(rec, samples))
            drops.append(100 * (real - _acc(model, task)))
    return {"heldout_mean_accuracy_drop_pp": float(np.mean(drops)), "heldout_worst_accuracy_drop_pp": float(max(drops)),
            "codec_only_mean_drop_pp": float(np.mean(codec_only)), "codec_only_worst_drop_pp": float(max(codec_only)),
            "num_fidelity_networks": len(drops)}


def _text_embeddings(generator, texts: list[str]) -> torch.Tensor:
    emb = generator.generator.text_encoder(texts)[:, 0].float()  # (n, d)
    return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _retrieval(generator, train_entries, train_emb, zoo_dir, task, samples, validation, k) -> float:
    codec = generator.codec
    sims = train_emb @ _text_embeddings(generator, [task.task_text])[0]
    best, best_model = -1.0, None
    for idx in sims.topk(min(k, len(train_entries))).indices.tolist():
        state, config, card = load_finetune(Path(zoo_dir) / train_entries[idx]["path"])
        if len(card["classes"]) == task.num_classes:
            model = ZooNet(**codec.model_config(task.num_classes)).eval()
            model.load_state_dict(state)
        else:
            model = with_prototype_head(state, codec.model_config(task.num_classes), samples)
        score = accuracy(model, *validation)
        if score > best:
            best, best_model = score, model
    return _acc(best_model, task)


def evaluate_splits(generator, zoo_dir: str | Path, num_tasks: int, k: int, seed: int = 0) -> dict:
    """Per-split accuracies of generated networks and baselines (module docstring)."""
    from .coefficient_zoo import finetune_entries

    train_entries = finetune_entries(zoo_dir, "train")
    train_emb = _text_embeddings(generator, [_card(zoo_dir, e)["instruction"] for e in train_entries])
    out = {}
    for split in SPLITS:
        rows = []
        for i, entry in enumerate(finetune_entries(zoo_dir, split)[:num_tasks]):
            card = _card(zoo_dir, entry)  # the card only: the fine-tune's weights are not needed here
            task = task_of(card)
            samples, validation = samples_of(task), load_task_split(task, "validation")
            start = time.perf_counter()
            result = generator.generate(task.task_text, samples, num_candidates=k, seed=seed + i,
                                        validation=validation)
            seconds = time.perf_counter() - start
            rows.append({"task_id": task.task_id, "generated": _acc(result.model, task),
                         "finetuned": card["test_accuracy"],
                         "base_only": _acc(generator.codec.reference_model(task.num_classes, samples), task),
                         "retrieval": _retrieval(generator, train_entries, train_emb, zoo_dir, task, samples,
                                                 validation, k),
                         "generated_validation": max(s for s in result.scores if s is not None),
                         "seconds_for_k": seconds})
        mean = lambda key, rows=rows: float(np.mean([r[key] for r in rows]))  # noqa: E731
        gen = [r["generated"] for r in rows]
        half = 1.96 * float(np.std(gen, ddof=1)) / math.sqrt(len(gen)) if len(gen) > 1 else 0.0
        out[split] = {"generated_zero_shot": mean("generated"), "finetuned": mean("finetuned"),
                      "base_only": mean("base_only"), "retrieval": mean("retrieval"), "num_tasks": len(rows),
                      "generated_over_finetuned": mean("generated") / mean("finetuned"),
                      "ci95": [mean("generated") - half, mean("generated") + half], "rows": rows}
    return out


def _card(zoo_dir, entry) -> dict:
    """A fine-tune's card metadata (task, instruction, accuracies)."""
    from huggingface_hub import ModelCard

    return ModelCard.load(Path(zoo_dir) / entry["path"] / "README.md").data.to_dict()


def one_network(generator_dir: str, zoo_dir: str, save_dir: str, codes_per_step: int = 1) -> dict:
    """Run in a fresh process: load the generator, generate ONE network for the first held-out task (decode and
    load included), save it with the network's own class and load it back; time, throughput and peak RSS."""
    from ..research.evaluation.speed import compute_floor_ratio, prior_size
    from .delta_generator import DeltaGenerator

    torch.set_num_threads(2)
    generator = DeltaGenerator.from_pretrained(generator_dir)
    _, _, card, task, samples = next(iter(iter_finetunes(zoo_dir, "heldout_tasks", 1)))
    generator.generate(task.task_text, samples, num_candidates=1, seed=1)  # warm-up (first-call imports)
    start = time.perf_counter()
    result = generator.generate(task.task_text, samples, num_candidates=1, seed=0)
    seconds = time.perf_counter() - start
    result.model.save_pretrained(save_dir)
    reloaded = ZooNet.from_pretrained(save_dir).eval()
    same = all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(),
                                                 result.model.state_dict().values(), strict=True))
    params, hidden, layers, context = prior_size(generator.generator)
    codes = int(result.codes[0].numel())
    steps_per_second = codes / codes_per_step / result.seconds["sample"]
    floor = compute_floor_ratio(steps_per_second, params, hidden, context // 2, layers)
    return {"seconds_per_network": seconds, "params_per_second": result.num_params / seconds,
            "largest_generated_params": result.num_params, "codes_per_network": codes,
            "sample_seconds": result.seconds["sample"], "decode_and_load_seconds": result.seconds["decode_and_load"],
            "codes_per_second": codes / result.seconds["sample"], "steps_per_second": steps_per_second,
            "compute_floor_ratio": floor["compute_floor_ratio"], "compute_floor": floor,
            "saved_and_reloaded_identical": same, "saved_to": save_dir, "task_id": task.task_id,
            "test_accuracy": _acc(result.model, task),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
