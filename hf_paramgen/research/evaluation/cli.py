"""`hf-paramgen evaluate`: parse, build the condition and generator functions, run, add speed figures, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ...utils import atomic_write_json
from ..tasks import task_from_dict
from ..zoo import load_manifest
from .report import check_targets, format_architecture_table, format_table, format_targets, plot_curves
from .runner import evaluate_generator
from .speed import GenerationTimer, batch_throughput, compute_floor_ratio, generator_fn, prior_size
from .zoo_index import ConditionFn, hashing_condition_fn

SPEED_NOTE = ("wall time of generate_for_task calls (incl. conditioning and decoding codes to weights), all tasks "
              "incl. shuffled-instruction calls; FLOPs/token = 2 x all prior parameters (embeddings included) + 4 x "
              "layers x mean context x hidden")
BATCHED_KEYS_NOTE = ("tokens_per_second / compute_floor_ratio: one batched generate_codes call of "
                     "`batched_generation.batch` networks; *_k: the evaluation's own generate_for_task calls "
                     "(k candidates each, incl. decoding)")


def _parser() -> argparse.ArgumentParser:
    from ...generation.generator import DECODINGS

    parser = argparse.ArgumentParser(prog="hf-paramgen evaluate", description="Generated nets vs baselines per split.")
    parser.add_argument("--generator", default=None, help="a ParamGenerator folder (from_pretrained)")
    parser.add_argument("--zoo_dir", default="outputs/zoo")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--png", default=None, help="fine-tuning curves PNG (default: next to --json)")
    parser.add_argument("--architectures", nargs="+", default=["cnn-mnist", "mlp-784-32"])
    parser.add_argument("--heldout_architectures", nargs="*", default=None)
    parser.add_argument("--num_tasks", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=4, help="0: tasks of any size")
    parser.add_argument("--k", type=int, default=4, help="candidates generated per task (best of k on validation)")
    parser.add_argument("--finetune_steps", type=int, default=20)
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoding", choices=DECODINGS, default="mean",
                        help="decode the sampled codes, or the expected weights under each code's distribution")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--throughput_batch", type=int, default=64,
                        help="also time one batched generate_codes call of this many networks (0: skip)")
    parser.add_argument("--baselines_only", action="store_true", help="no generator: all baselines incl. the ridge map")
    parser.add_argument("--small", action="store_true", help="1 task per split, k=2, short curves (tests)")
    parser.add_argument("--hashing_conditions", action="store_true",
                        help="HashingTextEncoder instead of MiniLM (tests)")
    parser.add_argument("--diffusion_generator", default=None,
                        help="also evaluate this diffusion generator on the same rows (diffusion_* keys)")
    parser.add_argument("--diffusion_steps", type=int, default=None, help="its sampling steps (default: its own)")
    parser.add_argument("--diffusion_scheduler", default=None, help="its sampler (default: its own)")
    parser.add_argument("--ar_timing_rows", type=int, default=2,
                        help="rows per split on which the autoregressive generator's seconds per network are timed")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command's arguments, `--small` applied; a generator or `--baselines_only` is required."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.small:
        args.num_tasks, args.k, args.finetune_steps, args.max_steps = 1, 2, 5, 20
        args.throughput_batch = min(args.throughput_batch, 2)
    if not args.baselines_only and not args.generator:
        parser.error("give --generator DIR, or --baselines_only")
    return args


def _generator(args: argparse.Namespace) -> tuple[GenerationTimer | None, object]:
    """(timed generate_fn, ParamGenerator), or (None, None) for `--baselines_only`."""
    if args.baselines_only:
        return None, None
    from ...generation.generator import ParamGenerator

    generator = ParamGenerator.from_pretrained(args.generator)
    return generator_fn(generator, decoding=args.decoding, temperature=args.temperature, top_k=args.top_k), generator


def add_speed(result: dict, args: argparse.Namespace, gen_fn: GenerationTimer | None, generator) -> None:
    """`tokens_per_second` and `compute_floor_ratio` of the evaluation's own generation calls, then (with
    `--throughput_batch`) of one batched call, which become the headline values (the k-call ones get `_k`)."""
    result["tokens_per_second"] = result["compute_floor_ratio"] = None
    if gen_fn is None or not gen_fn.tokens_per_second:
        return
    params, hidden, layers, max_context = prior_size(generator)
    # mean attended length: half of one network's codes, or half the context window when codes come in blocks
    context = min(gen_fn.tokens_per_sample, max_context or gen_fn.tokens_per_sample) // 2
    result["tokens_per_second"] = gen_fn.tokens_per_second
    result["generation"] = {"tokens": gen_fn.tokens, "seconds": gen_fn.seconds, "prior_params": params,
                            "note": SPEED_NOTE}
    if not (params and hidden):
        return
    floor = compute_floor_ratio(gen_fn.tokens_per_second, params, hidden, context, layers)
    result["compute_floor_ratio"] = floor["compute_floor_ratio"]
    result["generation"].update(floor, attention_context_assumed=context)
    if not args.throughput_batch:
        return
    # the same prior sampling many networks at once: how close generation can come to the matmul floor
    tasks = [t for t in load_manifest(args.zoo_dir)["tasks"] if t["split"] == "heldout_task"
             and (not args.num_classes or t["num_classes"] == args.num_classes)]
    if not tasks:
        return
    tp = batch_throughput(generator, task_from_dict(tasks[0]), args.architectures[0], args.throughput_batch)
    tp.update(compute_floor_ratio(tp["tokens_per_second"], params, hidden, context, layers))
    result["batched_generation"] = tp
    result["tokens_per_second_k"] = result["tokens_per_second"]
    result["compute_floor_ratio_k"] = floor["compute_floor_ratio"]
    result["tokens_per_second"], result["compute_floor_ratio"] = tp["tokens_per_second"], tp["compute_floor_ratio"]
    result["generation"]["keys"] = BATCHED_KEYS_NOTE


def add_diffusion(result: dict, args: argparse.Namespace, generator) -> None:
    """The diffusion generator's keys on the same rows (`diffusion_rows.add_diffusion_rows`), with the
    autoregressive generator timed on `--ar_timing_rows` rows per split for `autoregressive_seconds_per_network`."""
    from ...diffusion.training import training_seconds
    from ...generation.generator_loading import load_generator
    from .diffusion_rows import TimedGenerateFn, add_diffusion_rows, diffusion_sampling

    diffusion = load_generator(args.diffusion_generator)
    sampling = diffusion_sampling(diffusion, args.diffusion_steps, args.diffusion_scheduler)
    ar_fn = None if generator is None else TimedGenerateFn(generator, decoding=args.decoding,
                                                           temperature=args.temperature, top_k=args.top_k)
    seconds = training_seconds(args.diffusion_generator) if Path(args.diffusion_generator).is_dir() else None
    add_diffusion_rows(result, TimedGenerateFn(diffusion, **sampling), args.zoo_dir, k=args.k, seed=args.seed,
                       sampling=sampling, training_seconds=seconds, ar_fn=ar_fn, ar_timing_rows=args.ar_timing_rows)


def architecture_counts(generator, args: argparse.Namespace, heldout: list[str]) -> dict:
    """`num_architectures_trained` (architectures in the prior's `layouts`; the evaluated ones without a generator)
    and `num_architectures_heldout` (evaluated architectures the generator was not trained on)."""
    known = (sorted({name.rsplit(":", 1)[0] for name in (generator.prior.config.layouts or {})})
             if generator is not None else sorted(args.architectures))
    return {"num_architectures_trained": len(known), "architectures_trained": known,
            "num_architectures_heldout": len([a for a in heldout if a not in known]),
            "architectures_heldout": [a for a in heldout if a not in known]}


def print_report(result: dict) -> None:
    print(format_table(result))
    print(format_architecture_table(result))
    if result.get("targets"):
        print(format_targets(result["targets"]))
    print(f"architectures: {result.get('num_architectures_trained')} trained, "
          f"{result.get('num_architectures_heldout')} held out")
    batched = (f"  (batch {result['batched_generation']['batch']}; k-candidate calls: "
               f"{result['tokens_per_second_k']:.0f} tokens/s, ratio {result['compute_floor_ratio_k']:.3f})"
               if "batched_generation" in result else "")
    print(f"tokens_per_second: {result['tokens_per_second']}  compute_floor_ratio: {result['compute_floor_ratio']}"
          + batched)
    if "diffusion_sampling_steps" in result:
        from .diffusion_rows import format_diffusion_table

        print(format_diffusion_table(result))


def write_outputs(result: dict, json_path: str, png_path: str | None = None) -> None:
    """The results JSON and the curves PNG (default: the JSON's path with `.png`), both written atomically."""
    path = Path(json_path)
    atomic_write_json(path, result, indent=1)
    png = Path(png_path) if png_path else path.with_suffix(".png")
    plot_curves(result, png)
    print(f"wrote {path} and {png}")


def cli_evaluate(argv: list[str]) -> int:
    """`hf-paramgen evaluate --generator outputs/generator --zoo_dir outputs/zoo --json out.json [--baselines_only]`."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    condition_fn: ConditionFn | None = hashing_condition_fn(384) if args.hashing_conditions else None
    gen_fn, generator = _generator(args)
    result = evaluate_generator(gen_fn, args.zoo_dir, args.architectures, num_tasks_per_split=args.num_tasks, k=args.k,
                                finetune_steps=args.finetune_steps, seed=args.seed, condition_fn=condition_fn,
                                num_classes=args.num_classes or None, max_steps=args.max_steps,
                                heldout_architectures=args.heldout_architectures)
    if gen_fn is not None:
        result["settings"]["generation"] = {"decoding": args.decoding, "temperature": args.temperature,
                                            "top_k": args.top_k}
    add_speed(result, args, gen_fn, generator)
    if args.diffusion_generator:
        add_diffusion(result, args, generator)
    result.update(architecture_counts(generator, args, result["settings"]["heldout_architectures"]))
    if gen_fn is not None:
        result["targets"] = check_targets(result)
    result["command"] = "hf-paramgen evaluate " + " ".join(argv)
    print_report(result)
    if args.json:
        write_outputs(result, args.json, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(cli_evaluate(sys.argv[1:]))
