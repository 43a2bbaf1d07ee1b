"""Remote code: the files a saved model or generator folder carries so that a process **without**
hf_paramgen loads it with `trust_remote_code=True`.

transformers copies a remote-code module and the modules it imports *relatively* (`from .x import y`,
one dot, same folder; imports inside functions count), and refuses the repo when any of them imports a
package that is not installed. hf_paramgen's modules live in sub-packages, so `write_remote_code`
follows the relative imports of the entry modules (`from ..layout.chunking import chunk`), copies the
closure into the folder **flat** and rewrites each such import to the one-dot form
(`from .chunking import chunk`). It refuses (`RemoteCodeError`) a closure that reaches a research
fixture, imports a whole sub-package, or imports anything but the standard library and
`ALLOWED_PACKAGES`.

This module uses the standard library only and works on files, so it also runs from a flat copy of
itself (a model loaded as remote code can be saved again).
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

from ..utils import explain_load_error

ALLOWED_PACKAGES = ("torch", "transformers", "safetensors", "peft", "huggingface_hub")
FORBIDDEN_PARTS = ("research",)  # fixtures: never part of what a generator carries
_FROM_RE = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<dots>\.+)(?P<name>[\w.]*)[ \t]+import\b", re.M)


class RemoteCodeError(ValueError):
    """The remote-code closure of a module cannot travel alone."""


def _resolve(importer: Path, dots: int, name: str) -> Path:
    """File of the module `from <dots><name> import` names, seen from `importer`."""
    base = importer.parent
    for _ in range(dots - 1):
        base = base.parent
    target = base.joinpath(*name.split(".")) if name else base
    if target.with_suffix(".py").is_file():
        return target.with_suffix(".py")
    if (target / "__init__.py").is_file():
        raise RemoteCodeError(f"{importer.name} imports the package {'.' * dots}{name}; remote-code modules must "
                              f"import from a module (e.g. {'.' * dots}{name}.<module>), not a package.")
    raise RemoteCodeError(f"{importer}: relative import {'.' * dots}{name} names no module file.")


def _optional(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `try:` bodies that catch ImportError (optional imports, as transformers allows)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            ids.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return ids


def _third_party(path: Path) -> set[str]:
    """Top-level names of the required absolute imports of a file (module level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional, names = _optional(tree), set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def remote_code_closure(entry_files: list[str | os.PathLike]) -> dict[str, Path]:
    """`{flat file name: source file}` of the entry modules and everything they import relatively."""
    todo = [Path(f).resolve() for f in entry_files]
    files: dict[str, Path] = {}
    while todo:
        path = todo.pop()
        if path.parent.name in FORBIDDEN_PARTS:
            raise RemoteCodeError(f"The remote code reaches the research fixture {path}; the core must not import it.")
        name = path.name
        if name in files:
            if files[name] != path:
                raise RemoteCodeError(f"Two remote-code modules share the file name {name}: {files[name]} and {path}.")
            continue
        files[name] = path
        bad = sorted(_third_party(path) - set(ALLOWED_PACKAGES))
        if bad:
            raise RemoteCodeError(f"{path.name} imports {bad}; remote code may import only the standard library and "
                                  f"{list(ALLOWED_PACKAGES)}.")
        for m in _FROM_RE.finditer(path.read_text(encoding="utf-8")):
            todo.append(_resolve(path, len(m.group("dots")), m.group("name")))
    return files


def flatten_source(path: Path) -> str:
    """The text of `path` with every relative import rewritten to the one-dot, same-folder form."""

    def sub(m: re.Match) -> str:
        target = _resolve(path, len(m.group("dots")), m.group("name"))
        return f"{m.group('indent')}from .{target.stem} import"

    return _FROM_RE.sub(sub, path.read_text(encoding="utf-8"))


def write_remote_code(folder: str | os.PathLike, entry_files: list[str | os.PathLike]) -> list[str]:
    """Write the flat remote-code closure of `entry_files` into `folder`; returns the file names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = remote_code_closure(entry_files)
    for name, source in sorted(files.items()):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(flatten_source(source), encoding="utf-8")
        os.replace(tmp, folder / name)
    return sorted(files)


def module_file(obj) -> str:
    """Source file of the module that defines `obj` (a class or an instance)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return sys.modules[cls.__module__].__file__


class RemoteCodeMixin:
    """For `PreTrainedModel`s: `save_pretrained` also writes `auto_map` and the flat remote code, so the
    folder loads with `AutoModel*.from_pretrained(folder, trust_remote_code=True)` without hf_paramgen."""

    remote_auto_map: dict[str, str] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; a local folder that does not load is explained (`explain_load_error`:
        a missing or truncated weights file, a `config.json` field that contradicts the weights)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as err:
            folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            why = explain_load_error(cls, folder) if folder.is_dir() else None
            if why is None:
                raise
            raise OSError(f"{cls.__name__} does not load from {folder}: {why}") from err

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = dict(self.remote_auto_map)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory, [module_file(self)])
