"""A small Hugging Face Hub emulator on 127.0.0.1 for tests and offline demos.

It speaks enough of the Hub HTTP API for the unmodified `huggingface_hub` client (and `datasets` /
`transformers`, which sit on it) with `HF_ENDPOINT` pointed at it and `HF_HUB_DISABLE_XET=1`:
repo create/delete, repo info, tree, paths-info, refs, commits, branches, tags, preupload, the
NDJSON commit endpoint, the Git LFS batch API (basic PUT transfer + verify) and `resolve` downloads
(HEAD/GET, byte ranges) with the `X-Repo-Commit` / `ETag` / `X-Linked-*` / `X-Error-Code` headers.

Storage is on disk: content-addressed blobs (`blobs/<sha256>`) and, per repo, one JSON file map per
commit (`repos/<type>/<ns>/<name>/commits/<sha>.json`) plus `repo.json` holding the refs.

Safety: it binds a loopback address only (127.0.0.1 by default; anything else is refused), answers 400 to repo
names, file paths, LFS oids and ref names that could leave its storage folder (`..` or `.` parts, absolute paths,
backslashes, control characters), and 413 to a request body larger than `max_body_bytes` (1 GiB by default).

    python -m hub_emulator --port 8765 --storage outputs/hub
    HF_ENDPOINT=http://127.0.0.1:8765 HF_HUB_DISABLE_XET=1 python my_script.py
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import hashlib
import ipaddress
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_USER = "emulator"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub sends files >= 10 MB through LFS
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar.* *.tar *.tflite *.tgz *.wasm "
    "*.xz *.zip *.zst *tfevents* *.gguf"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_OID_RE = re.compile(r"[0-9a-f]{64}")
MAX_BODY_BYTES = 1 << 30  # requests with a larger body are answered 413


class HubError(Exception):
    """An HTTP error answered with the Hub's `X-Error-Code` / `X-Error-Message` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _check_name(value: str, what: str = "repo name") -> str:
    """A namespace or repo name as the Hub allows it (no `..`, `--`, '/' or leading dot), else 400."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value or "--" in value:
        raise HubError(400, f"Invalid {what} {value!r}: expected letters, digits, '-', '_', '.' (no '..' or '--').")
    return value


def _check_path(path: str, what: str = "path") -> str:
    """A repo file path: '/'-separated, relative, no empty, `.` or `..` part, no backslash or control character."""
    bad = (not isinstance(path, str) or not path or path.startswith("/") or "\\" in path
           or any(ord(c) < 32 for c in path) or any(part in ("", ".", "..") for part in path.split("/")))
    if bad:
        raise HubError(400, f"Invalid {what} {path!r}: expected a relative path inside the repo (no '..', '.', empty "
                            "or absolute parts, no backslash).")
    return path


def _check_ref(ref: str) -> str:
    """A branch or tag name: a path without `..`/`.`/empty parts (as git refuses them)."""
    return _check_path(ref, "reference name")


def _check_host(host: str) -> str:
    """The emulator serves the loopback interface only: `host` must be 'localhost' or a 127.x.x.x address."""
    try:
        loopback = host == "localhost" or ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"The Hub emulator binds a loopback address only (127.0.0.1 or localhost), got host={host!r}: "
                         "it has no authentication and must not be reachable from other machines.")
    return "127.0.0.1" if host == "localhost" else host


def _write_json(path: Path, obj: dict) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class HubStorage:
    """Repos, refs, commits and blobs of the emulator, on disk under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # --- blobs -----------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.blob_path(sha).exists():
            with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as f:
                f.write(data)
            os.replace(f.name, self.blob_path(sha))
        return sha

    def put_stream(self, chunks: Iterator[bytes], expected_sha256: str) -> int:
        """Store a streamed upload under its sha256; raise if it differs from `expected_sha256`."""
        digest, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as f:
            try:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            except BaseException:  # too large or cut short: leave no temporary file behind
                f.close()
                os.unlink(f.name)
                raise
        if digest.hexdigest() != expected_sha256:
            os.unlink(f.name)
            raise HubError(400, f"Uploaded content has sha256 {digest.hexdigest()}, expected {expected_sha256}.")
        os.replace(f.name, self.blob_path(expected_sha256))
        return size

    # --- repos and refs --------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / repo_type / repo_id

    def load_repo(self, repo_type: str, repo_id: str) -> dict:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        if not path.is_file():
            raise HubError(404, f"Repository {repo_type} {repo_id!r} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """Create a repo with the Hub's initial `.gitattributes` commit; False if it already exists."""
        with self.lock:
            if (self.repo_dir(repo_type, repo_id) / "repo.json").is_file():
                return False
            repo = {"id": repo_id, "type": repo_type, "private": private, "createdAt": _now(),
                    "branches": {}, "tags": {}, "prs": []}
            sha = self._write_commit(repo_type, repo_id, None, {}, [("file", ".gitattributes", GITATTRIBUTES)],
                                     "initial commit", "")
            repo["branches"]["main"] = sha
            _write_json(self.repo_dir(repo_type, repo_id) / "repo.json", repo)
            return True

    def save_repo(self, repo: dict) -> None:
        _write_json(self.repo_dir(repo["type"], repo["id"]) / "repo.json", repo)

    def resolve(self, repo: dict, revision: str) -> str:
        """Commit sha of a branch, tag, `refs/pr/N` or full commit sha."""
        rev = re.sub(r"^refs/(heads|tags)/", "", revision)
        if rev in repo["branches"]:
            return repo["branches"][rev]
        if rev in repo["tags"]:
            return repo["tags"][rev]
        if (m := re.fullmatch(r"refs/pr/(\d+)", rev)) and 0 < int(m[1]) <= len(repo["prs"]):
            return repo["prs"][int(m[1]) - 1]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and self._commit_path(repo["type"], repo["id"], rev).is_file():
            return rev
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # --- commits ---------------------------------------------------------------------------------
    def _commit_path(self, repo_type: str, repo_id: str, sha: str) -> Path:
        return self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"

    def load_commit(self, repo: dict, sha: str) -> dict:
        return json.loads(self._commit_path(repo["type"], repo["id"], sha).read_text())

    def _write_commit(self, repo_type, repo_id, parent: str | None, files: dict, ops: list, title: str,
                      message: str) -> str:
        """Apply `ops` ([(kind, path, payload)]) to `files` and write the new commit; returns its sha."""
        files = dict(files)
        for kind, path, payload in ops:
            if kind == "file":
                files[path] = {"sha256": self.put_bytes(payload), "size": len(payload), "lfs": False,
                               "oid": _git_oid(payload)}
            elif kind == "lfsFile":
                size = self.blob_path(payload).stat().st_size
                files[path] = {"sha256": payload, "size": size, "lfs": True,
                               "oid": _git_oid(_lfs_pointer(payload, size))}
            elif kind == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif kind == "deletedFolder":
                files = {p: e for p, e in files.items() if not p.startswith(path.rstrip("/") + "/")}
        date = _now()
        body = json.dumps([parent, sorted(files.items()), title, message, date, time.perf_counter_ns()])
        sha = hashlib.sha1(body.encode()).hexdigest()
        commit = {"id": sha, "parents": [parent] if parent else [], "title": title, "message": message,
                  "date": date, "files": files}
        _write_json(self._commit_path(repo_type, repo_id, sha), commit)
        return sha

    def commit(self, repo: dict, branch: str, ops: list, title: str, message: str, parent_commit: str | None,
               create_pr: bool) -> tuple[str, int | None]:
        """Commit `ops` on top of `branch` (or a new `refs/pr/N`); returns (sha, pr number or None)."""
        with self.lock:
            repo = self.load_repo(repo["type"], repo["id"])  # fresh refs under the lock
            head = self.resolve(repo, branch)
            if not create_pr and branch not in repo["branches"]:
                raise HubError(400, f"Cannot commit to {branch!r}: not a branch.")
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self.load_commit(repo, head)["files"]
            sha = self._write_commit(repo["type"], repo["id"], head, files, ops, title, message)
            pr_num = None
            if create_pr:
                repo["prs"].append(sha)
                pr_num = len(repo["prs"])
            else:
                repo["branches"][branch] = sha
            self.save_repo(repo)
            return sha, pr_num

    def history(self, repo: dict, sha: str) -> Iterator[dict]:
        while sha:
            commit = self.load_commit(repo, sha)
            yield commit
            sha = commit["parents"][0] if commit["parents"] else None

    def last_commit(self, repo: dict, sha: str, path: str) -> dict:
        """The latest commit (from `sha` back) that changed `path` (a file or a folder)."""
        def under(files: dict) -> dict:
            return {p: e["sha256"] for p, e in files.items() if p == path or p.startswith(path + "/")}

        commits = list(self.history(repo, sha))
        for commit, parent in zip(commits, commits[1:] + [None], strict=True):
            if parent is None or under(commit["files"]) != under(parent["files"]):
                return {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
        raise AssertionError("unreachable")


def _entry_json(path: str, entry: dict | None, last_commit: dict | None = None) -> dict:
    """A `tree` / `paths-info` item: a file when `entry` is given, else a directory."""
    if entry is None:
        out = {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
    else:
        out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                          "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"]))}
    if last_commit is not None:
        out["lastCommit"] = last_commit
    return out


def _card_data(storage: HubStorage, files: dict) -> dict | None:
    """YAML metadata of README.md, if any (what the Hub returns as `cardData`)."""
    if "README.md" not in files:
        return None
    text = storage.blob_path(files["README.md"]["sha256"]).read_text(errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return None
    try:
        import yaml

        data = yaml.safe_load(match[1])
    except Exception:  # a broken card must not break repo_info
        return None
    return data if isinstance(data, dict) else None


_TYPES = r"(?P<t>models|datasets|spaces)"
_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/{_TYPES}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "info"),
        ("GET", rf"/api/{_TYPES}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", rf"/api/{_TYPES}/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"/api/{_TYPES}/{_REPO}/refs", "refs"),
        ("GET", rf"/api/{_TYPES}/{_REPO}/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", rf"/api/{_TYPES}/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/{_TYPES}/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/api/{_TYPES}/{_REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
        ("DELETE", rf"/api/{_TYPES}/{_REPO}/branch/(?P<rev>[^/]+)", "delete_branch"),
        ("POST", rf"/api/{_TYPES}/{_REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
        ("POST", r"/(?:(?P<t>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects/batch",
         "lfs_batch"),
        ("PUT", r"/_emulator/lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/_emulator/lfs/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
        ("GET", rf"/(?:(?P<t>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes Hub API requests to `HubStorage` (one handler instance per request)."""

    protocol_version = "HTTP/1.1"
    server: HubEmulatorServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if self.server.verbose:
            super().log_message(format, *args)

    # --- plumbing --------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        self._body_read = False
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            for route_method, pattern, name in _ROUTES:
                match = pattern.fullmatch(url.path)
                if match and (route_method == method or (route_method == "GET" and method == "HEAD")):
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, f"h_{name}")(**args)
                    return
            raise HubError(404, f"Not found: {method} {url.path}")
        except Exception as e:  # every failure becomes an HTTP answer the client can report
            if not isinstance(e, HubError):
                e = HubError(500, f"Emulator error: {type(e).__name__}: {e}")
                self.close_connection = True
            elif not self._body_read:
                self._drain()
            body = json.dumps({"error": e.message}).encode()
            headers = {"X-Error-Message": e.message.encode("ascii", "backslashreplace").decode(), **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, body, headers)

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    def _iter_body(self) -> Iterator[bytes]:
        """The request body in pieces (Content-Length or chunked transfer encoding)."""
        self._body_read = True
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                total += size
                if total > limit:
                    self._too_large(f"more than {limit}")
                yield self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return
        try:
            left = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            left = -1
        if left < 0:
            self.close_connection = True
            raise HubError(400, f"Invalid Content-Length {self.headers.get('Content-Length')!r}.")
        if left > limit:
            self._too_large(str(left))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                raise HubError(400, "Request body ended early.")
            left -= len(chunk)
            yield chunk

    def _too_large(self, size: str) -> None:
        """413 for a body over `max_body_bytes`; the connection is closed (the rest of the body is not read)."""
        self.close_connection = True
        raise HubError(413, f"Request body of {size} bytes is larger than this server's limit of "
                            f"{self.server.max_body_bytes} bytes (max_body_bytes).", "PayloadTooLarge")

    def _body(self) -> bytes:
        return b"".join(self._iter_body())

    def _json_body(self) -> dict:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, f"Request body is not JSON: {e}") from e

    def _drain(self) -> None:
        if not self._body_read:
            for _ in self._iter_body():
                pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._drain()
        self._send(status, json.dumps(obj).encode())

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host') or '{}:{}'.format(*self.server.server_address[:2])}"

    def _repo(self, t: str | None, ns: str, name: str) -> dict:
        """Repo record; `t` is the URL's "models"/"datasets"/"spaces" (None for a model resolve URL)."""
        repo_id = f"{_check_name(ns, 'namespace')}/{_check_name(name)}"
        return self.server.storage.load_repo((t or "models")[:-1], repo_id)

    def _repo_url(self, repo: dict) -> str:
        return f"{self.base_url}/{URL_PREFIX[repo['type']]}{repo['id']}"

    def _files(self, repo: dict, rev: str) -> tuple[str, dict]:
        sha = self.server.storage.resolve(repo, rev)
        return sha, self.server.storage.load_commit(repo, sha)["files"]

    # --- account and repos -----------------------------------------------------------------------
    def h_whoami(self) -> None:
        self._json({"type": "user", "id": DEFAULT_USER, "name": DEFAULT_USER, "fullname": "Hub Emulator",
                    "orgs": [], "auth": {"type": "access_token",
                                         "accessToken": {"displayName": "emulator", "role": "write"}}})

    def h_validate_yaml(self) -> None:
        self._json({"errors": [], "warnings": []})

    def h_create_repo(self) -> None:
        body = self._json_body()
        name, org = body.get("name", ""), body.get("organization") or DEFAULT_USER
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX or not _NAME_RE.fullmatch(name) or not _NAME_RE.fullmatch(org):
            raise HubError(400, f"Invalid repo: type={repo_type!r} organization={org!r} name={name!r}.")
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo_id = f"{org}/{name}"
        created = self.server.storage.create_repo(repo_type, repo_id, private)
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}"
        if not created:
            self._json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        else:
            self._json({"url": url, "name": repo_id, "id": repo_id})

    def h_delete_repo(self) -> None:
        body = self._json_body()
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}: expected one of {sorted(URL_PREFIX)}.")
        org = _check_name(body.get("organization") or DEFAULT_USER, "namespace")
        repo = self.server.storage.load_repo(repo_type, f"{org}/{_check_name(body.get('name', ''))}")
        with self.server.storage.lock:
            path = self.server.storage.repo_dir(repo_type, repo["id"])
            os.replace(path, self.server.storage.root / "tmp" / f"deleted-{time.time_ns()}")
        self._json({})

    def h_info(self, t: str, ns: str, name: str, rev: str = "main") -> None:
        repo = self._repo(t, ns, name)
        sha, files = self._files(repo, rev)
        commit = self.server.storage.load_commit(repo, sha)
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(files.items()):
            sib: dict = {"rfilename": path}
            if blobs:
                sib.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    sib["lfs"] = {"size": entry["size"], "sha256": entry["sha256"],
                                  "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sib)
        card = _card_data(self.server.storage, files)
        info = {"_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"],
                "author": repo["id"].split("/")[0], "sha": sha, "lastModified": commit["date"],
                "createdAt": repo["createdAt"], "private": repo["private"], "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": (card or {}).get("tags") or [], "siblings": siblings}
        if card is not None:
            info["cardData"] = card
        if repo["type"] == "model":
            info["modelId"] = repo["id"]
            if card and card.get("library_name"):
                info["library_name"] = card["library_name"]
        self._json(info)

    # --- listing ---------------------------------------------------------------------------------
    def _listing(self, repo: dict, sha: str, files: dict, paths: list[str], expand: bool) -> list[dict]:
        storage = self.server.storage
        folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        out = []
        for path in paths:
            if path in files or path in folders:
                last = storage.last_commit(repo, sha, path) if expand else None
                out.append(_entry_json(path, files.get(path), last))
        return out

    def h_tree(self, t: str, ns: str, name: str, rev: str, path: str = "") -> None:
        repo = self._repo(t, ns, name)
        sha, files = self._files(repo, rev)
        path = _check_path(path.strip("/")) if path.strip("/") else ""
        prefix = f"{path}/" if path else ""
        below = [p[len(prefix):] for p in files if p.startswith(prefix)]
        if path and not below:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        names = set()
        for rel in below:
            parts = rel.split("/")
            depth = len(parts) if recursive else 1
            names.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
        expand = self.query.get("expand", "").lower() in ("1", "true")
        listing = self._listing(repo, sha, files, sorted(names), expand)
        listing.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        self._json(listing)

    def h_paths_info(self, t: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(t, ns, name)
        form = parse_qs(self._body().decode())
        sha, files = self._files(repo, rev)
        expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        self._json(self._listing(repo, sha, files, [_check_path(p.strip("/")) for p in form.get("paths", [])], expand))

    def h_refs(self, t: str, ns: str, name: str) -> None:
        repo = self._repo(t, ns, name)

        def refs(kind: str, items) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in items]

        self._json({"branches": refs("heads", repo["branches"].items()), "tags": refs("tags", repo["tags"].items()),
                    "converts": [], "pullRequests": refs("pr", [(str(i + 1), s) for i, s in enumerate(repo["prs"])])})

    def h_commits(self, t: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(t, ns, name)
        sha, _ = self._files(repo, rev)
        self._json([{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                     "authors": [{"user": DEFAULT_USER}]} for c in self.server.storage.history(repo, sha)])

    # --- refs ------------------------------------------------------------------------------------
    def h_create_branch(self, t: str, ns: str, name: str, rev: str) -> None:
        self._set_ref(self._repo(t, ns, name), "branches", rev, self._json_body().get("startingPoint") or "main")

    def h_create_tag(self, t: str, ns: str, name: str, rev: str) -> None:
        self._set_ref(self._repo(t, ns, name), "tags", self._json_body()["tag"], rev)

    def _set_ref(self, repo: dict, kind: str, ref: str, target: str) -> None:
        _check_ref(ref)
        storage = self.server.storage
        with storage.lock:
            repo = storage.load_repo(repo["type"], repo["id"])
            if ref in repo["branches"] or ref in repo["tags"]:
                raise HubError(409, f"Reference {ref!r} already exists.")
            repo[kind][ref] = storage.resolve(repo, target)
            storage.save_repo(repo)
        self._json({})

    def h_delete_branch(self, t: str, ns: str, name: str, rev: str) -> None:
        storage = self.server.storage
        with storage.lock:
            repo = self._repo(t, ns, name)
            if rev not in repo["branches"] or rev == "main":
                raise HubError(404 if rev != "main" else 403, f"Cannot delete branch {rev!r}", "RevisionNotFound")
            del repo["branches"][rev]
            storage.save_repo(repo)
        self._json({})

    # --- uploads ---------------------------------------------------------------------------------
    def h_preupload(self, t: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(t, ns, name)
        body = self._json_body()
        _, files = self._files(repo, rev)
        gitattributes = b""
        if ".gitattributes" in files:
            gitattributes = self.server.storage.blob_path(files[".gitattributes"]["sha256"]).read_bytes()
        patterns = [line.split()[0] for line in gitattributes.decode(errors="replace").splitlines()
                    if "filter=lfs" in line]
        out = []
        for item in body.get("files", []):
            path, sample = _check_path(item["path"]), base64.b64decode(item.get("sample", ""))
            lfs = (item.get("size", 0) >= self.server.lfs_threshold or b"\0" in sample
                   or any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) or fnmatch.fnmatch(path, p) for p in patterns))
            entry = files.get(path)
            remote_oid = None if entry is None else (entry["sha256"] if entry["lfs"] else entry["oid"])
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": remote_oid})
        self._json({"files": out, "commitOid": self.server.storage.resolve(repo, rev)})

    def h_lfs_batch(self, ns: str, name: str, t: str | None = None) -> None:
        self._repo(t, ns, name)  # 404 RepoNotFound for an unknown repo
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, f"Only the 'upload' LFS operation is supported, got {body.get('operation')!r}.")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if not isinstance(oid, str) or not _OID_RE.fullmatch(oid):
                raise HubError(400, f"Invalid LFS oid {oid!r}: expected 64 lowercase hex digits (sha256).")
            item: dict = {"oid": oid, "size": size, "authenticated": True}
            if not self.server.storage.blob_path(oid).exists():
                href = f"{self.base_url}/_emulator/lfs/{oid}"
                item["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def h_lfs_put(self, oid: str) -> None:
        try:
            self.server.storage.put_stream(self._iter_body(), oid)
        except HubError:
            self.close_connection = True  # the body may be half read
            raise
        self._json({})

    def h_lfs_verify(self, oid: str) -> None:
        body = self._json_body()
        path = self.server.storage.blob_path(oid)
        if not path.exists() or path.stat().st_size != int(body.get("size", -1)):
            raise HubError(404, f"LFS object {oid} not found or of the wrong size.")
        self._json({})

    def h_commit(self, t: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(t, ns, name)
        header, ops = {}, []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key != "header":
                _check_path(str(value.get("path", "")).rstrip("/") if key == "deletedFolder" else value.get("path"))
            if key == "header":
                header = value
            elif key == "file":
                ops.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key == "lfsFile":
                if not isinstance(value.get("oid"), str) or not _OID_RE.fullmatch(value["oid"]):
                    raise HubError(400, f"Invalid LFS oid {value.get('oid')!r} for {value['path']!r}: expected sha256.")
                if not self.server.storage.blob_path(value["oid"]).exists():
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']!r} was never uploaded.")
                ops.append(("lfsFile", value["path"], value["oid"]))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, value["path"], None))
            else:
                raise HubError(400, f"Unknown commit operation {key!r}.")
        create_pr = self.query.get("create_pr", "") in ("1", "true")
        sha, pr = self.server.storage.commit(repo, rev, ops, header.get("summary", ""),
                                             header.get("description", ""), header.get("parentCommit"), create_pr)
        url = self._repo_url(repo)
        self._json({"success": True, "commitOid": sha, "commitUrl": f"{url}/commit/{sha}",
                    "pullRequestUrl": f"{url}/discussions/{pr}" if pr else None})

    # --- downloads -------------------------------------------------------------------------------
    def h_resolve(self, ns: str, name: str, rev: str, path: str, t: str | None = None) -> None:
        _check_path(path)
        repo = self._repo(t, ns, name)
        sha, files = self._files(repo, rev)
        entry = files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        size = entry["size"]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        if match := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip()):
            start = int(match[1]) if match[1] else max(size - int(match[2] or 0), 0)
            end = min(int(match[2]), size - 1) if match[1] and match[2] else size - 1
            if start >= size and size > 0:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self._drain()
        self._send(status, headers={**headers, "Content-Length": str(length)})
        if self.command == "HEAD":
            return
        with open(self.server.storage.blob_path(entry["sha256"]), "rb") as f:
            f.seek(start)
            while length > 0 and (chunk := f.read(min(length, 1 << 20))):
                self.wfile.write(chunk)
                length -= len(chunk)


class HubEmulatorServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` holding the `HubStorage` and options the handlers read."""

    daemon_threads = True
    request_queue_size = 128  # clients open many connections at once (parallel downloads); 5 drops some under load

    def __init__(self, address: tuple[str, int], storage: HubStorage, lfs_threshold: int = LFS_THRESHOLD,
                 verbose: bool = False, max_body_bytes: int = MAX_BODY_BYTES):
        super().__init__((_check_host(address[0]), address[1]), HubRequestHandler)
        self.storage, self.lfs_threshold, self.verbose = storage, lfs_threshold, verbose
        self.max_body_bytes = int(max_body_bytes)


def start_hub_emulator(storage_dir: str | os.PathLike, port: int = 0, host: str = "127.0.0.1",
                       lfs_threshold: int = LFS_THRESHOLD, verbose: bool = False,
                       max_body_bytes: int = MAX_BODY_BYTES) -> tuple[str, Callable[[], None]]:
    """Serve a Hub emulator from a background thread.

    Args:
        storage_dir: folder holding blobs, repos and commits (created; reused if it has content).
        port: TCP port; 0 picks a free one.
        host: loopback interface to bind ("127.0.0.1", another 127.x.x.x address or "localhost"); any other
            address raises `ValueError` (the emulator has no authentication).
        lfs_threshold: files at least this large go through LFS (besides `.gitattributes` patterns).
        verbose: log every request to stderr.
        max_body_bytes: larger request bodies are answered 413 (default 1 GiB).

    Returns:
        (endpoint URL for `HF_ENDPOINT`, a function that stops the server).
    """
    server = HubEmulatorServer((host, port), HubStorage(storage_dir), lfs_threshold, verbose, max_body_bytes)
    thread = threading.Thread(target=server.serve_forever, name="hub-emulator", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://{server.server_address[0]}:{server.server_address[1]}", stop


@contextlib.contextmanager
def hub_emulator(storage_dir: str | os.PathLike, port: int = 0, **kwargs) -> Iterator[str]:
    """Context manager around `start_hub_emulator`; yields the endpoint URL."""
    url, stop = start_hub_emulator(storage_dir, port=port, **kwargs)
    try:
        yield url
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m hub_emulator --port N --storage DIR`: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (others are refused)")
    parser.add_argument("--storage", required=True, help="folder for blobs, repos and commits")
    parser.add_argument("--lfs-threshold", type=int, default=LFS_THRESHOLD)
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger request bodies get 413")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    server = HubEmulatorServer((args.host, args.port), HubStorage(args.storage), args.lfs_threshold, args.verbose,
                               args.max_body_bytes)
    url = "http://{}:{}".format(*server.server_address[:2])
    print(f"Hub emulator on {url} (storage: {args.storage}); set HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
