"""``fedgeo baseline``: fit and evaluate a reference predictor (no training, seconds)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedgeo.cli.common import add_dataset_arguments, dataset_from_args, prepare_out_dir

METHODS = ("popular", "most-frequent", "markov")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline",
        help="evaluate a reference predictor (popularity, per-user frequency, Markov chain)",
        description="Fit a reference predictor on the training samples (Markov weights are "
        "chosen on validation), rank every place for each validation and test sample and "
        "write DIR/metrics.json and DIR/predictions.csv. Without --data it uses the "
        "synthetic city. See docs/metrics.md.",
    )
    add_dataset_arguments(parser)
    parser.add_argument("--method", choices=METHODS, default="markov", help="default: markov")
    parser.add_argument(
        "--markov-variant",
        choices=("interpolated", "global", "personal"),
        default="interpolated",
        help="Markov chain: interpolation of personal and global transitions, frequency and "
        "popularity with weights chosen on validation (default), or one chain alone",
    )
    parser.add_argument(
        "--history",
        choices=("all", "train"),
        default="all",
        help="personal statistics from the user's whole past (default) or only from the "
        "user's training trajectories",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedgeo.baselines import evaluate_predictor, make_predictor
    from fedgeo.data.protocol import dataset_summary
    from fedgeo.results import write_metrics_json, write_predictions_csv

    prepare_out_dir(args.out)
    t0 = time.perf_counter()
    dataset = dataset_from_args(args)
    timings = {"load_s": time.perf_counter() - t0}
    kwargs = {}
    if args.method == "markov":
        kwargs = {"variant": args.markov_variant, "history": args.history}
    elif args.method == "most-frequent":
        kwargs = {"history": args.history}
    predictor = make_predictor(args.method, **kwargs)
    t1 = time.perf_counter()
    predictor.fit(dataset)
    timings["fit_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    validation, *_ = evaluate_predictor(predictor, dataset, "validation")
    test, user_ids, targets, ranks = evaluate_predictor(predictor, dataset, "test")
    timings["evaluate_s"] = time.perf_counter() - t2
    params = predictor.params()
    write_metrics_json(
        args.out,
        test=test,
        validation=validation,
        method=f"baseline:{params['method']}",
        predictor=params,
        dataset=dataset_summary(dataset),
        protocol=dataset.protocol,
        timings_s=timings,
    )
    write_predictions_csv(args.out, user_ids, targets, ranks)
    label = args.method
    if args.method == "markov":
        label += f"/{args.markov_variant}"
    weights = params.get("weights")
    chosen = ""
    if weights:
        chosen = " weights=" + ",".join(f"{k}:{v:g}" for k, v in weights.items())
    print(
        f"baseline {label}: test acc@1={test['acc@1']:.4f} acc@5={test['acc@5']:.4f} "
        f"acc@10={test['acc@10']:.4f} mrr={test['mrr']:.4f} ndcg@10={test['ndcg@10']:.4f} "
        f"({test['samples']} samples){chosen} -> {args.out}/metrics.json"
    )
    return 0
