"""The bad-input sweep (`examples/fuzz_inputs.py`): a fast draw of ~30 inputs across every entry-point family in the
default suite, the whole sweep (>= 300 inputs and the load check) marked slow; and threads sharing one pipeline
object get, bit for bit, what serial calls with the same seeds get."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fuzz_inputs  # noqa: E402

NOT_ALLOWED = ("unclear_error", "crash", "hang", "leftover_files", "wrong_result")
FAMILIES = ("pipeline", "ParamGenerator.generate", "generator", "build_corpus", "corpus", "cli")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_inputs")


def _failures(report: dict) -> list[str]:
    return [f"{r['outcome']}: {r['entry']} | {r['input']} | {r['message'][:300]}" for r in report["inputs"]
            if r["outcome"] in NOT_ALLOWED]


def test_a_quick_draw_over_every_entry_point_ends_in_clear_errors_or_correct_results(work_dir):
    report = fuzz_inputs.run_sweep(work_dir, seed=0, quick=True, load=False)
    entries = {r["entry"] for r in report["inputs"]}
    assert report["inputs_tried"] >= 25
    assert all(any(e.startswith(family) for e in entries) for family in FAMILIES), entries
    assert not _failures(report), "\n".join(_failures(report))
    assert report["clear_errors"] > 0 and report["correct_results"] > 0


def test_threads_sharing_one_pipeline_get_the_serial_results(work_dir):
    fuzz_inputs.prepare(work_dir)  # the tiny generator (a no-op when the sweep above built it)
    result = fuzz_inputs.load_check(work_dir, batch=6, threads=4, calls_per_thread=1)
    assert result["thread_errors"] == []
    assert result["batch_identical"] and result["threads_identical"], result


@pytest.mark.slow
def test_the_full_sweep_has_no_unclear_error_crash_hang_or_leftover(tmp_path):
    report = fuzz_inputs.run_sweep(tmp_path, seed=0)
    assert report["inputs_tried"] >= 300
    assert not _failures(report), "\n".join(_failures(report))
    assert report["concurrent_pipeline_identical"] and report["unsafe_calls_unreviewed"] == 0
