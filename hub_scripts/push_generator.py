"""Push a generator folder (prior at the root, `param_tokenizer/`, `sample_encoders/`) to the Hub with a card.

    python hub_scripts/push_generator.py --generator outputs/igpg --repo_id org/igpg \
        --corpus org/weight-corpus@<sha> --corpus_dir outputs/corpus --zoo_manifest outputs/zoo/manifest.json \
        --train_log outputs/igpg/train_log.json --eval_json outputs/eval/generator.json

Two commits: the first uploads the generator, re-saved with `ParamGenerator.save_pretrained` so the
repo is a complete pipeline repo (`custom_pipelines`, `auto_map`, the flat remote code:
`pipeline(model=repo, trust_remote_code=True)` works without hf_paramgen); the second pins the
ParamTokenizer in the prior's config (this repo, subfolder `param_tokenizer`, the first commit's sha;
the config also holds the sha256 of its weights, so a downloaded snapshot resolves the pin offline) and
adds the card rendered from `hf_paramgen/hub/model_cards/param_generator.md`. Prints the final commit sha.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

TRAINING_KEYS = ("codebook_size", "codes_per_chunk", "condition_dim", "max_condition_tokens", "max_position_embeddings",
                 "chunk_size", "aggregation", "block_window", "text_encoder")


def _json(path: str | None):
    return json.loads(Path(path).read_text()) if path else None


def zoo_summary(manifest: dict | list | None) -> dict | None:
    """Counts of a zoo `manifest.json`: checkpoints, architectures and splits."""
    if manifest is None:
        return None
    entries = manifest if isinstance(manifest, list) else next(
        (manifest[k] for k in ("checkpoints", "models", "entries") if isinstance(manifest.get(k), list)), [])
    entries = [e if isinstance(e, dict) else {"path": e} for e in entries]
    return {"num_checkpoints": len(entries),
            "architectures": sorted({str(e.get("architecture")) for e in entries if e.get("architecture")}) or ["?"],
            "splits": sorted({str(e.get("split")) for e in entries if e.get("split")}) or ["?"]}


def evaluation_rows(evaluation) -> list[dict]:
    """An evaluation JSON (list of row dicts, or {name: {metric: value}}) -> table rows."""
    if evaluation is None:
        return []
    if isinstance(evaluation, dict):
        return [{"name": k, **v} if isinstance(v, dict) else {"name": k, "value": v} for k, v in evaluation.items()]
    return list(evaluation)


def training_settings(config: dict, log: dict | None) -> list[tuple[str, object]]:
    """Prior config fields + decoder + scalar entries of a training log."""
    rows = [(k, config.get(k)) for k in TRAINING_KEYS if config.get(k) is not None]
    decoder = config.get("transformer", {})  # the decoder's (diff) config dict
    rows.append(("decoder", ", ".join(f"{k}={v}" for k, v in sorted(decoder.items()) if v is not None)))
    for key, value in (log or {}).items():
        if isinstance(value, (int, float, str, bool)):
            rows.append((key, value))
    return rows


def checkpoint_sources(corpus_dir: str | None) -> list[tuple[str, str]]:
    """(repo_id, revision) of every Hub checkpoint in a local corpus folder's `models` table."""
    if not corpus_dir:
        return []
    from hf_paramgen.data.corpus import load_corpus

    rows = load_corpus(corpus_dir)["models"].select_columns(["repo_id", "revision"]).to_list()
    return sorted({(r["repo_id"], r["revision"]) for r in rows if r["repo_id"]})


def render_generator_card(config: dict, repo_id: str, args: argparse.Namespace):
    from hf_paramgen.hub.cards import read_template, render_card

    corpus_repo, _, corpus_rev = (args.corpus or "").partition("@")
    card_data = {"library_name": "hf_paramgen", "pipeline_tag": None,
                 "tags": ["hf_paramgen", "parameter-generation", "weight-space", "igpg"],
                 "datasets": [corpus_repo] if corpus_repo else None}
    context = {
        "repo_id": repo_id, "corpus_repo_id": corpus_repo or None, "corpus_revision": corpus_rev or None,
        "param_tokenizer_repo_id": config["param_tokenizer_repo_id"],
        "param_tokenizer_revision": config["param_tokenizer_revision"],
        "param_tokenizer_subfolder": config["param_tokenizer_subfolder"],
        "zoo": zoo_summary(_json(args.zoo_manifest)),
        "upstream": ([(corpus_repo, corpus_rev or None)] if corpus_repo else []) + checkpoint_sources(args.corpus_dir),
        "training": training_settings(config, _json(args.train_log)),
        "evaluation": evaluation_rows(_json(args.eval_json)),
        "layouts": sorted(config.get("layouts") or {}),
    }
    return render_card(read_template("param_generator.md"), card_data, **context)


def push_generator(args: argparse.Namespace) -> str:
    """Stage, push, pin and card the generator; returns the final commit sha."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_paramgen.generation.generator import TOKENIZER_SUBFOLDER, ParamGenerator

    source = Path(args.generator)
    if not (source / "config.json").is_file():
        raise SystemExit(f"push_generator: {source} is not a generator folder (no config.json of the prior).")
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="push-generator-") as tmp:
        staged = Path(tmp) / "generator"
        shutil.copytree(source, staged, ignore=shutil.ignore_patterns(".git", ".cache", "README.md"))
        ParamGenerator.from_pretrained(staged).save_pretrained(staged)  # a complete pipeline repo
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.revision:
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        first = api.upload_folder(folder_path=staged, repo_id=args.repo_id, revision=args.revision,
                                  commit_message=f"{args.commit_message} (files)").oid
        config = json.loads((staged / "config.json").read_text())
        config.update(param_tokenizer_repo_id=args.repo_id, param_tokenizer_revision=first,
                      param_tokenizer_subfolder=config.get("param_tokenizer_subfolder") or TOKENIZER_SUBFOLDER)
        card = render_generator_card(config, args.repo_id, args)
        operations = [CommitOperationAdd("config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()),
                      CommitOperationAdd("README.md", str(card).encode())]
        info = api.create_commit(args.repo_id, operations, revision=args.revision,
                                 commit_message=f"{args.commit_message} (pin ParamTokenizer @ {first[:8]}, card)")
    return info.oid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generator", required=True, help="generator folder (ParamGenerator.save_pretrained output)")
    parser.add_argument("--repo_id", required=True, help="target model repo, org/name")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--corpus", default=None, help="weight corpus the prior was trained on: org/name[@revision]")
    parser.add_argument("--corpus_dir", default=None,
                        help="local copy of that corpus: its Hub checkpoints go to the card")
    parser.add_argument("--zoo_manifest", default=None, help="the zoo's manifest.json (summarised in the card)")
    parser.add_argument("--train_log", default=None, help="JSON of training settings/results (scalars go to the card)")
    parser.add_argument("--eval_json", default=None, help="evaluation JSON: list of rows or {name: {metric: value}}")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--commit_message", default="Upload hf_paramgen generator")
    args = parser.parse_args(argv)
    print(push_generator(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
