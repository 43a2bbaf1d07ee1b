"""ParamTokenizer fidelity benchmark: rate–distortion on networks the tokenizer never saw.

    python examples/benchmark_tokenizer.py --json outputs/bench/tokenizer.json [--zoo outputs/zoo] [--small]

For each setting (codebook size x codes per chunk x residual depth x chunk size) a ParamTokenizer is
trained for a bounded time on the `train` networks with `hf_paramgen.training.loop.train`; then every
validation / held-out-task / held-out-architecture network is encoded and decoded, and the test
accuracy of the reconstruction is compared with the original's. Prints a table, writes a PNG (bits
per parameter vs mean accuracy drop) and, for the default setting, the JSON keys
`heldout_mean_accuracy_drop_pp`, `heldout_worst_accuracy_drop_pp`, `bits_per_param`,
`codebook_usage`, `encode_decode_params_per_second`, `copy_floor_ratio`.

Networks come from the zoo (`hf_paramgen.research.zoo`) when `--zoo` holds one, else from a small zoo of
sklearn-digits nets trained here (label-permutation tasks; MLP seen, CNN held out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_paramgen.data.collate import augment_chunks
from hf_paramgen.layout.chunking import chunk
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer
from hf_paramgen.models.quantizer import code_statistics
from hf_paramgen.research.architectures import build_model
from hf_paramgen.training.loop import TrainingConfig, train
from hf_paramgen.utils import atomic_write_json, temporary_sibling

HELDOUT = ("validation", "heldout_task", "heldout_architecture")
# name -> ParamTokenizerConfig overrides; "default" is the shipped default configuration.
KIND_ONLY = {"max_tensors": 1, "max_chunks_per_tensor": 1}
FULL_POSITIONS = {"max_tensors": 64, "max_chunks_per_tensor": 4096}
SETTINGS: dict[str, dict] = {
    "default": {},  # ParamTokenizerConfig() = vq-K256-C2, kind-only positions: 4 bits/param
    "vq-K256-C2-fullpos": {**FULL_POSITIONS},
    "vq-K4096-C3": {"chunk_size": 3, "codebook_dim": 3, "codebook_size": 4096},
    "rvq2-K256-C4": {"chunk_size": 4, "codebook_dim": 4, "num_quantizers": 2},
    "rvq4-K256-C8-fullpos": {"chunk_size": 8, "codebook_dim": 8, "num_quantizers": 4, **FULL_POSITIONS},
    "rvq2-K256-C8": {"chunk_size": 8, "codebook_dim": 8, "num_quantizers": 2},
    "vq-K256-C8": {"chunk_size": 8, "codebook_dim": 8},
}


@dataclass
class Net:
    """One network of the benchmark: its module, layout, split and test-accuracy function."""

    name: str
    model: nn.Module
    layout: ParamLayout
    split: str
    accuracy: Callable[[nn.Module], float]


# ---------------------------------------------------------------------------------------------- networks
def _digits_task(perm_seed: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(perm_seed))
    y = perm[torch.tensor(y)]  # the task: a fixed relabelling of the ten digits
    return (x[:1300], y[:1300]), (x[1300:], y[1300:])


def _accuracy_fn(test) -> Callable[[nn.Module], float]:
    x, y = test

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        return float((model(x).argmax(-1) == y).float().mean())

    return accuracy


def _train_digits_net(arch: str, perm_seed: int, init_seed: int) -> tuple[nn.Module, Callable]:
    (x, y), test = _digits_task(perm_seed)
    torch.manual_seed(init_seed)
    model = build_model(arch, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), _accuracy_fn(test)


def digits_zoo(small: bool) -> list[Net]:
    """Train/validation on 8 relabellings, held-out tasks on 4 new ones, held-out architecture = CNN."""
    n_tasks, n_seeds, n_held = (3, 2, 2) if small else (8, 3, 4)
    plan = [("mlp-64-32", t, s, "train") for t in range(n_tasks) for s in range(n_seeds)]
    plan += [("mlp-64-32", t, 100 + t, "validation") for t in range(n_held)]
    plan += [("mlp-64-32", 1000 + t, 200 + t, "heldout_task") for t in range(n_held)]
    plan += [("cnn-digits", 2000 + t, 300 + t, "heldout_architecture") for t in range(n_held)]
    nets = []
    for arch, task, seed, split in plan:
        model, acc = _train_digits_net(arch, task, seed)
        nets.append(Net(f"{arch}/task{task}/seed{seed}", model, ParamLayout.from_module(model), split, acc))
    return nets


def zoo_nets(zoo_dir: str, max_per_split: int, max_train: int) -> list[Net]:
    """Networks of a zoo built by `hf_paramgen.research.zoo` (at most `max_train` train / `max_per_split` other per
    split)."""
    import random

    from hf_paramgen.research import zoo
    from hf_paramgen.research.tasks import task_from_dict

    manifest = zoo.load_manifest(zoo_dir)
    tasks = {t["task_id"]: t for t in manifest["tasks"]}
    entries = []
    for split in ("train", *HELDOUT):  # a seeded random subset of each split
        rows = [e for e in manifest["checkpoints"] if e["split"] == split]
        entries += random.Random(0).sample(rows, min(len(rows), max_train if split == "train" else max_per_split))
    nets = []
    for entry in tqdm(entries, desc="load zoo checkpoints"):
        split = entry["split"]
        model = zoo.load_checkpoint_model(Path(zoo_dir) / entry["path"])
        task = task_from_dict(tasks[entry["task_id"]])
        acc = lambda m, task=task: float(zoo.evaluate_accuracy(m, task, "test"))  # noqa: E731
        nets.append(Net(entry["model_id"], model, ParamLayout.from_module(model), split, acc))
    return nets


# ---------------------------------------------------------------------------------------------- training
class ChunkTensors(torch.utils.data.Dataset):
    """In-memory normalised chunks; `__getitems__` hands the loader whole batches."""

    def __init__(self, nets: list[Net], chunk_size: int):
        parts = [chunk(n.layout.flatten(n.model.state_dict()) * n.layout.fan_in_scale(), n.layout, chunk_size)
                 for n in nets]
        self.chunks = torch.cat([p.chunks for p in parts])  # (N, C)
        self.mask = torch.cat([p.chunk_mask for p in parts])  # (N, C)
        self.position = torch.cat([p.chunk_position for p in parts])  # (N, 3)

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx)
        return {"chunks": self.chunks[idx], "chunk_mask": self.mask[idx], "chunk_position": self.position[idx]}


def train_setting(config: ParamTokenizerConfig, nets: list[Net], out: Path, args) -> ParamTokenizer:
    torch.manual_seed(0)
    model = ParamTokenizer(config)
    data = ChunkTensors([n for n in nets if n.split == "train"], config.chunk_size)
    cfg = TrainingConfig(output_dir=str(out), batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
                         warmup_steps=min(100, args.max_steps // 10), log_every=100, save_every=10**9,
                         max_time_s=args.max_time_s, resume=False)
    train(model, data, lambda batch: augment_chunks(batch, args.sign_flip, args.scale_jitter), cfg)
    return model.eval()


# ---------------------------------------------------------------------------------------------- evaluation
def _throughput(model: ParamTokenizer, nets: list[Net]) -> tuple[float, float]:
    """(encode+decode params/s, copy params/s) over the same state_dicts (at most 8 nets), best of 3."""
    nets = nets[:: max(1, len(nets) // 8)][:8]
    sds = [n.model.state_dict() for n in nets]
    num = sum(n.layout.num_params for n in nets)
    layouts = [n.layout for n in nets]
    best_codec = best_copy = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        model.decode_batch(model.encode_batch(sds, layouts), layouts)
        best_codec = min(best_codec, time.perf_counter() - t0)
        t0 = time.perf_counter()
        [{k: v.clone() for k, v in sd.items()} for sd in sds]
        best_copy = min(best_copy, time.perf_counter() - t0)
    return num / best_codec, num / best_copy


def evaluate_setting(model: ParamTokenizer, nets: list[Net]) -> dict:
    held = [n for n in nets if n.split in HELDOUT]
    codes = model.encode_batch([n.model for n in held], [n.layout for n in held])
    rebuilt = model.decode_batch(codes, [n.layout for n in held])
    rows = []
    for net, sd in zip(held, rebuilt, strict=True):
        copy = build_like(net.model)
        copy.load_state_dict(sd, strict=False)
        before, after = net.accuracy(net.model), net.accuracy(copy.eval())
        original = net.layout.flatten(net.model.state_dict())
        rel_mse = float((net.layout.flatten(sd) - original).pow(2).sum() / original.pow(2).sum())
        rows.append({"name": net.name, "split": net.split, "accuracy": before, "reconstructed_accuracy": after,
                     "drop_pp": 100 * (before - after), "relative_mse": rel_mse})
    _, usage = code_statistics(torch.cat(codes), model.config.codebook_size)
    codec, copy_speed = _throughput(model, held)
    drops = [r["drop_pp"] for r in rows]
    per_split = {s: sum(r["drop_pp"] for r in rows if r["split"] == s) / max(1, sum(r["split"] == s for r in rows))
                 for s in HELDOUT}
    return {"heldout_mean_accuracy_drop_pp": sum(drops) / len(drops), "heldout_worst_accuracy_drop_pp": max(drops),
            "heldout_mean_relative_mse": sum(r["relative_mse"] for r in rows) / len(rows),
            "mean_drop_pp_by_split": per_split, "bits_per_param": model.config.bits_per_param,
            "codebook_usage": float(usage), "encode_decode_params_per_second": codec,
            "copy_floor_ratio": codec / copy_speed, "networks": rows}


def build_like(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


# ---------------------------------------------------------------------------------------------- report
def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.scatter(r["bits_per_param"], r["heldout_mean_accuracy_drop_pp"], label=name)
    ax.axhline(0.5, ls="--", c="grey", lw=0.8)
    ax.set_xlabel("bits per parameter")
    ax.set_ylabel("mean accuracy drop on held-out nets (pp)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = temporary_sibling(path)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def table(results: dict[str, dict]) -> str:
    head = (f"{'setting':<20} {'bits/param':>10} {'mean drop pp':>12} {'worst pp':>9} {'usage':>6} {'params/s':>10} "
            f"{'vs copy':>8}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<20} {r['bits_per_param']:>10.3f} {r['heldout_mean_accuracy_drop_pp']:>12.3f} "
                     f"{r['heldout_worst_accuracy_drop_pp']:>9.3f} {r['codebook_usage']:>6.2f} "
                     f"{r['encode_decode_params_per_second']:>10.3g} {r['copy_floor_ratio']:>8.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--zoo", default="outputs/zoo", help="zoo folder (falls back to a digits zoo trained here)")
    p.add_argument("--settings", nargs="*", default=None, help=f"subset of {list(SETTINGS)}")
    p.add_argument("--max_steps", type=int, default=6000)
    p.add_argument("--max_time_s", type=float, default=240.0, help="training time budget per setting")
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max_heldout_per_split", type=int, default=16)
    p.add_argument("--max_train_nets", type=int, default=300)
    p.add_argument("--sign_flip", type=int, default=1, help="augment training chunks with random sign flips (1/0)")
    p.add_argument("--scale_jitter", type=float, default=0.5, help="augment training chunks by rescaling up to 1+this")
    p.add_argument("--work_dir", default=None, help="keep each setting's training run here (default: a temp dir)")
    p.add_argument("--small", action="store_true", help="a seconds-long run (tiny zoo, tiny models) for tests")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.small:
        args.max_steps, args.max_time_s, args.batch_size = 20, 20.0, 64
    use_zoo = not args.small and (Path(args.zoo) / "manifest.json").exists()
    nets = zoo_nets(args.zoo, args.max_heldout_per_split, args.max_train_nets) if use_zoo else digits_zoo(args.small)
    names = args.settings or (["default", "rvq2-K256-C8", "vq-K256-C8"] if args.small else list(SETTINGS))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work_dir or tmp
        for name in names:
            overrides = {**SETTINGS[name], **({"hidden_size": 32, "num_layers": 1} if args.small else {})}
            config = ParamTokenizerConfig(**overrides)
            model = train_setting(config, nets, Path(tmp) / name, args)
            results[name] = evaluate_setting(model, nets)
            print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'networks'})}", flush=True)
    print(table(results))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out.with_suffix(".png"))
    default = results.get("default", next(iter(results.values())))
    report = {**{k: v for k, v in default.items() if k != "networks"}, "source": "zoo" if use_zoo else "digits",
              "settings": results, "plot": str(out.with_suffix(".png"))}
    atomic_write_json(out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
