"""Security: nothing unpickles or runs code it was not told to trust, and no user-given name leads a write outside
the folder or cache it belongs to.

* An `ast` scan of the package, `examples/` and `hub_scripts/` lists every call or use of `torch.load`, the pickle
  family (`pickle`, `cPickle`, `_pickle`, `joblib`, `dill`, `shelve`, `marshal`), `eval`, `exec`, `compile`,
  `subprocess`, `os.system`/`os.popen`/`os.exec*`/`os.spawn*`, dynamic imports, `trust_remote_code` and
  `allow_pickle`. Each must be on `REVIEWED` (file, name) -> (count, reason); a new one fails, and so does a listed
  one that disappeared (the list stays true). `unreviewed_unsafe_uses()` is what `examples/fuzz_inputs.py` reports.
* Every `torch.load` (tests included) passes `weights_only=True`; the package never sets `trust_remote_code=True`.
* The loopback Hub emulator binds 127.0.0.1 only, answers path traversal with 4xx and large bodies with 413.
* Repo ids, revisions, subfolders and sample-encoder names from users or configs are checked before they become paths.
"""

from __future__ import annotations

import ast
import http.client
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("hf_paramgen", "examples", "hub_scripts")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "shelve", "marshal"}
OS_EXEC = {"system", "popen", "execv", "execve", "execl", "execlp", "execvp", "execvpe", "spawnv", "spawnl",
           "spawnve", "spawnle", "startfile"}
KEYWORDS = {"trust_remote_code", "allow_pickle"}

# (file relative to the repo root, name) -> (count, why it is safe). Review a new entry before adding it.
REVIEWED: dict[tuple[str, str], tuple[int, str]] = {
    ("hf_paramgen/data/checkpoints.py", "torch.load"):
        (1, "pytorch_model.bin only with allow_pickle=True, and then weights_only=True (no code runs)"),
    ("hf_paramgen/data/checkpoints.py", "allow_pickle"):
        (2, "opt-in parameter, default False, that gates the weights_only=True torch.load above"),
    ("hf_paramgen/data/corpus.py", "allow_pickle"):
        (4, "passes the opt-in flag (CLI --allow_pickle, default False) down to load_checkpoint"),
    ("hf_paramgen/cli.py", "import_module"):
        (1, "imports one module of a fixed table of hf-paramgen subcommands, never a user string"),
    ("hf_paramgen/training/prior.py", "import_module"):
        (1, "`module:function` encoder factory named by the user on the command line: the user's own code"),
    ("hf_paramgen/research/adapter_zoo_minilm.py", "import_module"):
        (1, "imports standard-library modules named in a literal table to read their docstrings"),
    ("hf_paramgen/diffusion/__init__.py", "import_module"):
        (1, "lazy import of this package's own submodules, named in the literal _EXPORTS table"),
    ("hf_paramgen/generation/generator_loading.py", "import_module"):
        (1, "imports the fixed module hf_paramgen.diffusion.generator (kept out of the remote-code closure)"),
    ("hf_paramgen/generation/pipeline_parameter_generation.py", "import_module"):
        (1, "imports a fixed hf_paramgen.diffusion module (kept out of the remote-code closure)"),
    ("examples/benchmark_corpus.py", "subprocess"):
        (2, "re-runs this example script itself (sys.executable, __file__) to time a child process"),
    ("examples/fault_drill.py", "subprocess"):
        (3, "runs hf-paramgen's own CLI commands, accelerate launch and hub_scripts/push_generator.py as children "
            "(fixed argument lists built by the drill, no shell) so it can SIGKILL them"),
    ("examples/fuzz_inputs.py", "allow_pickle"):
        (1, "passes allow_pickle=True once to prove a pickle that would run a shell command is refused by "
            "torch.load(weights_only=True)"),
}


def _dotted(node: ast.AST) -> str:
    """`a.b.c` of a Name/Attribute chain, else ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _uses(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(name, node) of every unsafe construct in one module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                top = module.split(".")[0]
                if top in PICKLE_MODULES:
                    found.append(("pickle", node))
                elif top == "subprocess":
                    found.append(("subprocess", node))
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                if node.module == "torch" and "load" in names:
                    found.append(("torch.load", node))
                if node.module == "os" and names & OS_EXEC:
                    found.append(("os.system", node))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("torch.load", "th.load"):
                found.append(("torch.load", node))
            elif name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
                found.append((name.split(".")[-1], node))
            elif name in ("importlib.import_module", "import_module"):
                found.append(("import_module", node))
            elif name.startswith("os.") and name[3:] in OS_EXEC:
                found.append(("os.system", node))
            elif name.split(".")[0] in PICKLE_MODULES | {"subprocess"} and "." in name:
                found.append(("subprocess" if name.startswith("subprocess.") else "pickle", node))
            for kw in node.keywords:
                if kw.arg in KEYWORDS:
                    found.append((kw.arg, node))
        elif isinstance(node, ast.arg) and node.arg in KEYWORDS:
            found.append((node.arg, node))
        elif isinstance(node, ast.Constant) and node.value in KEYWORDS and isinstance(node.value, str):
            found.append((node.value, node))  # dict keys and subscripts: {"trust_remote_code": True}
    return found


def _files(dirs=SCANNED) -> list[Path]:
    return sorted(p for d in dirs if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def scan_unsafe_uses(dirs=SCANNED) -> Counter:
    """(file, name) -> count of unsafe constructs under `dirs` (relative to the repo root)."""
    counts: Counter = Counter()
    for path in _files(dirs):
        for name, _ in _uses(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            counts[(path.relative_to(ROOT).as_posix(), name)] += 1
    return counts


def unreviewed_unsafe_uses() -> list[str]:
    """Every use not on `REVIEWED` (or more uses than reviewed), as 'file: name xN'."""
    return [f"{file}: {name} x{n} (reviewed: {REVIEWED.get((file, name), (0,))[0]})"
            for (file, name), n in sorted(scan_unsafe_uses().items()) if n > REVIEWED.get((file, name), (0,))[0]]


def test_every_unsafe_call_is_on_the_reviewed_list_and_the_list_is_current():
    found = scan_unsafe_uses()
    new = unreviewed_unsafe_uses()
    assert not new, ("Unreviewed torch.load / pickle / eval / exec / subprocess / trust_remote_code / allow_pickle "
                     f"uses: {new}. Make them safe, or review them and add (file, name): (count, reason) to REVIEWED.")
    stale = [f"{file}: {name} (listed {n}, found {found.get((file, name), 0)})"
             for (file, name), (n, _) in sorted(REVIEWED.items()) if found.get((file, name), 0) != n]
    assert not stale, f"REVIEWED lists uses that changed or disappeared: {stale}; update the list."
    assert all(len(reason) > 20 for _, reason in REVIEWED.values())


def test_the_scanner_sees_each_kind_of_unsafe_use():
    code = ("import pickle, subprocess\nfrom torch import load\nimport torch, os, importlib\npickle.loads(b'')\n"
            "torch.load('x', weights_only=True)\neval('1')\nexec('x=1')\nos.system('ls')\n"
            "importlib.import_module('m')\nf(trust_remote_code=True, allow_pickle=False)\n"
            "d = {'trust_remote_code': 1}\nmodel.eval()\n")
    names = Counter(name for name, _ in _uses(ast.parse(code)))
    assert names == {"pickle": 2, "subprocess": 1, "torch.load": 2, "eval": 1, "exec": 1, "os.system": 1,
                     "import_module": 1, "trust_remote_code": 2, "allow_pickle": 1}  # `.eval()` is no eval


def test_every_torch_load_passes_weights_only_true():
    unsafe = []
    for path in _files(SCANNED + ("tests",)):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("torch.load", "th.load"):
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                if not (weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unsafe, f"torch.load without weights_only=True (it can run pickled code): {unsafe}"


def test_the_package_never_sets_trust_remote_code_itself():
    setting = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            values = []
            if isinstance(node, ast.Call):
                values = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
            elif isinstance(node, ast.Dict):
                values = [v for k, v in zip(node.keys, node.values, strict=True)
                          if isinstance(k, ast.Constant) and k.value == "trust_remote_code"]
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                                                      and t.slice.value == "trust_remote_code" for t in node.targets):
                values = [node.value]
            if any(not (isinstance(v, ast.Constant) and v.value in (False, None)) for v in values):
                setting.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not setting, f"The package sets trust_remote_code (only the user may): {setting}"


# ------------------------------------------------------------------------------ the loopback Hub emulator
@pytest.fixture(scope="module")
def small_hub(tmp_path_factory):
    from hub_emulator import start_hub_emulator

    url, stop = start_hub_emulator(tmp_path_factory.mktemp("small_hub"), max_body_bytes=1000)
    yield url
    stop()


def _request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        length = {} if "Transfer-Encoding" in (headers or {}) else {"Content-Length": str(len(body or b""))}
        for key, value in {**length, **(headers or {})}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_hub_emulator_binds_loopback_only(tmp_path, small_hub):
    from hub_emulator import HubEmulatorServer, HubStorage, start_hub_emulator

    assert small_hub.startswith("http://127.0.0.1:")
    for host in ("0.0.0.0", "", "192.168.1.10", "example.com"):
        with pytest.raises(ValueError, match="binds a loopback address only"):
            start_hub_emulator(tmp_path / "hub", host=host)
        with pytest.raises(ValueError, match="loopback"):
            HubEmulatorServer((host, 0), HubStorage(tmp_path / "hub"))


def test_hub_emulator_rejects_path_traversal_with_4xx(small_hub, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    status, _ = _request(small_hub, "POST", "/api/repos/create", json.dumps({"name": "repo"}).encode())
    assert status == 200
    traversal = [
        ("GET", "/api/models/%2E%2E/%2E%2E"),  # repo id ".." / ".." (unquoted by the server)
        ("GET", "/api/models/emulator/..%2F..%2Fx"),
        ("GET", "/emulator/repo/resolve/main/../../secret.json"),
        ("GET", "/emulator/repo/resolve/main/%2Fetc%2Fpasswd"),
        ("GET", "/emulator/repo/resolve/main/a%5C..%5Csecret.json"),  # backslashes
        ("GET", "/api/models/emulator/repo/tree/main/../.."),
    ]
    for method, path in traversal:
        status, body = _request(small_hub, method, path)
        assert 400 <= status < 500, (path, status, body)
    for path in ("../x", "/abs", "a\\b", "a/./b", ""):
        commit = (json.dumps({"key": "header", "value": {"summary": "x"}}) + "\n"
                  + json.dumps({"key": "file", "value": {"path": path, "content": "", "encoding": "base64"}}))
        status, body = _request(small_hub, "POST", "/api/models/emulator/repo/commit/main", commit.encode())
        assert status == 400 and b"Invalid path" in body, (path, status, body)
    lfs = json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "oid": "../../secret.json", "algo": "sha256"}})
    status, body = _request(small_hub, "POST", "/api/models/emulator/repo/commit/main", lfs.encode())
    assert status == 400 and b"Invalid LFS oid" in body
    status, body = _request(small_hub, "DELETE", "/api/repos/delete", json.dumps({"name": "../../x"}).encode())
    assert status == 400
    status, body = _request(small_hub, "POST", "/api/models/emulator/repo/branch/..%2F..%2Fx", b"{}")
    assert status == 400
    assert secret.read_text() == "{}"


def test_hub_emulator_caps_request_bodies_with_413(small_hub):
    status, body = _request(small_hub, "POST", "/api/repos/create", b"{}", {"Content-Length": str(10**12)})
    assert status == 413 and b"limit of 1000 bytes" in body
    chunked = b"".join(b"%x\r\n%s\r\n" % (300, b"x" * 300) for _ in range(4)) + b"0\r\n\r\n"
    status, _ = _request(small_hub, "PUT", "/_emulator/lfs/" + "0" * 64, chunked, {"Transfer-Encoding": "chunked"})
    assert status == 413
    status, _ = _request(small_hub, "POST", "/api/repos/create", json.dumps({"name": "fits"}).encode())
    assert status == 200  # a body under the limit still passes


# ------------------------------------------------------------------------------ user-given names that become paths
def test_revisions_subfolders_and_repo_ids_that_leave_their_folder_are_refused():
    from hf_paramgen.utils import check_hub_id, check_relative_path, check_revision, looks_like_path

    for revision in ("main", "v1.0", "refs/pr/1", "a" * 40):
        assert check_revision(revision) == revision
    for revision in ("../../x", "/abs", "a/../b", "a\\b", "a b", "", "a//b", "refs/.."):
        with pytest.raises(ValueError, match="branch, tag or commit sha"):
            check_revision(revision)
    for sub in ("param_tokenizer", "a/b"):
        assert check_relative_path(sub) == sub
    for sub in ("../x", "a/../../b", "/etc", "a\\..\\b", "C:/x"):
        with pytest.raises(ValueError, match="relative path inside its folder"):
            check_relative_path(sub)
    for repo_id in ("../x", "a/b/c", "org/..", "a--b/c", "/abs"):
        with pytest.raises(ValueError, match="not a valid Hub repo id"):
            check_hub_id(repo_id)
    assert [looks_like_path(s) for s in ("org/name", "./gen", "~/gen", "/gen", "a/b/c", Path("gen"))] == [
        False, True, True, True, True, True]


def test_generator_loading_refuses_names_that_leave_the_folder_or_cache(tmp_path):
    from test_pipeline import make_generator

    from hf_paramgen.generation.generator import GenerationError, ParamGenerator

    folder = make_generator(tmp_path / "gen")
    with pytest.raises(GenerationError, match="subfolder must be a relative path inside its folder"):
        ParamGenerator.from_pretrained(folder, subfolder="../gen")
    with pytest.raises(GenerationError, match="revision must be a branch, tag or commit sha"):
        ParamGenerator.from_pretrained("org/generator", revision="../../../outside")
    with pytest.raises(GenerationError, match="not a valid Hub repo id"):
        ParamGenerator.from_pretrained("org/gen--x")
    config = json.loads((folder / "config.json").read_text())
    for key, value, match in (("param_tokenizer_subfolder", "../../elsewhere", "param_tokenizer_subfolder must"),
                              ("sample_encoders", ["../../blobs"], "expected a plain folder name"),
                              ("param_tokenizer_repo_id", "../x", "param_tokenizer_repo_id"),):
        bad = tmp_path / f"bad-{key}"
        shutil.copytree(folder, bad)
        if key == "param_tokenizer_repo_id":
            shutil.rmtree(bad / "param_tokenizer")
        (bad / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(GenerationError, match=match):
            ParamGenerator.from_pretrained(bad)


def test_corpus_sources_refuse_hub_ids_and_revisions_that_leave_the_cache(tmp_path):
    from hf_paramgen.data.checkpoints import CorpusError, resolve_sources

    with pytest.raises(CorpusError, match="revision"):
        resolve_sources(["org/name@../../../outside"])
    with pytest.raises(CorpusError, match="not a valid Hub repo id"):
        resolve_sources(["org/a..b"])
    with pytest.raises(CorpusError, match="no such folder"):
        resolve_sources([str(tmp_path / "missing" / "ckpt")])
    with pytest.raises(CorpusError, match="no such folder"):
        resolve_sources(["./missing"])
