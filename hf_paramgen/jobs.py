"""Long jobs that share folders safely: one writer per output folder (`output_lock`), cleanup of what a killed run
left (`recover_temporaries`), and a full disk or a held lock turned into one clear error line (`clear_job_errors`).

Used by every command that writes an output folder (build-zoo, build-adapter-zoo, build-corpus, encode-corpus,
train-tokenizer, train-prior, generate) and by the training loop; standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import sys
from pathlib import Path

__all__ = ["OutputLocked", "output_lock", "recover_temporaries", "disk_full", "clear_job_errors"]


class OutputLocked(RuntimeError):
    """Another live process is writing the same output folder."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike):
    """Hold the lock of output `folder` (`<parent>/.<name>.lock`, which names the owner's pid) for the block, or
    raise `OutputLocked` at once. The lock is an `fcntl.flock`: the kernel drops it when its process dies, even by
    SIGKILL, so a dead writer's lock never blocks (where `fcntl` is missing, no lock is taken); the file is removed
    on release. Under the lock, what a killed run left beside `folder` is cleaned up: temporary siblings are removed,
    and a previous output that `replace_dir` had moved aside when the run died is put back."""
    folder = Path(folder).absolute()
    path = folder.parent / f".{folder.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(f"{folder} is being written by another process (pid {owner}, lock file {path}); "
                               "expected no other writer: wait for it to finish, or choose another output folder."
                               ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # else its owner removed the file as we opened it: lock the new one
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        recover_temporaries(folder)
        yield path
    finally:
        path.unlink(missing_ok=True)  # still locked: whoever opened this file meanwhile sees it gone and retries
        os.close(fd)


def recover_temporaries(target: str | os.PathLike) -> None:
    """Clean up what a killed writer of `target` left (call it only while no one writes `target`): its temporary
    siblings (`utils.temporary_sibling`) are removed, and when `target` is missing but `replace_dir` had moved a
    complete previous `target` aside, that one is put back."""
    target = Path(target)
    stale = {kind: sorted(target.parent.glob(f".{glob.escape(target.name)}.{kind}-????????"),
                          key=lambda p: p.stat().st_mtime) for kind in ("tmp", "old")}
    if stale["old"] and not target.exists():
        os.replace(stale["old"].pop(), target)
    for path in stale["tmp"] + stale["old"]:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def disk_full(err: BaseException | None) -> bool:
    """True when `err` (or an error it was raised from) is a full disk, a quota or a file-size limit."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return True
        if any(s in str(err) for s in ("No space left on device", "File too large", "Disk quota exceeded",
                                        "PytorchStreamWriter failed writing")):
            return True  # safetensors, pyarrow and torch.save wrap the OS error in their own type
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def clear_job_errors(prog: str, folder: str | os.PathLike):
    """Turn `OutputLocked` and a full disk into one `<prog>: error: ...` line on stderr and exit status 1."""
    try:
        yield
    except OutputLocked as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:
        if not disk_full(err):
            raise
        print(f"{prog}: error: the disk is full (or a file-size limit was hit) while writing {folder}: {err}. "
              "Expected room for the output: free space or choose another output folder, then run the same "
              "command again (finished parts are kept; nothing half-written is left under a final name).",
              file=sys.stderr)
        raise SystemExit(1) from None
