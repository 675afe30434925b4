"""What a node message costs beyond its own work: the final test of every node through
Flower's simulation engine, beside the same evaluations run one after the other in this
process.

Both sides run the ClientApp's ``evaluate`` handler on the same instruction (the final
model, the test split) for every user of a synthetic city. In-process, the handler is
called directly, one node after the other: that is the work. Through the engine, the
ServerApp sends one message per node and the ClientApp runs on ``--cpus`` workers;
its wall time, times the workers, spread over the nodes, minus the work, is the engine's
overhead per message, for each backend of ``--backends`` (local worker processes, Ray
actors). Printed, in one run of this script (noisy machine)::

    python benchmarks/message_overhead.py --users 2000 --cpus 2

The client-side part of the work (model copy, prior check, data lookup, instruction
parsing) is broken down with cProfile when ``--profile`` is given.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def settings(users: int, places: int, days: int, out: Path) -> dict:
    return {
        "strategy": "fedavg",
        "synthetic-num-users": users,
        "synthetic-num-places": places,
        "synthetic-days": days,
        "num-rounds": 1,
        "eval-every": 2,
        "fraction-train": 2 / users,  # the round is not what is measured
        "fraction-evaluate": 0.0,
        "out-dir": str(out),
        "client-state-dir": str(out / "client-state"),
        "node-wait": 600.0,
    }


def in_process(values: dict, profile: bool) -> tuple[float, int]:
    """Seconds to run every node's final-test evaluation one after the other here."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import handle_evaluate
    from fedgeo.message_keys import SERVER_ROUND, SPLIT
    from server.app import prepare, simulation_dataset
    from server.run_config import RunConfig
    from server.strategies.contract import to_arrayrecord

    for attr in ("_run_id", "_node_id", "_task_id"):
        setattr(TaskIdentity, attr, 1)  # messages built outside a Flower run
    config = RunConfig.from_mapping(values)
    users = len(simulation_dataset(config).users)
    setup = prepare(config)
    instruction = ConfigRecord({**setup.instruction, SERVER_ROUND: 1, SPLIT: "test"})
    arrays: ArrayRecord = to_arrayrecord(setup.arrays)
    content = RecordDict({"arrays": arrays, "config": instruction})
    contexts = [
        Context(run_id=1, node_id=n + 1, node_config={"partition-id": n}, state=RecordDict(),
                run_config={})
        for n in range(users)
    ]
    handle_evaluate(Message(content, 1, "evaluate"), contexts[0])  # warm the caches
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    start = time.perf_counter()
    for n in range(users):
        reply = handle_evaluate(Message(content, n + 1, "evaluate"), contexts[n])
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
    seconds = time.perf_counter() - start
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return seconds, users


def through_engine(values: dict, users: int, cpus: int, backend: str) -> float:
    """Seconds of the final test of every node through the engine, the clients on
    ``backend`` (local worker processes or Ray actors)."""
    from experiments.simulate_cli import simulate

    [result] = simulate([values], users, cpus, progress=False, backend=backend)
    return float(result["timings_s"]["final_test"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--places", type=int, default=2_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--backends",
        default="process,ray",
        help="comma-separated engine backends to measure, in this order (default: process,ray)",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process side")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from experiments.engine import BACKENDS

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        ap.error(f"--backends: valid backends: {', '.join(BACKENDS)}")
    root = Path(tempfile.mkdtemp(prefix="fedgeo-messages-"))
    work_s, users = in_process(settings(args.users, args.places, args.days, root), args.profile)
    work_ms = 1000 * work_s / users
    print(f"{users} nodes: in-process evaluations {work_s:.1f} s ({work_ms:.2f} ms each)")
    figures: dict = {"users": users, "cpus": args.cpus, "in_process_s": work_s,
                     "work_ms_per_message": work_ms, "backends": {}}
    for backend in backends:
        values = settings(args.users, args.places, args.days, root / backend)
        engine_s = through_engine(values, users, args.cpus, backend)
        engine_ms = 1000 * engine_s * args.cpus / users  # worker time per message
        figures["backends"][backend] = {
            "engine_final_test_s": engine_s,
            "engine_ms_per_message": engine_ms,
            "overhead_ms_per_message": engine_ms - work_ms,
            "engine_over_in_process": engine_s / work_s,
        }
        print(
            f"  {backend} backend: final test through the engine on {args.cpus} workers "
            f"{engine_s:.1f} s ({engine_ms:.2f} ms of worker time each); overhead per "
            f"message {engine_ms - work_ms:.2f} ms (target <= 3); engine / in-process = "
            f"{engine_s / work_s:.2f} (target <= 1.5)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
