"""Sparse histories from a dense check-in table: a few of each user's days.

Public LBSN data sets differ most in how much each user checks in: Foursquare NYC's
median user has 93 check-ins, Gowalla's and Brightkite's a handful. To test a model on
sparse *real* movements, :func:`sparse_days` keeps, for each user, every check-in of a
few of the days it checked in: how many is drawn from a log-normal distribution with the
given median (at least 1, at most the user's days), which days uniformly at random. The
movements within a kept day are real and the kept days span the user's whole period, so
the time split still finds each user before and after its cut; what is lost is the rest
of each user's history. A day is a UTC day (local when the table has ``tz_offset_min``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedgeo.data.table import SECONDS_PER_DAY


def days_kept(
    days: np.ndarray, median: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Per user, how many of its ``days`` to keep: ``round(median * exp(sigma * z))``,
    ``z`` standard normal, clipped to ``[1, days]``."""
    if not median > 0:
        raise ValueError(f"median days must be positive, got {median!r}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be non-negative, got {sigma!r}")
    drawn = np.rint(median * np.exp(sigma * rng.standard_normal(len(days)))).astype(np.int64)
    return np.clip(drawn, 1, days)


def sparse_days(
    table: pd.DataFrame, median_days: float = 3.0, sigma: float = 1.0, seed: int = 0
) -> pd.DataFrame:
    """Keep every check-in of a few days of each user (module docstring).

    ``table`` is a canonical check-in table (:mod:`fedgeo.data.table`); the kept rows are
    returned in input order. Seeded: the same table, settings and seed keep the same rows.
    """
    rng = np.random.default_rng(seed)
    seconds = table["timestamp"].to_numpy(dtype=np.int64)
    if "tz_offset_min" in table.columns:
        seconds = seconds + 60 * table["tz_offset_min"].to_numpy(dtype=np.int64)
    day = seconds // SECONDS_PER_DAY
    groups = list(table.groupby("user_id", sort=True).indices.values())
    user_days = [np.unique(day[rows]) for rows in groups]
    counts = days_kept(np.array([len(d) for d in user_days]), median_days, sigma, rng)
    keep = np.zeros(len(table), dtype=bool)
    for rows, days, count in zip(groups, user_days, counts, strict=True):
        chosen = rng.choice(days, int(count), replace=False)
        keep[rows[np.isin(day[rows], chosen)]] = True
    return table[keep].reset_index(drop=True)
