"""Push a weight corpus folder (`hf-paramgen build-corpus` output) to a Hub dataset repo with its card.

    python hub_scripts/push_corpus.py --corpus outputs/corpus --repo_id org/weight-corpus [--revision v1]

Both tables go up as dataset configs "chunks" and "models" (`load_dataset(repo, "chunks")`,
`hf_paramgen.data.load_corpus(repo)`); the card is rendered from the package's `weight_corpus.md` template with
a summary of the corpus's provenance (per-model repo ids and revisions stay in the `models` table). Prints the
pushed commit sha.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def corpus_card_for(folder: Path):
    """The card of a corpus folder, rendered from the `weight_corpus.md` template and its `corpus_config.json`."""
    from hf_paramgen.data.corpus import CONFIG_FILE, corpus_card, load_corpus

    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise SystemExit(f"push_corpus: {folder} is not a corpus folder (no {CONFIG_FILE}); build it with "
                         "`hf-paramgen build-corpus` or hub_scripts/build_corpus_from_hub.py.")
    return corpus_card(load_corpus(folder), json.loads(config_file.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="corpus folder written by build_corpus")
    parser.add_argument("--repo_id", required=True, help="target dataset repo, org/name")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)

    from huggingface_hub import HfApi

    from hf_paramgen.data import push_corpus

    folder = Path(args.corpus)
    card = corpus_card_for(folder)
    push_corpus(folder, args.repo_id, revision=args.revision, private=args.private or None, card=card)
    print(HfApi().dataset_info(args.repo_id, revision=args.revision).sha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
