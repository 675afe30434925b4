"""``fedgeo centralized``: train the model on all users' data in one place."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedgeo.cli.common import (
    add_dataset_arguments,
    dataset_from_args,
    non_negative_float,
    positive_float,
    positive_int,
    prepare_out_dir,
)
from fedgeo.cli.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "centralized",
        help="train the next-location model centrally (the federation's upper bound)",
        description="Train the next-location model on all users' data in one place, with early "
        "stopping on validation MRR; write DIR/metrics.json and DIR/predictions.csv.",
    )
    add_dataset_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--epochs", type=positive_int, default=20, help="maximum epochs (default 20)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument(
        "--weight-decay", type=non_negative_float, default=0.0, help="Adam's L2 penalty (default 0)"
    )
    parser.add_argument(
        "--patience", type=int, default=3, help="validation checks without gain before stopping"
    )
    parser.add_argument(
        "--checks-per-epoch",
        type=positive_int,
        default=1,
        help="validation checks per epoch; the best check's model is kept (default 1)",
    )
    parser.add_argument(
        "--place-lr-scale",
        type=non_negative_float,
        default=1.0,
        help="learning-rate multiplier of the place embeddings and biases (default 1;"
        " docs/model.md, Training)",
    )
    parser.add_argument(
        "--validate-start",
        action="store_true",
        help="validate the untrained model too and keep it when no epoch beats it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model size and ablation switches."""
    group = parser.add_argument_group("model")
    # Defaults None: the model's own (fedgeo.models.ModelConfig), filled in by run().
    group.add_argument(
        "--model", default=None, help="memory (default), lstm, transformer, flashback"
    )
    group.add_argument("--embedding-dim", type=positive_int, default=None)
    group.add_argument("--hidden-dim", type=positive_int, default=None)
    group.add_argument("--window", type=positive_int, default=None)
    group.add_argument("--dropout", type=float, default=None, help="dropout of the query network")
    group.add_argument("--no-prior", action="store_true", help="switch off every use of the prior")
    group.add_argument(
        "--prior-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="seed place embeddings with the prior's spectral embedding (default: off)",
    )
    group.add_argument("--no-prior-propagation", action="store_true")
    group.add_argument("--no-prior-score", action="store_true")
    group.add_argument("--no-personal-memory", action="store_true")
    group.add_argument("--no-user-embedding", action="store_true")
    group.add_argument(
        "--training-memory",
        choices=("past", "leave-one-out"),
        default=None,
        help="memory counts of training samples (docs/model.md)",
    )
    group.add_argument(
        "--shared-score-init",
        choices=("random", "zero"),
        default=None,
        help="start of the shared neural score (docs/model.md; default: the model's)",
    )
    group.add_argument(
        "--no-return-score",
        action="store_true",
        help="leave out the preferential-return score (docs/model.md)",
    )
    group.add_argument(
        "--prior-gate-bias",
        type=float,
        default=None,
        help="initial bias of the prior score's gate (default: the model's)",
    )
    group.add_argument(
        "--prior-score-places",
        choices=("new", "all"),
        default=None,
        help="places the prior score lifts (docs/model.md; default: the model's)",
    )
    group.add_argument(
        "--prior-k", type=positive_int, default=10, help="neighbours per place in the prior"
    )
    group.add_argument(
        "--history-scores",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score places by more of the user's own history (history scores, docs/model.md;"
        " default: on with the personal memory)",
    )
    group.add_argument(
        "--population-prior",
        action="store_true",
        help="score places by what other users do (population prior, docs/model.md)",
    )
    group.add_argument(
        "--population-day-blocks",
        action="store_true",
        help="with --population-prior: also score places by the other users who checked in"
        " there at the target's time of day (4-hour blocks)",
    )
    group.add_argument(
        "--population-candidates",
        type=positive_int,
        default=None,
        help="transitions counted towards each place's nearest N places (default 50)",
    )
    group.add_argument(
        "--population-epsilon",
        type=positive_float,
        default=None,
        help="user-level DP epsilon of the population counts (default: no noise)",
    )


def population_config_from_args(args: argparse.Namespace):
    """The population prior's settings, or None when it is off."""
    if not args.population_prior:
        return None
    from fedgeo.population import DEFAULT_CANDIDATES, PopulationConfig

    return PopulationConfig(
        candidates=args.population_candidates or DEFAULT_CANDIDATES,
        dp_epsilon=args.population_epsilon or 0.0,
    )


def model_config_from_args(args: argparse.Namespace):
    from fedgeo.models import ModelConfig

    starts = {
        key: value
        for key, value in (
            ("shared_score_init", args.shared_score_init),
            ("prior_gate_bias", args.prior_gate_bias),
            ("prior_score_places", args.prior_score_places),
            ("prior_init", args.prior_init),
            ("return_score", False if args.no_return_score else None),
            ("architecture", args.model),
            ("embedding_dim", args.embedding_dim),
            ("hidden_dim", args.hidden_dim),
            ("window", args.window),
            ("dropout", args.dropout),
            ("training_memory", args.training_memory),
            ("history_scores", args.history_scores),
        )
        if value is not None
    }
    cfg = ModelConfig(
        **starts,
        prior_propagation=not args.no_prior_propagation,
        prior_score=not args.no_prior_score,
        personal_memory=not args.no_personal_memory,
        user_embedding=not args.no_user_embedding,
        population_prior=bool(args.population_prior),
        population_day_blocks=bool(args.population_day_blocks),
    )
    return cfg.without_prior() if args.no_prior else cfg


def run(args: argparse.Namespace) -> int:
    from fedgeo.centralized import run_centralized
    from fedgeo.training import TrainConfig

    try:  # a bad model setting fails before any data is read
        model_config = model_config_from_args(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    prepare_out_dir(args.out)
    t0 = time.perf_counter()
    dataset = dataset_from_args(args)
    load_s = time.perf_counter() - t0
    train_cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        checks_per_epoch=args.checks_per_epoch,
        place_lr_scale=args.place_lr_scale,
        validate_start=args.validate_start,
        seed=args.seed,
    )
    summary = run_centralized(
        dataset,
        model_config,
        train_cfg,
        out_dir=args.out,
        prior_k=args.prior_k,
        population=population_config_from_args(args),
        progress=not args.no_progress,
        extra_timings={"load_s": load_s},
    )
    test = summary["test"]
    print(
        f"centralized: test acc@1={test['acc@1']:.4f} acc@5={test['acc@5']:.4f} "
        f"acc@10={test['acc@10']:.4f} mrr={test['mrr']:.4f} ndcg@10={test['ndcg@10']:.4f} "
        f"({test['samples']} samples, best epoch {summary['best_epoch']:g}) "
        f"-> {args.out}/metrics.json"
    )
    return 0
