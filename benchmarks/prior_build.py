"""Time the geographic adjacency prior: build, wire size, spectral embedding.

Random places uniform in a city-sized box (New York: 40.50-40.92 N, 74.26-73.70 W),
seeded; optionally also the unique place coordinates of a check-in CSV with columns
``location_id, latitude, longitude`` (e.g. ../shared/data/foursquare-nyc/checkins.csv).

    python benchmarks/prior_build.py                       # 5,135 and 100,000 places
    python benchmarks/prior_build.py --places 100000 --k 10
    python benchmarks/prior_build.py --csv ../shared/data/foursquare-nyc/checkins.csv
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.geo import PriorConfig, build_adjacency_prior, spectral_embedding  # noqa: E402

BOX = (40.50, 40.92, -74.26, -73.70)
"""(south, north, west, east) degrees: about 47 km x 47 km."""


def random_places(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    south, north, west, east = BOX
    return rng.uniform(south, north, n), rng.uniform(west, east, n)


def csv_places(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(path, usecols=["location_id", "latitude", "longitude"])
    places = frame.groupby("location_id", sort=True)[["latitude", "longitude"]].first()
    return places["latitude"].to_numpy(), places["longitude"].to_numpy()


def _seconds(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench(name: str, lat: np.ndarray, lon: np.ndarray, args: argparse.Namespace) -> None:
    config = PriorConfig(k=args.k)
    repeat = args.repeat if len(lat) <= 20_000 else 1
    build_s, prior = _seconds(lambda: build_adjacency_prior(lat, lon, config), repeat)
    raw = prior.to_bytes()
    packed = prior.to_bytes(compress=True)
    checksum_s, _ = _seconds(prior.checksum, repeat)
    emb_s, emb = _seconds(lambda: spectral_embedding(prior, args.dim, seed=0), repeat)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{name}: L={prior.num_places:,} k={prior.num_neighbors} "
        f"h={prior.bandwidth_km:.3f} km nnz={prior.matrix.nnz:,}\n"
        f"  build {build_s:.2f} s | bytes {len(raw):,} (deflated {len(packed):,}) | "
        f"checksum {checksum_s:.3f} s | spectral_embedding dim={args.dim} {emb_s:.2f} s "
        f"{emb.shape} | peak RSS so far {rss_mb:,.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, nargs="+", default=[5135, 100_000])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32, help="spectral embedding columns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best of N (<= 20k places)")
    parser.add_argument("--csv", type=Path, help="also a check-in CSV's unique places")
    args = parser.parse_args(argv)
    # warm-up: imports (scikit-learn, scipy.sparse.linalg) are not part of the timings
    warm_lat, warm_lon = random_places(1200, args.seed)
    spectral_embedding(build_adjacency_prior(warm_lat, warm_lon, PriorConfig(k=args.k)), 2)
    for n in args.places:
        bench(f"random box, {n:,} places", *random_places(n, args.seed), args)
    if args.csv is not None:
        bench(f"{args.csv.name} unique places", *csv_places(args.csv), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
