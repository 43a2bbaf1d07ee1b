"""Fault drill: SIGKILL each long hf_paramgen job at seeded random moments, resume it, and check the result.

    python examples/fault_drill.py --json drill.json        # about 8 minutes on 2 CPU cores

Every job runs on a tiny config as a subprocess (its whole process tree is killed; "resume" = the same command
again): `build-zoo` (tiny-generalise), `build-adapter-zoo` (mnist-mlp, tiny), `build-corpus`
(--overwrite), `train-tokenizer`, `train-prior` (one process, and two under `accelerate launch`), `generate
--output_dir`, and `hub_scripts/push_generator.py` to a loopback Hub emulator (`tests/hub_emulator.py`). Each job
first runs uninterrupted (the reference, and its duration D); then it is killed at moments drawn uniformly in
(0, D) and resumed until it finishes, in fresh episodes until it has taken its share of the kills. After every
kill: no file under a final name is partial (safetensors, JSON, JSONL, Arrow, cards, zip/pickle states all parse;
unit folders are whole) and no finished unit (checkpoint, adapter, corpus, generator, pushed file) was lost or
changed. After each episode's last run: nothing lost or duplicated (manifest entries, corpus rows, log steps,
checkpoints, repo files), and the artefacts equal the reference's: byte for byte where the job is deterministic
(timings and paths masked), the same final metrics within noise for training (bit-identity reported beside).
Then two writers into one folder at once (one must get the lock error, never interleaved output) and a full disk
(`RLIMIT_FSIZE`: a clear one-line error, no corrupt output, and the same command finishes once there is room).

The jobs run a copy of the package taken when the drill starts (`outputs/fault_drill/source`), so edits made to the
working tree meanwhile cannot show up as differences. Artefacts stay under `outputs/fault_drill/` (references,
episodes, run logs, the Hub storage, `drill.json`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "outputs" / "fault_drill"
MARKER = ".fault_drill"  # a root holding it may be wiped by the next drill
KEYS = ("kills", "resumes_ok", "lost", "duplicated", "partial_files_visible")
TIMINGS = r"train_seconds|seconds_to_train_adapter|this_run_seconds|zoo_build_seconds|num_trained_this_run|elapsed_s"
VOLATILE = re.compile(rf'("?)({TIMINGS}|batches_seen|seconds)\1(\s*):\s*"?[-0-9.eE+]+"?')  # JSON and YAML
VOLATILE_ROW = re.compile(rf"\| ({TIMINGS}) \| [-0-9.eE+]+ \|")  # a card's table row
FINGERPRINT = re.compile(r'"_fingerprint": "[0-9a-f]+"')


def log(msg: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """One long job: `argv(out)` writes output `out` (a folder; for "push" its name is the repo's); `kind` picks
    the checks; `kills` is its share of the kills; `limit_s` the longest a run may take."""

    name: str
    kind: str
    argv: object
    kills: int
    limit_s: float = 300.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_paramgen.cli", *map(str, args)]


TOKENIZER_ARGS = ("--chunk_size", "16", "--hidden_size", "16", "--num_layers", "1", "--codebook_size", "16",
                  "--num_quantizers", "1", "--max_chunks_per_tensor", "64", "--batch_size", "32", "--max_steps", "16",
                  "--log_every", "4", "--save_every", "4", "--eval_batches", "1")
PRIOR_ARGS = ("--text_encoder", "hashing:32", "--sample_datasets", "mnist", "--hidden_size", "32", "--num_layers", "1",
              "--num_heads", "2", "--batch_size", "1", "--max_steps", "16", "--warmup_steps", "2", "--log_every", "4",
              "--save_every", "4", "--eval_every", "4")
LAUNCH_2 = ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_paramgen.cli")


def make_jobs(ref: Path, quick: bool = False) -> dict[str, Job]:
    """The drill's jobs; later ones read the references of earlier ones (`ref/<job>`)."""
    zoo_extra = ("--num_workers", "1", *(("--limit", "2") if quick else ()))
    corpus, tokenizer, generator = ref / "corpus", ref / "tokenizer", ref / "prior" / "generator"
    prior = ("--corpus", corpus, "--param_tokenizer", tokenizer, *PRIOR_ARGS)
    jobs = [
        Job("zoo", "zoo", lambda o: cli("build-zoo", "--output_dir", o, "--preset", "tiny-generalise", *zoo_extra),
            6),
        Job("adapter_zoo", "adapters", lambda o: cli("build-adapter-zoo", "--base", "mnist-mlp", "--output_dir", o,
                                                     "--preset", "tiny"), 4),
        Job("corpus", "corpus", lambda o: cli("build-corpus", "--zoo_dir", ref / "zoo", "--output_dir", o,
                                              "--chunk_size", "16", "--overwrite"), 5),
        Job("tokenizer", "training", lambda o: cli("train-tokenizer", "--corpus", corpus, "--output_dir", o,
                                                   *TOKENIZER_ARGS), 4),
        Job("prior", "prior", lambda o: cli("train-prior", "--output_dir", o / "generator", *prior), 4),
        Job("prior_2proc", "prior", lambda o: [sys.executable, *LAUNCH_2, "train-prior", "--output_dir",
                                               str(o / "generator"), *map(str, prior)], 3),
        Job("generate", "generate", lambda o: cli("generate", "--generator", generator, "--classes", "3,7,1,0",
                                                  "--architecture", "mlp-p4-16", "--num_candidates", "2", "--seed",
                                                  "0", "--output_dir", o / "net"), 3),
        Job("push", "push", lambda o: [sys.executable, str(REPO / "hub_scripts" / "push_generator.py"), "--generator",
                                       str(generator), "--repo_id", f"drill/{o.name}"], 4),
    ]
    return {job.name: job for job in jobs}


# ------------------------------------------------------------------------------------------------ processes
def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc): accelerate's workers start their own sessions."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and all its descendants: each is stopped first (SIGSTOP) until the tree stops growing, so no
    child started meanwhile escapes; then all are killed and `proc` is reaped."""
    stopped: list[int] = []
    while new := [p for p in descendants(proc.pid) if p not in stopped]:
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped += new
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10  # the others are reaped by their own parents or init: wait until none runs
    while time.time() < deadline and any(_running(p) for p in stopped[1:]):
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:  # a zombie ("Z") holds no files any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run(argv: list[str], env: dict, log_file: Path, kill_after: float | None = None, limit_s: float = 300.0,
        fsize: int | None = None, cwd: Path = REPO) -> dict:
    """Run `argv` in `cwd`; SIGKILL its tree after `kill_after` s if it still runs (with every file capped at `fsize`
    bytes if given). Returns rc, killed, hung, seconds and the output."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    start = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509
        deadline = start + (kill_after if kill_after is not None else limit_s)
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.02)
        killed = proc.poll() is None
        if killed:
            kill_tree(proc)
    seconds = time.perf_counter() - start
    hung = killed and kill_after is None
    text = log_file.read_text(errors="replace")
    return {"rc": proc.returncode, "killed": killed and not hung, "hung": hung, "seconds": seconds, "log": text}


# ------------------------------------------------------------------------------------------------ checks
def visible_files(folder: Path) -> list[Path]:
    """Files under `folder` whose path has no hidden part (temporary names and locks are hidden), less the
    `cache-*.arrow` files that `datasets` writes beside a corpus its readers filter (no part of what a job built)."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts) and not re.fullmatch(r"cache-.*\.arrow", p.name))


def file_problem(path: Path) -> str | None:
    """Why `path` is not a whole file of its type (None if it is)."""
    try:
        name, data = path.name, path.read_bytes()
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        elif name.endswith(".jsonl"):
            if data and not data.endswith(b"\n"):
                return "last line cut short"
            for line in data.decode().splitlines():
                json.loads(line)
        elif name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".arrow"):
            import pyarrow as pa

            pa.ipc.open_stream(data).read_all()
        elif name.endswith(".md") and data.startswith(b"---"):
            import yaml

            head = data.decode().split("\n---\n")
            if len(head) < 2:
                return "card front matter not closed"
            yaml.safe_load(head[0][3:])
        elif name.endswith((".bin", ".pkl", ".pt")):
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    if z.testzip() is not None:
                        return "zip member corrupt"
            elif not data.endswith(b"."):
                return "pickle without its STOP opcode"
        elif name.endswith(".py"):
            ast.parse(data, str(path))  # syntax only: nothing runs
    except Exception as err:  # noqa: BLE001  (any parse failure is the finding)
        return f"{type(err).__name__}: {str(err)[:120]}"
    return None


UNIT_FILES = {"zoo": ("config.json", "model.safetensors", "param_layout.json", "README.md"),
              "adapters": ("adapter_config.json", "adapter_model.safetensors", "adapter_info.json", "README.md")}


def unit_dirs(kind: str, out: Path) -> dict[str, Path]:
    """The finished-or-not unit folders of an output, by name."""
    if kind == "zoo":
        return {str(p.relative_to(out)): p for p in out.glob("checkpoints/*/*") if not p.name.startswith(".")}
    if kind == "adapters":
        return {str(p.relative_to(out)): p for p in out.glob("adapters/*") if not p.name.startswith(".")}
    if kind in ("training", "prior"):
        root = out if kind == "training" else out / "generator-work" / "training"
        return {f"step {json.loads((p / 'trainer_state.json').read_text())['step']}" if (
            p / "trainer_state.json").is_file() else p.name: p for p in (root / "checkpoints").glob("checkpoint_*")}
    return {}


def partial_files(kind: str, out: Path) -> list[str]:
    """Files under final names that are cut short or corrupt, and unit folders missing a part."""
    found = [f"{p.relative_to(out)}: {why}" for p in visible_files(out) if (why := file_problem(p))]
    for name, folder in unit_dirs(kind, out).items():
        need = UNIT_FILES.get(kind, ("trainer_state.json", "model/config.json"))
        found += [f"{name}: no {f}" for f in need if not (folder / f).is_file()]
    generator = out / "generator" if kind == "prior" else None
    if generator is not None and generator.exists():
        found += [f"generator: no {f}" for f in ("config.json", "model.safetensors",
                                                  "param_tokenizer/model.safetensors") if not (generator / f).is_file()]
    if kind == "corpus" and out.exists():
        found += corpus_problems(out)
    return found


def corpus_problems(out: Path) -> list[str]:
    try:
        from datasets import load_from_disk

        corpus = load_from_disk(str(out))
        expected = json.loads((out / "corpus_config.json").read_text())["num_models"]
        return [] if len(corpus["models"]) == expected else [f"{len(corpus['models'])} models, config {expected}"]
    except Exception as err:  # noqa: BLE001
        return [f"corpus does not load: {type(err).__name__}: {str(err)[:120]}"]


def units(kind: str, out: Path) -> dict[str, str]:
    """Finished units of an output and a digest each: what must never be lost or change once there."""
    import hashlib

    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()[:16]  # noqa: E731
    if kind in ("zoo", "adapters"):
        weights = UNIT_FILES[kind][1]
        return {n: digest(p / weights) for n, p in unit_dirs(kind, out).items() if (p / UNIT_FILES[kind][2]).is_file()
                and (p / UNIT_FILES[kind][3]).is_file()}
    if kind in ("training", "prior"):
        steps = [int(n.split()[1]) for n in unit_dirs(kind, out) if n.startswith("step ")]
        return {"latest checkpoint": str(max(steps))} if steps else {}
    if kind == "corpus":  # a corpus that `replace_dir` had moved aside when killed is put back by the next run
        aside = any((p / "dataset_dict.json").is_file() for p in out.parent.glob(f".{out.name}.old-*"))
        return {"corpus": "whole"} if (out / "dataset_dict.json").is_file() or aside else {}
    if kind == "generate":
        net = out / "net" / "model.safetensors"
        return {"net": digest(net)} if net.is_file() else {}
    return {}


def masked(text: str, *folders: Path) -> str:
    """`text` with timings, dataset fingerprints and the output folders' paths masked."""
    for folder in folders:
        text = text.replace(str(folder), "<out>")
    text = VOLATILE_ROW.sub(r"| \1 | - |", re.sub(r"Built in [0-9.]+ s", "Built in - s", text))
    return FINGERPRINT.sub('"_fingerprint": "-"', VOLATILE.sub(r"\1\2\1\3: -", text))


def log_records(folder: Path) -> list[dict]:
    path = folder / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def duplicates(kind: str, out: Path) -> list[str]:
    """Entries present twice: manifest entries, corpus rows, training log steps."""
    from collections import Counter

    ids: list = []
    if kind in ("zoo", "adapters") and (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        ids = [e["path"] for e in manifest["checkpoints"]] + [f"task {a['task_id']}/{a['seed']}" for a in
                                                                manifest.get("adapters", [])]
    elif kind == "corpus" and (out / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        corpus = load_from_disk(str(out))
        chunks = corpus["chunks"].select_columns(["model_id", "chunk_index"]).to_list()
        ids = list(corpus["models"]["model_id"]) + [(r["model_id"], r["chunk_index"]) for r in chunks]
    elif kind in ("training", "prior"):
        root = out if kind == "training" else out / "generator-work" / "training"
        ids = [f"log step {r['step']}" for r in log_records(root)] + list(unit_dirs(kind, out))
    return [f"{k} x{n}" for k, n in Counter(map(str, ids)).items() if n > 1]


def compare(kind: str, ref: Path, out: Path) -> dict:
    """Lost / extra files against the reference, and equality (bytes, masked text, or training metrics)."""
    ref_files = {str(p.relative_to(ref)) for p in visible_files(ref)}
    out_files = {str(p.relative_to(out)) for p in visible_files(out)}
    lost, extra = sorted(ref_files - out_files), sorted(out_files - ref_files)
    training = kind in ("training", "prior")
    weights = lambda f: f.endswith((".safetensors", ".bin", ".pkl")) or f.endswith("log.jsonl")  # noqa: E731
    differ = []
    for f in sorted(ref_files & out_files):
        a, b = (ref / f).read_bytes(), (out / f).read_bytes()
        if a == b or (training and weights(f)):
            continue
        try:
            if masked(a.decode(), ref) == masked(b.decode(), out):
                continue
        except UnicodeDecodeError:
            pass
        differ.append(f)
    result = {"lost": lost, "extra": extra, "differ": differ}
    if training:
        root = lambda d: d if kind == "training" else d / "generator-work" / "training"  # noqa: E731
        a, b = log_records(root(ref)), log_records(root(out))
        result["lost"] += [f"log step {r['step']}" for r in a if r["step"] not in {s["step"] for s in b}]
        metrics = [k for k in ("loss", "eval_loss") if a and k in a[-1]]
        gaps = {k: abs(a[-1][k] - b[-1][k]) / max(abs(a[-1][k]), 1e-6) for k in metrics if b and k in b[-1]}
        result["metric_relative_gaps"] = gaps
        result["metrics_equal"] = bool(gaps) and len(gaps) == len(metrics) and max(gaps.values()) <= 0.02
        result["bit_identical"] = all((ref / f).read_bytes() == (out / f).read_bytes()
                                      for f in sorted(ref_files & out_files) if f.endswith(".safetensors"))
    result["equal"] = not (lost or extra or differ) and result.get("metrics_equal", True)
    return result


# ------------------------------------------------------------------------------------------------ the Hub job
class Hub:
    """The loopback Hub emulator (a thread of this process) and the checks of a pushed repo."""

    def __init__(self, storage: Path):
        sys.path.insert(0, str(REPO / "tests"))
        from hub_emulator import start_hub_emulator

        self.url, self.stop = start_hub_emulator(storage, port=0)

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Path -> content of the repo's main head ({} when the repo does not exist)."""
        from urllib.error import HTTPError
        from urllib.request import urlopen

        try:
            with urlopen(f"{self.url}/api/models/{repo_id}/tree/main?recursive=true", timeout=60) as r:
                paths = [e["path"] for e in json.loads(r.read()) if e["type"] == "file"]
        except HTTPError:
            return {}
        out = {}
        for path in paths:
            with urlopen(f"{self.url}/{repo_id}/resolve/main/{path}", timeout=60) as r:
                out[path] = r.read()
        return out

    @staticmethod
    def normal(path: str, data: bytes, repo_id: str) -> bytes:
        if path == "config.json":  # the pin names this repo and its first commit
            config = json.loads(data)
            config.pop("param_tokenizer_repo_id", None), config.pop("param_tokenizer_revision", None)
            return json.dumps(config, sort_keys=True).encode()
        return re.sub(rb"[0-9a-f]{40}", b"<sha>", data.replace(repo_id.encode(), b"<repo>"))

    def check(self, repo_id: str, ref_id: str, final: bool) -> dict:
        """Files of `repo_id` unlike the reference's (partial), missing (lost, when `final`) or extra."""
        ref, got = self.files(ref_id), self.files(repo_id)
        partial = [p for p in got if p in ref and self.normal(p, got[p], repo_id) != self.normal(p, ref[p], ref_id)]
        return {"partial": partial, "lost": sorted(set(ref) - set(got)) if final else [],
                "extra": sorted(set(got) - set(ref)), "units": {p: "there" for p in got}}


# ------------------------------------------------------------------------------------------------ the drill
class Drill:
    """References, kill episodes, two writers and a full disk, all under `root`."""

    def __init__(self, root: Path, seed: int = 0, quick: bool = False):
        self.root, self.rng = root, random.Random(seed)
        self.ref, self.logs = root / "ref", root / "logs"
        self.jobs = make_jobs(self.ref, quick)
        self.hub = None
        source = root / "source"  # the package as it was when the drill began: edits made meanwhile cannot differ
        shutil.copytree(REPO / "hf_paramgen", source / "hf_paramgen", ignore=shutil.ignore_patterns("__pycache__"))
        self.env = {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_DISABLE_XET": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
                    "PYTHONPATH": os.pathsep.join([str(source), str(REPO), os.environ.get("PYTHONPATH", "")])}
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
            self.env.pop(name, None)
        self.durations: dict[str, float] = {}
        self.runs = 0

    def start_hub(self) -> None:
        if self.hub is None:
            self.hub = Hub(self.root / "hub")
            self.env["HF_ENDPOINT"] = self.hub.url

    def run(self, job: Job, out: Path, tag: str, **kwargs) -> dict:
        self.runs += 1
        env = {**self.env, "OMP_NUM_THREADS": "1"} if job.name == "prior_2proc" else self.env
        return run(job.argv(out), env, self.logs / f"{job.name}-{self.runs:03d}-{tag}.log",
                   limit_s=job.limit_s, cwd=self.root, **kwargs)  # not the repo: its package would shadow the copy

    # -------------------------------------------------------------------- checks of one output
    def state(self, job: Job, out: Path, final: bool) -> dict:
        """partial / lost / extra / units of `out` (a folder, or the repo `drill/<out.name>` for push)."""
        if job.kind == "push":
            return self.hub.check(f"drill/{out.name}", "drill/ref", final)
        state = {"partial": partial_files(job.kind, out), "units": units(job.kind, out), "lost": [], "extra": []}
        if final:
            state.update(compare(job.kind, self.ref / job.name, out))
        return state

    def reference(self, job: Job) -> None:
        out = self.ref / job.name if job.kind != "push" else self.ref / "push" / "ref"  # the repo drill/ref
        if job.kind == "push":
            self.start_hub()
        result = self.run(job, out, "reference")
        if result["rc"] != 0:
            raise SystemExit(f"fault_drill: the uninterrupted {job.name} run failed (rc {result['rc']}):\n"
                             f"{result['log'][-3000:]}")
        self.durations[job.name] = result["seconds"]
        log(f"{job.name}: reference in {result['seconds']:.1f} s")

    def episode_out(self, job: Job, k: int) -> Path:
        return self.root / "drill" / job.name / f"episode{k}"

    def kill_job(self, job: Job) -> dict:
        """Kill `job` `job.kills` times over fresh episodes, resuming each until it finishes; check every state."""
        stats = {**dict.fromkeys(KEYS, 0), "resumes": 0, "episodes": 0, "episodes_equal": 0, "bit_identical": None,
                 "failures": [], "findings": []}
        duration = self.durations[job.name]
        while stats["kills"] < job.kills and stats["episodes"] < 2 * job.kills + 3:
            out, k = self.episode_out(job, stats["episodes"]), stats["episodes"]
            stats["episodes"] += 1
            shutil.rmtree(out, ignore_errors=True)
            seen: dict[str, str] = {}
            resumed, ok_resumes, failed = 0, 0, False
            while True:
                t = self.rng.uniform(0.0, duration) if stats["kills"] < job.kills else None
                result = self.run(job, out, f"ep{k}" + (f"-kill{t:.2f}s" if t is not None else "-final"),
                                  kill_after=t)
                if resumed:
                    ok_resumes += result["killed"] or result["rc"] == 0
                elif result["rc"] == 0:  # a fresh run that ended before its kill: an uninterrupted duration too
                    duration = min(duration, result["seconds"])
                if result["rc"] != 0 and not result["killed"]:
                    failed = True
                    stats["failures"].append(result["log"][-1500:])
                    break
                state = self.state(job, out, final=not result["killed"])
                lost_units = [u for u, d in seen.items() if state["units"].get(u, d) != d and not (
                    u == "latest checkpoint" and int(state["units"].get(u, -1)) >= int(d))]
                lost_units += [u for u in seen if u not in state["units"]]
                stats["partial_files_visible"] += len(state["partial"])
                stats["lost"] += len(set(lost_units))
                stats["findings"] += [f"ep{k}: partial {p}" for p in state["partial"]]
                stats["findings"] += [f"ep{k}: lost {u}" for u in set(lost_units)]
                seen = state["units"]
                if not result["killed"]:
                    break
                stats["kills"] += 1
                resumed += 1
            stats["resumes"] += resumed
            if failed:
                continue
            dup = duplicates(job.kind, out) if job.kind != "push" else []
            stats["duplicated"] += len(dup) + len(state["extra"])
            stats["lost"] += len(state["lost"])
            equal = not (state["partial"] or state["lost"] or state["extra"] or dup or state.get("differ")) and (
                state.get("equal", True))
            stats["episodes_equal"] += equal
            if "bit_identical" in state:
                stats["bit_identical"] = bool(state["bit_identical"]) and stats["bit_identical"] is not False
                stats["metric_relative_gaps"] = state.get("metric_relative_gaps")
            stats["findings"] += [f"ep{k}: {what} {x}" for what in ("lost", "extra", "differ") for x in state.get(
                what, [])] + [f"ep{k}: duplicated {d}" for d in dup]
            stats["resumes_ok"] += ok_resumes if equal else 0
            log(f"{job.name}: episode {k}: {resumed} kills, final equal={equal}")
        stats["final_equal_to_uninterrupted"] = stats["episodes_equal"] == stats["episodes"] and not stats["failures"]
        return stats

    # -------------------------------------------------------------------- two writers, full disk
    def concurrent(self, job: Job) -> dict:
        """Two identical runs into one folder at once: no interleaving (the loser gets the lock error), and the
        output equals the reference."""
        out = self.root / "concurrent" / job.name
        shutil.rmtree(out, ignore_errors=True)
        argv, logs = job.argv(out), [self.logs / f"{job.name}-concurrent-{i}.log" for i in (0, 1)]
        procs = []
        for path in logs:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                procs.append(subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=f, stderr=subprocess.STDOUT))
        rcs = [p.wait(timeout=job.limit_s) for p in procs]
        texts = [p.read_text(errors="replace") for p in logs]
        locked = [rc == 1 and "being written by another process" in t for rc, t in zip(rcs, texts, strict=True)]
        state = self.state(job, out, final=True)
        ok = (sorted(rcs) == [0, 0] or (0 in rcs and any(locked))) and not state["partial"] and state["equal"]
        return {"ok": bool(ok), "return_codes": rcs, "lock_error": any(locked), "equal": state["equal"],
                "partial": state["partial"], "differ": state.get("differ", []),
                "message": next((t.strip().splitlines()[-1] for t, lk in zip(texts, locked, strict=True) if lk), None)}

    def disk_full(self, job: Job, fsize: int, resume: bool = True) -> dict:
        """The job with every file capped at `fsize` bytes: a clear one-line error, nothing corrupt under a final
        name; then (if `resume`) the same command with room finishes and equals the reference."""
        out = self.root / "disk_full" / job.name
        shutil.rmtree(out, ignore_errors=True)
        full = self.run(job, out, "disk-full", fsize=fsize)
        last = next((line[line.rfind("hf-paramgen"):] for line in full["log"].splitlines()
                     if ": error: the disk is full" in line), "")  # (after a progress bar's carriage return)
        clear = full["rc"] == 1 and bool(last) and "Traceback" not in full["log"]
        partial = partial_files(job.kind, out)
        resumed_equal = None
        if resume:
            again = self.run(job, out, "after-disk-full")
            state = self.state(job, out, final=True) if again["rc"] == 0 else None
            resumed_equal = bool(state and state["equal"] and not state["partial"])
        ok = clear and not partial and resumed_equal is not False
        return {"ok": bool(ok), "file_size_limit_bytes": fsize, "return_code": full["rc"], "clear_error": clear,
                "error_line": last[:400], "partial": partial, "resumed_equal": resumed_equal}


NEEDS = {"corpus": ("zoo",), "tokenizer": ("corpus",), "prior": ("tokenizer",), "prior_2proc": ("tokenizer",),
         "generate": ("prior",), "push": ("prior",)}  # whose reference each job reads
FSIZE = {"zoo": 2048, "corpus": 32 * 1024, "tokenizer": 8 * 1024, "generate": 2048}


def table(report: dict) -> str:
    cols = (*KEYS, "final_equal_to_uninterrupted")
    lines = [f"{'job':<12} " + " ".join(f"{c[:22]:>22}" for c in cols)]
    for name, stats in report["jobs"].items():
        lines.append(f"{name:<12} " + " ".join(f"{str(stats[c]):>22}" for c in cols))
    lines.append(f"{'total':<12} " + " ".join(f"{str(report[c]):>22}" for c in cols))
    lines.append(f"concurrent_writers_ok={report['concurrent_writers_ok']}  disk_full_ok={report['disk_full_ok']}  "
                 f"wall_seconds={report['wall_seconds']}")
    return "\n".join(lines)


def run_drill(root: Path = ROOT, seed: int = 0, jobs: list[str] | None = None, kills: dict | None = None,
              concurrent: list[str] | None = None, disk_full: list[str] | None = None, quick: bool = False) -> dict:
    """The whole drill (or the named parts); returns the report (see the module docstring)."""
    start = time.perf_counter()
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise SystemExit(f"fault_drill: {root} is not empty and holds no {MARKER}: expected a fresh folder or an "
                         "earlier drill's; choose another --root.")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by examples/fault_drill.py; removed by its next run\n")
    drill = Drill(root, seed, quick)
    names = jobs or list(drill.jobs)
    concurrent = ["zoo", "corpus", "tokenizer"] if concurrent is None else concurrent
    disk_full = list(FSIZE) if disk_full is None else disk_full
    needed = {*names, *concurrent, *disk_full}
    for name in reversed(list(drill.jobs)):  # the references a job reads come first
        if name in needed:
            needed |= set(NEEDS.get(name, ()))
    needed = [n for n in drill.jobs if n in needed]
    try:
        for name in needed:
            drill.reference(drill.jobs[name])
        per_job = {}
        for name in names:
            job = drill.jobs[name]
            job.kills = (kills or {}).get(name, job.kills)
            per_job[name] = drill.kill_job(job)
            log(f"{name}: " + ", ".join(f"{k}={per_job[name][k]}" for k in (*KEYS, "final_equal_to_uninterrupted")))
        conc = {n: drill.concurrent(drill.jobs[n]) for n in concurrent}
        full = {n: drill.disk_full(drill.jobs[n], FSIZE[n]) for n in disk_full}
    finally:
        if drill.hub is not None:
            drill.hub.stop()
    report = {"seed": seed, "jobs": per_job,
              **{k: sum(s[k] for s in per_job.values()) for k in KEYS},
              "final_equal_to_uninterrupted": all(s["final_equal_to_uninterrupted"] for s in per_job.values()),
              "concurrent_writers_ok": all(c["ok"] for c in conc.values()), "concurrent_writers": conc,
              "disk_full_ok": all(f["ok"] for f in full.values()), "disk_full": full,
              "reference_seconds": {k: round(v, 2) for k, v in drill.durations.items()},
              "wall_seconds": round(time.perf_counter() - start, 1), "cpu_count": os.cpu_count()}
    return report


def main(argv: list[str] | None = None) -> int:
    from hf_paramgen.utils import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="also write the report here (it always goes to outputs/fault_drill)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", nargs="+", default=None, help="only these jobs (default: all)")
    p.add_argument("--root", default=str(ROOT))
    args = p.parse_args(argv)
    report = run_drill(Path(args.root), args.seed, args.jobs,
                       concurrent=None if args.jobs is None else [j for j in ("zoo", "corpus", "tokenizer")
                                                                   if j in args.jobs],
                       disk_full=None if args.jobs is None else [j for j in FSIZE if j in args.jobs])
    report["command"] = "python examples/fault_drill.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(table(report))
    atomic_write_json(Path(args.root) / "drill.json", report)
    if args.json:
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
