"""Round cost: Flower simulation against bare local training, FedGeo against FedAvg.

In ONE run (ratios on a noisy machine are only meaningful within one run):

1. Flower's simulation engine runs FedAvg and FedGeo (same model, same budget,
   ``--rounds`` rounds of ``--clients`` clients, no validation) and records every
   round's wall time (``results.json``: ``timings_s.rounds``). The runs are interleaved
   round by round (``simulate(..., interleave=True)``: every run's round 1, then every
   run's round 2, the order alternating), so that each round of FedGeo meets the same
   machine conditions as the FedAvg round it is divided by; run one after the other,
   minutes apart, identical FedAvg runs differed by 6 % here.
2. In this process, one torch thread, the clients FedAvg sampled in each timed round
   train the same way (a fresh copy of the model, ``fedgeo.training.train_local``, the
   same local settings) with nothing else around them: the round's cost with no
   federation machinery.

Prints, per timed round (the first is warm-up and not counted), the Flower round wall
time, the summed bare training time, and the two ratios the project tracks:
``overhead = Flower FedAvg round / summed bare training`` (target <= 1.3) and
``FedGeo round / FedAvg round`` (target <= 1.10).

FedGeo's exclusion draws its participants with its own generator, so its round trains
other users, with another amount of data, than FedAvg's; round times then differ by the
work as much as by the machinery. The ratio is therefore measured with a third run,
FedGeo with its uniform draw (``fedgeo-exclusion = false``: Flower's sampler, seeded per
round like FedAvg's), which trains exactly FedAvg's clients with everything else of
FedGeo (geometric median, proximal term, drift diagnostics). The full FedGeo's round
time is printed next to it::

    python benchmarks/round_speed.py --data ../shared/data/foursquare-nyc/checkins.csv
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.simulate_cli import simulate  # noqa: E402
from fedgeo.data.readers import FORMATS  # noqa: E402
from fedgeo.geo.prior import AdjacencyPrior  # noqa: E402
from fedgeo.models import build_model  # noqa: E402
from fedgeo.training import TrainConfig, train_local  # noqa: E402
from server.app import simulation_dataset  # noqa: E402
from server.run_config import RunConfig  # noqa: E402

MODEL = {"model-embedding-dim": 64, "model-hidden-dim": 128}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in file (default: the synthetic city)")
    ap.add_argument("--format", choices=FORMATS, default="csv", help="--data's format")
    ap.add_argument("--clients", type=int, default=100, help="clients per round")
    ap.add_argument("--rounds", type=int, default=10, help="rounds (the first is warm-up)")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args()


def bare_training_seconds(config: RunConfig, partitions: list[int]) -> float:
    """Summed wall time of training each client alone, one torch thread."""
    dataset = simulation_dataset(config)
    model_config = config.model
    prior = AdjacencyPrior.from_places(dataset.places, config.prior)
    template, features = build_model(
        len(dataset.places),
        1,
        model_config,
        prior,
        seed=0,
        coordinates=dataset.places.coordinates(),
    )
    train = TrainConfig(
        epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        lr=float(config["lr"]),
        grad_clip=float(config["grad-clip"]),
    )
    total = 0.0
    for partition in partitions:
        model = copy.deepcopy(template)
        start = time.perf_counter()
        train_local(model, features, [dataset.users[partition]], train)
        total += time.perf_counter() - start
    return total


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="fedgeo-speed-"))
    base = {
        **MODEL,
        "data-path": args.data or "",
        "data-format": args.format,
        "num-rounds": args.rounds,
        "eval-every": args.rounds + 1,
        "local-epochs": args.local_epochs,
        "batch-size": 32,
        "research-mode": False,
    }
    probe = RunConfig.from_mapping(base)
    users = len(simulation_dataset(probe).users)
    base["fraction-train"] = args.clients / users
    base["fraction-evaluate"] = 0.0
    runs = [
        {
            **base,
            "strategy": s,
            "out-dir": str(out / name),
            "client-state-dir": str(out / name / "cs"),
        }
        for name, s in (("fedavg", "fedavg"), ("fedgeo", "fedgeo"), ("fedgeo-same", "fedgeo"))
    ]
    runs[2]["fedgeo-exclusion"] = False
    fedavg, fedgeo, same = simulate(runs, users, args.cpus, progress=False, interleave=True)
    config = RunConfig.from_mapping(runs[0])
    rows = []
    for r in range(1, args.rounds):  # round index 0 is warm-up
        nodes = fedavg["rounds"][r]["participation"]["nodes"]
        if sorted(same["rounds"][r]["participation"]["nodes"]) != sorted(nodes):
            raise SystemExit(f"round {r + 1}: FedGeo (uniform draw) trained other clients")
        bare = bare_training_seconds(config, [int(n) - 1 for n in nodes])
        avg_s = fedavg["timings_s"]["rounds"][r]
        same_s, geo_s = same["timings_s"]["rounds"][r], fedgeo["timings_s"]["rounds"][r]
        rows.append(
            {
                "round": r + 1,
                "clients": len(nodes),
                "fedavg_round_s": avg_s,
                "fedgeo_same_clients_round_s": same_s,
                "fedgeo_round_s": geo_s,
                "bare_training_s": bare,
                "overhead": avg_s / bare,
                "fedgeo_over_fedavg": same_s / avg_s,
            }
        )
    for row in rows:
        print(
            f"round {row['round']}: {row['clients']} clients | Flower FedAvg "
            f"{row['fedavg_round_s']:.2f} s | FedGeo, same clients "
            f"{row['fedgeo_same_clients_round_s']:.2f} s | bare training "
            f"{row['bare_training_s']:.2f} s (1 thread, serial) | overhead {row['overhead']:.2f}"
            f" | FedGeo/FedAvg {row['fedgeo_over_fedavg']:.2f} | FedGeo with its own draw "
            f"{row['fedgeo_round_s']:.2f} s"
        )
    summary = {
        "cpus": args.cpus,
        "overhead_mean": float(np.mean([r["overhead"] for r in rows])),
        "fedgeo_over_fedavg_mean": float(np.mean([r["fedgeo_over_fedavg"] for r in rows])),
        "rounds": rows,
    }
    print(
        f"mean overhead {summary['overhead_mean']:.2f} (target <= 1.3); mean FedGeo/FedAvg "
        f"round, same clients {summary['fedgeo_over_fedavg_mean']:.2f} (target <= 1.10); Ray "
        f"workers: {args.cpus}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
