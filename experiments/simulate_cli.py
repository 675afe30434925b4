"""``fedgeo simulate``: a federated run in Flower's simulation engine (Ray), one node per user.

The command turns its options into run-config overrides (see docs/federation.md),
checks the data before anything starts, runs Flower's simulation engine
(:mod:`experiments.engine`) with one Ray worker per CPU, shows a progress bar over rounds
and writes ``DIR/results.json`` and, as a research-mode output of simulation only,
``DIR/predictions.csv`` (every test sample's rank). Simulated clients keep their state
under ``DIR/client-state`` so that ``--resume`` continues exactly where a run stopped.
Every process it starts is stopped when it ends, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.engine import (
    BACKENDS,
    PROCESS_BACKEND,
    ClusterError,
    ray_address,
    resolve_backend,
)
from fedgeo.cli.common import fraction, positive_int, prepare_out_dir
from fedgeo.cli.main import UsageError
from fedgeo.data.errors import DataError
from fedgeo.data.readers import FORMATS

if TYPE_CHECKING:  # Flower and the server modules load only when the command runs
    from flwr.serverapp import Grid

    from fedgeo.data.dataset import Dataset
    from server.run_config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a federated simulation (one simulated client per user)",
        description="Federated training in Flower's simulation engine: one client per user "
        "of the data set (the synthetic city without --data). Writes DIR/results.json and "
        "DIR/predictions.csv (research mode: per-sample test ranks).",
    )
    parser.add_argument("--data", metavar="PATH", help="check-in file (default: synthetic city)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="file format (csv)")
    parser.add_argument("--strategy", required=True, help="strategy name or module:Class")
    parser.add_argument(
        "--model", help="model: memory (default), lstm, transformer, flashback (run-config model)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, help="number of rounds (run-config num-rounds)"
    )
    parser.add_argument("--fraction", type=fraction, help="fraction of clients per round")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument("--local-epochs", type=positive_int, help="local epochs per round")
    parser.add_argument("--eval-every", type=positive_int, help="validate every K rounds")
    parser.add_argument(
        "--test-every",
        type=positive_int,
        help="also test every node every K rounds (a test curve; default: the final test only)",
    )
    parser.add_argument(
        "--early-stop-patience",
        type=positive_int,
        metavar="N",
        help="stop after N validations in a row without a better validation MRR "
        "(default: run every round)",
    )
    parser.add_argument(
        "--keep-best-model",
        action="store_true",
        default=None,
        help="validate the starting model too and test the model of the best validation MRR "
        "(run-config keep-best-model)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from DIR's checkpoint")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any run-config key (repeatable), e.g. --set model-hidden-dim=32",
    )
    parser.add_argument(
        "--cpus",
        type=positive_int,
        help="clients that run at once on this machine (default: all CPUs)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="where the clients run: local worker processes (process, the default on one "
        "machine) or Ray actors (ray, the default with --ray-address)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="attach to a running Ray cluster (its head's address, as `ray start --head` "
        "prints it) instead of starting Ray on this machine; default: $RAY_ADDRESS if set "
        "(docs/federation.md, 'A Ray cluster')",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="show Flower's INFO logs")
    parser.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides the options stand for."""
    values: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        values[key.strip()] = value.strip()
    options = {
        "strategy": args.strategy,
        "model": args.model,
        "num-rounds": args.rounds,
        "seed": args.seed,
        "local-epochs": args.local_epochs,
        "eval-every": args.eval_every,
        "test-every": args.test_every,
        "early-stop-patience": args.early_stop_patience,
        "keep-best-model": args.keep_best_model,
        "data-path": str(args.data) if args.data else None,
        "data-format": args.format,
    }
    if args.fraction is not None:
        options["fraction-train"] = args.fraction
        options["fraction-evaluate"] = args.fraction
    values.update({k: v for k, v in options.items() if v is not None})
    values["out-dir"] = str(args.out.resolve())
    values["resume"] = bool(args.resume)
    values["research-mode"] = True
    values.setdefault("client-state-dir", str(args.out.resolve() / "client-state"))
    return values


def run(args: argparse.Namespace) -> int:
    from server.run_config import RunConfig

    try:
        values = overrides_from_args(args)
        config = RunConfig.from_mapping(values)
    except ValueError as err:
        raise UsageError(str(err)) from None
    from server.app import simulation_dataset

    if config.places_path is not None:
        raise UsageError("places-path is for deployments; simulate uses the data set's places")
    prepare_out_dir(config.out_dir)
    try:  # bad data fails here, before Ray starts
        dataset = simulation_dataset(config)
    except DataError:
        raise
    except ValueError as err:  # e.g. an unknown time-unit or data-format
        raise UsageError(str(err)) from None
    users = check_before_start(config, dataset)
    if args.resume:
        checkpoint = _checkpoint(config.out_dir)
        if checkpoint is not None and (changed := config.differences(checkpoint.config)):
            raise UsageError(
                f"--resume: the options differ from the checkpoint's in {', '.join(changed)}"
            )
    cpus = args.cpus or os.cpu_count() or 1
    address = ray_address(args.ray_address)
    try:
        backend = resolve_backend(args.backend, address)  # before anything starts
        [result] = simulate(
            [config],
            users,
            cpus,
            progress=not args.no_progress,
            verbose=args.verbose,
            address=address,
            backend=backend,
        )
    except ClusterError as err:
        raise UsageError(str(err)) from None
    test = result["test"]
    tested = result.get("tested_round")
    chosen = f", the model of round {tested}" if config.keep_best_model else ""
    print(
        f"simulate ({config.strategy}, {users} clients, {config.num_rounds} rounds{chosen}): "
        f"test acc@1={test['acc@1']:.4f} acc@5={test['acc@5']:.4f} acc@10={test['acc@10']:.4f} "
        f"mrr={test['mrr']:.4f} ndcg@10={test['ndcg@10']:.4f} ({test['samples']} samples) "
        f"-> {config.out_dir}/results.json"
    )
    return 0


def check_before_start(config: RunConfig, dataset: Dataset) -> int:
    """Fail now, with a one-line message, on what would otherwise fail (or hang) only
    once the simulation engine runs: too few users for the node minimums, fractions
    outside their ranges, a model or optimizer setting the library refuses (the strategy
    was built when the config was parsed). Returns the number of users (one simulated
    node each)."""
    import torch

    from client.faults import ATTACKS
    from fedgeo.models import SampleIndex, build_model
    from fedgeo.training import TrainConfig, make_optimizer

    values = config.values
    keys = ("min-available-nodes", "min-train-nodes", "min-evaluate-nodes")
    need = config.min_nodes
    users = len(dataset.users)
    if users < need:
        raise DataError(
            f"{users} user(s) after preprocessing, but the federation waits for at least "
            f"{need} nodes ({', '.join(keys)}; one node per user)",
            path=config.data_path or "synthetic city",
        )
    for key in ("fraction-train", "fraction-evaluate"):
        if not 0 < float(values[key]) <= 1:
            raise UsageError(f"run-config '{key}' must be in (0, 1], got {values[key]}")
    for key in ("inject-failure-fraction", "inject-attack-fraction"):
        if not 0 <= float(values[key]) <= 1:
            raise UsageError(f"run-config '{key}' must be in [0, 1], got {values[key]}")
    if str(values["inject-attack"]) not in ATTACKS:
        raise UsageError(
            f"run-config 'inject-attack' must be one of {', '.join(ATTACKS)}, "
            f"got {values['inject-attack']!r}"
        )
    try:
        # One forward pass on the first user's first training sample: model settings
        # the library refuses fail here (without the prior: cheap).
        model, features = build_model(
            dataset.num_places,
            1,
            config.model.without_prior(),
            coordinates=dataset.places.coordinates(),
        )
        index = SampleIndex(dataset.users[:1])
        sample_users, positions = index.samples("train")
        with torch.no_grad():
            model(features.build(index, sample_users[:1], positions[:1]))
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"model settings (model-*): {str(err).splitlines()[0]}") from None
    settings = config.train_settings()
    try:
        make_optimizer(
            model.parameters(),
            TrainConfig(
                lr=float(settings["lr"]),
                optimizer=str(settings["optimizer"]),
                weight_decay=float(settings["weight-decay"]),
            ),
        )
    except ValueError as err:
        raise UsageError(f"local training settings (lr, optimizer, weight-decay): {err}") from None
    return users


def _checkpoint(out_dir: Path):  # -> server.checkpoint.Checkpoint | None
    """The checkpoint ``--resume`` would continue from; a damaged one is a DataError."""
    from server.checkpoint import CHECKPOINT_FILE, load_checkpoint

    try:
        return load_checkpoint(out_dir)
    except Exception as err:  # unpickling a damaged file can raise almost anything
        raise DataError(
            f"not a readable FedGeo checkpoint ({type(err).__name__}: {err}); delete it to "
            "start afresh",
            path=out_dir / CHECKPOINT_FILE,
        ) from None


def simulate(
    runs: Sequence[RunConfig | Mapping[str, Any]],
    num_nodes: int,
    cpus: int,
    *,
    progress: bool = True,
    verbose: bool = False,
    grid_wrapper: Callable[[Grid], Grid] | None = None,
    interleave: bool = False,
    address: str | None = None,
    backend: str | None = None,
) -> list[dict[str, Any]]:
    """Run the federations ``runs`` describes (parsed configs, or run-config overrides
    parsed here once; one after the other) in one start of Flower's simulation engine;
    return their results.

    With ``interleave`` they run round by round instead (all round 1, then all round 2,
    alternating the order; :func:`server.loop.run_interleaved`), each with the results it
    would reach alone: for comparing round times under the same machine conditions.

    All runs share the ``num_nodes`` simulated nodes (so they must use data sets with as
    many users); each keeps its clients' state apart (see ``client.state``).
    ``grid_wrapper`` may wrap the grid each run's server sees (called once per run; to trace
    messages). ``cpus``
    clients run at once, in local worker processes (``backend="process"``, the default on
    one machine; :mod:`experiments.process_backend`) or on a local Ray instance
    (``backend="ray"``); with ``address`` the run attaches to that running Ray cluster
    instead (:func:`experiments.engine.connect_cluster`; raises ``ClusterError``) and its
    CPUs decide. Ray is shut down (or the cluster left) whatever happens; the cluster
    itself keeps running.
    """
    import ray
    from flwr.app import Context
    from flwr.serverapp import ServerApp
    from threadpoolctl import threadpool_limits

    from client.app import app as client_app
    from client.app import load_app
    from experiments.engine import cluster_backend, connect_cluster, local_backend, run_engine
    from experiments.shared_records import SharedRecordsGrid
    from server.app import make_federation, run_server
    from server.checkpoint import RESULTS_FILE
    from server.loop import run_interleaved
    from server.run_config import RunConfig

    backend = resolve_backend(backend, address)
    configs = [r if isinstance(r, RunConfig) else RunConfig.from_mapping(r) for r in runs]
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    total = sum(c.num_rounds for c in configs)
    bar = _progress_bar(total, progress)
    stop = threading.Event()
    done = [0]

    def on_round(record: dict[str, Any]) -> None:
        if bar is not None:
            bar.n = done[0] + int(record["round"])
            bar.refresh()
            metrics = record.get("evaluate") or {}
            if "mrr" in metrics:
                bar.set_postfix(val_mrr=f"{metrics['mrr']:.4f}")

    nodes_bar = _NodesBar(progress)

    def tick(record: dict[str, Any]) -> None:  # interleaved runs: one step per round
        if bar is not None:
            bar.update(1)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # Each run's large records go to its nodes through files (shared_records).
        shared = [SharedRecordsGrid(grid, c.out_dir / "shared-records") for c in configs]
        views = [grid_wrapper(g) if grid_wrapper is not None else g for g in shared]
        try:
            if interleave:
                federations = [
                    make_federation(v, c, on_round=tick, stop=stop)
                    for v, c in zip(views, configs, strict=True)
                ]
                run_interleaved(federations)
                return
            for view, config in zip(views, configs, strict=True):
                run_server(view, config, on_round=on_round, stop=stop, on_progress=nodes_bar)
                done[0] += config.num_rounds
        finally:
            for g in shared:
                g.close()

    try:
        if address is not None:
            connect_cluster(address)
        # One BLAS thread in this process: the server thread's linear algebra then
        # cannot hang in OpenBLAS's thread pool after an earlier simulation's server
        # thread used it (seen with a second engine start in one process).
        with threadpool_limits(limits=1, user_api="blas"):
            run_engine(
                server_app,
                client_app,
                num_nodes=num_nodes,
                backend_config=cluster_backend() if address else local_backend(cpus),
                verbose=verbose,
                load_client_app=load_app,
                processes=cpus if backend == PROCESS_BACKEND else None,
            )
    except KeyboardInterrupt:
        stop.set()
        # Flower's worker threads log every message the dying actors drop; keep quiet.
        level = logging.CRITICAL
        raise
    except BaseException:
        stop.set()
        raise
    finally:
        if bar is not None:
            bar.close()
        nodes_bar.close()
        if ray.is_initialized():
            ray.shutdown()
        flwr_logger.setLevel(level)
    results = []
    for config in configs:
        path = config.out_dir / RESULTS_FILE
        if not path.is_file():
            raise RuntimeError(f"the simulation ended without writing {path}")
        results.append(json.loads(path.read_text(encoding="utf-8")))
    return results


class _NodesBar:
    """A second progress bar for the node-by-node steps (profile query, tests of every
    node, population prior): nodes answered / nodes asked, one bar per step."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.label: str | None = None

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if self.bar is None or label != self.label or done == 0:
            self.close()
            self.bar = tqdm(total=total, desc=label, unit="node", leave=False, position=1)
            self.label = label
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="rounds", unit="round")
