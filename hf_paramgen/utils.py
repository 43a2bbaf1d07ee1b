"""Small helpers shared by the core: atomic writes (a reader never sees a half-written file or folder), the
accuracy of a classifier, checks of user-given Hub ids, revisions and relative paths (none may lead a write or a
read outside the folder it names), and `explain_load_error`: why a saved model folder does not load."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from torch import nn


def temporary_sibling(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden path beside `target` (same filesystem, so `os.replace` onto `target` is atomic)."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in [target.parent, *target.parent.parents] if p.exists() and not p.is_dir()), None)
        raise NotADirectoryError(f"Cannot write {target}: {blocker or target.parent} is a file, not a folder; choose "
                                 "another output path or move that file away.") from err
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace`."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """`atomic_write_text` of `json.dumps(obj)` (sorted keys stay as given)."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` onto `final`; an existing `final` is swapped out first and then removed."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = temporary_sibling(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def accuracy(model: nn.Module, X, y) -> float:
    """Fraction of `X` whose argmax output (or `.logits`) equals `y`; the model is put in eval mode."""
    model.eval()
    out = model(torch.as_tensor(X, dtype=torch.float32) if not isinstance(X, torch.Tensor) else X.float())
    logits = getattr(out, "logits", out)
    y = torch.as_tensor(y).long().cpu().reshape(-1)
    return int((logits.argmax(-1).cpu() == y).sum()) / max(len(y), 1)  # the exact fraction, not a float32 mean


# ------------------------------------------------------------------------------ user-given names that become paths
def check_hub_id(repo_id, what: str = "Hub repo id") -> str:
    """`repo_id` if huggingface_hub's `validate_repo_id` accepts it ("name" or "org/name", no `..`, `--`, absolute
    or backslash parts), else `ValueError` naming it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise ValueError(f"{what} must be a string 'org/name', got {type(repo_id).__name__} {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repo id: expected 'name' or 'org/name' of letters, "
                         f"digits, '-', '_' and '.' ({err}).") from err
    return repo_id


def check_revision(revision, what: str = "revision") -> str | None:
    """`revision` (None passes) if it can name a branch, tag, `refs/pr/N` or commit sha and stays a plain relative
    name (huggingface_hub writes `refs/<revision>` in its cache): no `..`, `.` or empty part, no leading '/', no
    backslash, whitespace or control character; else `ValueError`."""
    if revision is None:
        return None
    bad = (not isinstance(revision, str) or not 0 < len(revision) <= 255 or revision.startswith("/")
           or any(c == "\\" or c.isspace() or ord(c) < 32 for c in revision)
           or any(part in ("", ".", "..") for part in revision.split("/")))
    if bad:
        raise ValueError(f"{what} must be a branch, tag or commit sha (a relative name without '..', empty parts, "
                         f"backslashes or whitespace), got {revision!r}.")
    return revision


def check_relative_path(path, what: str = "subfolder") -> str | None:
    """`path` (None or "" pass) as a '/'-separated path that stays inside the folder it is joined to: no absolute
    or drive path, no backslash, no `..` part; else `ValueError`."""
    if path is None or path == "":
        return path
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a relative path string, got {type(path).__name__} {path!r}.")
    bad = ("\\" in text or "\0" in text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive
           or ".." in PurePosixPath(text).parts)
    if bad:
        raise ValueError(f"{what} must be a relative path inside its folder ('a/b', no '..', no absolute path, no "
                         f"backslash), got {text!r}.")
    return text


def looks_like_path(name) -> bool:
    """True when `name` is meant as a local path rather than a Hub repo id: a `PathLike`, or a string that starts
    with '.', '~' or the path separator, or holds a backslash or more than one '/' (a repo id holds at most one)."""
    if isinstance(name, os.PathLike):
        return True
    return isinstance(name, str) and (name.startswith((".", "~", os.sep)) or "\\" in name or name.count("/") > 1)


# ------------------------------------------------------------------------------ loading a saved model by name
def load_pretrained(model_class, name_or_path, what: str | None = None, **kwargs):
    """`model_class.from_pretrained(name_or_path, **kwargs)` with every failure named before or after it: an empty
    name or one of the wrong type, a local folder that does not exist (`FileNotFoundError`), an invalid Hub repo id,
    a folder that holds another kind of model (its config's `model_type`), a truncated weights file or a config field
    that does not match the weights (`explain_load_error`), and any other load failure (`ValueError` naming it)."""
    what = what or model_class.__name__
    name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: expected a folder or a Hub repo id 'org/name', got {type(name).__name__} {name!r}.")
    folder = Path(name).expanduser()
    if folder.is_dir():
        expected = getattr(getattr(model_class, "config_class", None), "model_type", None)
        try:
            found = json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            found = None
        if expected and found and found != expected:
            hint = [p.name for p in folder.iterdir() if (p / "config.json").is_file()]
            raise ValueError(f"{what}: {folder} holds a {found!r} model, expected a {expected!r} one"
                             f"{f' (its subfolders with a config: {sorted(hint)})' if hint else ''}.")
    elif looks_like_path(name) or folder.exists():
        raise FileNotFoundError(f"{what}: no such folder {folder.resolve()} (given as {name!r}); expected a folder "
                                "written by save_pretrained or a Hub repo id 'org/name'.")
    else:
        check_hub_id(name, f"{what}: there is no folder {name!r}, and as a Hub repo id it")
    try:
        return model_class.from_pretrained(name, **kwargs)
    except Exception as err:
        why = explain_load_error(model_class, folder) if folder.is_dir() else None
        raise ValueError(f"{what} {name!r} does not load: {why or f'{type(err).__name__}: {err}'}") from err


# ------------------------------------------------------------------------------ why a model folder does not load
def safetensors_shapes(file: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of a safetensors file, from its header alone (no data is read)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}



def _model_shapes(model_class, config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = model_class(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _int_fields(config_dict: dict) -> list[tuple[str, ...]]:
    """Paths of the int fields of a config dict (top level and one nested dict, e.g. `transformer`)."""
    out = []
    for key, value in config_dict.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out.append((key,))
        elif isinstance(value, dict):
            out += [(key, k) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return out


def _lying_field(model_class, config_dict: dict, stored: dict, expected: dict) -> tuple[str, int, int] | None:
    """(field, value in config.json, value the weights were saved with) of the one field whose change makes the
    model's shapes those of the file, tried for each differing dimension (offsets such as special tokens kept)."""
    deltas = {s - e for k in stored.keys() & expected.keys() for s, e in zip(stored[k], expected[k], strict=False)
              if len(stored[k]) == len(expected[k]) and s != e}
    sizes = {e for k in stored.keys() & expected.keys() for e in expected[k]}
    for path in _int_fields(config_dict):
        value = config_dict[path[0]] if len(path) == 1 else config_dict[path[0]][path[1]]
        if not any(abs(size - value) <= 8 for size in sizes):
            continue
        for delta in sorted(deltas):
            candidate = json.loads(json.dumps(config_dict))
            holder = candidate if len(path) == 1 else candidate[path[0]]
            holder[path[-1]] = value + delta
            try:
                shapes = _model_shapes(model_class, model_class.config_class.from_dict(candidate))
            except Exception:  # noqa: BLE001  (a candidate config that cannot even be built is not the answer)
                continue
            if all(shapes.get(k) == s for k, s in stored.items() if k in expected):
                return ".".join(path), value, value + delta
    return None


def explain_load_error(model_class, folder: str | os.PathLike, weights_name: str = "model.safetensors") -> str | None:
    """Why `model_class.from_pretrained(folder)` fails, in words that name the file or the config field (None when
    nothing is found): a missing, truncated or corrupted weights file, or a `config.json` field (e.g. `codebook_size`,
    `condition_dim`) whose value does not match the shapes the weights were saved with. Reads the safetensors header
    and builds the model on the meta device only: no weights are loaded, no code is run."""
    folder = Path(folder)
    weights = folder / weights_name
    if not weights.is_file():
        found = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".py")) if folder.is_dir() else None
        return (f"{folder} holds no {weights_name} (found: {found if found is not None else 'no such folder'}); save "
                "the model there again or download it.")
    try:
        stored = safetensors_shapes(weights)
    except Exception as err:  # noqa: BLE001  (safetensors raises its own SafetensorError on bad bytes)
        return (f"{weights} is truncated or corrupted: safetensors cannot read it ({err}). Download or save it "
                "again.")
    config_class = getattr(model_class, "config_class", None)
    config_file = folder / "config.json"
    if config_class is None or not config_file.is_file():
        return None
    try:
        config_dict = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"{config_file} is not valid JSON ({err}); save the model again."
    if not isinstance(config_dict, dict):
        return (f"{config_file} holds a JSON {type(config_dict).__name__}, expected an object of "
                f"{config_class.__name__} fields; save the model again.")
    try:
        config = config_class.from_dict(config_dict)
        error = None
    except Exception as err:  # noqa: BLE001  (a field that contradicts another: look for the one the weights fix)
        error = err
        nested = {k: {n: v for n, v in d.items() if n not in ("vocab_size", "max_position_embeddings", "n_positions")}
                  for k, d in config_dict.items() if isinstance(d, dict)}
        config_dict = {**config_dict, **nested}
        try:
            config = config_class.from_dict(config_dict)
        except Exception:  # noqa: BLE001
            return f"{config_file} does not describe a valid {config_class.__name__}: {err}"
    expected = _model_shapes(model_class, config)
    bad = {k: (stored[k], expected[k]) for k in stored.keys() & expected.keys() if stored[k] != expected[k]}
    if not bad:
        return None if error is None else f"{config_file} does not describe a valid {config_class.__name__}: {error}"
    name, (file_shape, config_shape) = sorted(bad.items())[0]
    shown = f"{name}: {list(file_shape)} in {weights_name}, {list(config_shape)} from config.json"
    field = _lying_field(model_class, config_dict, stored, expected)
    if field is None:
        return (f"{config_file} does not match {weights} ({len(bad)} tensors of other shapes, e.g. {shown}); the two "
                "were not saved together: save the model again.")
    return (f"{config_file} says {field[0]}={field[1]}, but {weights} was saved with {field[0]}={field[2]} ({shown}); "
            f"the config was edited or comes from another model: restore {field[0]}={field[2]} or save the model "
            "again.")
