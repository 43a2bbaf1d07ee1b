"""Benchmark: model-zoo size and weight-corpus build speed / peak memory.

    python examples/benchmark_corpus.py --json outputs/benchmark_corpus.json --zoo_dir outputs/zoo
    python examples/benchmark_corpus.py --small --json /tmp/bench.json      # seconds, for the tests

Each corpus build runs in a fresh child process, which reports its own wall time and peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, imports included), so the numbers are the build's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def zoo_stats(zoo_dir: Path) -> dict:
    """Counts and build time of a zoo, read from its manifest (and checkpoint cards where needed)."""
    from hf_paramgen.data.checkpoints import read_card, zoo_sources

    manifest_file = zoo_dir / "manifest.json"
    if not manifest_file.is_file():
        sys.exit(f"error: no zoo at {zoo_dir} (missing manifest.json); run `hf-paramgen build-zoo` first.")
    manifest = json.loads(manifest_file.read_text())
    entries = manifest.get("checkpoints")
    if not (isinstance(entries, list) and all(isinstance(e, dict) and "task_id" in e for e in entries)):
        entries = [read_card(s.path) for s in zoo_sources(zoo_dir)]  # no usable manifest entries: the cards
    return {
        "zoo_checkpoints": len(entries),
        "zoo_tasks": len({e.get("task_id") for e in entries}),
        "zoo_architectures": len({e.get("architecture") for e in entries}),
        "zoo_build_seconds": manifest.get("zoo_build_seconds"),
    }


def make_checkpoints(folder: Path, num_models: int, params_per_model: int) -> list[Path]:
    """`num_models` random ZooNet MLP checkpoints (one hidden layer) of about `params_per_model` params."""
    import torch
    from huggingface_hub import ModelCard, ModelCardData

    from hf_paramgen.research.architectures import ZooNet

    hidden = 2048 if params_per_model >= 2_000_000 else 64
    d_in = max(1, (params_per_model - 11 * hidden - 10) // hidden)
    paths = []
    for i in range(num_models):
        torch.manual_seed(i)
        model = ZooNet(kind="mlp", input_shape=[d_in], hidden_sizes=[hidden], num_classes=10)
        path = folder / f"synthetic-{i:03d}"
        model.save_pretrained(path)
        meta = ModelCardData(task_id=f"synthetic-{i}", instruction="random weights",
                             architecture=f"mlp-{d_in}-{hidden}",
                             seed=i, init="default", split="train")
        ModelCard.from_template(meta, template_str="---\n{{ card_data }}\n---\n").save(path / "README.md")
        paths.append(path)
    return paths


def _sample_anon_rss(peak: list[float], stop) -> None:
    """Track the peak of RssAnon (heap memory, without mapped files) every 20 ms."""
    while not stop.wait(0.02):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]) / 1024)


def child_build(spec: str) -> None:
    """Child process: build one corpus and print its time, size and peak memory as JSON."""
    import resource
    import threading

    import numpy as np
    import torch

    from hf_paramgen.data.corpus import build_corpus, chunk_batch

    torch.set_num_threads(1)
    args = json.loads(spec)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon, stop = [0.0], threading.Event()
    sampler = threading.Thread(target=_sample_anon_rss, args=(anon, stop), daemon=True)
    sampler.start()
    start = time.perf_counter()
    corpus = build_corpus(args["sources"], args["output_dir"], chunk_size=args["chunk_size"], splits=args["splits"])
    seconds = time.perf_counter() - start
    stop.set()
    rng, chunks, times = np.random.default_rng(0), corpus["chunks"], {"arrow": [], "numpy": []}
    for _ in range(50):  # random training batches of 256 chunks
        idx = rng.integers(0, len(chunks), 256).tolist()
        tic = time.perf_counter()
        chunk_batch(chunks, idx)
        times["arrow"].append(time.perf_counter() - tic)
        tic = time.perf_counter()
        chunks.with_format("numpy")[idx]
        times["numpy"].append(time.perf_counter() - tic)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "params": sum(corpus["models"]["num_params"]),
                      "models": len(corpus["models"]),
                      "chunks": len(corpus["chunks"]), "peak_rss_mb": peak, "base_rss_mb": base,
                      "peak_anon_rss_mb": anon[0], "batch256_ms": 1000 * float(np.median(times["arrow"])),
                      "batch256_numpy_format_ms": 1000 * float(np.median(times["numpy"]))}))


def measure(sources: list[str], output_dir: Path, chunk_size: int, splits: list[str] | None = None) -> dict:
    spec = json.dumps({"sources": sources, "output_dir": str(output_dir), "chunk_size": chunk_size, "splits": splits})
    proc = subprocess.run([sys.executable, __file__, "--_child", spec], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"corpus build failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="where to write the results (required)")
    parser.add_argument("--zoo_dir", default="outputs/zoo")
    parser.add_argument("--num_models", type=int, default=20)
    parser.add_argument("--params_per_model", type=int, default=10_000_000)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--small", action="store_true", help="3 models of 100k params (for the tests)")
    parser.add_argument("--no_zoo", action="store_true", help="skip everything about the zoo (zoo keys are null)")
    parser.add_argument("--skip_zoo_corpus", action="store_true", help="do not build a corpus of the zoo's train split")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return child_build(args._child)
    if not args.json:
        parser.error("--json is required")
    if args.small:
        args.num_models, args.params_per_model = 3, 100_000
    keys = ("zoo_checkpoints", "zoo_tasks", "zoo_architectures", "zoo_build_seconds")
    result = dict.fromkeys(keys) if args.no_zoo else zoo_stats(Path(args.zoo_dir))
    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as tmp:
        paths = make_checkpoints(Path(tmp) / "ckpts", args.num_models, args.params_per_model)
        synthetic = measure([str(p) for p in paths], Path(tmp) / "corpus", args.chunk_size)
        zoo = None
        if not (args.skip_zoo_corpus or args.no_zoo):  # the real zoo's train split
            zoo = measure([args.zoo_dir], Path(tmp) / "zoo_corpus", args.chunk_size, ["train"])
    result.update({
        "corpus_models": synthetic["models"], "corpus_params": synthetic["params"],
        "corpus_chunks": synthetic["chunks"],
        "corpus_build_seconds": synthetic["seconds"],
        "corpus_params_per_second": synthetic["params"] / synthetic["seconds"],
        "corpus_peak_rss_mb": synthetic["peak_rss_mb"], "corpus_base_rss_mb": synthetic["base_rss_mb"],
        "corpus_peak_anon_rss_mb": synthetic["peak_anon_rss_mb"], "corpus_random_batch256_ms": synthetic["batch256_ms"],
        "corpus_random_batch256_numpy_format_ms": synthetic["batch256_numpy_format_ms"],
    })
    if zoo:
        result.update({"zoo_corpus_models": zoo["models"], "zoo_corpus_params": zoo["params"],
                       "zoo_corpus_params_per_second": zoo["params"] / zoo["seconds"],
                       "zoo_corpus_peak_rss_mb": zoo["peak_rss_mb"]})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"{'metric':<40} value")
    for key, value in result.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else value
        print(f"{key:<40} {shown}")
    print(f"synthetic corpus: {synthetic['params'] / synthetic['seconds']:,.0f} params/s, "
          f"peak RSS {synthetic['peak_rss_mb']:,.0f} MB (after imports {synthetic['base_rss_mb']:,.0f} MB)")


if __name__ == "__main__":
    main()
