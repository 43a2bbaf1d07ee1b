"""Bad-input sweep: hundreds of seeded bad inputs through every public entry point, each classified.

    python examples/fuzz_inputs.py --json fuzz.json     # ~600 inputs (seeded), ~2 min; works under outputs/fuzz_inputs/

Entry points: the `parameter-generation` pipeline (input dicts and call options), `ParamGenerator.generate`,
generator folders and Hub repos given to `ParamGenerator.from_pretrained` / `pipeline(model=...)`, checkpoint folders
and Hub repos given to the corpus builder, corrupted corpora and code columns, and every `hf-paramgen` subcommand
(in-process through `hf_paramgen.cli.main(argv)`). A tiny untrained generator (hashing text encoder) is built under
the work folder if none is there, and the "Hub" is the offline HF cache of the work folder (`HF_HUB_OFFLINE=1`).

Each input runs in a worker process (started once, `spawn`) under a time limit; a worker that outlives the limit is
killed (`hang`) and one that dies is a `crash`; both are replaced. Outcomes:

* `clear_error`    an exception of a documented type (ValueError and its GenerationError / LayoutError / CorpusError,
                   TypeError, KeyError, OSError) raised by a `raise` statement (the frame's last instruction) in
                   hf_paramgen or argparse with a message of at least six words, or a CLI exit status != 0 with an
                   `error:` line of at least six words on stderr. For `pipeline(model=name)` alone, transformers'
                   `pipeline()` checks the name before any hf_paramgen code runs: its own `raise` counts too;
* `correct_result` it worked and the result passed the input's check (finite weights loaded in the target, ...);
* `wrong_result`   it worked but the result failed that check: a silent wrong answer, or a bad CLI argument accepted;
* `unclear_error`  a documented type raised elsewhere (deep in torch, pyarrow, safetensors, json, ...) or by a call
                   such as int() on an hf_paramgen line, or a message under six words;
* `crash`          any other exception type, or a dead worker;  `hang`: the time limit passed;
* `leftover_files` the call failed and left files under final (not hidden) names in its output folder.

Also: `concurrent_pipeline_identical` (a batch of 64 instructions and 8 threads sharing one pipeline object give the
same state dicts, bit for bit, as serial calls with the same seeds) with the load's peak RSS, and
`unsafe_calls_unreviewed` (tests/test_security.py). Prints a table of outcomes per entry point; writes the JSON
atomically. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK_DIR = ROOT / "outputs" / "fuzz_inputs"
OUTCOMES = ("clear_error", "correct_result", "wrong_result", "unclear_error", "crash", "hang", "leftover_files")
HUB_ORG = "fuzz"  # repos of the offline HF cache: fuzz/<name>
DIM, CHUNK = 32, 64  # text / condition width, ParamTokenizer chunk size
TINY_DECODER = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2}
TARGET_ARCH = {"kind": "mlp", "input_shape": [64], "hidden_sizes": [16], "num_classes": 4}
WORKER_MEMORY_BYTES = 6 << 30  # address-space cap of the worker: a runaway allocation fails instead of swapping


def hf_offline_env(work_dir: Path) -> None:
    """Point the HF libraries at the work folder's cache, offline (only before their first import)."""
    if "huggingface_hub" in sys.modules:
        return
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(HF_HOME=str(work_dir / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_XET="1",
                      HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================================ fixtures
def target_net(seed: int = 0):
    """The tiny target network every generation input uses (64 -> 16 -> 4)."""
    import torch

    from hf_paramgen.research.architectures import ZooNet

    torch.manual_seed(seed)
    return ZooNet(**TARGET_ARCH)


def build_tiny_generator(folder: Path) -> Path:
    """An untrained tiny generator, built as tests/test_generation.py builds `tiny_generator` (hashing text encoder,
    a random-projection sample encoder for 64 features), recording the target's layout; saved with
    `ParamGenerator.save_pretrained`."""
    import torch

    from hf_paramgen.conditioning.samples import SampleEncoder
    from hf_paramgen.generation.generator import ParamGenerator
    from hf_paramgen.layout.param_layout import ParamLayout
    from hf_paramgen.models.configuration_param_prior import ParamPriorConfig
    from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
    from hf_paramgen.models.modeling_param_prior import ParamPriorForCausalLM
    from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

    torch.manual_seed(0)
    tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=CHUNK, codebook_size=16, codebook_dim=4, hidden_size=16,
                                              num_layers=1))
    layouts = {"mlp-64-16:4": ParamLayout.from_module(target_net()).to_json()}
    prior = ParamPriorForCausalLM(ParamPriorConfig(
        codebook_size=16, codes_per_chunk=1, chunk_size=CHUNK, condition_dim=DIM, max_condition_tokens=8,
        max_position_embeddings=40, transformer=TINY_DECODER, layouts=layouts))
    encoders = {"digits": SampleEncoder(num_features=64, dim=DIM, method="random")}
    ParamGenerator(prior, tok, f"hashing:{DIM}", encoders).save_pretrained(folder)
    return folder


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def write_checkpoint(folder: Path, seed: int, split: str = "train", dtype: str = "float32") -> Path:
    """A checkpoint folder as the corpus builder reads it: config.json, param_layout.json, model.safetensors and a
    card whose YAML names the instruction and the model split."""
    import torch
    from safetensors.torch import save_file

    from hf_paramgen.layout.param_layout import ParamLayout

    net = target_net(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TARGET_ARCH))
    (folder / "param_layout.json").write_text(ParamLayout.from_module(net).to_json())
    save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in net.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "README.md").write_text(f"---\ninstruction: classify digits 0-3 (seed {seed})\nsplit: {split}\n"
                                      f"val_accuracy: 0.5\nseed: {seed}\n---\n# checkpoint\n")
    return folder


def put_in_hub_cache(folder: Path, repo_id: str, commit: str | None = None) -> str:
    """Copy `folder` into the HF cache as model repo `repo_id` at branch main (what `snapshot_download` leaves)."""
    from huggingface_hub import constants

    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


@dataclass
class Fixtures:
    """Folders every case reads (built once by `prepare`; cases copy what they change into their own folder)."""

    work_dir: Path

    @property
    def generator(self) -> Path:
        return self.work_dir / "generator"

    @property
    def checkpoint(self) -> Path:
        return self.work_dir / "checkpoints" / "a"

    @property
    def zoo(self) -> Path:
        return self.work_dir / "zoo"

    @property
    def corpus(self) -> Path:
        return self.work_dir / "corpus"

    @property
    def encoded(self) -> Path:
        return self.work_dir / "corpus_encoded"

    @property
    def scratch(self) -> Path:
        return self.work_dir / "cases"


def prepare(work_dir: Path) -> Fixtures:
    """Build what is missing: the tiny generator (also as Hub repo fuzz/generator), two checkpoints and a zoo of
    them (also as Hub repo fuzz/checkpoint), a corpus of the zoo and its encoded copy."""
    fx = Fixtures(work_dir)
    if not (fx.generator / "config.json").is_file():
        log(f"building a tiny generator in {fx.generator}")
        build_tiny_generator(fx.generator)
    put_in_hub_cache(fx.generator, f"{HUB_ORG}/generator")
    if not (fx.checkpoint / "model.safetensors").is_file():
        write_checkpoint(fx.checkpoint, 0, "train")
        write_checkpoint(fx.work_dir / "checkpoints" / "b", 1, "validation")
    put_in_hub_cache(fx.checkpoint, f"{HUB_ORG}/checkpoint")
    if not (fx.zoo / "manifest.json").is_file():
        for name, seed, split in (("a", 0, "train"), ("b", 1, "train"), ("c", 2, "validation")):
            write_checkpoint(fx.zoo / "checkpoints" / name, seed, split)
        (fx.zoo / "manifest.json").write_text(json.dumps({"checkpoints": [
            {"path": f"checkpoints/{n}", "split": s}
            for n, s in (("a", "train"), ("b", "train"), ("c", "validation"))]}))
    if not (fx.corpus / "dataset_dict.json").is_file():
        from hf_paramgen.data.corpus import build_corpus

        build_corpus([fx.zoo], fx.corpus, chunk_size=CHUNK, overwrite=True)
    if not (fx.encoded / "dataset_dict.json").is_file():
        from hf_paramgen.data.corpus import load_corpus
        from hf_paramgen.data.encoding import encode_corpus
        from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

        tok = ParamTokenizer.from_pretrained(fx.generator / "param_tokenizer")
        encode_corpus(load_corpus(fx.corpus), tok).save_to_disk(str(fx.encoded))
    shutil.rmtree(fx.scratch, ignore_errors=True)
    fx.scratch.mkdir(parents=True)
    return fx


# ============================================================================================ cases
@dataclass
class Case:
    """One bad (or good) input: `call(case_dir)` runs it; `check(result)` says whether a result is right; files
    under `case_dir / "out"` after a failed call are leftovers."""

    entry: str
    description: str
    call: Callable[[Path], object]
    check: Callable[[object], bool] | None = None
    setup: Callable[[Path], None] | None = None  # prepares `case_dir` before the "before" listing of `out/`
    owners: tuple[str, ...] = ()  # other source paths whose `raise` is the entry point's own (transformers' pipeline())


class Shared:
    """Objects the cases of one worker share, built on first use (a pipeline, a generator, tensors)."""

    def __init__(self, fx: Fixtures):
        self.fx, self._cache = fx, {}

    def get(self, name: str, build: Callable[[], object]):
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def pipe(self):
        from transformers import pipeline

        import hf_paramgen  # noqa: F401  (registers the task)

        return self.get("pipe", lambda: pipeline("parameter-generation", model=str(self.fx.generator)))

    @property
    def generator(self):
        from hf_paramgen.generation.generator import ParamGenerator

        return self.get("generator", lambda: ParamGenerator.from_pretrained(self.fx.generator))


def _finite_state_dict(sd, layout_names=None) -> bool:
    import torch

    if not isinstance(sd, dict) or not sd:
        return False
    if layout_names is not None and list(sd) != list(layout_names):
        return False
    return all(isinstance(v, torch.Tensor) and v.is_floating_point() and bool(torch.isfinite(v).all())
               for v in sd.values())


def pipeline_output_ok(result: dict, output: str = "model") -> bool:
    """A pipeline result (`{"out", "inputs"}`): finite weights for every item, each loaded in a model of the target
    (none for a bare `ParamLayout` target or `output="state_dict"`), scores in [0, 1]."""
    import torch

    from hf_paramgen.layout.param_layout import ParamLayout

    outs, inputs = result["out"], result["inputs"]
    if isinstance(inputs, dict):
        outs, inputs = [outs], [inputs]
    if not isinstance(outs, list) or len(outs) != len(inputs):
        return False
    for out, item in zip(outs, inputs, strict=True):
        if not isinstance(out, dict) or not _finite_state_dict(out.get("state_dict")):
            return False
        if any(s is not None and not 0.0 <= s <= 1.0 for s in out.get("scores") or []):
            return False
        model = out.get("model")
        if output == "state_dict" or isinstance(item.get("target"), ParamLayout):
            if model is not None:
                return False
            continue
        if model is None:
            return False
        weights = model.state_dict()
        if any(k not in weights or not torch.equal(weights[k], v) for k, v in out["state_dict"].items()):
            return False
    return True


def generation_result_ok(result) -> bool:
    sds = getattr(result, "state_dicts", None)
    return bool(sds) and all(_finite_state_dict(sd) for sd in sds)


def corpus_ok(corpus) -> bool:
    import numpy as np

    try:
        chunks = np.asarray(corpus["chunks"].with_format("numpy")["chunk"])
        return len(corpus["models"]) > 0 and chunks.size > 0 and bool(np.isfinite(chunks).all())
    except Exception:  # noqa: BLE001  (not a corpus at all)
        return False


def corpus_read_ok(result) -> bool:
    """What a corpus read gives: each model's weights finite and of its layout's size; an encoded corpus (dict with
    "codes") each model's codes in the codebook (16 codes) and as many as its chunks (one code per chunk)."""
    import torch

    if isinstance(result, dict) and "codes" in result:
        return all(c.numel() == row["num_chunks"] and (c.numel() == 0 or (int(c.min()) >= 0 and int(c.max()) < 16))
                   for c, row in zip(result["codes"], result["models"], strict=True))
    if isinstance(result, list):
        return bool(result) and all(w.numel() == layout.num_params and bool(torch.isfinite(w).all())
                                    for w, layout in result)
    return corpus_ok(result) if hasattr(result, "keys") else False


def cli_ok(rc) -> bool:
    return rc in (0, None)


def cli_refused(rc) -> bool:
    """For a bad argument: a command that returns success has accepted it (a SystemExit or an error is expected)."""
    return False


GOOD_LAST = ("build-corpus", "train-tokenizer", "encode-corpus", "generate")  # whose last argv in `cli_cases` is good


# ------------------------------------------------------------------------------ inputs: instructions and options
def _pick(rng: random.Random, pool: list, n: int) -> list:
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), min(n, len(pool))))]


def bad_samples(rng: random.Random) -> list[tuple[str, Callable[[], object]]]:
    """(description, factory) of few-shot samples / validation pairs, bad and good, for the 64-input target."""
    import numpy as np
    import torch

    def X(n=8, f=64):
        return torch.randn(n, f, generator=torch.Generator().manual_seed(n * 1000 + f))

    y = torch.arange(8) % 4

    def poke(value, count=1):
        def make():
            x = X().double()
            for i in range(count):
                x[(3 * i) % 8, (5 * i + 1) % 64] = value
            return x, y
        return make

    cases = [
        ("good (8, 64) tensors", lambda: (X(), y)),
        ("good numpy arrays", lambda: (X().numpy(), y.numpy())),
        ("good nested lists", lambda: (X().tolist(), y.tolist())),
        ("good float64 inputs", lambda: (X().double(), y)),
        ("good images (8, 1, 8, 8)", lambda: (X().reshape(8, 1, 8, 8), y)),
        ("X only, no pair", lambda: X()),
        ("y only, no pair", lambda: y),
        ("a 1-tuple", lambda: (X(),)),
        ("a 3-tuple", lambda: (X(), y, y)),
        ("a dict {X, y}", lambda: {"X": X(), "y": y}),
        ("a string", lambda: "samples"),
        ("an int", lambda: 7),
        ("(None, y)", lambda: (None, y)),
        ("(X, None)", lambda: (X(), None)),
        ("labels as X: (y, X)", lambda: (y, X())),
        ("float labels 0.5", lambda: (X(), y.float() + 0.5)),
        ("NaN labels", lambda: (X(), torch.full((8,), float("nan")))),
        ("negative labels", lambda: (X(), y - 1)),
        ("labels past the output units (7)", lambda: (X(), y + 4)),
        ("labels of another length (9)", lambda: (X(), torch.arange(9) % 4)),
        ("2-D labels (8, 2)", lambda: (X(), torch.stack([y, y], 1))),
        ("bool labels", lambda: (X(), y > 1)),
        ("complex labels", lambda: (X(), y.to(torch.complex64))),
        ("string labels", lambda: (X(), ["a", "b", "c", "d"] * 2)),
        ("labels missing class 3", lambda: (X(), y % 3)),
        ("huge label 2**62", lambda: (X(), torch.full((8,), 2 ** 62))),
        ("zero samples (0, 64)", lambda: (torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))),
        ("a 0-d X", lambda: (torch.tensor(1.0), y[:1])),
        ("wrong feature count (8, 10)", lambda: (X(8, 10), y)),
        ("wrong feature count (8, 65)", lambda: (X(8, 65), y)),
        ("one NaN", poke(float("nan"))),
        ("one +Inf", poke(float("inf"))),
        ("one -Inf", poke(-float("inf"))),
        ("1e39 (finite in float64, not float32)", poke(1e39)),
        ("all NaN", lambda: (torch.full((8, 64), float("nan")), y)),
        ("int8 inputs", lambda: (X().to(torch.int8), y)),
        ("bool inputs", lambda: (X() > 0, y)),
        ("complex inputs", lambda: (X().to(torch.complex64), y)),
        ("object array inputs", lambda: (np.array([object()] * 8), y)),
        ("ragged lists", lambda: ([[0.0] * (64 - i % 2) for i in range(8)], y)),
        ("string inputs (not texts of a text generator)", lambda: (["open a file"] * 8, y)),
        ("texts with a 150-character word", lambda: (["x" * 150] * 8, y)),
        ("empty text list", lambda: ([], y)),
        ("a requires_grad tensor", lambda: (X().requires_grad_(), y)),
        ("a meta tensor", lambda: (torch.empty(8, 64, device="meta"), y)),
    ]
    rng.shuffle(cases)
    return cases


TASK_TEXTS: list[tuple[str, object]] = [
    ("None", None), ("an int", 3), ("bytes", b"classify digits"), ("empty", ""), ("whitespace", "  \n\t "),
    ("100,000 chars of 'a'", "a" * 100_000), ("201 words", "word " * 201),
    ("one 150-char word", "classify " + "x" * 150),
    ("a list of two texts", ["classify", "digits"]), ("control characters", "classify\x00digits\x1b[31m"),
    ("unicode and emoji", "classer les chiffres 0–3 🔢 数字"), ("a dict", {"text": "classify"}),
    ("NUL only", "\x00"), ("2000 chars exactly", ("ab " * 700)[:2000]), ("RTL and combining marks", "صنف الأرقام ̈́"),
]

OPTIONS: list[tuple[str, dict]] = [
    ("num_candidates=0", {"num_candidates": 0}), ("num_candidates=-3", {"num_candidates": -3}),
    ("num_candidates=1.5", {"num_candidates": 1.5}), ("num_candidates='2'", {"num_candidates": "2"}),
    ("num_candidates=True", {"num_candidates": True}), ("num_candidates=10**7", {"num_candidates": 10 ** 7}),
    ("num_candidates=10_000", {"num_candidates": 10_000}), ("num_samples=2 with num_candidates=3",
                                                             {"num_samples": 2, "num_candidates": 3}),
    ("seed='x'", {"seed": "x"}), ("seed=1.5", {"seed": 1.5}), ("seed=2**70", {"seed": 2 ** 70}),
    ("seed=-1", {"seed": -1}), ("seed=[1]", {"seed": [1]}), ("seed=numpy int64", {"seed": "np.int64(3)"}),
    ("temperature=0", {"temperature": 0}), ("temperature=-1", {"temperature": -1.0}),
    ("temperature=nan", {"temperature": float("nan")}), ("temperature=inf", {"temperature": float("inf")}),
    ("temperature='hot'", {"temperature": "hot"}), ("temperature=1e-9", {"temperature": 1e-9}),
    ("top_k=-1", {"top_k": -1}), ("top_k=1.5", {"top_k": 1.5}), ("top_k=10**9", {"top_k": 10 ** 9}),
    ("top_k='5'", {"top_k": "5"}), ("top_p=0", {"top_p": 0.0}), ("top_p=1.5", {"top_p": 1.5}),
    ("top_p=-0.1", {"top_p": -0.1}), ("top_p=nan", {"top_p": float("nan")}), ("do_sample='yes'", {"do_sample": "yes"}),
    ("do_sample=False (greedy)", {"do_sample": False}), ("decoding='argmax'", {"decoding": "argmax"}),
    ("decoding=1", {"decoding": 1}), ("output='xyz'", {"output": "xyz"}), ("output='peft' for a plain net",
                                                                       {"output": "peft"}),
    ("output='state_dict'", {"output": "state_dict"}), ("on_unseen_layout='ignore'", {"on_unseen_layout": "ignore"}),
    ("an unknown option foo=1", {"foo": 1}), ("num_return_sequences=2", {"num_return_sequences": 2}),
    ("max_new_tokens=3", {"max_new_tokens": 3}), ("show_progress='x'", {"show_progress": "x"}),
    ("top_k=3 top_p=0.9 temperature=0.7", {"top_k": 3, "top_p": 0.9, "temperature": 0.7}),
    ("decoding='sample'", {"decoding": "sample"}),
]


def _resolve_option_values(options: dict) -> dict:
    import numpy as np

    return {k: (np.int64(3) if v == "np.int64(3)" else v) for k, v in options.items()}


def _targets() -> list[tuple[str, Callable[[], object]]]:
    """(description, factory) of generation targets, bad and good."""
    import torch
    from torch import nn
    from transformers import BertConfig

    from hf_paramgen.layout.param_layout import ParamLayout

    def layout_of(*shapes, kinds=None, dtype="float32"):
        specs = [(f"t{i}", s, dtype, (kinds or ["linear.weight", "linear.bias"])[i % 2], False)
                 for i, s in enumerate(shapes)]
        return ParamLayout.from_specs(specs)

    def lora():
        from peft import LoraConfig

        return target_net(), LoraConfig(r=2, target_modules=["net.0"])

    def lora_bad_modules():
        from peft import LoraConfig

        return target_net(), LoraConfig(r=2, target_modules=["no_such_module"])

    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("b", torch.zeros(3))

    def int_params():
        net = nn.Linear(64, 4)
        net.weight = nn.Parameter(torch.zeros(4, 64, dtype=torch.int32), requires_grad=False)
        return net

    return [
        ("the trained target net", target_net),
        ("its ParamLayout", lambda: ParamLayout.from_module(target_net())),
        ("a str 'mlp-64-16'", lambda: "mlp-64-16"), ("None", lambda: None), ("an int", lambda: 5),
        ("a state_dict", lambda: target_net().state_dict()), ("a list of two nets", lambda: [target_net()] * 2),
        ("an nn.Module without parameters", lambda: nn.ReLU()), ("a module with only a buffer", Weird),
        ("an nn.Linear(64, 7) (unseen layout)", lambda: nn.Linear(64, 7)),
        ("a net with int32 weights", int_params),
        ("a Conv2d (unseen tensor kind)", lambda: nn.Conv2d(1, 4, 3)),
        ("a layout of 10**7 x 10**4 (huge)", lambda: layout_of((10 ** 7, 10 ** 4), (10 ** 7,))),
        ("a layout of 300 tensors", lambda: layout_of(*[(4, 4)] * 300)),
        ("an empty layout", lambda: ParamLayout.from_specs([])),
        ("a layout of int8 tensors", lambda: layout_of((4, 64), (4,), dtype="int8")),
        ("a layout with a 0-size tensor", lambda: layout_of((0, 64), (0,))),
        ("a layout of only vectors", lambda: layout_of((4,), (4,), kinds=["vector", "vector"])),
        ("a LoRA target (unseen kinds)", lora), ("a LoRA target naming no module", lora_bad_modules),
        ("a (net, 'not a LoraConfig') pair", lambda: (target_net(), "lora")),
        ("a transformers config (BertConfig tiny)", lambda: BertConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=10)),
    ]


def pipeline_cases(rng: random.Random, sh: Shared) -> list[Case]:
    """The pipeline: input dicts (targets, task texts, samples, validation), call options, batches."""
    cases = []

    def run(inputs_factory, options=None, output="model"):
        def call(_):
            inputs = inputs_factory()
            return {"out": sh.pipe(inputs, **_resolve_option_values(options or {})), "inputs": inputs}
        return call, (lambda result: pipeline_output_ok(result, output))

    def add(desc, inputs_factory, options=None):
        output = (options or {}).get("output", "model")
        call, check = run(inputs_factory, options, output if isinstance(output, str) else "model")
        cases.append(Case("pipeline", desc, call, check))

    text = "classify digits 0-3"
    add("a good dict", lambda: {"target": target_net(), "task_text": text})
    for desc, make in _targets():
        add(f"target: {desc}", lambda make=make: {"target": make(), "task_text": text})
    for desc, value in TASK_TEXTS:
        add(f"task_text: {desc}", lambda value=value: {"target": target_net(), "task_text": value})
    for desc, make in bad_samples(rng):
        add(f"samples: {desc}", lambda make=make: {"target": target_net(), "task_text": text, "samples": make()})
    for desc, make in _pick(rng, bad_samples(rng), 24):
        add(f"validation: {desc}", lambda make=make: {"target": target_net(), "task_text": text,
                                                      "validation": make()})
    for desc, opts in OPTIONS:
        add(f"option {desc}", lambda: {"target": target_net(), "task_text": text}, opts)
    for desc, inputs in [("a plain string", "classify digits"), ("None", None), ("an empty dict", {}),
                         ("a dict without target", {"task_text": text}), ("a list of strings", ["a", "b"]),
                         ("an empty list", []), ("'task' and 'task_text' both", {"target": 0, "task": text,
                                                                                   "task_text": text}),
                         ("unknown key 'targets'", {"targets": 1, "task_text": text})]:
        add(f"input: {desc}", lambda inputs=inputs: inputs)
    add("input: 'target' is the pipeline itself", lambda: {"target": sh.pipe, "task_text": text})
    add("a batch of 3 good dicts", lambda: [{"target": target_net(), "task_text": f"{text} #{i}"} for i in range(3)],
        {"seed": 1})
    add("a batch with one bad dict in the middle", lambda: [{"target": target_net(), "task_text": text},
                                                            {"target": None, "task_text": text}])
    return cases


def generate_cases(rng: random.Random, sh: Shared) -> list[Case]:
    """`ParamGenerator.generate` (positional and keyword arguments as its signature takes them)."""
    import torch

    cases = []
    text = "classify digits 0-3"

    def add(desc, kwargs_factory):
        def call(_):
            kwargs = kwargs_factory()
            kwargs.setdefault("target", target_net())
            kwargs.setdefault("task_text", text)
            return sh.generator.generate(**_resolve_option_values(kwargs))
        cases.append(Case("ParamGenerator.generate", desc, call, generation_result_ok))

    add("good call", dict)
    for desc, make in _pick(rng, _targets(), 12):
        add(f"target: {desc}", lambda make=make: {"target": make()})
    for desc, value in _pick(rng, TASK_TEXTS, 6):
        add(f"task_text: {desc}", lambda value=value: {"task_text": value})
    for desc, make in _pick(rng, bad_samples(rng), 12):
        add(f"samples: {desc}", lambda make=make: {"samples": make()})
    for desc, make in _pick(rng, bad_samples(rng), 8):
        add(f"validation: {desc}", lambda make=make: {"validation": make()})
    gen_options = [(d, o) for d, o in OPTIONS if "output" not in o and "on_unseen_layout" not in o]
    for desc, opts in _pick(rng, gen_options, 16):
        add(f"option {desc}", lambda opts=opts: dict(opts))
    add("on_unseen_layout='error' for an unseen layout",
        lambda: {"target": torch.nn.Linear(64, 7), "on_unseen_layout": "error"})
    add("on_unseen_layout=3", lambda: {"on_unseen_layout": 3})
    add("block_window via sampling options", lambda: {"block_window": -1})
    return cases


# ------------------------------------------------------------------------------ inputs: generator folders
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    for key, value in fields.items():
        if value is _DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


_DELETE = object()


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _flip(path: Path, rng_seed: int, count: int, header_only: bool) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(rng_seed)
    header = 8 + struct.unpack("<Q", bytes(data[:8]))[0] if len(data) >= 8 else len(data)
    lo, hi = (0, min(header, len(data))) if header_only else (min(header, len(data) - 1), len(data))
    for _ in range(count):
        i = rng.randrange(lo, hi)
        data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _set_weights(path: Path, edit: Callable) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: v.contiguous() for k, v in edit(tensors).items()}, str(path))


def _poison(value: float, everywhere: bool = False) -> Callable:
    def edit(tensors):
        name = sorted(tensors)[0]
        t = tensors[name].clone()
        if everywhere:
            t.fill_(value)
        else:
            t.view(-1)[len(t.view(-1)) // 2] = value
        return {**tensors, name: t}
    return edit


def _retype(dtype_name: str) -> Callable:
    import torch

    return lambda tensors: {k: v.to(getattr(torch, dtype_name)) for k, v in tensors.items()}


def _rewrite_header(path: Path, edit: Callable[[dict], dict], data: bytes | None = None) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    path.write_bytes(_safetensors_bytes(edit(header), raw[8 + n:] if data is None else data))


def _huge_shape(shape: list[int]) -> Callable[[dict], dict]:
    def edit(header):
        name = sorted(k for k in header if k != "__metadata__")[0]
        header[name]["shape"] = shape
        return header
    return edit


def _raw_header(path: Path, raw: bytes) -> None:
    path.write_bytes(raw)


def weight_file_mutations(rng: random.Random) -> list[tuple[str, Callable[[Path], None]]]:
    """(description, edit of one safetensors file) — truncations, flips, lying headers, poisoned values."""
    muts = []
    for fraction in sorted({0.0, 0.001, 0.01, 0.5, 0.999} | {round(rng.uniform(0.02, 0.98), 3) for _ in range(3)}):
        muts.append((f"truncated to {fraction:.1%}", lambda p, f=fraction: _truncate(p, f)))
    for _ in range(4):
        seed, count = rng.randrange(1 << 30), rng.choice([1, 3, 20])
        muts.append((f"{count} random bit flips in the header (seed {seed})",
                     lambda p, s=seed, c=count: _flip(p, s, c, True)))
    for _ in range(2):
        seed = rng.randrange(1 << 30)
        muts.append((f"random bit flips in the data (seed {seed})", lambda p, s=seed: _flip(p, s, 50, False)))
    muts += [
        ("header length 2**62", lambda p: _raw_header(p, struct.pack("<Q", 2 ** 62) + p.read_bytes()[8:])),
        ("header length 0", lambda p: _raw_header(p, struct.pack("<Q", 0) + p.read_bytes()[8:])),
        ("header that is not JSON", lambda p: _raw_header(p, struct.pack("<Q", 8) + b"notjson!")),
        ("empty file", lambda p: p.write_bytes(b"")),
        ("random bytes", lambda p: p.write_bytes(random.Random(7).randbytes(4096))),
        ("declared shape [2**40]", lambda p: _rewrite_header(p, _huge_shape([2 ** 40]))),
        ("declared shape [2**31, 2**31]", lambda p: _rewrite_header(p, _huge_shape([2 ** 31, 2 ** 31]))),
        ("declared shape [-1, 64]", lambda p: _rewrite_header(p, _huge_shape([-1, 64]))),
        ("declared dtype 'F99'", lambda p: _rewrite_header(p, lambda h: {
            k: ({**v, "dtype": "F99"} if k != "__metadata__" else v) for k, v in h.items()})),
        ("data offsets past the end", lambda p: _rewrite_header(p, lambda h: {
            k: ({**v, "data_offsets": [0, 10 ** 12]} if k != "__metadata__" else v) for k, v in h.items()})),
        ("one NaN weight", lambda p: _set_weights(p, _poison(float("nan")))),
        ("one +Inf weight", lambda p: _set_weights(p, _poison(float("inf")))),
        ("one -Inf weight", lambda p: _set_weights(p, _poison(-float("inf")))),
        ("a tensor all NaN", lambda p: _set_weights(p, _poison(float("nan"), everywhere=True))),
        ("weights as int32", lambda p: _set_weights(p, _retype("int32"))),
        ("weights as bool", lambda p: _set_weights(p, _retype("bool"))),
        ("weights as float16", lambda p: _set_weights(p, _retype("float16"))),
        ("weights as bfloat16", lambda p: _set_weights(p, _retype("bfloat16"))),
        ("weights as float64 with 1e39", lambda p: _set_weights(p, lambda t: _poison(1e39)(_retype("float64")(t)))),
        ("a tensor dropped", lambda p: _set_weights(p, lambda t: dict(sorted(t.items())[1:]))),
        ("an extra tensor", lambda p: _set_weights(p, lambda t: {**t, "extra.weight": t[sorted(t)[0]] * 1})),
        ("a tensor transposed", lambda p: _set_weights(p, lambda t: {
            k: (v.T.contiguous() if v.ndim == 2 and k == sorted(t)[0] else v) for k, v in t.items()})),
        ("file replaced by a folder", lambda p: (p.unlink(), p.mkdir())),
        ("file is a link to /dev/zero", lambda p: (p.unlink(), p.symlink_to("/dev/zero"))),
        ("file is a dangling link", lambda p: (p.unlink(), p.symlink_to(p.parent / "nowhere"))),
    ]
    return muts


def generator_folder_cases(rng: random.Random, sh: Shared) -> list[Case]:
    """Generator folders with mismatched or broken parts, and names given for them (paths, repo ids)."""
    from hf_paramgen.generation.generator import ParamGenerator

    fx = sh.fx
    cases = []

    def loaded(obj) -> bool:
        gen = getattr(obj, "generator", obj)
        return isinstance(gen, ParamGenerator) and bool(gen.known_layouts())

    def add(desc, edit, loader="from_pretrained"):
        def call(case_dir):
            folder = _copy(fx.generator, case_dir / "gen")
            edit(folder)
            if loader == "pipeline":
                from transformers import pipeline

                import hf_paramgen  # noqa: F401

                return pipeline("parameter-generation", model=str(folder))
            return ParamGenerator.from_pretrained(folder)
        cases.append(Case(f"generator folder ({loader})", desc, call, loaded))

    parts = ["model.safetensors", "param_tokenizer/model.safetensors", "sample_encoders/digits/model.safetensors"]
    muts = weight_file_mutations(rng)
    for part in parts:
        for desc, mut in _pick(rng, muts, 10 if part == parts[0] else 7):
            add(f"{part}: {desc}", lambda f, part=part, mut=mut: mut(f / part))
    configs = ["config.json", "param_tokenizer/config.json", "sample_encoders/digits/config.json"]
    lies = {
        "config.json": [("codebook_size", 32), ("condition_dim", 64), ("max_position_embeddings", 10 ** 9),
                        ("codebook_size", 10 ** 9), ("transformer", {"model_type": "nonexistent"}),
                        ("transformer", "llama"), ("layouts", {"x": "not json"}), ("layouts", [1, 2]),
                        ("param_tokenizer_subfolder", "../../etc"), ("param_tokenizer_subfolder", "/etc"),
                        ("param_tokenizer_repo_id", "../../x"), ("sample_encoders", ["../../etc"]),
                        ("sample_encoders", ["missing"]), ("sample_encoders", "digits"), ("text_encoder", "hashing:x"),
                        ("text_encoder", "hashing:-4"), ("text_encoder", "hashing:0"), ("text_encoder", 7),
                        ("param_tokenizer_sha256", "0" * 64), ("chunk_size", 0), ("model_type", "bert"),
                        ("model_type", _DELETE), ("codes_per_chunk", 2), ("aggregation", "bogus")],
        "param_tokenizer/config.json": [("codebook_size", 32), ("codebook_dim", 8), ("chunk_size", 10 ** 8),
                                        ("hidden_size", 10 ** 6), ("quantizer", "bogus"), ("num_layers", -1),
                                        ("model_type", "nonexistent")],
        "sample_encoders/digits/config.json": [("num_features", 10 ** 6), ("dim", 10 ** 6), ("num_features", 65),
                                               ("dim", 33), ("method", "bogus"), ("num_features", "64"),
                                               ("num_features", -1), ("unexpected_field", 1)],
    }
    for file in configs:
        for field_, value in lies[file]:
            shown = "deleted" if value is _DELETE else repr(value)
            add(f"{file} says {field_}={shown}", lambda f, file=file, k=field_, v=value: _edit_json(f / file, **{k: v}))
    for file in configs:
        add(f"{file} is not JSON", lambda f, file=file: (f / file).write_text("{not json"))
        add(f"{file} is a JSON list", lambda f, file=file: (f / file).write_text("[1, 2]"))
        add(f"{file} removed", lambda f, file=file: (f / file).unlink())
    add("param_tokenizer/ removed", lambda f: shutil.rmtree(f / "param_tokenizer"))
    add("sample_encoders/ removed", lambda f: shutil.rmtree(f / "sample_encoders"))
    add("model.safetensors removed", lambda f: (f / "model.safetensors").unlink())
    add("every file removed", lambda f: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in list(f.iterdir())])
    add("param_tokenizer swapped for another one's", lambda f: _swap_tokenizer(f))
    add("sample encoder folder renamed", lambda f: (f / "sample_encoders" / "digits").rename(
        f / "sample_encoders" / "other"))
    add("a good copy (pipeline)", lambda f: None, loader="pipeline")
    add("param_tokenizer truncated (pipeline)", lambda f: _truncate(f / "param_tokenizer/model.safetensors", 0.5),
        loader="pipeline")
    add("config.json lies codebook_size (pipeline)", lambda f: _edit_json(f / "config.json", codebook_size=32),
        loader="pipeline")
    add("prior weights NaN (pipeline)", lambda f: _set_weights(f / "model.safetensors", _poison(float("nan"), True)),
        loader="pipeline")

    def by_name(desc, name, revision=None, subfolder=None, via="from_pretrained"):
        def call(_):
            if via == "pipeline":
                from transformers import pipeline

                import hf_paramgen  # noqa: F401

                return pipeline("parameter-generation", model=name, revision=revision)
            return ParamGenerator.from_pretrained(name, revision=revision, subfolder=subfolder)
        # transformers' pipeline() resolves a model name itself before any hf_paramgen code runs: its own
        # validation of its `model` argument is the entry point's own error
        owners = PIPELINE_FACTORY if via == "pipeline" else ()
        cases.append(Case(f"generator name ({via})", desc, call, loaded, owners=owners))

    names = [("../../etc/passwd", None, None), ("/etc", None, None), ("~/no-such-generator", None, None),
             ("org/../../x", None, None), ("org/name/extra", None, None), ("a" * 300, None, None),
             ("org/na me", None, None), ("", None, None), (f"{HUB_ORG}/generator", None, None),
             (f"{HUB_ORG}/generator", "../../../etc", None), (f"{HUB_ORG}/generator", "main", None),
             (f"{HUB_ORG}/generator", "refs/../../x", None), (f"{HUB_ORG}/generator", "no-such-branch", None),
             (f"{HUB_ORG}/generator", None, "../.."), (f"{HUB_ORG}/generator", None, "/abs"),
             (f"{HUB_ORG}/generator", None, "param_tokenizer"), (f"{HUB_ORG}/not-cached", None, None),
             (str(fx.generator / "param_tokenizer"), None, None), (str(fx.checkpoint), None, None),
             (str(fx.generator / "model.safetensors"), None, None), (f"{HUB_ORG}/generator", "a" * 300, None),
             (f"{HUB_ORG}/generator", "white space", None), (f"{HUB_ORG}/generator", 5, None)]
    for name, revision, subfolder in names:
        by_name(f"name {name[:40]!r} revision {revision!r} subfolder {subfolder!r}", name, revision, subfolder)
    for name, revision in [("../../etc/passwd", None), (f"{HUB_ORG}/generator", "../../x"), ("org/../x", None),
                           (f"{HUB_ORG}/generator", None), (f"{HUB_ORG}/missing", None)]:
        by_name(f"name {name!r} revision {revision!r}", name, revision, via="pipeline")
    return cases


def _swap_tokenizer(folder: Path) -> None:
    import torch

    from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
    from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

    torch.manual_seed(1)
    other = ParamTokenizer(ParamTokenizerConfig.from_pretrained(folder / "param_tokenizer"))
    shutil.rmtree(folder / "param_tokenizer")
    other.save_pretrained(folder / "param_tokenizer")


# ------------------------------------------------------------------------------ inputs: the corpus builder
def corpus_builder_cases(rng: random.Random, sh: Shared) -> list[Case]:
    """Checkpoint folders, zoo folders, Hub repos and options given to `build_corpus`."""
    from hf_paramgen.data.corpus import build_corpus

    fx = sh.fx
    cases = []

    def add(desc, edit=None, sources=None, hub=False, setup=None, **options):
        def call(case_dir):
            folder = _copy(fx.checkpoint, case_dir / "in" / "ckpt")
            if edit is not None:
                edit(folder)
            srcs = [folder] if sources is None else sources(case_dir, folder)
            if hub:
                repo = f"{HUB_ORG}/c{abs(hash((desc, str(case_dir)))) % 10 ** 8}"
                put_in_hub_cache(folder, repo)
                srcs = [repo]
            return build_corpus(srcs, case_dir / "out" / "corpus", chunk_size=options.pop("chunk_size", CHUNK),
                                **options)
        cases.append(Case("build_corpus" + (" (Hub repo)" if hub else ""), desc, call, corpus_ok, setup))

    add("a good checkpoint folder")
    add("a good Hub repo", hub=True)
    muts = weight_file_mutations(rng)
    for desc, mut in muts:
        add(f"model.safetensors: {desc}", lambda f, mut=mut: mut(f / "model.safetensors"))
    for desc, mut in _pick(rng, muts, 8):
        add(f"model.safetensors: {desc}", lambda f, mut=mut: mut(f / "model.safetensors"), hub=True)
    layout_edits = [
        ("not JSON", lambda f: (f / "param_layout.json").write_text("{oops")),
        ("empty", lambda f: (f / "param_layout.json").write_text("")),
        ("a JSON list", lambda f: (f / "param_layout.json").write_text("[]")),
        ("specs is a string", lambda f: (f / "param_layout.json").write_text('{"specs": "x"}')),
        ("a spec without offset", lambda f: _edit_layout(f, lambda s: [{k: v for k, v in x.items() if k != "offset"}
                                                                       for x in s])),
        ("a spec of shape [10**6, 10**6]", lambda f: _edit_layout(f, lambda s: [{**s[0], "shape": [10 ** 6] * 2}]
                                                                  + s[1:])),
        ("a spec of shape [-4, 64]", lambda f: _edit_layout(f, lambda s: [{**s[0], "shape": [-4, 64]}] + s[1:])),
        ("a spec of kind 'bogus'", lambda f: _edit_layout(f, lambda s: [{**s[0], "kind": "bogus"}] + s[1:])),
        ("a spec of dtype 'int8'", lambda f: _edit_layout(f, lambda s: [{**s[0], "dtype": "int8"}] + s[1:])),
        ("a spec of dtype 'nonsense'", lambda f: _edit_layout(f, lambda s: [{**s[0], "dtype": "nonsense"}] + s[1:])),
        ("one spec missing", lambda f: _edit_layout(f, lambda s: s[1:])),
        ("duplicate specs", lambda f: _edit_layout(f, lambda s: s + s)),
        ("no specs", lambda f: _edit_layout(f, lambda s: [])),
        ("shape as a string", lambda f: _edit_layout(f, lambda s: [{**s[0], "shape": "64x16"}] + s[1:])),
    ]
    for desc, edit in layout_edits:
        add(f"param_layout.json: {desc}", edit)
    config_edits = [
        ("not JSON", lambda f: (f / "config.json").write_text("{oops")),
        ("removed", lambda f: (f / "config.json").unlink()),
        ("model_type bert, no layout file", lambda f: (_rm(f / "param_layout.json"), _edit_json(
            f / "config.json", model_type="bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, vocab_size=10))),
        ("model_type 'nonexistent', no layout file", lambda f: (_rm(f / "param_layout.json"), _edit_json(
            f / "config.json", model_type="nonexistent"))),
        ("model_type bert with 10**6 layers, no layout file", lambda f: (_rm(f / "param_layout.json"), _edit_json(
            f / "config.json", model_type="bert", num_hidden_layers=10 ** 6, hidden_size=16, num_attention_heads=2,
            intermediate_size=16, vocab_size=10))),
        ("model_type llama with vocab 10**12, no layout file", lambda f: (_rm(f / "param_layout.json"), _edit_json(
            f / "config.json", model_type="llama", vocab_size=10 ** 12, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=16, architectures=["LlamaForCausalLM"]))),
        ("a zoo config that lies (hidden 32), no layout file", lambda f: (_rm(f / "param_layout.json"), _edit_json(
            f / "config.json", hidden_sizes=[32]))),
        ("an empty dict, no layout file", lambda f: (_rm(f / "param_layout.json"), (f / "config.json").write_text(
            "{}"))),
        ("a PEFT adapter config without adapter_info.json", lambda f: (f / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 2}))),
    ]
    for desc, edit in config_edits:
        add(f"config.json: {desc}", edit)
    other_edits = [
        ("README.md with broken YAML", lambda f: (f / "README.md").write_text("---\ninstruction: [unclosed\n---\n")),
        ("README.md of random bytes", lambda f: (f / "README.md").write_bytes(random.Random(3).randbytes(300))),
        ("README.md whose YAML is a list", lambda f: (f / "README.md").write_text("---\n- a\n- b\n---\n")),
        ("adapter_info.json not JSON next to an adapter config", lambda f: (
            (f / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"})),
            (f / "adapter_info.json").write_text("{oops"))),
        ("no weights at all", lambda f: (f / "model.safetensors").unlink()),
        ("only a pytorch_model.bin (pickle) without allow_pickle", lambda f: (
            (f / "model.safetensors").unlink(), (f / "pytorch_model.bin").write_bytes(_EVIL_PICKLE))),
        ("shard index that is not JSON", lambda f: (f / "model.safetensors.index.json").write_text("{oops")),
        ("shard index naming a missing shard", lambda f: (f / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"net.0.weight": "model-00001.safetensors"}}))),
        ("shard index with a '../' shard", lambda f: (f / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"net.0.weight": "../../ckpt/model.safetensors"}}))),
        ("shard index with an absolute shard", lambda f: (f / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"net.0.weight": "/etc/passwd"}}))),
        ("shard index whose weight_map is a list", lambda f: (f / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": ["a"]}))),
        ("shard index without weight_map", lambda f: (f / "model.safetensors.index.json").write_text("{}")),
    ]
    for desc, edit in other_edits:
        add(desc, edit)
    add("a pickle with allow_pickle=True (weights_only refuses code)", lambda f: (
        (f / "model.safetensors").unlink(), (f / "pytorch_model.bin").write_bytes(_EVIL_PICKLE)), allow_pickle=True)

    def srcs(values):
        return lambda case_dir, folder: values

    for desc, values in [("no sources", []), ("a missing folder ./no/such", ["./no/such"]),
                         ("'../../etc/passwd'", ["../../etc/passwd"]),
                         ("an existing file", [str(fx.zoo / "manifest.json")]),
                         ("repo id with revision traversal", [f"{HUB_ORG}/checkpoint@../../x"]),
                         ("repo id 'org/../x'", ["org/../x"]), ("repo id of 300 chars", ["o/" + "a" * 300]),
                         ("repo id with a space", ["org/na me"]), ("empty string", [""]),
                         ("repo id with empty revision", [f"{HUB_ORG}/checkpoint@"]),
                         ("repo id not in the cache (offline)", [f"{HUB_ORG}/not-cached"]),
                         ("a cached repo at a missing revision", [f"{HUB_ORG}/checkpoint@v9"]),
                         ("the same folder twice", [str(fx.checkpoint)] * 2), ("a None", [None]),
                         ("the generator folder (not a checkpoint)", [str(fx.generator)])]:
        add(f"sources: {desc}", sources=srcs(values))
    for desc, manifest in [("not JSON", "{oops"), ("a list of '../' paths", json.dumps(["../../../etc"])),
                           ("an absolute path", json.dumps({"checkpoints": ["/etc"]})),
                           ("an entry without path", json.dumps({"checkpoints": [{"split": "train"}]})),
                           ("a number", "3"), ("paths to missing folders", json.dumps({"checkpoints": ["nope"]}))]:
        def zoo(case_dir, folder, manifest=manifest):
            root = _copy(fx.zoo, case_dir / "in" / "zoo")
            (root / "manifest.json").write_text(manifest)
            return [root]
        add(f"zoo manifest.json: {desc}", sources=zoo)
    for desc, options in [("chunk_size 0", {"chunk_size": 0}), ("chunk_size -8", {"chunk_size": -8}),
                          ("chunk_size '64'", {"chunk_size": "64"}), ("chunk_size 1.5", {"chunk_size": 1.5}),
                          ("chunk_size 10**9", {"chunk_size": 10 ** 9}), ("aggregation 'bogus'", {"aggregation": "x"}),
                          ("writer_batch_size 0", {"writer_batch_size": 0}),
                          ("writer_batch_size -1", {"writer_batch_size": -1}),
                          ("splits ['nope']", {"splits": ["nope"]}),
                          ("splits 'train' (a string)", {"splits": "train"})]:
        add(f"option {desc}", **options)

    def existing_output(case_dir):
        (case_dir / "out" / "corpus").mkdir(parents=True)

    def output_is_file(case_dir):
        (case_dir / "out").mkdir(parents=True)
        (case_dir / "out" / "corpus").write_text("a file")

    add("output_dir already exists", setup=existing_output)
    add("output_dir is a file (overwrite=True)", setup=output_is_file, overwrite=True)
    return cases


_EVIL_PICKLE = b"cos\nsystem\n(S'echo pwned > /tmp/fuzz_pwned'\ntR."  # a pickle that would run a shell command


def _rm(path: Path) -> None:
    path.unlink(missing_ok=True)


def _edit_layout(folder: Path, edit: Callable[[list], list]) -> None:
    data = json.loads((folder / "param_layout.json").read_text())
    data["specs"] = edit(data["specs"])
    (folder / "param_layout.json").write_text(json.dumps(data))


# ------------------------------------------------------------------------------ inputs: corpora and code columns
def corpus_cases(rng: random.Random, sh: Shared) -> list[Case]:
    """Corrupted corpus folders and code columns through `load_corpus`, `corpus_model_weights`, `encode_corpus`."""
    from hf_paramgen.data.corpus import corpus_model_weights, load_corpus

    fx = sh.fx
    cases = []

    def reads(corpus) -> object:
        rows = corpus["models"].to_list()
        return [corpus_model_weights(corpus, row["model_id"], row) for row in rows]

    def add(desc, edit, source="corpus", read=reads):
        def call(case_dir):
            folder = _copy(getattr(fx, source), case_dir / "in" / "corpus")
            edit(folder)
            return read(load_corpus(folder))
        cases.append(Case("corpus", f"{source}: {desc}", call, corpus_read_ok))

    def arrow(folder, table):
        return sorted((folder / table).glob("*.arrow"))[0]

    for table in ("chunks", "models"):
        for fraction in (0.0, 0.5, 0.99):
            add(f"{table} arrow file truncated to {fraction:.0%}", lambda f, t=table, x=fraction: _truncate(
                arrow(f, t), x))
        seed = rng.randrange(1 << 30)
        add(f"{table} arrow file with bit flips (seed {seed})", lambda f, t=table, s=seed: _flip_any(arrow(f, t), s))
        add(f"{table}/dataset_info.json not JSON", lambda f, t=table: (f / t / "dataset_info.json").write_text("{"))
        add(f"{table}/state.json not JSON", lambda f, t=table: (f / t / "state.json").write_text("{"))
        add(f"{table}/ removed", lambda f, t=table: shutil.rmtree(f / t))
    add("dataset_dict.json not JSON", lambda f: (f / "dataset_dict.json").write_text("{"))
    add("dataset_dict.json removed", lambda f: (f / "dataset_dict.json").unlink())
    add("dataset_dict.json names a missing split", lambda f: (f / "dataset_dict.json").write_text(
        json.dumps({"splits": ["chunks", "models", "other"]})))
    add("state.json naming '../' data files", lambda f: _edit_json(f / "chunks" / "state.json", _data_files=[
        {"filename": "../../../etc/passwd"}]))
    for desc, edit in [("layout column not JSON", lambda rows: {**rows, "layout": ["{oops"] * len(rows["layout"])}),
                       ("first_chunk past the end", lambda rows: {**rows, "first_chunk": [10 ** 9] * len(
                           rows["first_chunk"])}),
                       ("num_chunks negative", lambda rows: {**rows, "num_chunks": [-5] * len(rows["num_chunks"])}),
                       ("aggregation 'bogus'", lambda rows: {**rows, "aggregation": ["bogus"] * len(
                           rows["aggregation"])}),
                       ("model ids duplicated", lambda rows: {**rows, "model_id": ["same"] * len(rows["model_id"])})]:
        add(f"models table: {desc}", lambda f, e=edit: _edit_table(f, "models", e))
    for desc, edit in [("chunk values NaN", lambda rows: {**rows, "chunk": [[float("nan")] * len(c)
                                                                          for c in rows["chunk"]]}),
                       ("chunk_index shuffled", lambda rows: {**rows, "chunk_index": list(reversed(
                           rows["chunk_index"]))}),
                       ("model_id column emptied", lambda rows: {**rows, "model_id": [""] * len(rows["model_id"])})]:
        add(f"chunks table: {desc}", lambda f, e=edit: _edit_table(f, "chunks", e))

    def encode(corpus):
        from hf_paramgen.data.encoding import encode_corpus
        from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

        return encode_corpus(corpus, ParamTokenizer.from_pretrained(fx.generator / "param_tokenizer"))

    add("good corpus, encode_corpus", lambda f: None, read=encode)
    add("chunk values NaN, encode_corpus", lambda f: _edit_table(f, "chunks", lambda rows: {
        **rows, "chunk": [[float("nan")] * len(c) for c in rows["chunk"]]}), read=encode)

    def codes(corpus):  # as train-prior reads them: the cached codes when usable, else encoded afresh
        from hf_paramgen.data.encoding import cached_codes_usable, corpus_codes, encode_corpus
        from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

        tok = ParamTokenizer.from_pretrained(fx.generator / "param_tokenizer")
        rows = corpus["models"].to_list()
        if not cached_codes_usable(corpus, tok):
            corpus = encode_corpus(corpus, tok)
        return {"codes": corpus_codes(corpus, rows), "models": rows}
    for desc, edit in [("codes out of the codebook (999)", lambda rows: {**rows, "codes": [[999] * len(c)
                                                                                          for c in rows["codes"]]}),
                       ("negative codes", lambda rows: {**rows, "codes": [[-1] * len(c) for c in rows["codes"]]}),
                       ("num_codes past the row", lambda rows: {**rows, "num_codes": [10 ** 6] * len(
                           rows["num_codes"])}),
                       ("num_codes negative", lambda rows: {**rows, "num_codes": [-3] * len(rows["num_codes"])})]:
        add(f"code column: {desc}", lambda f, e=edit: _edit_table(f, "chunks", e), source="encoded", read=codes)
    for name in ("a missing folder ./no/such/corpus", "../../etc", "org/../x", "org/corpus@x", ""):
        cases.append(Case("corpus", f"load_corpus({name!r})", lambda _, n=name: load_corpus(n), corpus_ok))
    return cases


def _flip_any(path: Path, seed: int) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(30):
        data[rng.randrange(len(data))] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_table(folder: Path, table: str, edit: Callable[[dict], dict]) -> None:
    """Rewrite one table of a saved corpus with `edit(columns)` (its features relaxed where a value no longer fits)."""
    from datasets import Dataset, load_from_disk

    ds = load_from_disk(str(folder / table))
    rows = edit(ds.to_dict())
    try:
        new = Dataset.from_dict(rows, features=ds.features)
    except Exception:  # noqa: BLE001  (a value the old features reject: let datasets infer them)
        new = Dataset.from_dict(rows)
    tmp = folder / f".{table}.new"
    new.save_to_disk(str(tmp))
    del ds
    shutil.rmtree(folder / table)
    tmp.rename(folder / table)


# ------------------------------------------------------------------------------ inputs: the console command
def cli_cases(rng: random.Random, sh: Shared) -> list[Case]:
    """Each `hf-paramgen` subcommand's arguments, in-process through `hf_paramgen.cli.main(argv)`."""
    from hf_paramgen.cli import main

    fx = sh.fx
    gen, tok, corpus = str(fx.generator), str(fx.generator / "param_tokenizer"), str(fx.corpus)
    cases = []

    def setup(case_dir):
        (case_dir / "out").mkdir(parents=True)
        (case_dir / "out" / "a_file").write_text("not a folder")

    def add(command, argv_factory, good=False):
        desc = " ".join(argv_factory(Path("OUT")))[:160]
        check = cli_ok if good else cli_refused  # a bad argument that "works" is a silently wrong result
        cases.append(Case(f"cli {command}", desc, lambda case_dir: main(argv_factory(case_dir / "out")), check,
                          setup))

    add("(none)", lambda o: [], good=True)
    add("(none)", lambda o: ["--help"], good=True)
    add("(none)", lambda o: ["no-such-command"])
    add("(none)", lambda o: ["--version"])
    for command in ("build-zoo", "build-adapter-zoo", "build-corpus", "train-tokenizer", "encode-corpus", "train-prior",
                    "generate", "evaluate", "demo"):
        add(command, lambda o, c=command: [c, "--help"], good=True)
        add(command, lambda o, c=command: [c, "--no_such_flag", "1"])
    bad = {
        "build-zoo": [[], ["--output_dir", "{o}/zoo", "--preset", "bogus"], ["--output_dir", "{o}/zoo", "--num_workers",
                                                                            "abc"],
                      ["--output_dir", "{o}/zoo", "--preset", "tiny", "--limit", "-5"],
                      ["--output_dir", "{o}/zoo", "--preset", "tiny", "--num_workers", "-1", "--limit", "0"],
                      ["--output_dir", "{o}/zoo", "--preset", "tiny", "--num_workers", "0", "--limit", "0"],
                      ["--output_dir", "{file}", "--preset", "tiny", "--limit", "0"]],
        "build-adapter-zoo": [[], ["--base", "bogus", "--output_dir", "{o}/az"],
                              ["--base", "mnist-mlp", "--output_dir", "{o}/az", "--num_tasks", "-1"],
                              ["--base", "mnist-mlp", "--output_dir", "{o}/az", "--seeds", "0"],
                              ["--base", "mnist-mlp", "--output_dir", "{o}/az", "--steps", "-3"],
                              ["--base", "mnist-mlp", "--output_dir", "{o}/az", "--num_workers", "0"],
                              ["--base", "mnist-mlp", "--output_dir", "{o}/az", "--preset", "nope"]],
        "build-corpus": [[], ["--output_dir", "{o}/c"], ["--sources", str(fx.checkpoint)],
                         ["--sources", "./no/such", "--output_dir", "{o}/c"],
                         ["--sources", "../../etc/passwd", "--output_dir", "{o}/c"],
                         ["--sources", f"{HUB_ORG}/checkpoint@../../x", "--output_dir", "{o}/c"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c", "--chunk_size", "abc"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c", "--chunk_size", "-4"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c", "--aggregation", "bogus"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c", "--splits", "nope"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c", "--writer_batch_size", "0"],
                         ["--zoo_dir", str(fx.checkpoint), "--output_dir", "{o}/c"],
                         ["--zoo_dir", str(fx.zoo), "--sources", str(fx.checkpoint), "--output_dir", "{o}/c"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c", "--splits"],
                         ["--sources", str(fx.checkpoint), "--output_dir", "{o}/c"]],
        "train-tokenizer": [[], ["--corpus", corpus], ["--corpus", "./no/such", "--output_dir", "{o}/t"],
                            ["--corpus", gen, "--output_dir", "{o}/t"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--chunk_size", "7"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--codebook_size", "0"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--quantizer", "bogus"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--batch_size", "0"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--lr", "nan", "--max_steps", "1"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--max_steps", "-1"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--mixed_precision", "fp99"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--save_total_limit", "0"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--max_steps", "x"],
                            ["--corpus", corpus, "--output_dir", "{file}", "--max_steps", "1"],
                            ["--corpus", corpus, "--output_dir", "{o}/t", "--max_steps", "2", "--batch_size", "8",
                             "--log_every", "1", "--save_every", "1"]],
        "encode-corpus": [[], ["--corpus", corpus, "--param_tokenizer", tok],
                          ["--corpus", "./no/such", "--param_tokenizer", tok, "--output_dir", "{o}/e"],
                          ["--corpus", corpus, "--param_tokenizer", "./no/such", "--output_dir", "{o}/e"],
                          ["--corpus", corpus, "--param_tokenizer", "../../x", "--output_dir", "{o}/e"],
                          ["--corpus", corpus, "--param_tokenizer", gen, "--output_dir", "{o}/e"],
                          ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/e", "--batch_size", "0"],
                          ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/e", "--batch_size",
                           "-5"],
                          ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{file}"],
                          ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/e"]],
        "train-prior": [[], ["--corpus", corpus, "--param_tokenizer", tok],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--architectures",
                         "nope", "--samples", "none", "--text_encoder", f"hashing:{DIM}"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         "hashing:abc", "--samples", "none"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         "hashing:-5", "--samples", "none"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "bad:Name"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "none", "--context", "0"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "none", "--num_heads", "3"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "none", "--batch_size", "0"],
                        ["--corpus", corpus, "--param_tokenizer", "./no/such", "--output_dir", "{o}/g",
                         "--text_encoder", f"hashing:{DIM}", "--samples", "none"],
                        ["--corpus", "./no/such", "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "none"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "none", "--structure_embedding", "bogus"],
                        ["--corpus", corpus, "--param_tokenizer", tok, "--output_dir", "{o}/g", "--text_encoder",
                         f"hashing:{DIM}", "--samples", "none", "--max_steps", "-1"]],
        "generate": [[], ["--generator", gen], ["--generator", "./no/such", "--classes", "0,1,2,3", "--architecture",
                                                "mlp-64-32", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "a,b", "--architecture", "mlp-64-32", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "", "--architecture", "mlp-64-32", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "0,0", "--architecture", "mlp-64-32", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "0,99", "--architecture", "mlp-64-32", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "bogus", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "bogus"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--transform", "bogus"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--num_candidates", "0"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--temperature", "-1"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--temperature", "nan"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--decoding", "bogus"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--revision", "../../x"],
                     ["--generator", "../../etc", "--classes", "0,1", "--architecture", "mlp-64-32"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-784-32", "--dataset", "digits"],
                     ["--generator", gen, "--classes", "0,1", "--architecture", "mlp-64-32", "--dataset", "digits",
                      "--output_dir", "{file}", "--num_candidates", "1"],
                     ["--generator", gen, "--classes", "0,1,2,3", "--architecture", "mlp-64-32", "--dataset",
                      "digits", "--num_candidates", "2", "--output_dir", "{o}/net"]],
        "evaluate": [["--generator", "./no/such", "--zoo_dir", str(fx.zoo)], ["--zoo_dir", "./no/such/zoo"],
                     ["--generator", gen, "--zoo_dir", str(fx.zoo), "--k", "0"],
                     ["--generator", gen, "--zoo_dir", str(fx.zoo), "--num_tasks", "-1"],
                     ["--generator", gen, "--zoo_dir", str(fx.zoo), "--decoding", "bogus"],
                     ["--generator", gen, "--zoo_dir", str(fx.zoo), "--architectures", "bogus"],
                     ["--baselines_only", "--zoo_dir", str(fx.checkpoint)]],
        "demo": [["--output_dir", "{file}"], ["--k", "0", "--output_dir", "{o}/demo"],
                 ["--num_tasks", "-1", "--output_dir", "{o}/demo"],
                 ["--tokenizer_steps", "-1", "--output_dir", "{o}/demo"],
                 ["--stage_seconds", "abc", "--output_dir", "{o}/demo"]],
    }
    for command, argvs in bad.items():
        for i, argv in enumerate(argvs):
            def factory(o, command=command, argv=argv):
                file = o / "a_file"
                return [command] + [a.replace("{o}", str(o)).replace("{file}", str(file)) for a in argv]
            add(command, factory, good=i == len(argvs) - 1 and command in GOOD_LAST)
    return cases


FAMILIES: dict[str, Callable[[random.Random, Shared], list[Case]]] = {
    "pipeline": pipeline_cases, "generate": generate_cases, "generator_folder": generator_folder_cases,
    "corpus_builder": corpus_builder_cases, "corpus": corpus_cases, "cli": cli_cases,
}


def build_cases(sh: Shared, seed: int, quick: bool = False) -> list[Case]:
    """Every case, in a fixed order for `seed` (the worker rebuilds the same list); `quick`: ~30 drawn across all
    families."""
    cases = []
    for name, family in FAMILIES.items():
        cases += family(random.Random(f"{seed}:{name}"), sh)
    if quick:
        rng = random.Random(seed)
        by_entry: dict[str, list[int]] = {}
        for i, case in enumerate(cases):
            by_entry.setdefault(case.entry.split(" (")[0].split(" ")[0], []).append(i)
        picked = sorted({i for ids in by_entry.values() for i in rng.sample(ids, min(5, len(ids)))})
        cases = [cases[i] for i in picked]
    return cases


# ============================================================================================ classification
DOCUMENTED = (ValueError, TypeError, KeyError, OSError)
PIPELINE_FACTORY = ("transformers/pipelines/__init__.py", "transformers/utils/hub.py")
MIN_WORDS = 6
PACKAGE_DIR = str(ROOT / "hf_paramgen")


def _last_frame(exc: BaseException):
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_by_us(exc: BaseException, owners: tuple[str, ...] = ()) -> bool:
    """The exception comes from a `raise` statement (the frame's last instruction is RAISE_VARARGS, not a call into a
    library or a builtin such as int() that happens to sit on an hf_paramgen line) in hf_paramgen or argparse, or in
    one of `owners` when no hf_paramgen code ran (the entry point is another library's function validating its own
    arguments)."""
    import argparse as argparse_module
    import dis

    tb = _last_frame(exc)
    if tb is None:
        return False
    file = os.path.realpath(tb.tb_frame.f_code.co_filename)
    ran_ours = any(os.path.realpath(f.filename).startswith(os.path.realpath(PACKAGE_DIR))
                   for f in traceback.extract_tb(exc.__traceback__))
    ours = (file.startswith(os.path.realpath(PACKAGE_DIR)) or file == os.path.realpath(argparse_module.__file__)
            or (owners and not ran_ours and any(file.endswith(o) for o in owners)))
    if not ours:
        return False
    instruction = next((i for i in dis.get_instructions(tb.tb_frame.f_code) if i.offset == tb.tb_lasti), None)
    return instruction is not None and instruction.opname in ("RAISE_VARARGS", "RERAISE")


def classify(exc: BaseException | None, result, stderr: str, check, owners: tuple[str, ...] = ()) -> tuple[str, str]:
    """(outcome, message head) of one finished call (hangs and dead workers are decided by the caller)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    error_line = next((ln for ln in reversed(lines) if "error:" in ln.lower()), lines[-1] if lines else "")
    if exc is None and isinstance(result, int) and not isinstance(result, bool) and result != 0:
        exc = SystemExit(result)  # a CLI that returned a failure status
    if exc is None:
        try:
            ok = check(result) if check is not None else True
        except Exception as err:  # noqa: BLE001
            return "wrong_result", f"check failed: {type(err).__name__}: {err}"[:300]
        return ("correct_result" if ok else "wrong_result"), ""
    if isinstance(exc, SystemExit):
        if exc.code in (0, None):
            return "correct_result", ""
        words = len(error_line.split())
        outcome = "clear_error" if "error:" in error_line.lower() and words >= MIN_WORDS else "unclear_error"
        if exc.code == 2 and "usage:" in stderr and "error:" in stderr:
            outcome = "clear_error"  # an argparse usage error
        return outcome, f"SystemExit({exc.code}): {error_line}"[:300]
    message = f"{type(exc).__name__}: {exc}"[:300]
    if not isinstance(exc, DOCUMENTED):
        return "crash", message
    clear = _raised_by_us(exc, owners) and len(str(exc).split()) >= MIN_WORDS
    return ("clear_error" if clear else "unclear_error"), message


def _files(folder: Path) -> set[str]:
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_one(case: Case, case_dir: Path) -> dict:
    """Run `case` here (in the worker) and classify it."""
    import torch

    case_dir.mkdir(parents=True, exist_ok=True)
    if case.setup is not None:
        case.setup(case_dir)
    out_dir = case_dir / "out"
    before = _files(out_dir)
    exc, result = None, None
    err_buf, out_buf = io.StringIO(), io.StringIO()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(out_buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = case.call(case_dir)
        except BaseException as err:  # noqa: BLE001  (SystemExit and KeyboardInterrupt are outcomes too)
            exc = err
    seconds = time.perf_counter() - start
    outcome, message = classify(exc, result, err_buf.getvalue(), case.check, case.owners)
    failed = outcome not in ("correct_result", "wrong_result")
    if exc is not None and exc.__traceback__ is not None and outcome in ("unclear_error", "crash"):
        message += " | at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                                         for f in reversed(traceback.extract_tb(exc.__traceback__)[-3:]))
    new = sorted(_files(out_dir) - before)
    left = [p for p in new if not Path(p).parts[0].startswith(".")]  # final names, not hidden temporaries or locks
    if failed and left:
        outcome, message = "leftover_files", f"{message} | left {left[:5]}"
    elif failed and new:
        message += f" | hidden files left: {new[:3]}"
    del result
    shutil.rmtree(case_dir, ignore_errors=True)
    return {"outcome": outcome, "message": message, "seconds": round(seconds, 3)}


# ============================================================================================ worker process
def _worker(conn, work_dir: str, seed: int, quick: bool) -> None:
    """Serve case indices from `conn`: run each, send back its outcome."""
    os.setsid()  # its own process group: a hang is killed with every process it started (zoo builders' pools)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    log_file = open(Path(work_dir) / "worker.log", "a")  # noqa: SIM115  (library loggers write to fd 2 directly)
    os.dup2(log_file.fileno(), 2)
    import torch  # the HF environment is the parent's (inherited)

    torch.set_num_threads(1)
    logging_quiet()
    sh = Shared(Fixtures(Path(work_dir)))
    cases = build_cases(sh, seed, quick)
    conn.send(("ready", len(cases)))
    while True:
        index = conn.recv()
        if index is None:
            return
        conn.send(("done", run_one(cases[index], sh.fx.scratch / f"{index:04d}")))


def logging_quiet() -> None:
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    disable_progress_bar()


class WorkerPool:
    """One worker process at a time; replaced after a hang (killed) or a death."""

    def __init__(self, work_dir: Path, seed: int, quick: bool):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.args = (str(work_dir), seed, quick)
        self.proc = self.conn = None
        self.num_cases = None

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        # not a daemon: the commands under test start their own worker pools (build-zoo, demo)
        self.proc = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=False)
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(600):
            raise RuntimeError("the fuzz worker did not start within 600 s")
        _, self.num_cases = parent.recv()

    def run(self, index: int, timeout: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send(index)
        try:
            ready = self.conn.poll(timeout)
            reply = self.conn.recv() if ready else None
        except (EOFError, ConnectionError):
            reply, ready = None, True
        if reply is not None:
            return reply[1]
        alive = self.proc.is_alive()
        self.stop(kill=True)
        if not ready and alive:
            return {"outcome": "hang", "message": f"no answer within {timeout:.0f} s (worker killed)",
                    "seconds": timeout}
        return {"outcome": "crash", "message": f"the worker process died (exit code {self.proc.exitcode})",
                "seconds": None}

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and everything it started
            self.proc.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# ============================================================================================ load
def load_check(work_dir: Path, batch: int = 64, threads: int = 8, calls_per_thread: int = 2) -> dict:
    """A batch of `batch` instructions (one list input) and `threads` threads sharing one pipeline object (each
    making `calls_per_thread` calls of 2 candidates): every state dict equal, bit for bit, to that of a serial call
    with the same seed. Peak RSS of this process before and after."""
    from transformers import pipeline

    import hf_paramgen  # noqa: F401

    pipe = pipeline("parameter-generation", model=str(work_dir / "generator"))
    net = target_net()
    inputs = [{"target": net, "task_text": f"classify digits, variant {i}"} for i in range(batch)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def serial_call(i: int, **options) -> dict:
        return pipe(inputs[i], output="state_dict", **options)

    start = time.perf_counter()
    batched = pipe(inputs, seed=0, output="state_dict")  # a list input: transformers iterates over it
    batch_s = time.perf_counter() - start
    batch_ok = len(batched) == batch and all(_equal(out["state_dict"], serial_call(i, seed=0)["state_dict"])
                                             for i, out in enumerate(batched))
    jobs = [(t, c) for t in range(threads) for c in range(calls_per_thread)]
    index = {job: (job[0] * calls_per_thread + job[1]) % batch for job in jobs}
    reference = {job: serial_call(index[job], seed=index[job], num_candidates=2) for job in jobs}
    results: dict[tuple[int, int], dict] = {}
    errors: list[str] = []
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for c in range(calls_per_thread):
                i = index[(t, c)]
                results[(t, c)] = serial_call(i, seed=i, num_candidates=2)
        except Exception as err:  # noqa: BLE001
            errors.append(f"{type(err).__name__}: {err}")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    threaded_s = time.perf_counter() - start
    threads_ok = not errors and all(
        len(results[job]["state_dicts"]) == 2 and bool((results[job]["codes"] == reference[job]["codes"]).all())
        and all(_equal(a, b) for a, b in zip(results[job]["state_dicts"], reference[job]["state_dicts"], strict=True))
        for job in jobs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"concurrent_pipeline_identical": bool(batch_ok and threads_ok), "batch_identical": bool(batch_ok),
            "threads_identical": bool(threads_ok), "thread_errors": errors[:3], "batch_size": batch,
            "threads": threads, "calls_per_thread": calls_per_thread, "batch_seconds": round(batch_s, 2),
            "threaded_seconds": round(threaded_s, 2), "rss_before_load_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1)}


def _equal(a: dict, b: dict) -> bool:
    import torch

    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _load_worker(conn, work_dir: str) -> None:
    logging_quiet()
    try:
        conn.send(load_check(Path(work_dir)))
    except Exception as err:  # noqa: BLE001
        conn.send({"concurrent_pipeline_identical": False, "error": f"{type(err).__name__}: {err}"})


def run_load(work_dir: Path, timeout: float = 900) -> dict:
    """`load_check` in a fresh process, so its peak RSS is the load's alone."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_load_worker, args=(child, str(work_dir)), daemon=True)
    proc.start()
    child.close()
    result = parent.recv() if parent.poll(timeout) else {"concurrent_pipeline_identical": False,
                                                          "error": f"no answer within {timeout} s"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    return result


# ============================================================================================ report
def unsafe_calls_unreviewed() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_security import unreviewed_unsafe_uses
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return unreviewed_unsafe_uses()


def summarise(records: list[dict]) -> dict:
    counts = Counter(r["outcome"] for r in records)
    return {"inputs_tried": len(records), "clear_errors": counts["clear_error"],
            "correct_results": counts["correct_result"], "wrong_results": counts["wrong_result"],
            "unclear_errors": counts["unclear_error"], "crashes": counts["crash"], "hangs": counts["hang"],
            "leftover_files": counts["leftover_files"]}


def table(records: list[dict]) -> str:
    entries = sorted({r["entry"] for r in records})
    width = max(len(e) for e in entries + ["entry point"])
    head = f"{'entry point':<{width}}  " + "  ".join(f"{o[:8]:>8}" for o in OUTCOMES) + f"  {'total':>6}"
    rows = [head, "-" * len(head)]
    for entry in entries + ["ALL"]:
        mine = [r for r in records if entry in ("ALL", r["entry"])]
        c = Counter(r["outcome"] for r in mine)
        rows.append(f"{entry:<{width}}  " + "  ".join(f"{c[o]:>8}" for o in OUTCOMES) + f"  {len(mine):>6}")
    return "\n".join(rows)


def run_sweep(work_dir: Path = DEFAULT_WORK_DIR, seed: int = 0, timeout: float = 20.0, quick: bool = False,
              load: bool = True, only: str | None = None) -> dict:
    """Prepare the fixtures, run every case in a worker, run the load check; the report (see the module doc)."""
    start = time.perf_counter()
    work_dir = Path(work_dir).resolve()
    hf_offline_env(work_dir)
    fx = prepare(work_dir)
    sh = Shared(fx)
    cases = build_cases(sh, seed, quick)
    pool = WorkerPool(work_dir, seed, quick)
    records = []
    try:
        for i, case in enumerate(cases):
            if only and only not in case.entry:
                continue
            outcome = pool.run(i, timeout)
            records.append({"entry": case.entry, "input": case.description, **outcome})
            if outcome["outcome"] not in ("clear_error", "correct_result"):
                log(f"[{i + 1}/{len(cases)}] {outcome['outcome']}: {case.entry} | {case.description} | "
                    f"{outcome['message'][:240]}")
            elif (i + 1) % 25 == 0:
                log(f"[{i + 1}/{len(cases)}] ...")
    finally:
        pool.stop()
    report = {**summarise(records), "unsafe_calls_unreviewed": len(unsafe_calls_unreviewed())}
    if load:
        log("load: a batch of 64 and 8 threads on one pipeline ...")
        report["load"] = run_load(work_dir)
        report["concurrent_pipeline_identical"] = report["load"]["concurrent_pipeline_identical"]
        report["load_peak_rss_mb"] = report["load"].get("peak_rss_mb")
    report.update({"entry_points": sorted({r["entry"] for r in records}), "seed": seed, "timeout_s": timeout,
                   "wall_seconds": round(time.perf_counter() - start, 1), "inputs": records})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the report here (default <work_dir>/fuzz.json)")
    parser.add_argument("--work_dir", default=str(DEFAULT_WORK_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--quick", action="store_true", help="~30 inputs across all entry points")
    parser.add_argument("--no_load", action="store_true", help="skip the concurrency / batch load check")
    parser.add_argument("--only", default=None, help="run only entry points whose name contains this")
    args = parser.parse_args(argv)
    report = run_sweep(Path(args.work_dir), args.seed, args.timeout, args.quick, not args.no_load, args.only)
    report["command"] = "python examples/fuzz_inputs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from hf_paramgen.utils import atomic_write_json

    path = Path(args.json or Path(args.work_dir) / "fuzz.json")
    atomic_write_json(path, report)
    print(table(report["inputs"]))
    print()
    keys = ("inputs_tried", "clear_errors", "correct_results", "wrong_results", "unclear_errors", "crashes", "hangs",
            "leftover_files", "unsafe_calls_unreviewed", "concurrent_pipeline_identical", "load_peak_rss_mb",
            "wall_seconds")
    print("\n".join(f"{k:<32} {report.get(k)}" for k in keys))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
