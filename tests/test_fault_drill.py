"""The fault drill (`examples/fault_drill.py`) and the defects it found: a few SIGKILLs of the cheapest job (a tiny
zoo build), one writer per output folder, a full disk, a killed `replace_dir` rolled back, and training that resumes
bit for bit with random augmentations. The whole drill (>= 30 kills over every long job) is `slow`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def load_drill():
    spec = importlib.util.spec_from_file_location("fault_drill", REPO / "examples" / "fault_drill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_drill"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_killed_tiny_zoo_builds_resume_to_identical_checkpoints_and_a_full_disk_fails_clearly(tmp_path):
    drill = load_drill()
    d = drill.Drill(tmp_path, seed=0, quick=True)  # build-zoo --limit 2 --num_workers 1
    job = d.jobs["zoo"]
    job.kills = 2
    d.reference(job)
    stats = d.kill_job(job)
    assert stats["kills"] == 2 and stats["resumes_ok"] == 2, stats
    assert stats["lost"] == stats["duplicated"] == stats["partial_files_visible"] == 0, stats["findings"]
    assert stats["final_equal_to_uninterrupted"], stats["findings"]
    full = d.disk_full(job, drill.FSIZE["zoo"], resume=False)  # every file capped at 2 KB: no weights file fits
    assert full["clear_error"] and full["error_line"].startswith("hf-paramgen build-zoo: error: the disk is full")
    assert full["partial"] == [] and full["ok"], full


def test_one_writer_per_output_folder_and_a_dead_writers_lock_is_free(tmp_path, capsys):
    from hf_paramgen.jobs import OutputLocked, output_lock
    from hf_paramgen.research.zoo import build_zoo, cli_build_zoo

    out = tmp_path / "zoo"
    with output_lock(out):
        with pytest.raises(OutputLocked, match=rf"{out} is being written by another process \(pid {os.getpid()}"):
            build_zoo(out, preset="tiny-generalise", num_workers=1, limit=1)
        with pytest.raises(SystemExit) as exit_info:
            cli_build_zoo(["--output_dir", str(out), "--preset", "tiny-generalise", "--limit", "1"])
        assert exit_info.value.code == 1
        assert capsys.readouterr().err.startswith("hf-paramgen build-zoo: error: ")
    assert not out.exists()  # the losers wrote nothing
    holder = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, b'%d' % os.getpid())\nprint('held', flush=True)\n"
              "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / ".zoo.lock")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(OutputLocked, match=f"pid {proc.pid}"), output_lock(out):
        pass
    proc.kill()
    proc.wait()
    with output_lock(out) as lock:  # the kernel dropped the dead writer's lock: taken over at once
        assert lock.read_text().strip() == str(os.getpid())


def test_an_output_moved_aside_by_a_killed_replace_comes_back_and_temporaries_go(tmp_path):
    from hf_paramgen.jobs import output_lock

    out = tmp_path / "corpus"
    aside, tmp = tmp_path / ".corpus.old-0123abcd", tmp_path / ".corpus.tmp-89abcdef"
    for folder in (aside, tmp):
        folder.mkdir()
        (folder / "data.json").write_text(json.dumps(folder.name))
    with output_lock(out):  # killed between "final -> .old" and "tmp -> final": the complete old output is restored
        assert json.loads((out / "data.json").read_text()) == aside.name
        assert not aside.exists() and not tmp.exists()


class Noisy(nn.Module):
    """y = w x, trained on inputs that the collator perturbs with torch's global RNG (an augmentation)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, y):
        from transformers.utils import ModelOutput

        return ModelOutput(loss=nn.functional.mse_loss(self.w * x, y))

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "weights.pt")


def _augmenting_collate(limit: int | None = None):
    calls = [0]

    def collate(rows):
        calls[0] += 1
        if limit is not None and calls[0] > limit:
            raise KeyboardInterrupt  # the kill
        x = torch.stack([r["x"] for r in rows])
        return {"x": x + 0.1 * torch.randn(x.shape), "y": torch.stack([r["y"] for r in rows])}

    return collate


def test_training_with_random_augmentations_resumes_bit_for_bit(tmp_path):
    from hf_paramgen.training.loop import TrainingConfig, train

    rows = [{"x": v, "y": 2 * v} for v in torch.linspace(-1, 1, 40)]
    config = lambda out: TrainingConfig(output_dir=str(out), batch_size=8, lr=0.05, max_steps=9,  # noqa: E731
                                        log_every=3, save_every=3, max_grad_norm=None)
    train(Noisy(), rows, _augmenting_collate(), config(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of an epoch (5 batches), after the step-3 save
        train(Noisy(), rows, _augmenting_collate(limit=5), config(tmp_path / "killed"))
    train(Noisy(), rows, _augmenting_collate(), config(tmp_path / "killed"))
    straight, resumed = (torch.load(tmp_path / d / "weights.pt", weights_only=True)["w"]
                         for d in ("straight", "killed"))
    assert torch.equal(straight, resumed)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("straight", "killed")]
    assert logs[0] == logs[1]


@pytest.mark.slow
def test_full_fault_drill_meets_its_targets(tmp_path):
    report = load_drill().run_drill(tmp_path / "fault_drill")
    assert report["kills"] >= 30 and report["resumes_ok"] == report["kills"]
    assert report["lost"] == report["duplicated"] == report["partial_files_visible"] == 0
    assert report["final_equal_to_uninterrupted"], {k: v["findings"] for k, v in report["jobs"].items()}
    assert report["concurrent_writers_ok"], report["concurrent_writers"]
    assert report["disk_full_ok"], report["disk_full"]
