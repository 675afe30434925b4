"""Scale: one FedGeo round over 10,000 synthetic clients in Flower's simulation engine.

Generates the synthetic city with ``--users`` users, runs one round (``--clients``
clients train; every node answers the start-up profile query and the final test), and
samples the resident memory of this process and of every process it started (the
client worker processes; with ``--backend ray`` Ray's GCS, raylet and workers) every
0.2 s. Prints the time of each phase and the peak of the summed resident memory (RSS
counts shared pages in each process that maps them, so the sum is an upper bound)::

    python benchmarks/scale.py --users 10000
    python benchmarks/scale.py --users 110000 --days 3 \
        --set synthetic-extreme-fraction=0.3 --set protocol-gap-hours=8   # sparse, Gowalla-like
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(root: int) -> int:
    """Summed RSS in bytes of ``root`` and all its descendants."""
    tree, stack, total = _children(), [root], 0
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm", encoding="utf-8") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except OSError:
            pass
        stack.extend(tree.get(pid, []))
    return total


class MemorySampler(threading.Thread):
    """Peak of :func:`tree_rss` of this process, sampled in the background."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def main() -> None:
    from experiments.engine import BACKENDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--places", type=int, default=2_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--clients", type=int, default=100, help="clients training in the round")
    ap.add_argument("--strategy", default="fedgeo")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--backend",
        default="process",
        choices=BACKENDS,
        help="where the clients run: local worker processes (process) or Ray actors (ray)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key (for example synthetic-extreme-fraction=0.3)",
    )
    args = ap.parse_args()

    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    from experiments.run import parse_settings
    from experiments.simulate_cli import simulate
    from server.app import simulation_dataset
    from server.run_config import RunConfig

    out = Path(tempfile.mkdtemp(prefix="fedgeo-scale-"))
    values = {
        "strategy": args.strategy,
        "synthetic-num-users": args.users,
        "synthetic-num-places": args.places,
        "synthetic-days": args.days,
        "num-rounds": 1,
        "eval-every": 2,
        "fraction-evaluate": 0.0,
        "out-dir": str(out),
        "client-state-dir": str(out / "client-state"),
        "node-wait": 600.0,
    }
    try:
        values.update(parse_settings(args.set))
    except ValueError as err:
        ap.error(str(err))
    dataset = simulation_dataset(RunConfig.from_mapping(values))
    users = len(dataset.users)
    checkins = [len(u.places) for u in dataset.users]
    values["fraction-train"] = args.clients / users
    generated = time.perf_counter()
    [result] = simulate([values], users, args.cpus, progress=False, backend=args.backend)
    finished = time.perf_counter()
    peak = sampler.stop()
    figures = {
        "users": users,
        "places": dataset.num_places,
        "train_samples": dataset.num_samples("train"),
        "median_checkins_per_user": float(np.median(checkins)),
        "clients_trained": result["rounds"][0]["replies"],
        "generate_s": generated - start,
        "simulation_s": finished - generated,
        "round_s": result["timings_s"]["rounds"][0],
        "final_test_s": result["timings_s"].get("final_test"),
        "total_s": finished - start,
        "peak_rss_gib": peak / 2**30,
        "cpus": args.cpus,
        "backend": args.backend,
        "test_acc@1": result["test"]["acc@1"],
    }
    print(
        f"{users} clients ({dataset.num_places} places, median "
        f"{figures['median_checkins_per_user']:g} check-ins per user): "
        f"generate {figures['generate_s']:.1f} s, "
        f"simulation {figures['simulation_s']:.1f} s (round {figures['round_s']:.1f} s with "
        f"{figures['clients_trained']} clients training on the {args.backend} backend, "
        f"final test on every client "
        f"{figures['final_test_s']:.1f} s), total {figures['total_s']:.1f} s; peak resident "
        f"memory of all processes {figures['peak_rss_gib']:.2f} GiB"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
