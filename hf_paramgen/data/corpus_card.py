"""A weight corpus's dataset card: provenance (Hub repos, architectures, tasks, splits) and size, rendered from the
`weight_corpus.md` template."""

from __future__ import annotations

import json
from collections import Counter

from datasets import Dataset, DatasetDict

MAX_LISTED = 20  # distinct Hub repos / architectures named in a card's YAML header (the rest are counted)


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((name for bound, name in bounds if n < bound), "1B<n<10B")


def provenance_summary(models: Dataset, max_listed: int = MAX_LISTED) -> dict:
    """Where a corpus's models come from, summarised (its size does not grow with the corpus beyond `max_listed`).

    Per-model provenance (`source`, `repo_id`, `revision`) stays in the `models` table; this counts models per
    model split and architecture, distinct tasks, models from Hub repos vs local folders, and lists up to
    `max_listed` distinct Hub repos with their revisions (most models first).
    """
    rows = models.select_columns(["split", "architecture", "repo_id", "revision", "task"]).to_list()
    repos = Counter((r["repo_id"], r["revision"] or None) for r in rows if r["repo_id"])
    archs = Counter(r["architecture"] for r in rows)
    tasks = {json.loads(r["task"] or "{}").get("task_id") for r in rows} - {None}
    return {
        "num_models": len(rows),
        "models_per_split": dict(sorted(Counter(r["split"] for r in rows).items())),
        "models_per_architecture": dict(archs.most_common(max_listed)),
        "num_architectures": len(archs),
        "num_tasks": len(tasks),
        "models_from_hub_repos": sum(repos.values()),
        "models_from_local_folders": len(rows) - sum(repos.values()),
        "num_hub_repos": len(repos),
        "hub_repos": [{"repo_id": repo, "revision": rev, "models": n}
                      for (repo, rev), n in repos.most_common(max_listed)],
        "per_model": "the `models` table: source, repo_id, revision of every model",
    }


def corpus_card(corpus: DatasetDict, config: dict):
    """The dataset card (`huggingface_hub.DatasetCard`) of a corpus, from the `weight_corpus.md` template.

    Args:
        corpus: the corpus (its `models` table gives the counts and the provenance summary).
        config: `chunk_size`, `aggregation` and optionally `pretty_name`.
    """
    from ..hub.cards import read_template, render_card

    models = corpus["models"].select_columns(["architecture", "split", "num_params"]).to_list()
    arch_counts = Counter(m["architecture"] for m in models)
    arch_params = {m["architecture"]: m["num_params"] for m in models}
    provenance = provenance_summary(corpus["models"])
    card_data = {
        "pretty_name": config.get("pretty_name", "hf_paramgen weight corpus"),
        "tags": ["hf_paramgen", "weight-space", "neural-network-weights", "model-zoo"],
        "size_categories": [_size_category(len(corpus["chunks"]))],
        "configs": [{"config_name": name, "data_files": [{"split": "train", "path": f"{name}/train-*"}]}
                    for name in ("chunks", "models")],
        "provenance": provenance,
    }
    ctx = {
        "num_models": len(models), "num_chunks": len(corpus["chunks"]),
        "num_params": sum(m["num_params"] for m in models),
        "chunk_size": config["chunk_size"], "aggregation": config["aggregation"],
        "architectures": [(a, n, arch_params[a]) for a, n in sorted(arch_counts.items())],
        "splits": sorted(Counter(m["split"] for m in models).items()),
        "provenance": provenance, "num_hub_sources": provenance["models_from_hub_repos"],
    }
    return render_card(read_template("weight_corpus.md"), card_data, repo_type="dataset", **ctx)
