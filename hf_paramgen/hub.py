"""huggingface_hub glue: card templates from `model_cards/`, rendering, pushing and fetching."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, ModelCard

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "model_cards"


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
