"""huggingface_hub glue: card templates (package data `hf_paramgen/hub/model_cards/`), rendering, pushing and
fetching."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, ModelCard

from ..utils import check_revision

TEMPLATE_DIR = Path(__file__).resolve().parent / "model_cards"  # package data (top-level `model_cards` links here)


def read_template(name: str) -> str:
    """Text of `model_cards/<name>` (e.g. "weight_corpus.md")."""
    path = TEMPLATE_DIR / name
    if not path.is_file():
        known = sorted(p.name for p in TEMPLATE_DIR.glob("*.md")) if TEMPLATE_DIR.is_dir() else []
        raise FileNotFoundError(f"Card template {name!r} not found in {TEMPLATE_DIR}; known templates: {known}.")
    return path.read_text()


def render_card(template: str, card_data: dict, repo_type: str = "model", **context) -> ModelCard | DatasetCard:
    """Render a Jinja card template with YAML metadata `card_data` and extra `context` variables.

    Args:
        template: template text (use `read_template` for the ones in `model_cards/`).
        card_data: metadata written to the card's YAML header (and available as `card_data` in the template).
        repo_type: "model" or "dataset".
    """
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}.")
    cls = DatasetCard if repo_type == "dataset" else ModelCard
    return cls.from_template(cls.card_data_class(**card_data), template_str=template, **context)


def _where(repo_id: str, revision: str | None, repo_type: str) -> str:
    from huggingface_hub import constants

    return (f"{repo_type} repo {repo_id!r} at revision {revision or 'main'!r} on {constants.ENDPOINT} "
            f"(cache: {constants.HF_HUB_CACHE})")


def fetch_snapshot(
    repo_id: str,
    revision: str | None = None,
    repo_type: str = "model",
    allow_patterns: str | list[str] | None = None,
) -> Path:
    """Download (or find in the local cache) a Hub repo snapshot and return its folder.

    Args:
        repo_id: "namespace/name".
        revision: branch, tag or commit sha (default "main"); pin a sha for reproducible corpora.
        repo_type: "model" or "dataset".
        allow_patterns: only files matching these glob patterns.

    Raises:
        ValueError: the repo or revision does not exist on the endpoint.
        OSError: the snapshot is not cached and the Hub cannot be reached (or `HF_HUB_OFFLINE=1`).
    """
    check_revision(revision)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, repo_type=repo_type, allow_patterns=allow_patterns))
    except RevisionNotFoundError as err:
        raise ValueError(f"Revision not found: {_where(repo_id, revision, repo_type)}. List the repo's branches and "
                         "tags with `HfApi().list_repo_refs`, or pin an existing commit sha.") from err
    except RepositoryNotFoundError as err:
        raise ValueError(f"Repository not found: {_where(repo_id, revision, repo_type)}. Check the repo id and "
                         "repo_type, and that HF_ENDPOINT points at the Hub that holds it.") from err
    except LocalEntryNotFoundError as err:
        state = ("offline mode is on (HF_HUB_OFFLINE=1): download it once online or unset HF_HUB_OFFLINE"
                 if constants.is_offline_mode() else "the Hub could not be reached: check HF_ENDPOINT and the network")
        raise OSError(f"Snapshot not in the local cache: {_where(repo_id, revision, repo_type)}; {state}.") from err


def push_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str = "model",
    card: ModelCard | DatasetCard | str | None = None,
    commit_message: str = "Upload with hf_paramgen",
    private: bool = False,
) -> str:
    """Create `repo_id` if needed and upload every file of `folder` in one commit.

    Args:
        folder: local folder (e.g. a `save_pretrained` output).
        repo_id: "namespace/name".
        repo_type: "model" or "dataset".
        card: written as README.md (replaces a README.md in `folder`).
        commit_message: first line of the commit.
        private: visibility of a newly created repo.

    Returns:
        The sha of the new commit.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"push_folder expects a folder to upload, got {str(folder)!r}.")
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not _ignored(p.relative_to(folder))]
    operations = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files
                  if not (card is not None and p.relative_to(folder).as_posix() == "README.md")]
    if card is not None:
        operations.append(CommitOperationAdd("README.md", str(card).encode()))
    info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type)
    return info.oid


def _ignored(relative: Path) -> bool:
    """Local bookkeeping that never goes to the Hub (git metadata, huggingface_hub's local-dir cache)."""
    return relative.parts[0] == ".git" or relative.parts[:2] == (".cache", "huggingface")
