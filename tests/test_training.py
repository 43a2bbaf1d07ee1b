"""The shared Accelerate loop, trained on a tiny corpus built in the corpus format."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, Features, List, Value
from torch import nn

from hf_paramgen.data.collate import TokenizerCollator, augment_chunks, split_rows
from hf_paramgen.layout.chunking import chunk
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.training.loop import STATE_FILE, TrainingConfig, list_checkpoints, train
from hf_paramgen.training.tokenizer import cli_train_tokenizer

REPO = Path(__file__).resolve().parents[1]
CHUNK = 8


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))


def chunk_rows(model_id: str, module: nn.Module, split: str) -> list[dict]:
    """Rows of the corpus `chunks` table for one network (layer aggregation, raw weights)."""
    layout = ParamLayout.from_module(module)
    c = chunk(layout.flatten(module.state_dict()), layout, CHUNK)
    rows = []
    for i in range(len(c)):
        t, j, k = (int(v) for v in c.chunk_position[i])
        rows.append({"model_id": model_id, "chunk_index": i, "tensor_index": t, "chunk_in_tensor": j, "kind_id": k,
                     "scale": math.sqrt(layout.specs[t].fan_in), "num_valid": int(c.chunk_mask[i].sum()),
                     "split": split, "chunk": c.chunks[i].tolist()})
    return rows


def make_corpus(path: Path, num_train: int = 6, num_val: int = 2) -> Path:
    """A `DatasetDict` (chunks + models) saved with `save_to_disk`, in the corpus format."""
    rows, models = [], []
    for i in range(num_train + num_val):
        split = "train" if i < num_train else "validation"
        net = tiny_net(i)
        rows += chunk_rows(f"net-{i}", net, split)
        models.append({"model_id": f"net-{i}", "layout": ParamLayout.from_module(net).to_json(), "split": split,
                       "aggregation": "layer", "chunk_size": CHUNK})
    ints = {n: Value("int32") for n in ("chunk_index", "tensor_index", "chunk_in_tensor", "kind_id", "num_valid")}
    features = Features({"model_id": Value("string"), **ints, "scale": Value("float32"), "split": Value("string"),
                         "chunk": List(Value("float32"), length=CHUNK)})
    tables = {"chunks": Dataset.from_list(rows, features=features), "models": Dataset.from_list(models)}
    DatasetDict(tables).save_to_disk(path)
    return path


def tiny_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--corpus", str(corpus), "--output_dir", str(out), "--hidden_size", "16", "--num_layers", "1",
            "--codebook_size", "8", "--num_quantizers", "2", "--max_chunks_per_tensor", "16", "--batch_size", "16",
            "--log_every", "2", "--save_every", "3", *extra]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_collator_normalises_by_scale_and_masks_padding(tmp_path):
    corpus = DatasetDict.load_from_disk(make_corpus(tmp_path / "corpus"))
    rows = split_rows(corpus["chunks"], "train")
    batch = TokenizerCollator()([rows[i] for i in range(len(rows))])
    table = rows[:]  # numpy columns
    raw = torch.from_numpy(table["chunk"])
    scale = torch.from_numpy(table["scale"])[:, None]
    assert batch["chunk_mask"].sum(1).tolist() == table["num_valid"].tolist()
    assert torch.equal(batch["chunks"], raw * scale * batch["chunk_mask"])
    assert batch["chunk_position"].shape == (len(rows), 3)
    assert set(corpus["chunks"]["split"]) == {"train", "validation"} and len(rows) < len(corpus["chunks"])


def test_tiny_run_saves_loadable_checkpoint_and_logs_scalars(tmp_path):
    from transformers import AutoModel

    from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer, register

    corpus, out = make_corpus(tmp_path / "corpus"), tmp_path / "run"
    assert cli_train_tokenizer(tiny_args(corpus, out, "--max_steps", "4")) == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [2, 4]
    assert {"loss", "reconstruction_loss", "perplexity", "codebook_usage", "eval_loss", "num_processes"} <= set(log[-1])
    assert log[-1]["num_processes"] == 1
    checkpoints = list_checkpoints(out)  # accelerate's checkpoints/checkpoint_<i>, each with a save_pretrained model/
    assert [step for step, _ in checkpoints] == [3, 4]
    assert [p.name for _, p in checkpoints] == ["checkpoint_0", "checkpoint_1"]
    assert ParamTokenizer.from_pretrained(checkpoints[0][1] / "model").config.chunk_size == 2
    model = ParamTokenizer.from_pretrained(out)
    assert model.config.chunk_size == 2 and model.config.num_quantizers == 2  # 8-weight rows cut into 4 chunks
    register()
    assert isinstance(AutoModel.from_pretrained(out), ParamTokenizer)
    assert json.loads((out / "ranks" / "rank-0.json").read_text())["world_size"] == 1


def test_resume_continues_from_saved_step(tmp_path):
    corpus, out = make_corpus(tmp_path / "corpus"), tmp_path / "run"
    assert cli_train_tokenizer(tiny_args(corpus, out, "--max_steps", "3")) == 0
    assert [step for step, _ in list_checkpoints(out)] == [3]
    assert cli_train_tokenizer(tiny_args(corpus, out, "--max_steps", "6", "--save_total_limit", "1")) == 0
    steps = [r["step"] for r in read_log(out)]
    assert steps == [2, 3, 4, 6]  # 2, 3 from the first run; the second starts at step 4, not 1
    assert [(step, p.name) for step, p in list_checkpoints(out)] == [(6, "checkpoint_1")]  # total_limit pruned step 3


def test_tokenizer_chunk_size_must_divide_corpus_rows(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    with pytest.raises(ValueError, match="chunk_size 3 does not fit the corpus, whose rows hold 8 weights"):
        cli_train_tokenizer(tiny_args(corpus, tmp_path / "run", "--chunk_size", "3"))


class Regressor(nn.Module):
    """A generic model (no transformers): `save_pretrained` writes `weights.pt`; can crash at a chosen forward call."""

    def __init__(self, crash_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 1)
        self.calls, self.crash_at = 0, crash_at

    def forward(self, x, y):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        from transformers.utils import ModelOutput

        return ModelOutput(loss=nn.functional.mse_loss(self.fc(x), y))

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "weights.pt")


def regression_rows(n: int = 64) -> list[dict]:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return [{"x": x[i], "y": x[i, :1] * 2 + x[i, 1:2]} for i in range(n)]


def stack_rows(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_train_runs_a_generic_model_with_gradient_accumulation(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), batch_size=8, lr=0.05, max_steps=20, log_every=5,
                         save_every=100, gradient_accumulation_steps=2)
    result = train(Regressor(), regression_rows(), stack_rows, cfg)
    log = read_log(tmp_path)
    assert result["step"] == 20 and log[-1]["loss"] < log[0]["loss"]
    assert (tmp_path / "weights.pt").exists()
    assert json.loads((tmp_path / "ranks" / "rank-0.json").read_text())["batches_seen"] == 40


def test_a_killed_run_resumes_from_its_last_complete_checkpoint_with_the_same_results(tmp_path):
    def config(out):
        return TrainingConfig(output_dir=str(out), batch_size=8, lr=0.05, max_steps=12, log_every=1, save_every=4,
                              gradient_accumulation_steps=2, warmup_steps=2)

    train(Regressor(), regression_rows(), stack_rows, config(tmp_path / "straight"))
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # killed in step 11, after the checkpoints of steps 4 and 8
        train(Regressor(crash_at=21), regression_rows(), stack_rows, config(killed))
    half = killed / "checkpoints" / "checkpoint_2"  # a save cut short: no trainer_state.json
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert [step for step, _ in list_checkpoints(killed)] == [4, 8]
    train(Regressor(), regression_rows(), stack_rows, config(killed))
    assert read_log(killed) == [{**r, "elapsed_s": a["elapsed_s"]} for r, a in zip(read_log(tmp_path / "straight"),
                                                                                   read_log(killed), strict=False)]
    straight = torch.load(tmp_path / "straight" / "weights.pt", weights_only=True)
    resumed = torch.load(killed / "weights.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [(step, (p / STATE_FILE).is_file()) for step, p in list_checkpoints(killed)] == [(8, True), (12, True)]


def _train_in_two_processes(out: str) -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the forked child must not reuse the parent's state
    cfg = TrainingConfig(output_dir=out, batch_size=8, lr=0.05, max_steps=4, log_every=2, save_every=2)
    train(Regressor(), regression_rows(), stack_rows, cfg)


def test_two_gloo_processes_train_checkpoint_and_resume(tmp_path):
    from accelerate import debug_launcher

    out = tmp_path / "run"
    debug_launcher(_train_in_two_processes, args=(str(out),), num_processes=2)
    ranks = sorted(json.loads(p.read_text())["rank"] for p in (out / "ranks").glob("rank-*.json"))
    assert ranks == [0, 1] and all(r["num_processes"] == 2 for r in read_log(out))
    assert [step for step, _ in list_checkpoints(out)] == [2, 4]
    assert (out / "checkpoints" / "checkpoint_1" / "random_states_1.pkl").is_file()  # each rank's RNG state
    debug_launcher(_train_in_two_processes, args=(str(out),), num_processes=2)  # resumes at step 4: nothing to do
    assert [r["step"] for r in read_log(out)] == [2, 4] and [step for step, _ in list_checkpoints(out)] == [2, 4]


def test_keep_best_saves_the_model_with_the_lowest_validation_loss_not_the_last(tmp_path):
    from transformers.utils import ModelOutput

    from hf_paramgen.training.loop import best_model_dir

    class Slope(nn.Module):  # y = w x; trained towards w = 2, validated on w = 1: validation loss falls, then rises
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x, y):
            return ModelOutput(loss=nn.functional.mse_loss(self.w * x, y))

        def save_pretrained(self, path):
            os.makedirs(path, exist_ok=True)
            torch.save(self.state_dict(), Path(path) / "weights.pt")

    x = torch.linspace(-1, 1, 32)
    train_rows = [{"x": v, "y": 2 * v} for v in x]
    val_rows = [{"x": v, "y": v} for v in x]
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    cfg = TrainingConfig(output_dir=str(tmp_path), batch_size=32, lr=0.1, max_steps=40, log_every=2, save_every=100,
                         max_grad_norm=None, keep_best=True)
    train(Slope(), train_rows, collate, cfg, eval_dataset=val_rows)
    evals = [(r["step"], r["eval_loss"]) for r in read_log(tmp_path)]
    best = json.loads((best_model_dir(tmp_path) / "best.json").read_text())
    assert best["eval_loss"] == pytest.approx(min(loss for _, loss in evals)) and best["step"] < evals[-1][0]
    w_best = torch.load(tmp_path / "best" / "weights.pt", weights_only=True)["w"]
    w_last = torch.load(tmp_path / "weights.pt", weights_only=True)["w"]
    assert abs(float(w_best) - 1) < abs(float(w_last) - 1)
    assert best_model_dir(tmp_path / "nothing-here") is None


@pytest.mark.slow
def test_two_real_cpu_processes_take_part(tmp_path):
    corpus, out = make_corpus(tmp_path / "corpus"), tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "examples" / "train_tokenizer.py"), *tiny_args(corpus, out, "--max_steps", "4")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted(json.loads(p.read_text())["rank"] for p in (out / "ranks").glob("rank-*.json"))
    assert ranks == [0, 1]
    assert all(r["num_processes"] == 2 for r in read_log(out))
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("chunk_size", [CHUNK, 2])
def test_encode_corpus_rows_give_exactly_the_codes_encode_gives_per_network(tmp_path, chunk_size):
    from datasets import load_from_disk

    from hf_paramgen.data.encoding import cli_encode_corpus, encode_corpus
    from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
    from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer

    corpus_path = make_corpus(tmp_path / "corpus", num_train=2, num_val=1)
    torch.manual_seed(0)
    tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=chunk_size, hidden_size=16, num_layers=1, codebook_size=8,
                                              num_quantizers=2, max_chunks_per_tensor=16, max_tensors=4)).eval()
    encoded = encode_corpus(load_from_disk(corpus_path), tok, batch_size=5)
    chunks = encoded["chunks"]
    assert chunks.features["codes"].length == CHUNK // chunk_size * 2
    assert len(chunks) == len(load_from_disk(corpus_path)["chunks"])
    for i in range(3):
        rows = [r["codes"][: r["num_codes"]] for r in chunks if r["model_id"] == f"net-{i}"]
        codes = torch.tensor([c for row in rows for c in row]).view(-1, 2)  # (N, T)
        assert torch.equal(codes, tok.encode(tiny_net(i)))
    tok.save_pretrained(tmp_path / "tok")
    args = ["--corpus", str(corpus_path), "--param_tokenizer", str(tmp_path / "tok"),
            "--output_dir", str(tmp_path / "enc")]
    assert cli_encode_corpus(args) == 0
    assert load_from_disk(tmp_path / "enc")["chunks"]["codes"][:] == chunks["codes"][:]


def test_augment_chunks_flips_signs_and_rescales_within_bounds_keeping_padding_zero():
    torch.manual_seed(0)
    chunks = torch.rand(512, CHUNK) + 0.5  # (B, C) all positive
    chunks[:, -2:] = 0.0  # padding
    out = augment_chunks({"chunks": chunks, "chunk_mask": chunks != 0}, sign_flip=True, scale_jitter=0.5)["chunks"]
    ratio = (out[:, :-2] / chunks[:, :-2])  # (B, C-2): one factor per chunk
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio))
    assert (ratio[:, 0] < 0).any() and (ratio[:, 0] > 0).any()
    assert ratio.abs().min() >= 1 / 1.5 - 1e-6 and ratio.abs().max() <= 1.5 + 1e-6
    assert torch.equal(out[:, -2:], torch.zeros(512, 2))
