"""Checkpoints as corpus inputs: where they come from (folders, zoo manifests, Hub repos) and how one is read.

A checkpoint's layout is *declared*, never guessed from its weights, and its tensors are validated against it:

* `param_layout.json` (`ParamLayout.to_json()`), written beside the weights by whoever saved them;
* a PEFT adapter folder: the layout `hf_paramgen.adapters.save_adapter` records in `adapter_info.json`;
* a transformers config (`model_type`): the model it declares, built on the meta device;
* otherwise an installed *layout plugin*: an entry point of group ``hf_paramgen.checkpoint_layouts`` is a
  callable `config dict -> nn.Module | ParamLayout` that raises `ValueError` for configs that are not its
  own (this package registers the research model zoo's `model_from_config`, for zoo folders saved before
  zoos wrote `param_layout.json`). The core never imports a plugin's module itself.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..layout.param_layout import LayoutError, ParamLayout
from ..utils import check_hub_id, check_revision, looks_like_path

LAYOUT_FILE = "param_layout.json"
LAYOUT_PLUGIN_GROUP = "hf_paramgen.checkpoint_layouts"
ADAPTER_CONFIG, ADAPTER_INFO = "adapter_config.json", "adapter_info.json"  # PEFT adapter folders (hf_paramgen.adapters)
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.bin", "README.md"]  # what a checkpoint needs from a repo


class CorpusError(ValueError):
    """A checkpoint or source cannot go into a corpus; the message names which (and which tensor)."""


# ---------------------------------------------------------------------------------- layout
def _read_json(path: Path, name: str, expected: str) -> dict:
    file = path / name
    if not file.is_file():
        raise CorpusError(f"Checkpoint {path}: no {name} (expected {expected}).")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(f"Checkpoint {path}: {name} is not valid JSON ({err}).") from err


def read_config(path: str | os.PathLike) -> dict:
    """`config.json` of a checkpoint folder, or a PEFT adapter's `adapter_config.json`."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return _read_json(path, ADAPTER_CONFIG, "a PEFT adapter config")
    return _read_json(path, "config.json", "a transformers, PyTorchModelHubMixin or PEFT config")


def _transformers_layout(path: Path) -> ParamLayout:
    """Layout of the transformers model a config declares (meta device), tied aliases dropped."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    _check_depth(path, config)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        return ParamLayout.from_config(config)
    with torch.device("meta"):
        model = cls(config)
    layout = ParamLayout.from_module(model)
    tensors, seen, keep = model.state_dict(keep_vars=True), set(), []
    for spec in layout.specs:  # tied weights (lm_head <- embeddings) are stored once
        if id(tensors[spec.name]) not in seen:
            seen.add(id(tensors[spec.name]))
            keep.append((spec.name, spec.shape, spec.dtype, spec.kind, spec.is_buffer))
    return ParamLayout.from_specs(keep, {"model_type": config.model_type, "architecture": archs[0]})


def _check_depth(path: Path, config) -> None:
    """A config's layer count must not exceed the tensors its weights file stores (every layer stores at least one):
    a config that lies about its depth (10**6 layers) would otherwise take hours to build, even on the meta device."""
    from ..utils import safetensors_shapes

    depth = getattr(config, "num_hidden_layers", None)
    files = [path / n for n in ("model.safetensors", "adapter_model.safetensors") if (path / n).is_file()]
    if not isinstance(depth, int) or not files:
        return
    try:
        stored = len(safetensors_shapes(files[0]))
    except Exception:  # noqa: BLE001  (an unreadable file is reported, named, when its weights are loaded)
        return
    if depth > stored:
        raise CorpusError(f"Checkpoint {path}: config.json says num_hidden_layers={depth}, but {files[0].name} stores "
                          f"only {stored} tensors; the config does not describe these weights.")


@functools.lru_cache(maxsize=1)
def layout_plugins() -> tuple:
    """The installed entry points of group `hf_paramgen.checkpoint_layouts` (name -> callable), loaded lazily."""
    from importlib.metadata import entry_points

    return tuple(entry_points(group=LAYOUT_PLUGIN_GROUP))


def _plugin_layout(path: Path, config: dict) -> ParamLayout:
    """The layout an installed layout plugin builds for `config` (on the meta device); the first that accepts wins."""
    refused = []
    for plugin in layout_plugins():
        try:
            with torch.device("meta"):
                built = plugin.load()(config)
        except (ValueError, KeyError, TypeError) as err:
            refused.append(f"{plugin.name}: {err}")
            continue
        return built if isinstance(built, ParamLayout) else ParamLayout.from_module(built)
    tried = "; ".join(refused) or f"no plugin of group {LAYOUT_PLUGIN_GROUP!r} is installed"
    raise CorpusError(
        f"Checkpoint {path}: no {LAYOUT_FILE}, and config.json is neither a transformers config (model_type) nor a "
        f"PEFT adapter config, nor one a layout plugin knows ({tried}). Save the layout beside the weights: "
        f"`(folder / {LAYOUT_FILE!r}).write_text(ParamLayout.from_module(model).to_json())`."
    )


def declared_layout(path: str | os.PathLike, config: dict | None = None) -> ParamLayout:
    """The layout a checkpoint folder declares (never read off its weights); see the module docstring for the order.

    Args:
        path: checkpoint folder.
        config: its config dict when already read (`read_config`).

    Raises:
        CorpusError: nothing declares the layout, or the declaration cannot be built.
    """
    path = Path(path)
    try:
        if (path / LAYOUT_FILE).is_file():
            return _layout_file(path)
        config = read_config(path) if config is None else config
        if "peft_type" in config:  # layout recorded by hf_paramgen.adapters.save_adapter (built by peft)
            layout = _read_json(path, ADAPTER_INFO, "the adapter's recorded layout").get("layout")
            if not layout:
                raise ValueError(f"{ADAPTER_INFO} records no layout; save adapters with `save_adapter(layout=...)`")
            return ParamLayout.from_dict(layout)
        if "model_type" in config:
            return _transformers_layout(path)
        return _plugin_layout(path, config)
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, CorpusError):
            raise
        raise CorpusError(f"Checkpoint {path}: cannot build the layout it declares: {err}") from err


def _layout_file(path: Path) -> ParamLayout:
    """`param_layout.json`, read as `ParamLayout.to_json()` writes it, its float dtypes checked."""
    file = path / LAYOUT_FILE
    where = f"Checkpoint {path}: cannot build the layout it declares: {LAYOUT_FILE}"
    expected = ('expected ParamLayout.to_json(): {"specs": [{"name", "shape", "dtype", "offset", "kind", '
                '"is_buffer"}, ...], "metadata": {...}}')
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusError(f"{where} is not valid JSON ({err}); {expected}.") from err
    if not isinstance(data, dict) or not isinstance(data.get("specs"), list) or not all(
            isinstance(x, dict) for x in data["specs"]):
        raise CorpusError(f"{where} holds {type(data).__name__} {json.dumps(data)[:80]}; {expected}.")
    try:
        layout = ParamLayout.from_dict(data)
    except KeyError as err:
        raise CorpusError(f"{where} has a spec without the field {err}; {expected}.") from err
    except (TypeError, ValueError) as err:
        detail = str(err) if isinstance(err, LayoutError) else f"a spec of the wrong type ({err}); {expected}"
        raise CorpusError(f"{where}: {detail}") from err
    for spec in layout.specs:
        dtype = getattr(torch, str(spec.dtype), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or any(d < 0 for d in spec.shape):
            raise CorpusError(f"{where} declares tensor {spec.name!r} of dtype {spec.dtype!r} and shape "
                              f"{list(spec.shape)}; expected a floating-point torch dtype (float32, bfloat16, ...) and "
                              "sizes >= 0.")
    return layout


# ---------------------------------------------------------------------------------- weights
def read_card(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata: its card's YAML (for adapters, `adapter_info.json` metadata + instruction)."""
    from huggingface_hub import ModelCard

    path = Path(path)
    readme = path / "README.md"
    try:
        card = ModelCard.load(readme).data.to_dict() if readme.is_file() else {}
    except Exception as err:  # noqa: BLE001  (yaml raises its own errors; a card that is not UTF-8: UnicodeError)
        raise CorpusError(f"Checkpoint {path}: README.md is not a model card with a YAML header "
                          f"({type(err).__name__}: {str(err)[:200]}); expected a '---' YAML block (instruction, "
                          "split, ...) at its top.") from err
    if (path / ADAPTER_INFO).is_file():
        info = _read_json(path, ADAPTER_INFO, "the adapter's instruction, metadata and layout")
        if not isinstance(info, dict) or not isinstance(info.get("metadata", {}), dict):
            raise CorpusError(f"Checkpoint {path}: {ADAPTER_INFO} must be an object with 'instruction', 'metadata' "
                              f"(an object) and 'layout', got {json.dumps(info)[:80]}.")
        card = {**card, **info.get("metadata", {}), "instruction": info.get("instruction")}
    return card


def _shard_files(path: Path, index: Path) -> list[str]:
    """The shard files a `*.safetensors.index.json` names: plain file names inside the checkpoint folder."""
    data = _read_json(path, index.name, "a shard index {'weight_map': {tensor: shard file}}")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorpusError(f"Checkpoint {path}: {index.name} must hold 'weight_map': {{tensor name: shard file}}, got "
                          f"{json.dumps(data)[:80]}.")
    files = sorted(set(weight_map.values()))
    bad = [f for f in files if Path(f).name != f or f in ("", ".", "..")]
    if bad:
        raise CorpusError(f"Checkpoint {path}: {index.name} names shards outside the checkpoint folder {bad[:3]}; "
                          "expected plain file names such as 'model-00001-of-00002.safetensors'.")
    return files


def _load_safetensors(path: Path, single: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / f"{single}.index.json"
    files = _shard_files(path, index) if index.is_file() else [single]
    state_dict: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            what = "no such file" if not (path / name).exists() else "not a regular file"
            raise CorpusError(f"Checkpoint {path}: {name} is {what}; expected the safetensors weights "
                              f"{'its shard index names' if name != single else 'of the checkpoint'}.")
        try:
            state_dict.update(load_file(path / name))
        except Exception as err:  # safetensors raises SafetensorError / OSError on bad bytes
            raise CorpusError(
                f"Checkpoint {path}: {name} is truncated or corrupted and cannot be read ({err})."
            ) from err
    return state_dict


def _load_weights(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if (path / "adapter_model.safetensors").is_file():
        return _load_safetensors(path, "adapter_model.safetensors")
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        return _load_safetensors(path)
    if (path / "pytorch_model.bin").is_file():
        if not allow_pickle:
            raise CorpusError(
                f"Checkpoint {path}: only a pickled pytorch_model.bin, no model.safetensors. Pickles can run code; "
                "pass allow_pickle=True (CLI --allow_pickle) to load it with torch.load(weights_only=True)."
            )
        try:
            return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:
            raise CorpusError(
                f"Checkpoint {path}: pytorch_model.bin cannot be loaded with weights_only=True ({err})."
            ) from err
    odd = [p.name for p in (path / "model.safetensors", path / "adapter_model.safetensors", path / "pytorch_model.bin")
           if p.exists() or p.is_symlink()]
    if odd:
        raise CorpusError(f"Checkpoint {path}: {odd[0]} is not a regular file (a folder, a device or a dangling link); "
                          "expected the weights file itself.")
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "not a folder"
    raise CorpusError(f"Checkpoint {path}: expected model.safetensors (or pytorch_model.bin), found {found}.")


def load_checkpoint(
    path: str | os.PathLike, *, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], ParamLayout, dict]:
    """Read and validate one checkpoint folder.

    Args:
        path: folder with a config (`config.json` or `adapter_config.json`), the weights (`model.safetensors`,
            sharded, `adapter_model.safetensors` or `pytorch_model.bin`), optionally `param_layout.json`
            and a `README.md` card.
        allow_pickle: accept a `pytorch_model.bin`-only checkpoint (loaded with `weights_only=True`).

    Returns:
        `(state_dict, layout, info)`: tensors, the declared layout (`declared_layout`) and
        `info = {"config": ..., "card": <card YAML metadata>}`.

    Raises:
        CorpusError: unreadable files, or tensors missing, misshapen, non-finite or not in the layout.
    """
    path = Path(path)
    config = read_config(path)
    layout = declared_layout(path, config)
    state_dict = _load_weights(path, allow_pickle)
    try:
        layout.validate(state_dict, source=f"Checkpoint {path}")
    except LayoutError as err:
        raise CorpusError(str(err)) from err
    names = set(layout.names)
    extra = [name for name, t in state_dict.items() if name not in names and torch.is_floating_point(t)]
    if extra:
        raise CorpusError(f"Checkpoint {path}: unexpected tensors {extra} that its declared layout does not hold.")
    limit = torch.finfo(torch.float32).max  # corpora hold float32: a wider value would become inf there
    for name in layout.names:
        t = state_dict[name]
        if torch.finfo(t.dtype).max > limit and bool((t.abs() > limit).any()):
            raise CorpusError(f"Checkpoint {path}: tensor {name!r} ({t.dtype}) holds values beyond the float32 range "
                              f"(max |x| {float(t.abs().max()):.3g} > {limit:.3g}); expected weights a float32 corpus "
                              "can hold.")
    return state_dict, layout, {"config": config, "card": read_card(path)}


# ---------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """One checkpoint to put in a corpus: its id, local folder, provenance and model split."""

    model_id: str
    path: Path
    source: str
    repo_id: str = ""
    revision: str = ""
    split: str = ""


def _fetch(repo_id: str, revision: str | None) -> Path:
    """Download a model repo snapshot (honours HF_ENDPOINT, HF_HUB_OFFLINE and the HF cache)."""
    from ..hub.cards import fetch_snapshot

    try:
        return Path(fetch_snapshot(repo_id, revision=revision, allow_patterns=SNAPSHOT_FILES))
    except Exception as err:  # RepositoryNotFound, RevisionNotFound, LocalEntryNotFound, connection errors
        at = f" at revision {revision!r}" if revision else ""
        raise CorpusError(
            f"Cannot fetch checkpoint repo {repo_id!r}{at}: it is not a local folder, and the Hub "
            f"(HF_ENDPOINT={os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}, "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}) answered {type(err).__name__}: {err}"
        ) from err


def zoo_sources(zoo_dir: str | os.PathLike) -> list[Source]:
    """Checkpoints listed by a zoo's `manifest.json` (a list of paths or of dicts with a path)."""
    zoo_dir = Path(zoo_dir)
    manifest_file = zoo_dir / "manifest.json"
    if not manifest_file.is_file():
        raise CorpusError(f"{zoo_dir} is not a model zoo: no manifest.json (build one with `hf-paramgen build-zoo`).")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusError(f"{manifest_file} is not valid JSON ({err}); rebuild the zoo or fix the file.") from err
    if isinstance(manifest, list):
        manifest = {"checkpoints": manifest}
    if not isinstance(manifest, dict):
        raise CorpusError(f"{manifest_file} holds a JSON {type(manifest).__name__}; expected an object with a "
                          "'checkpoints' list of paths (or of {'path': ...}).")
    lists = [manifest[k] for k in ("checkpoints", "models", "entries") if isinstance(manifest.get(k), list)]
    entries = lists[0] if lists else None
    if entries is None:  # no list in the manifest: every checkpoint folder under the zoo
        entries = [str(p.parent.relative_to(zoo_dir)) for p in sorted(zoo_dir.rglob("config.json"))]
    sources = []
    for entry in entries:
        entry = {"path": entry} if isinstance(entry, str) else entry
        rel = next((entry[k] for k in ("path", "dir", "checkpoint", "folder") if k in entry),
                   None) if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not rel:
            raise CorpusError(f"{manifest_file}: entry {entry!r} has no 'path'; expected a path relative to the zoo "
                              "folder, or {'path': ..., 'split': ...}.")
        path = (zoo_dir / rel).resolve()
        if not path.is_relative_to(zoo_dir.resolve()):
            raise CorpusError(f"{manifest_file}: entry {rel!r} leads outside the zoo folder ({path}); expected a path "
                              f"inside {zoo_dir}.")
        model_id = entry.get("model_id") or Path(rel).as_posix()
        sources.append(Source(model_id, path, str(path), split=entry.get("split") or ""))
    return sources


def resolve_sources(sources: list[str], splits: list[str] | None = None) -> list[Source]:
    """Expand folders, zoo dirs and Hub ids (`org/name[@revision]`) into checkpoints; check ids are unique.

    Args:
        sources: checkpoint folders, zoo dirs (with `manifest.json`) or Hub repo ids.
        splits: keep only checkpoints of these model splits (card `split`, "train" when absent).
    """
    if not sources:
        raise CorpusError("No sources given: expected checkpoint folders, zoo dirs or Hub repo ids (org/name[@rev]).")
    resolved: list[Source] = []
    for src in map(str, sources):
        path = Path(src)
        if path.is_dir() and (path / "manifest.json").is_file():
            resolved += zoo_sources(path)
        elif path.is_dir():
            resolved.append(Source(path.resolve().name, path.resolve(), str(path.resolve())))
        elif looks_like_path(src.partition("@")[0]) or "/" not in src.partition("@")[0]:
            raise CorpusError(f"Source {src!r} is neither an existing folder nor a Hub repo id 'org/name[@revision]' "
                              f"(no such folder: {path.expanduser().resolve()}); expected a checkpoint folder, a zoo "
                              "dir or a Hub repo id.")
        else:
            repo_id, _, revision = src.partition("@")
            try:  # a user-given id or revision must not lead outside the HF cache
                check_hub_id(repo_id, f"Source {src!r} is no existing folder, and its repo id")
                check_revision(revision or None, f"The revision of {src!r}")
            except ValueError as err:
                raise CorpusError(str(err)) from err
            snapshot = _fetch(repo_id, revision or None)
            sha = snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else (revision or "")
            resolved.append(Source(src, snapshot, src, repo_id, sha))
    ids = [s.model_id for s in resolved]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise CorpusError(f"Duplicate model ids {dups}: each checkpoint may enter a corpus once.")
    for s in resolved:
        s.split = s.split or str(read_card(s.path).get("split") or "train")
    if splits:
        resolved = [s for s in resolved if s.split in splits]
        if not resolved:
            raise CorpusError(f"No checkpoint in {list(map(str, sources))} belongs to splits {splits}.")
    return resolved
