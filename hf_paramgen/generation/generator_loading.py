"""Loading a generator's components as diffusers' pipelines load theirs: each with its own `from_pretrained`
(`subfolder`, `revision`, `cache_dir`, `token`, `local_files_only`), from a folder or one commit of a Hub repo."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

from ..conditioning.samples import SampleEncoder
from ..models.modeling_param_tokenizer import ParamTokenizer
from .generation_targets import GenerationError

TOKENIZER_SUBFOLDER = "param_tokenizer"
SAMPLE_ENCODERS_SUBFOLDER = "sample_encoders"
WEIGHTS_NAME = "model.safetensors"  # what `save_pretrained` writes for the ParamTokenizer and the sample encoders
SAMPLE_ENCODER_FILES = ("config.json", WEIGHTS_NAME)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_commit(name_or_path: str | os.PathLike | None, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                   local_files_only: bool = False) -> str | None:
    """The commit a Hub revision points to now (transformers' `resolve_revision`), so every component of one load
    comes from the same repo state; a local folder, or a revision that cannot be resolved, comes back unchanged."""
    from transformers.utils.hub import resolve_revision

    resolved = resolve_revision(None if name_or_path is None else str(name_or_path), revision, token=token,
                                cache_dir=cache_dir, local_files_only=local_files_only)
    return getattr(resolved, "resolved", None) or resolved


def _join(*parts: str | None) -> str:
    return "/".join(p.strip("/") for p in parts if p)


class GeneratorSource:
    """Where a generator's files are: a local folder, or a Hub repo at one commit (cache, token, offline)."""

    def __init__(self, name_or_path: str | os.PathLike | None, subfolder: str | None = None,
                 revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 token: str | bool | None = None, local_files_only: bool = False):
        self.name = str(name_or_path) if name_or_path else None
        self.subfolder = subfolder or None
        self.folder = Path(self.name, self.subfolder or "") if self.name and os.path.isdir(self.name) else None
        self.hub = {"revision": revision, "cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}

    @property
    def on_hub(self) -> bool:
        return self.name is not None and self.folder is None

    def cached(self, relative: str) -> Path | None:
        """The file `relative` (to the generator root) if it is local or already in the HF cache."""
        if self.folder is not None:
            path = self.folder / relative
            return path if path.is_file() else None
        if not self.on_hub:
            return None
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(self.name, _join(self.subfolder, relative), cache_dir=self.hub["cache_dir"],
                                      revision=self.hub["revision"])
        return Path(path) if isinstance(path, str) else None

    def download(self, relative: str) -> Path:
        """The file `relative` (to the generator root): local, cached, or downloaded."""
        if self.folder is not None:
            return self.folder / relative
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.name, _join(self.subfolder, relative), **self.hub))


def load_param_tokenizer(source: GeneratorSource, config) -> ParamTokenizer:
    """The prior's ParamTokenizer: the generator folder's subfolder; else, for a pinned repo + revision, the pinned
    revision (or, when the generator snapshot holds the same weights — same sha256 — that copy, so a pinned
    generator loads offline from its own snapshot); else the subfolder of the generator repo at its commit."""
    sub = config.param_tokenizer_subfolder or TOKENIZER_SUBFOLDER
    repo, pin = config.param_tokenizer_repo_id, config.param_tokenizer_revision
    if source.folder is not None and (source.folder / sub / "config.json").is_file():
        return ParamTokenizer.from_pretrained(source.folder / sub)
    if source.on_hub and (not repo or config.param_tokenizer_sha256):
        weights = source.cached(_join(sub, WEIGHTS_NAME)) if repo else None
        if not repo or (weights is not None and file_sha256(weights) == config.param_tokenizer_sha256):
            return ParamTokenizer.from_pretrained(source.name, subfolder=_join(source.subfolder, sub), **source.hub)
    if not repo:
        raise GenerationError(f"{source.name or 'The prior'} has no {sub}/ folder with a ParamTokenizer and its config "
                              "names no param_tokenizer_repo_id: pass param_tokenizer=.")
    hub = {**source.hub, "revision": pin}
    try:
        return ParamTokenizer.from_pretrained(repo, subfolder=sub, **hub)
    except OSError as err:
        raise GenerationError(f"The ParamTokenizer pinned in the prior's config ({repo!r} at revision {pin!r}, "
                              f"subfolder {sub!r}) was not found: {err}") from err


def load_sample_encoders(source: GeneratorSource, config) -> dict[str, SampleEncoder]:
    """`sample_encoders/<name>/` of the generator (those its config lists; for an old local folder, every one)."""
    names = list(config.sample_encoders or [])
    folder = source.folder / SAMPLE_ENCODERS_SUBFOLDER if source.folder is not None else None
    if not names and folder is not None and folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    encoders = {}
    for name in names:
        paths = [source.download(_join(SAMPLE_ENCODERS_SUBFOLDER, name, f)) for f in SAMPLE_ENCODER_FILES]
        with contextlib.redirect_stdout(sys.stderr):  # huggingface_hub's mixin prints a notice for local folders
            encoders[name] = SampleEncoder.from_pretrained(paths[0].parent)
    return encoders
