"""huggingface_hub glue: card templates (package data) and rendering, pushing folders, fetching snapshots."""

from .cards import fetch_snapshot, push_folder, read_template, render_card

__all__ = ["fetch_snapshot", "push_folder", "read_template", "render_card"]
