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
            return ParamLayout.from_json((path / LAYOUT_FILE).read_text())
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


# ---------------------------------------------------------------------------------- weights
def read_card(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata: its card's YAML (for adapters, `adapter_info.json` metadata + instruction)."""
    from huggingface_hub import ModelCard

    path = Path(path)
    readme = path / "README.md"
    card = ModelCard.load(readme).data.to_dict() if readme.is_file() else {}
    if (path / ADAPTER_INFO).is_file():
        info = json.loads((path / ADAPTER_INFO).read_text())
        card = {**card, **info.get("metadata", {}), "instruction": info.get("instruction")}
    return card


def _load_safetensors(path: Path, single: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / f"{single}.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [single]
    state_dict: dict[str, torch.Tensor] = {}
    for name in files:
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
    manifest = json.loads(manifest_file.read_text())
    lists = [manifest[k] for k in ("checkpoints", "models", "entries") if isinstance(manifest.get(k), list)]
    entries = lists[0] if lists else None
    if entries is None:  # no list in the manifest: every checkpoint folder under the zoo
        entries = [str(p.parent.relative_to(zoo_dir)) for p in sorted(zoo_dir.rglob("config.json"))]
    sources = []
    for entry in entries:
        entry = {"path": entry} if isinstance(entry, str) else entry
        rel = next((entry[k] for k in ("path", "dir", "checkpoint", "folder") if k in entry), None)
        if rel is None:
            raise CorpusError(f"{manifest_file}: entry {entry} has no 'path'.")
        path = (zoo_dir / rel).resolve()
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
