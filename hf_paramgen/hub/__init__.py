"""huggingface_hub glue: card templates (package data) and rendering, pushing folders, fetching snapshots, and
the flat remote code a saved model or generator carries."""

from .cards import fetch_snapshot, push_folder, read_template, render_card
from .remote_code import RemoteCodeError, RemoteCodeMixin, remote_code_closure, write_remote_code

__all__ = ["RemoteCodeError", "RemoteCodeMixin", "fetch_snapshot", "push_folder", "read_template",
           "remote_code_closure", "render_card", "write_remote_code"]
