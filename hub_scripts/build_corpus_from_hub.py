"""Build a weight corpus from checkpoints that live in Hub model repos (each pinned by revision if given).

    python hub_scripts/build_corpus_from_hub.py --repo_ids org/mlp-seed0 org/cnn-seed1@<sha> \
        --output_dir outputs/corpus --chunk_size 64 --aggregation layer

Each `org/name[@revision]` is fetched with `snapshot_download` (HF cache, HF_ENDPOINT, offline mode
honoured); the resolved commit sha of each repo is recorded in the corpus's `models` table (the card's header
summarises the distinct repos and revisions).
Local folders may be mixed in. Then push it with `hub_scripts/push_corpus.py`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from hf_paramgen.data import MODEL_SPLITS, CorpusError, build_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo_ids", nargs="+", required=True, help="Hub ids org/name[@revision] (or local folders)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--aggregation", choices=("layer", "architecture"), default="layer")
    parser.add_argument("--splits", nargs="+", choices=MODEL_SPLITS, default=None,
                        help="keep only checkpoints of these model splits")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    try:
        corpus = build_corpus(args.repo_ids, args.output_dir, chunk_size=args.chunk_size, aggregation=args.aggregation,
                              splits=args.splits, overwrite=args.overwrite)
    except CorpusError as err:
        print(f"build_corpus_from_hub: error: {err}", file=sys.stderr)
        return 1
    models = corpus["models"]
    for row in models.select_columns(["model_id", "repo_id", "revision"]).to_list():
        print(f"{row['model_id']}: {row['repo_id'] or '(local)'} @ {row['revision'] or '-'}")
    print(f"corpus {args.output_dir}: {len(models)} models, {len(corpus['chunks'])} chunks of {args.chunk_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
