"""Loading a generator's components as diffusers' pipelines load theirs: each with its own `from_pretrained`
(`subfolder`, `revision`, `cache_dir`, `token`, `local_files_only`), from a folder or one commit of a Hub repo.

Every name that becomes a path is checked first (a repo id with `validate_repo_id`; a revision, subfolder or sample
encoder name for `..`, absolute and backslash parts), a component that does not load is explained (`explain_load_error`:
the file that is truncated, the config field that lies), and the ParamTokenizer is checked against the sha256 of its
weights the prior's config records (`param_tokenizer_sha256`): a generator refuses a ParamTokenizer it was not
trained with."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

from ..conditioning.samples import SampleEncoder
from ..models.modeling_param_prior import ParamPriorForCausalLM
from ..models.modeling_param_tokenizer import ParamTokenizer
from ..utils import check_hub_id, check_relative_path, check_revision, explain_load_error, looks_like_path
from .generation_targets import GenerationError

TOKENIZER_SUBFOLDER = "param_tokenizer"
SAMPLE_ENCODERS_SUBFOLDER = "sample_encoders"
WEIGHTS_NAME = "model.safetensors"  # what `save_pretrained` writes for the ParamTokenizer and the sample encoders
SAMPLE_ENCODER_FILES = ("config.json", WEIGHTS_NAME)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtypes a floating-point parameter may be stored in


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


def _checked(check, value, what: str):
    """`check(value, what)`, its `ValueError` raised as a `GenerationError`."""
    try:
        return check(value, what)
    except ValueError as err:
        raise GenerationError(str(err)) from err


def check_compatible(prior_config, tokenizer_config) -> None:
    """Raise `GenerationError` unless the prior models this ParamTokenizer's codes."""
    pairs = [("codebook_size", prior_config.codebook_size, tokenizer_config.codebook_size),
             ("codes per chunk", prior_config.codes_per_chunk, tokenizer_config.codes_per_chunk)]
    if prior_config.chunk_size is not None:
        pairs.append(("chunk_size", prior_config.chunk_size, tokenizer_config.chunk_size))
    pairs.append(("aggregation", prior_config.aggregation, tokenizer_config.aggregation))
    bad = [f"{name}: prior {p!r} vs ParamTokenizer {t!r}" for name, p, t in pairs if p != t]
    if bad:
        raise GenerationError("The prior was not trained on this ParamTokenizer's codes (" + "; ".join(bad) + ").")


def check_param_tokenizer_sha256(weights: str | os.PathLike, config, where: str) -> None:
    """Refuse a ParamTokenizer whose weights file differs from the one the prior's config records (when it records
    one: `param_tokenizer_sha256`, written by `ParamGenerator.save_pretrained`)."""
    recorded = getattr(config, "param_tokenizer_sha256", None)
    if not recorded:
        return
    actual = file_sha256(weights)
    if actual != recorded:
        raise GenerationError(
            f"The ParamTokenizer in {where} is not the one this prior was trained with: its {WEIGHTS_NAME} has sha256 "
            f"{actual}, the prior's config records param_tokenizer_sha256={recorded}. Put the generator's own "
            "ParamTokenizer back (save or download the generator again); generating with another one gives wrong "
            "networks.")


class GeneratorSource:
    """Where a generator's files are: a local folder, or a Hub repo at one commit (cache, token, offline).

    Raises `GenerationError` for a missing folder given as a path, an invalid repo id, or a subfolder or revision
    that could lead outside the folder or cache (`..`, absolute or backslash parts)."""

    def __init__(self, name_or_path: str | os.PathLike | None, subfolder: str | None = None,
                 revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 token: str | bool | None = None, local_files_only: bool = False):
        self.name = os.fspath(name_or_path) if name_or_path else None
        self.subfolder = _checked(check_relative_path, subfolder, "subfolder") or None
        _checked(check_revision, revision, "revision")
        self.folder = Path(self.name, self.subfolder or "") if self.name and os.path.isdir(self.name) else None
        if self.name and self.folder is None:
            if looks_like_path(name_or_path):
                raise GenerationError(
                    f"No such folder: {os.path.abspath(os.path.expanduser(self.name))} (given as {self.name!r}). "
                    "Expected a generator folder (what ParamGenerator.save_pretrained writes) or a Hub repo id "
                    "'org/name'.")
            _checked(check_hub_id, self.name, "There is no folder of that name, and the generator repo id")
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

    def explain(self, model_class, relative: str = "") -> GenerationError | None:
        """A `GenerationError` saying why `model_class` did not load from the folder `relative` (local or cached),
        or None when `explain_load_error` finds no cause."""
        config = self.cached(_join(relative, "config.json"))
        folder = config.parent if config is not None else (self.folder / relative if self.folder else None)
        why = explain_load_error(model_class, folder) if folder is not None else None
        if why is None:
            return None
        return GenerationError(f"{model_class.__name__} of {self.name!r} does not load: {why}")


def _not_loaded(source: GeneratorSource, what: str, err: Exception) -> GenerationError:
    """A `GenerationError` for a component that did not load and that `explain_load_error` could not explain."""
    where = _join(source.name, source.subfolder) if source.name else "the given prior"
    revision = source.hub.get("revision")
    return GenerationError(f"The {what} of the generator {where!r}{f' (revision {revision})' if revision else ''} "
                           f"does not load: {type(err).__name__}: {err}. Expected a folder or repo as "
                           "ParamGenerator.save_pretrained writes it (check the name, the revision and, offline, "
                           "the HF cache).")


def check_stored_dtypes(model, weights: Path | None, where: str) -> None:
    """Refuse a weights file that stores a floating-point parameter as integers or booleans (a corrupted file, or
    one saved from another model): `from_pretrained` would cast it silently. Reads the safetensors header only."""
    if weights is None or not Path(weights).is_file():
        return
    from safetensors import safe_open

    expected = {k: v.dtype for k, v in model.state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        bad = [(k, f.get_slice(k).get_dtype()) for k in f.keys()
               if k in expected and expected[k].is_floating_point and f.get_slice(k).get_dtype() not in FLOAT_DTYPES]
    if bad:
        raise GenerationError(f"{where}: {weights} stores floating-point parameters as {sorted({d for _, d in bad})} "
                              f"(e.g. {bad[0][0]!r} as {bad[0][1]}); expected one of {FLOAT_DTYPES}. The file is "
                              "corrupted or comes from another model: save or download the generator again.")


def load_prior(source: GeneratorSource) -> ParamPriorForCausalLM:
    """The prior at the root of the generator (folder or repo), its load failures explained."""
    if source.folder is not None and not (source.folder / "config.json").is_file():
        found = sorted(p.name for p in source.folder.iterdir()) if source.folder.is_dir() else "no such folder"
        raise GenerationError(f"{source.folder} is not a generator folder: it holds no config.json (found: {found}). "
                              "Expected what ParamGenerator.save_pretrained writes.")
    try:
        prior = ParamPriorForCausalLM.from_pretrained(source.name, subfolder=source.subfolder or "", **source.hub)
    except Exception as err:
        raise (source.explain(ParamPriorForCausalLM) or _not_loaded(source, "prior", err)) from err
    check_stored_dtypes(prior, source.cached(WEIGHTS_NAME), f"The prior of {source.name!r}")
    return prior


def _load_checked(source: GeneratorSource, config, sub: str, load) -> ParamTokenizer:
    """`load()` (a ParamTokenizer from the generator's `sub`), explained on failure, checked against the prior."""
    try:
        tokenizer = load()
    except Exception as err:
        raise (source.explain(ParamTokenizer, sub) or _not_loaded(source, "ParamTokenizer", err)) from err
    check_compatible(config, tokenizer.config)
    check_stored_dtypes(tokenizer, source.cached(_join(sub, WEIGHTS_NAME)), f"The ParamTokenizer in {sub}/")
    return tokenizer


def load_param_tokenizer(source: GeneratorSource, config) -> ParamTokenizer:
    """The prior's ParamTokenizer: the generator folder's subfolder; else, for a pinned repo + revision, the pinned
    revision (or, when the generator snapshot holds the same weights — same sha256 — that copy, so a pinned
    generator loads offline from its own snapshot); else the subfolder of the generator repo at its commit.
    Its weights must have the sha256 the config records (`param_tokenizer_sha256`), when it records one."""
    sub = _checked(check_relative_path, config.param_tokenizer_subfolder or TOKENIZER_SUBFOLDER,
                   "param_tokenizer_subfolder")
    repo, pin = config.param_tokenizer_repo_id, config.param_tokenizer_revision
    if repo:
        _checked(check_hub_id, repo, "param_tokenizer_repo_id")
        _checked(check_revision, pin, "param_tokenizer_revision")
    if source.folder is not None and (source.folder / sub / "config.json").is_file():
        tokenizer = _load_checked(source, config, sub, lambda: ParamTokenizer.from_pretrained(source.folder / sub))
        check_param_tokenizer_sha256(source.folder / sub / WEIGHTS_NAME, config, source.folder / sub)
        return tokenizer
    if source.on_hub and (not repo or config.param_tokenizer_sha256):
        weights = source.cached(_join(sub, WEIGHTS_NAME)) if repo else None
        if not repo or (weights is not None and file_sha256(weights) == config.param_tokenizer_sha256):
            tokenizer = _load_checked(source, config, sub, lambda: ParamTokenizer.from_pretrained(
                source.name, subfolder=_join(source.subfolder, sub), **source.hub))
            where = f"{_join(source.name, source.subfolder, sub)} (revision {source.hub['revision']})"
            check_param_tokenizer_sha256(source.download(_join(sub, WEIGHTS_NAME)), config, where)
            return tokenizer
    if not repo:
        raise GenerationError(f"{source.name or 'The prior'} has no {sub}/ folder with a ParamTokenizer and its config "
                              "names no param_tokenizer_repo_id: pass param_tokenizer=.")
    hub = {**source.hub, "revision": pin}
    try:
        tokenizer = ParamTokenizer.from_pretrained(repo, subfolder=sub, **hub)
        weights = hf_hub_download_path(repo, _join(sub, WEIGHTS_NAME), hub)
    except OSError as err:
        raise GenerationError(f"The ParamTokenizer pinned in the prior's config ({repo!r} at revision {pin!r}, "
                              f"subfolder {sub!r}) was not found: {err}") from err
    check_compatible(config, tokenizer.config)
    check_param_tokenizer_sha256(weights, config, f"{repo}/{sub} (revision {pin})")
    return tokenizer


def hf_hub_download_path(repo_id: str, filename: str, hub: dict) -> Path:
    """`hf_hub_download` of one file with the generator's Hub options (revision, cache, token, offline)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, **hub))


def load_sample_encoders(source: GeneratorSource, config) -> dict[str, SampleEncoder]:
    """`sample_encoders/<name>/` of the generator (those its config lists; for an old local folder, every one)."""
    names = list(config.sample_encoders or [])
    folder = source.folder / SAMPLE_ENCODERS_SUBFOLDER if source.folder is not None else None
    if not names and folder is not None and folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    encoders = {}
    for name in names:
        if not isinstance(name, str) or "/" in name or not _checked(check_relative_path, name, "sample encoder name"):
            raise GenerationError(f"The prior's config lists a sample encoder named {name!r}; expected a plain folder "
                                  f"name under {SAMPLE_ENCODERS_SUBFOLDER}/ (no '/', '..' or backslash).")
        relative = _join(SAMPLE_ENCODERS_SUBFOLDER, name)
        try:
            paths = [source.download(_join(relative, f)) for f in SAMPLE_ENCODER_FILES]
        except Exception as err:
            raise _not_loaded(source, f"sample encoder {name!r}", err) from err
        check_sample_encoder_files(*paths)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # huggingface_hub's mixin prints a notice for local folders
                encoders[name] = SampleEncoder.from_pretrained(paths[0].parent)
        except Exception as err:
            raise (source.explain(SampleEncoder, relative) or _not_loaded(source, f"sample encoder {name!r}", err)
                   ) from err
        check_stored_dtypes(encoders[name], paths[1], f"The sample encoder {name!r}")
    return encoders


def check_sample_encoder_files(config_file: Path, weights: Path) -> None:
    """A sample encoder's `config.json` (positive int `num_features` and `dim`) must describe the shapes its
    weights were saved with (`mean` (num_features,), `projection` (num_features, dim)), checked before the encoder
    is built: a lying config would otherwise allocate its projection first (a 10**6 x 10**6 one: 4 TB)."""
    from ..utils import safetensors_shapes

    for path in (config_file, weights):
        if not Path(path).is_file():
            found = sorted(p.name for p in Path(path).parent.iterdir()) if Path(path).parent.is_dir() else "no folder"
            raise GenerationError(f"Sample encoder folder {Path(path).parent} holds no {Path(path).name} (found: "
                                  f"{found}); expected {list(SAMPLE_ENCODER_FILES)} as SampleEncoder.save_pretrained "
                                  "writes them.")
    try:
        config = json.loads(Path(config_file).read_text())
    except (OSError, ValueError) as err:
        raise GenerationError(f"{config_file} is not valid JSON ({err}); expected the config "
                              "SampleEncoder.save_pretrained writes.") from err
    if not isinstance(config, dict):
        raise GenerationError(f"{config_file} holds a JSON {type(config).__name__}, expected an object with "
                              "num_features and dim.")
    values = {"num_features": config.get("num_features"), "dim": config.get("dim", 384)}
    for field_name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise GenerationError(f"{config_file}: {field_name} must be a positive int, got {value!r}.")
    try:
        shapes = safetensors_shapes(weights)
    except Exception as err:  # noqa: BLE001  (safetensors raises its own SafetensorError on bad bytes)
        raise GenerationError(f"{weights} is truncated or corrupted: safetensors cannot read it ({err}). Download or "
                              "save the generator again.") from err
    n, d = values["num_features"], values["dim"]
    for name, expected in (("mean", (n,)), ("projection", (n, d))):
        stored = shapes.get(name)
        if stored is None or tuple(stored) == expected:
            continue
        field_name, truth = ("num_features", stored[0]) if stored[0] != n else ("dim", stored[-1])
        raise GenerationError(f"{config_file} says {field_name}={values[field_name]}, but {weights} was saved with "
                              f"{field_name}={truth} ({name}: {list(stored)} stored, {list(expected)} from the "
                              f"config); restore {field_name}={truth} or save the sample encoder again.")


def is_diffusion_generator(name_or_path: str | os.PathLike, revision: str | None = None,
                           cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                           local_files_only: bool = False) -> bool:
    """True when the folder or repo is a diffusion generator: its `config.json` names `model_type="param_diffusion"`
    (what `ParamDiffusionPipeline.save_pretrained` writes beside `model_index.json`)."""
    source = GeneratorSource(name_or_path, None, revision, cache_dir, token, local_files_only)
    try:
        config = json.loads(source.download("config.json").read_text())
    except Exception:  # noqa: BLE001  (no config.json, or not reachable: not a diffusion folder; the loader explains)
        return source.folder is not None and (source.folder / "model_index.json").is_file()
    return isinstance(config, dict) and config.get("model_type") == "param_diffusion"


def load_generator(name_or_path: str | os.PathLike, **kwargs):
    """The generator at a folder or repo id, whichever family it is: a `DiffusionParamGenerator` for a diffusion
    pipeline folder, else a `ParamGenerator` (`kwargs`: their `from_pretrained` options)."""
    hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
    if is_diffusion_generator(name_or_path, **hub):  # imported by name: no part of this module's Hub remote code
        import importlib

        diffusion = importlib.import_module("hf_paramgen.diffusion.generator")
        return diffusion.DiffusionParamGenerator.from_pretrained(name_or_path, **kwargs)
    from .generator import ParamGenerator

    return ParamGenerator.from_pretrained(name_or_path, **kwargs)
