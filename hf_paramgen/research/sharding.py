"""Long jobs sharded over processes and machines: each rank does its share of a plan, one rank merges the manifest.

For jobs made of many independent outputs (zoo checkpoints, adapters, fine-tunes), each written atomically under its
final name (a temporary sibling, then a rename) by a deterministic function of its job::

    shard = JobShard.from_launcher()                      # rank / world size from `accelerate launch`, else 0 of 1
    with shard.claim(output_dir):                         # one build per folder (see `JobShard.claim`)
        todo = shard.my_todo(jobs, output_of, "README.md")    # this rank's share of the unfinished jobs
        ...                                               # train `todo` (with this rank's own worker processes)
        manifest = shard.merge(output_dir / "manifest.json", build_manifest, complete)  # None on the other ranks

A rerun after any rank died trains only the missing outputs (a finished one is never trained or listed twice), and
the merged manifest is built from the plan, so it lists each planned job exactly once.

How to start N ranks (`build-zoo` and `build-adapter-zoo` take the same options)::

    accelerate launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m hf_paramgen.cli build-zoo --output_dir DIR ...

`--multi_gpu` also serves CPU-only machines (gloo); `accelerate launch --cpu --num_processes N` starts ONE process
(accelerate 1.15), which then builds everything alone. Several machines: the same command with `--num_machines M
--machine_rank k --main_process_ip HOST --main_process_port PORT` on each. Without a launcher (a job array, machines
that cannot reach each other): `hf-paramgen build-zoo ... --rank k --world_size N` on each; such ranks never talk, so
the last one to finish writes the manifest. Across machines the output folder must be on a filesystem every machine
mounts (NFS, Lustre, ...): ranks only meet through it. Ranks without a launcher also need its `flock` to work across
machines (NFSv4 does; Lustre needs `-o flock`); elsewhere their locks guard one machine only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..jobs import OutputLocked, output_lock, recover_temporaries
from ..utils import atomic_write_json

__all__ = ["JobShard", "recover_outputs", "wait_lock", "add_shard_arguments", "shard_from_args"]

T = TypeVar("T")
_TEMPORARY = re.compile(r"\.(.+)\.(?:tmp|old)-.{8}")  # `utils.temporary_sibling` names


@dataclass
class JobShard:
    """Rank `rank` of `world_size` processes building one output folder.

    `distributed`: the ranks share a process group (`accelerate launch`, torchrun), so barriers and broadcasts work;
    otherwise (`explicit` ranks, world size > 1) they are independent processes that meet only through the folder.
    """

    rank: int = 0
    world_size: int = 1
    distributed: bool = False
    num_todo: int | None = field(default=None, compare=False)  # set by `my_todo`: unfinished jobs it found

    def __post_init__(self):
        for name in ("rank", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1 (the number of processes), got {self.world_size}.")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1} for world_size {self.world_size}, "
                             f"got {self.rank}.")

    @classmethod
    def from_launcher(cls) -> JobShard:
        """This process's rank from `accelerate.PartialState` (a plain process: rank 0 of 1)."""
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # the device choice of `training.loop`
        return cls(state.process_index, state.num_processes, distributed=state.num_processes > 1)

    @classmethod
    def resolve(cls, rank: int | None = None, world_size: int | None = None) -> JobShard:
        """`explicit(rank, world_size)` when both are given, `from_launcher()` when neither is."""
        if rank is None and world_size is None:
            return cls.from_launcher()
        if rank is None or world_size is None:
            raise ValueError(f"Give rank and world_size together (got rank={rank}, world_size={world_size}).")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"rank/world_size are for processes started without a launcher; this one runs under a "
                             f"launcher with WORLD_SIZE={os.environ['WORLD_SIZE']}, which sets them.")
        return cls(rank, world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def coordinated(self) -> bool:
        """One process, or ranks with a process group: the main process can act for all of them."""
        return self.distributed or self.world_size == 1

    @property
    def label(self) -> str:
        """The suffix " [rank k/N]" for progress bars ("" for one process)."""
        return f" [rank {self.rank}/{self.world_size}]" if self.world_size > 1 else ""

    def my_jobs(self, jobs: Sequence[T]) -> list[T]:
        """This rank's deterministic share: `jobs[rank::world_size]` (ranks' shares are disjoint and cover `jobs`)."""
        return list(jobs)[self.rank :: self.world_size]

    def wait_for_everyone(self) -> None:
        """A barrier across the ranks of a launch (a no-op for one process or ranks without a launcher)."""
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (a shared setup such as a pretrained base);
        ranks without a launcher run it at once and must guard shared writes themselves (`wait_lock`)."""
        if not self.distributed:
            yield
            return
        from accelerate import PartialState

        with PartialState().main_process_first():
            yield

    def my_todo(self, jobs: Sequence[T], output_of: Callable[[T], Path], done_file: str | None = None) -> list[T]:
        """This rank's share of the jobs whose output (`output_of(job)`, or its `done_file`) does not exist yet.

        First, what killed writers left beside those outputs is cleaned (`recover_outputs`): by the main process for
        every job when ranks are coordinated, by each rank for its own share otherwise. Coordinated ranks split the
        unfinished jobs (read by all before anyone writes, between two barriers), so a resumed launch shares the
        rest evenly; ranks without a launcher may run at different times, so they split the whole plan.
        """
        done = lambda job: (output_of(job) / done_file if done_file else output_of(job)).exists()  # noqa: E731
        if self.coordinated:
            if self.is_main:  # it holds the folder: it may also remove older builds' temporaries
                recover_outputs([output_of(j) for j in jobs], sweep=True)
            self.wait_for_everyone()
            todo = [j for j in jobs if not done(j)]
            self.wait_for_everyone()
            self.num_todo = len(todo)
            return self.my_jobs(todo)
        mine = self.my_jobs(jobs)
        recover_outputs([output_of(j) for j in mine])
        todo = [j for j in mine if not done(j)]
        self.num_todo = len(todo)
        return todo

    def merge(self, path: str | os.PathLike, build_manifest: Callable[[], dict], complete: Callable[[], bool], *,
              indent: int | None = None, settle_seconds: float = 60.0) -> dict | None:
        """After every rank finished its share, build the manifest once and write it atomically to `path`.

        Coordinated ranks: after a barrier, the main process merges (waiting up to `settle_seconds` for `complete()`,
        since a shared filesystem may show other machines' outputs late) and the others return None. Ranks without a
        launcher: the one that finds `complete()` true merges (the last to finish); the others return None.
        """
        self.wait_for_everyone()
        if self.coordinated:
            if not self.is_main:
                return None
            deadline = time.monotonic() + settle_seconds
            while self.distributed and not complete():
                if time.monotonic() > deadline:
                    print(f"warning: after {settle_seconds} s some outputs of other ranks are still not visible; "
                          f"{path} lists the finished ones (a rerun adds the rest).", file=sys.stderr)
                    break
                time.sleep(1.0)
        elif not complete():
            print(f"rank {self.rank} of {self.world_size}: share done; other ranks' jobs are unfinished, so the "
                  f"last rank to finish writes {path}.", file=sys.stderr)
            return None
        manifest = build_manifest()
        atomic_write_json(path, manifest, indent=indent)
        return manifest

    # ------------------------------------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def claim(self, output_dir: str | os.PathLike) -> Iterator[None]:
        """Hold `output_dir` for this build, or raise `OutputLocked` on every rank of it at once.

        One process, or the main process of a launch, holds the folder's own lock (`jobs.output_lock(output_dir)`,
        the lock of every other hf-paramgen command) and broadcasts the outcome, so the ranks of one launch never
        refuse each other while a second launch (or one-process build) into the folder is refused. Rank k of N
        without a launcher holds `.<name>.shard-k-of-N.lock` beside the folder; the same rank started twice is
        refused by that lock. Each kind also refuses to start while an incompatible one is held: the folder lock
        excludes every shard lock, and a shard lock excludes the folder lock and shard locks of another world size.
        """
        output_dir = Path(output_dir).absolute()
        if self.coordinated:
            error = None
            with contextlib.ExitStack() as stack:
                if self.is_main:
                    try:
                        stack.enter_context(output_lock(output_dir))
                        _refuse_if_held(output_dir, _shard_targets(output_dir))
                    except OutputLocked as err:
                        error = str(err)
                if self.distributed:
                    from accelerate.utils import broadcast_object_list

                    error = broadcast_object_list([error], from_process=0)[0]
                if error is not None:
                    raise OutputLocked(error)
                yield
            return
        with output_lock(_shard_target(output_dir, self.rank, self.world_size)):
            others = [t for t in _shard_targets(output_dir) if _shard_of(t)[1] != self.world_size]
            _refuse_if_held(output_dir, [output_dir, *others])
            yield


def _shard_target(output_dir: Path, rank: int, world_size: int) -> Path:
    """What `output_lock` locks for rank `rank` of `world_size` (its lock file: `.<name>.shard-k-of-N.lock`)."""
    return output_dir.parent / f"{output_dir.name}.shard-{rank}-of-{world_size}"


def _shard_of(target: Path) -> tuple[int, int] | None:
    """(rank, world size) of a shard lock target, None for the folder itself."""
    m = re.search(r"\.shard-(\d+)-of-(\d+)$", target.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _shard_targets(output_dir: Path) -> list[Path]:
    """Shard lock targets whose lock files exist beside `output_dir` (held, or left by a killed rank)."""
    pattern = re.compile(rf"\.{re.escape(output_dir.name)}\.(shard-\d+-of-\d+)\.lock")
    names = [m.group(1) for p in output_dir.parent.glob(".*.lock") if (m := pattern.fullmatch(p.name))]
    return [output_dir.parent / f"{output_dir.name}.{name}" for name in sorted(names)]


def _refuse_if_held(output_dir: Path, targets: list[Path], tries: int = 5) -> None:
    """Raise `OutputLocked` if another live build holds one of `targets`' locks. Each is probed by taking and
    releasing it; a probe can collide with another build's probe of the same lock, hence a few tries."""
    for target in targets:
        for attempt in range(tries):
            try:
                with output_lock(target):
                    break
            except OutputLocked as err:
                if attempt == tries - 1:
                    shard = _shard_of(target)
                    who = (f"rank {shard[0]} of {shard[1]} started without a launcher" if shard
                           else "one process or an accelerate launch")
                    pid = re.search(r"\(pid ([^,]+),", str(err))
                    raise OutputLocked(f"{output_dir} is being built by another run ({who}, pid "
                                       f"{pid.group(1) if pid else 'unknown'}, lock file "
                                       f"{target.parent / f'.{target.name}.lock'}); expected no other build of this "
                                       "folder: wait for it to finish, or choose another output folder.") from None
                time.sleep(0.05)


def recover_outputs(outputs: Sequence[os.PathLike], sweep: bool = False) -> None:
    """`jobs.recover_temporaries` for each of `outputs` that has temporaries beside it (one directory scan per
    parent folder, not one glob per output): what a killed writer of exactly these outputs left is cleaned up.
    `sweep`: also remove every other hidden entry in those folders (older builds' temporaries), for a process that
    owns the whole output folder."""
    by_parent: dict[Path, set[str]] = defaultdict(set)
    for output in map(Path, outputs):
        by_parent[output.parent].add(output.name)
    for parent, names in by_parent.items():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            hidden = [entry.path for entry in os.scandir(parent) if entry.name.startswith(".")]
            stale = {m.group(1) for path in hidden if (m := _TEMPORARY.fullmatch(Path(path).name))}
            for name in sorted(stale & names):
                recover_temporaries(parent / name)
            for path in hidden if sweep else []:
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def wait_lock(target: str | os.PathLike, poll_seconds: float = 0.5) -> Iterator[Path]:
    """`jobs.output_lock(target)`, waiting while another live process holds it (its owner finishes or dies: the
    kernel drops a dead owner's lock) instead of raising `OutputLocked`."""
    with contextlib.ExitStack() as stack:
        while True:
            try:
                path = stack.enter_context(output_lock(target))
                break
            except OutputLocked:
                time.sleep(poll_seconds)
        yield path

# ---------------------------------------------------------------------------------------------------- CLI
def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    """`--rank` and `--world_size`, for ranks started without a launcher."""
    group = parser.add_argument_group("sharding without a launcher (under `accelerate launch` the launcher sets them)")
    group.add_argument("--rank", type=int, default=None, help="this process's rank, 0..world_size-1")
    group.add_argument("--world_size", type=int, default=None, help="number of ranks sharing the output folder")


def check_build_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> JobShard:
    """A zoo build's `--num_workers` (>= 1) and `--limit` (>= 0 or unset) checked, then its `JobShard` (bad values:
    `parser.error`, exit status 2, before any work)."""
    if args.num_workers < 1:
        parser.error(f"--num_workers must be >= 1 (1: train in this process), got {args.num_workers}.")
    if args.limit is not None and args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}.")
    return shard_from_args(parser, args)


def shard_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> JobShard:
    """The `JobShard` of parsed `add_shard_arguments` options (bad ones: `parser.error`, exit status 2)."""
    try:
        return JobShard.resolve(args.rank, args.world_size)
    except ValueError as err:
        parser.error(f"--rank/--world_size: {err}")
