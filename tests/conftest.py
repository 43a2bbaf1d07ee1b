"""Shared pytest fixtures.

Hugging Face environment: `huggingface_hub`, `datasets` and `transformers` read their environment
variables once, at import. This file is imported by pytest before any test module, so it sets them
here, at import time, for the whole session (and every subprocess started with `os.environ`):

* `HF_ENDPOINT`        http://127.0.0.1:<free port>; the `hub_endpoint` fixture serves the Hub
                        emulator (`hub_emulator`) there. Until a test requests it, Hub
                        calls fail fast with "connection refused": no test can reach a real Hub.
* `HF_HOME`            a fresh temporary folder (model/dataset caches, no token), removed at exit.
* `HF_HUB_DISABLE_XET=1`, `HF_HUB_DISABLE_TELEMETRY=1`; `HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE`,
  `HF_DATASETS_OFFLINE`, `HF_TOKEN` are removed (a test that wants offline mode runs a subprocess
  with `run_python(..., env={"HF_HUB_OFFLINE": "1"})`).

Fixtures:
    hub_endpoint (session)  URL of the running Hub emulator (== HF_ENDPOINT).
    hub_repo_id (function)  a fresh "tester/<test-name>-<8 hex>" repo id (not created).
    hf_home (session)       Path of HF_HOME.
    run_python (session)    run `python -c code` in a subprocess with this environment (+ overrides).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
HF_HOME = Path(tempfile.mkdtemp(prefix="hf_paramgen-tests-hf-home-"))
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE"):
    os.environ.pop(_name, None)
os.environ.update(HF_ENDPOINT=HUB_URL, HF_HOME=str(HF_HOME), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                  HF_HUB_ETAG_TIMEOUT="60", HF_HUB_DOWNLOAD_TIMEOUT="60")  # a loaded 2-core CI machine is slow


@pytest.fixture(scope="session")
def hf_home() -> Path:
    """HF_HOME of this test session (the hub cache is `hf_home / "hub"`)."""
    return HF_HOME


@pytest.fixture(scope="session")
def hub_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """Start the Hub emulator on HF_ENDPOINT for the session; yields its URL."""
    from huggingface_hub import constants

    if constants.ENDPOINT != HUB_URL:
        pytest.fail(f"huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT: it uses "
                    f"{constants.ENDPOINT!r}, expected {HUB_URL!r}. Remove the early import (e.g. a pytest plugin).")
    from hub_emulator import start_hub_emulator

    try:
        url, stop = start_hub_emulator(tmp_path_factory.mktemp("hub_emulator"), port=HUB_PORT)
    except OSError as err:  # the port picked at import was taken since: rerun the session
        pytest.fail(f"Hub emulator could not listen on {HUB_URL} ({err}); HF_ENDPOINT is fixed at import, rerun.")
    yield url
    stop()


@pytest.fixture
def hub_repo_id(hub_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A repo id no other test uses, e.g. "tester/test_push-1a2b3c4d" (create it yourself)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-.")
    return f"tester/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def run_python():
    """`run_python(code, env=None, timeout=120)`: run `python -c code` with the session's HF environment.

    `env` entries override (a value of None removes the variable). Returns the CompletedProcess
    (text mode, stdout/stderr captured); it does not raise on a non-zero exit code.
    """

    def run(code: str, env: dict[str, str | None] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture(scope="session")
def stock_tiny_zoo(tmp_path_factory):
    """`(folder, manifest)` of a tiny stock-class adapter zoo (3 adapters of 3 steps), shared by the stock tests."""
    import torch

    from hf_paramgen.research.adapter_zoo_stock import build_stock_adapter_zoo
    from hf_paramgen.research.sharding import JobShard

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("stock") / "zoo"
        return out, build_stock_adapter_zoo(out, "tiny", shard=JobShard())
    finally:
        torch.set_num_threads(threads)
