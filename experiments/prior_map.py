"""Map of the places and the geographic adjacency prior's edges (geopandas + matplotlib).

    python -m experiments.prior_map --data ../shared/data/foursquare-nyc/checkins.csv \\
        --out docs/figures/prior_map_nyc.png

Each place is a dot; each prior edge (i, j), i < j, is a line whose opacity follows its
affinity weight. Without ``--data`` the synthetic city is drawn. The right panel zooms
to the densest square kilometres around the busiest place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import geopandas  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from shapely import linestrings  # noqa: E402

from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.geo.places import places_to_geodataframe  # noqa: E402
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig  # noqa: E402


def prior_edges(
    prior: AdjacencyPrior, places_gdf: geopandas.GeoDataFrame
) -> geopandas.GeoDataFrame:
    """The prior's off-diagonal edges as LineStrings with their weights (one per pair)."""
    upper = sp.triu(prior.affinity(), k=1).tocoo()
    xy = np.column_stack([places_gdf.geometry.x, places_gdf.geometry.y])
    coords = np.stack([xy[upper.row], xy[upper.col]], axis=1)
    return geopandas.GeoDataFrame(
        {"source": upper.row, "target": upper.col, "weight": upper.data},
        geometry=linestrings(coords),
        crs=places_gdf.crs,
    )


def draw(places_gdf, edges, ax, title: str) -> None:
    alpha = 0.15 + 0.85 * edges["weight"].to_numpy() / max(edges["weight"].max(), 1e-12)
    edges.plot(ax=ax, color="tab:blue", linewidth=0.4, alpha=np.clip(alpha, 0, 1))
    places_gdf.plot(ax=ax, color="black", markersize=1.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in file (default: the synthetic city)")
    ap.add_argument("--format", default="csv")
    ap.add_argument("--k", type=int, default=10, help="prior neighbours per place")
    ap.add_argument("--zoom-km", type=float, default=2.0, help="half-width of the zoom panel")
    ap.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = ap.parse_args(argv)
    dataset, _ = load_dataset(args.data, args.format) if args.data else load_dataset()
    prior = AdjacencyPrior.from_places(dataset.places, PriorConfig(k=args.k))
    places_gdf = places_to_geodataframe(dataset.places)
    edges = prior_edges(prior, places_gdf)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 6))
    name = Path(args.data).parent.name if args.data else "synthetic city"
    draw(places_gdf, edges, left, f"{name}: {len(places_gdf)} places, {len(edges)} prior edges")
    counts = np.bincount(
        np.concatenate([u.places for u in dataset.users]), minlength=len(places_gdf)
    )
    busiest = places_gdf.geometry.iloc[int(np.argmax(counts))]
    dlat = args.zoom_km / 111.0
    dlon = dlat / max(np.cos(np.radians(busiest.y)), 1e-6)
    draw(places_gdf, edges, right, f"zoom: ±{args.zoom_km:g} km around the busiest place")
    right.set_xlim(busiest.x - dlon, busiest.x + dlon)
    right.set_ylim(busiest.y - dlat, busiest.y + dlat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"prior map: {len(places_gdf)} places, {len(edges)} edges -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
