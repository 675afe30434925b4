"""Run an experiment config: every method x sweep value x seed, then its report.

    python -m experiments.run experiments/configs/nyc_main.toml

Federated runs go through Flower's simulation engine (``experiments.simulate_cli.simulate``,
one engine start for all runs of a data set); centralized runs and reference predictors
run in-process with the library. Each run writes its own directory,
``OUT/<config>/<method>[/<sweep key>=<value>]/seed<N>/`` (``results.json`` for a
federated run, ``metrics.json`` otherwise), and finished runs are skipped, so an
interrupted experiment is continued by running the same command again (a federated run
that stopped mid-way resumes from its checkpoint). The report
(:mod:`experiments.report`) is then written to ``OUT/<config>/`` and, with
``--figures``, its plots to that folder too.

``--set KEY=VALUE`` (repeatable) runs the config with a run-config key changed for every
run, as if written in its ``[run]`` table (a method's own ``set`` still wins). Such runs
must go to their own ``--out`` folder, so that they are never taken for the config's own
finished runs::

    python -m experiments.run experiments/configs/nyc_main.toml --only fedgeo \
        --set model-prior-init=true --out runs/prior-init

``--data PATH`` runs the config on another check-in file, again into its own ``--out``::

    python -m experiments.run experiments/configs/nyc_sparse.toml \
        --data runs/data/nyc-sparse-draw1.csv --out runs/experiments-draw1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import (
    ROOT,
    ConfigError,
    ExperimentConfig,
    Method,
    check_run_keys,
    load_config,
)
from experiments.engine import BACKENDS, ClusterError, ray_address
from fedgeo.data.errors import DataError
from fedgeo.data.readers import FORMATS

RESULTS = {"federated": "results.json", "centralized": "metrics.json", "baseline": "metrics.json"}


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment."""

    method: Method
    variant: str
    variant_overrides: dict[str, Any]
    seed: int
    out_dir: Path

    @property
    def result_file(self) -> Path:
        return self.out_dir / RESULTS[self.method.kind]

    @property
    def done(self) -> bool:
        """True once the run has its final results. A federated run writes
        ``results.json`` after every round, so it is done only when the file holds the
        final test; until then it is resumed from its checkpoint."""
        if not self.result_file.is_file():
            return False
        if self.method.kind != "federated":
            return True
        try:
            return "test" in json.loads(self.result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False


RESUME_ONLY = ("client-state", "shared-records")
"""Folders of a federated run needed only to resume it: each client's persistent state
(its two newest files; megabytes per client where the state is model-sized: local-only,
SCAFFOLD, FedDyn) and the records shared with the clients through files."""


def prune_finished(runs: Sequence[PlannedRun]) -> None:
    """Remove the resume-only folders (:data:`RESUME_ONLY`) of the federated runs that
    are done; their results, predictions and checkpoint stay."""
    for run in runs:
        if run.method.kind == "federated" and run.done:
            for name in RESUME_ONLY:
                shutil.rmtree(run.out_dir / name, ignore_errors=True)


def plan(
    config: ExperimentConfig,
    out_root: Path,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[PlannedRun]:
    """Every run of the config (restricted to ``methods`` and ``seeds`` when given)."""
    chosen = [config.method(m) for m in methods] if methods else list(config.methods)
    runs = []
    for method in chosen:
        for variant, overrides in config.variants():
            for seed in seeds if seeds is not None else config.seeds:
                out = out_root / config.name / method.name
                if variant:
                    out = out / variant
                runs.append(PlannedRun(method, variant, overrides, int(seed), out / f"seed{seed}"))
    return runs


def run_values(config: ExperimentConfig, run: PlannedRun) -> dict[str, Any]:
    """The flat run-config overrides of one run (see docs/federation.md)."""
    values: dict[str, Any] = {
        **config.run,
        **run.variant_overrides,
        **run.method.overrides,
        "seed": run.seed,
        "data-path": str(config.data) if config.data else "",
        "data-format": config.data_format,
        "out-dir": str(run.out_dir.resolve()),
    }
    if run.method.kind == "federated":
        values["strategy"] = run.method.strategy
        values["research-mode"] = True
        values["client-state-dir"] = str(run.out_dir.resolve() / "client-state")
        values["resume"] = (run.out_dir / "checkpoint.pkl").is_file()
    return values


def run_federated(
    config: ExperimentConfig,
    runs: Sequence[PlannedRun],
    cpus: int,
    address: str | None = None,
    backend: str | None = None,
) -> None:
    """All ``runs`` in Flower's simulation engine, one engine start per data set size."""
    from experiments.simulate_cli import simulate
    from server.app import simulation_dataset
    from server.run_config import RunConfig

    groups: dict[int, list[RunConfig]] = {}
    for run in runs:
        run_config = RunConfig.from_mapping(run_values(config, run))
        users = len(simulation_dataset(run_config).users)
        groups.setdefault(users, []).append(run_config)
    for users, configs in groups.items():
        print(f"[{config.name}] {len(configs)} federated run(s), {users} clients each")
        simulate(configs, users, cpus, progress=True, address=address, backend=backend)


def run_reference(config: ExperimentConfig, run: PlannedRun) -> dict[str, Any]:
    """A centralized model or a reference predictor, in-process; returns its metrics."""
    from server.app import simulation_dataset
    from server.run_config import RunConfig

    rc = RunConfig.from_mapping(run_values(config, run))
    dataset = simulation_dataset(rc)
    options = run.method.options
    if run.method.kind == "centralized":
        from fedgeo.centralized import run_centralized
        from fedgeo.training import TrainConfig

        model = rc.model if options.get("prior", True) else rc.model.without_prior()
        train = TrainConfig(
            epochs=int(options.get("epochs", 10)),
            batch_size=int(options.get("batch-size", rc["batch-size"])),
            lr=float(rc["lr"]),
            grad_clip=float(rc["grad-clip"]),
            patience=int(options.get("patience", 3)),
            place_lr_scale=float(options.get("place-lr-scale", 1.0)),
            validate_start=rc.keep_best_model,
            seed=run.seed,
        )
        return run_centralized(
            dataset,
            model,
            train,
            out_dir=run.out_dir,
            prior_k=rc.prior.k,
            population=rc.population,
        )
    from fedgeo.baselines import evaluate_predictor, make_predictor
    from fedgeo.results import write_metrics_json

    kwargs = {k: options[k] for k in ("history", "variant") if k in options}
    predictor = make_predictor(str(options["predictor"]), **kwargs)
    start = time.perf_counter()
    predictor.fit(dataset)
    validation, *_ = evaluate_predictor(predictor, dataset, "validation")
    test, *_ = evaluate_predictor(predictor, dataset, "test")
    write_metrics_json(
        run.out_dir,
        test=test,
        validation=validation,
        method=f"baseline:{options['predictor']}",
        predictor=predictor.params(),
        timings_s={"total": time.perf_counter() - start},
    )
    return {"test": test}


def execute(
    config: ExperimentConfig,
    runs: Sequence[PlannedRun],
    cpus: int,
    address: str | None = None,
    backend: str | None = None,
    keep_client_state: bool = False,
) -> None:
    """Run whatever in ``runs`` is not done yet (references first: they are quick), then
    remove the resume-only folders of the finished federated runs unless
    ``keep_client_state``."""
    pending = [r for r in runs if not r.done]
    for run in pending:
        if run.method.kind != "federated":
            label = f"{run.method.name} {run.variant} seed {run.seed}".replace("  ", " ")
            print(f"[{config.name}] {label} ...", flush=True)
            metrics = run_reference(config, run)["test"]
            print(f"  test acc@1={metrics['acc@1']:.4f} mrr={metrics['mrr']:.4f}")
    federated = [r for r in pending if r.method.kind == "federated"]
    if federated:
        run_federated(config, federated, cpus, address, backend)
    if not keep_client_state:
        prune_finished(runs)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to run-config overrides; a value is read as a TOML value
    (``true``, ``10``, ``0.5``, ``"text"``) and otherwise kept as text."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text
        settings[key.strip()] = value
    return settings


def with_settings(config: ExperimentConfig, settings: dict[str, Any]) -> ExperimentConfig:
    """``config`` with ``settings`` added to its ``[run]`` table and named in its title."""
    if not settings:
        return config
    check_run_keys(settings, "--set")
    named = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return dataclasses.replace(
        config, run={**config.run, **settings}, title=f"{config.title} (with {named})"
    )


def with_data(
    config: ExperimentConfig, data: Path | None, data_format: str | None = None
) -> ExperimentConfig:
    """``config`` run on the check-in file ``data`` (named in its title) read as
    ``data_format``, each if given."""
    if data is not None:
        config = dataclasses.replace(config, data=data, title=f"{config.title} (on {data})")
    if data_format is not None:
        config = dataclasses.replace(config, data_format=data_format)
    return config


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.run", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("config", type=Path, help="experiment config (experiments/configs/*.toml)")
    ap.add_argument("--out", type=Path, help="output root (default: runs/experiments)")
    ap.add_argument("--only", help="comma-separated method names (default: all)")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    ap.add_argument(
        "--cpus", type=int, default=os.cpu_count() or 1, help="clients that run at once"
    )
    ap.add_argument(
        "--backend",
        choices=BACKENDS,
        help="local worker processes (process, the default) or Ray actors (ray, the "
        "default with --ray-address)",
    )
    ap.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the federations on this running Ray cluster (default: $RAY_ADDRESS if set)",
    )
    ap.add_argument(
        "--keep-client-state",
        action="store_true",
        help="keep each finished federated run's client-state/ and shared-records/ "
        "(needed only to resume a run; removed by default)",
    )
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report")
    ap.add_argument("--figures", type=Path, help="also write the plots to this folder")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run-config key for every run, as if in the config's [run] (needs --out)",
    )
    ap.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="run the config on this check-in file instead of its own (needs --out)",
    )
    ap.add_argument(
        "--format",
        choices=FORMATS,
        help="read the check-in file as this format instead of the config's (needs --out)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        settings = parse_settings(args.set)
        if settings and args.out is None:
            raise ValueError("--set needs --out: its runs must not mix with the config's own")
        for option, value in (("--data", args.data), ("--format", args.format)):
            if value is not None and args.out is None:
                raise ValueError(
                    f"{option} needs --out: its runs must not mix with the config's own"
                )
        config = with_data(
            with_settings(load_config(args.config), settings), args.data, args.format
        )
        methods = args.only.split(",") if args.only else None
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        out = args.out if args.out is not None else ROOT / "runs" / "experiments"
        runs = plan(config, out, methods, seeds)
        if settings:
            from server.run_config import RunConfig

            for run in runs:
                RunConfig.from_mapping(run_values(config, run))  # names a bad key or value
    except (ConfigError, KeyError, ValueError) as err:
        print(f"experiments.run: error: {err}", file=sys.stderr)
        return 2
    if config.data is not None and not config.data.is_file():
        print(f"experiments.run: error: {config.data}: data file not found", file=sys.stderr)
        return 2
    if not args.report_only:
        try:
            execute(
                config,
                runs,
                args.cpus,
                ray_address(args.ray_address),
                args.backend,
                keep_client_state=args.keep_client_state,
            )
        except (ClusterError, DataError) as err:
            print(f"experiments.run: error: {err}", file=sys.stderr)
            return 2
    from experiments.report import write_report

    table = write_report(config, out, figures=args.figures)
    print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
