"""Sharded zoo builds (`research.sharding`): ranks run one after another build the same zoo as one process, a dead
rank's share is resumed without duplicates, the ranks of one run share a folder while two runs never do, bad ranks are
clear errors; slow: real `accelerate launch` builds of two processes equal one-process builds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_paramgen.jobs import OutputLocked, output_lock
from hf_paramgen.research.adapter_zoo import build_adapter_zoo, cli_build_adapter_zoo
from hf_paramgen.research.sharding import JobShard
from hf_paramgen.research.zoo import build_zoo, cli_build_zoo, make_tasks, plan_checkpoints
from hf_paramgen.utils import temporary_sibling

RUN_KEYS = {"num_workers", "num_processes", "num_trained_this_run", "this_run_seconds", "zoo_build_seconds",
            "zoo_build_seconds_note", "train_seconds", "seconds_to_train_adapter"}  # timings and how a run was split


def stable(value):
    """`value` without the keys (at any depth) that describe a run rather than the zoo."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in RUN_KEYS}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def weight_files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every weights file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def hidden_leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*") if not p.name.endswith(".lock")]


PLAN = [job["id"] for job in plan_checkpoints(make_tasks("tiny"), "tiny")]


@pytest.fixture(scope="module")
def one_process_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("one_process") / "zoo"
    return path, build_zoo(path, preset="tiny", num_workers=1)


def test_two_ranks_run_one_after_the_other_build_the_zoo_of_one_process(one_process_zoo, tmp_path, capsys):
    ref_path, ref = one_process_zoo
    out, args = tmp_path / "zoo", ["--output_dir", str(tmp_path / "zoo"), "--preset", "tiny", "--num_workers", "1"]
    assert cli_build_zoo([*args, "--rank", "0", "--world_size", "2"]) == 0
    first = capsys.readouterr()
    assert first.out == "" and "share done" in first.err and "[rank 0/2]" in first.err
    assert not (out / "manifest.json").exists()  # rank 1's share is missing: no manifest yet
    assert cli_build_zoo([*args, "--rank", "1", "--world_size", "2"]) == 0  # the last rank merges and prints
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["num_checkpoints"] == len(PLAN) and manifest["num_trained_this_run"] == len(PLAN[1::2])
    assert [e["id"] for e in manifest["checkpoints"]] == [e["id"] for e in ref["checkpoints"]] == PLAN
    assert stable(manifest) == stable(ref)  # entries, ids, splits, accuracies, tasks
    assert weight_files(out) == weight_files(ref_path) and not hidden_leftovers(out)


@pytest.mark.parametrize("rerun", ["one process", "rank 1 of 2"])
def test_a_dead_rank_is_resumed_without_duplicates(one_process_zoo, tmp_path, rerun):
    ref_path, ref = one_process_zoo
    out = tmp_path / "zoo"
    assert build_zoo(out, "tiny", num_workers=1, shard=JobShard(0, 2)) is None  # rank 1 died before it started...
    jobs = plan_checkpoints(make_tasks("tiny"), "tiny")
    share = JobShard(1, 2).my_jobs(jobs)  # ...or after two checkpoints, while writing a third
    for job in share[:2]:
        shutil.copytree(ref_path / job["path"], out / job["path"])
    partial = temporary_sibling(out / share[2]["path"])
    shutil.copytree(ref_path / share[2]["path"], partial)
    (partial / "model.safetensors").write_bytes(b"half written")
    resumed = build_zoo(out, "tiny", num_workers=1, shard=JobShard() if rerun == "one process" else JobShard(1, 2))
    assert resumed["num_trained_this_run"] == len(share) - 2  # only the missing ones
    assert [e["id"] for e in resumed["checkpoints"]] == PLAN  # each planned checkpoint exactly once
    assert stable(resumed) == stable(ref)
    assert weight_files(out) == weight_files(ref_path) and not hidden_leftovers(out)
    assert len(list(out.glob("checkpoints/*/*/README.md"))) == len(PLAN)


def test_ranks_of_one_run_share_a_folder_and_two_runs_never_do(tmp_path):
    out = tmp_path / "zoo"
    with JobShard(0, 2).claim(out), JobShard(1, 2).claim(out):  # two ranks of one run without a launcher
        with pytest.raises(OutputLocked, match=r"zoo\.shard-0-of-2 is being written by another process"):
            with JobShard(0, 2).claim(out):  # the same rank started twice
                pass
        for other in (JobShard(), JobShard(2, 3)):  # one process; a run with another number of ranks
            with pytest.raises(OutputLocked, match=r"built by another run \(rank 0 of 2 started without a launcher"):
                with other.claim(out):
                    pass
    with JobShard().claim(out):  # one process (or the main process of an accelerate launch) holds the folder
        with pytest.raises(OutputLocked, match=r"built by another run \(one process or an accelerate launch, pid"):
            with JobShard(1, 2).claim(out):
                pass
    with JobShard(1, 2).claim(out):  # every lock was released
        pass
    assert list(tmp_path.iterdir()) == []  # the refused runs wrote nothing, no lock file is left


@pytest.mark.parametrize("rank, world_size, match", [(2, 2, r"rank must be in 0\.\.1 for world_size 2, got 2"),
                                                     (-1, 2, "rank must be in 0..1"),
                                                     (0, 0, "world_size must be >= 1 .*got 0")])
def test_a_rank_outside_the_world_is_a_clear_error(tmp_path, capsys, rank, world_size, match):
    with pytest.raises(ValueError, match=match):
        JobShard(rank, world_size)
    args = ["--output_dir", str(tmp_path / "out"), "--rank", str(rank), "--world_size", str(world_size)]
    for cli, extra in ((cli_build_zoo, []), (cli_build_adapter_zoo, ["--base", "mnist-mlp"])):
        with pytest.raises(SystemExit) as exit_info:
            cli([*args, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "--rank/--world_size" in err and "world_size" in err, err
    with pytest.raises(ValueError, match="Give rank and world_size together"):
        JobShard.resolve(1, None)
    with pytest.raises(TypeError, match="rank must be an int"):
        JobShard("1", 2)
    assert not (tmp_path / "out").exists()


def test_adapter_zoo_ranks_one_after_the_other_equal_one_process(tmp_path):
    ref = build_adapter_zoo("mnist-mlp", tmp_path / "one", preset="tiny")
    out = tmp_path / "two"
    assert build_adapter_zoo("mnist-mlp", out, preset="tiny", shard=JobShard(0, 2)) is None
    merged = build_adapter_zoo("mnist-mlp", out, preset="tiny", shard=JobShard(1, 2))
    assert merged["num_adapters"] == merged["num_planned_adapters"] == ref["num_adapters"] == 2
    assert stable(merged) == stable(ref) and weight_files(out) == weight_files(tmp_path / "one")


# ------------------------------------------------------------------------------------------- accelerate launch
def launch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` of two CPU processes (gloo; `--cpu --num_processes 2` would start one) of hf-paramgen."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), "-m", "hf_paramgen.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


@pytest.mark.slow
def test_accelerate_launch_of_two_processes_builds_the_zoo_of_one_process(one_process_zoo, tmp_path):
    ref_path, ref = one_process_zoo
    out = tmp_path / "zoo"
    proc = launch("build-zoo", "--output_dir", str(out), "--preset", "tiny", "--num_workers", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)  # one JSON document: only the main process printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["num_checkpoints"] == len(PLAN) and manifest["num_processes"] == 2
    assert "[rank 0/2]" in proc.stderr and "[rank 1/2]" in proc.stderr
    assert stable(manifest) == stable(ref)
    assert weight_files(out) == weight_files(ref_path) and not hidden_leftovers(out)
    with output_lock(out):  # a second launch into a folder being written is refused on every rank, at once
        refused = launch("build-zoo", "--output_dir", str(out), "--preset", "tiny", timeout=300)
    assert refused.returncode != 0 and refused.stdout == ""
    assert f"hf-paramgen build-zoo: error: {out.absolute()} is being written by another process" in refused.stderr


@pytest.mark.slow
def test_accelerate_launch_of_two_processes_builds_the_adapter_zoo_of_one_process(tmp_path):
    ref = build_adapter_zoo("mnist-mlp", tmp_path / "one", preset="tiny", num_tasks=4)
    proc = launch("build-adapter-zoo", "--base", "mnist-mlp", "--output_dir", str(tmp_path / "two"), "--preset",
                  "tiny", "--num_tasks", "4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["num_adapters"] == 4
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert stable(manifest) == stable(ref)
    assert weight_files(tmp_path / "two") == weight_files(tmp_path / "one")
