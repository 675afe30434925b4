"""The preprocessing protocol: check-in table -> trajectories -> train/validation/test samples.

The default protocol (``ProtocolConfig()``) is the one published next-location results
use, so numbers are comparable:

1. Optional frequency filters (off by default): drop check-ins at places with fewer than
   ``min_place_checkins`` check-ins, then drop users with fewer than ``min_user_checkins``
   of the remaining check-ins (one pass each, in that order).
2. Places: every distinct ``location_id`` left after the filters, given dense indices
   ``0..L-1`` in sorted order of the original id; a place's coordinates are those of its
   first check-in in time (ties: input order).
3. Each user's check-ins are sorted by time (stable: equal times keep input order) and cut
   into trajectories wherever the gap to the previous check-in is *strictly* greater than
   ``gap_hours``. Trajectories of one check-in are removed from the user's data.
4. Split (``split="global"``): all trajectories sorted by start time (ties by user id);
   the first ``round(train_frac * n)`` are training, the next ``round(val_frac * n)``
   validation, the rest test (``round`` is Python's: halves go to the even integer).
   ``split="per-user"``: the same rule applied to each user's own trajectories in time
   order.
5. Users without a training trajectory are removed entirely (with their validation and
   test trajectories).
6. Samples: every check-in of a training trajectory except its first is a training sample;
   each validation/test trajectory gives one sample, its last check-in, predicted from
   everything before it (the trajectory's earlier check-ins and the user's earlier
   history, whatever split that history belongs to).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedgeo.data.dataset import Dataset, Places, UserData
from fedgeo.data.errors import DataError, TooLittleData
from fedgeo.data.table import validate_table

SPLITS = ("global", "per-user")
SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of :func:`preprocess`; the defaults are the published protocol."""

    split: str = "global"
    """``"global"``: trajectories of all users split by start time; ``"per-user"``: each
    user's trajectories split chronologically."""
    gap_hours: float = 24.0
    """A gap strictly longer than this starts a new trajectory."""
    train_frac: float = 0.8
    val_frac: float = 0.1
    min_user_checkins: int = 0
    """Drop users with fewer check-ins (after the place filter); 0 = off."""
    min_place_checkins: int = 0
    """Drop check-ins at places with fewer check-ins; 0 = off."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not (self.gap_hours > 0 and np.isfinite(self.gap_hours)):
            raise ValueError(f"gap_hours must be a positive number, got {self.gap_hours!r}")
        if not (0.0 < self.train_frac <= 1.0):
            raise ValueError(f"train_frac must be in (0, 1], got {self.train_frac!r}")
        if not (0.0 <= self.val_frac <= 1.0 - self.train_frac + 1e-12):
            raise ValueError(
                f"val_frac must be in [0, 1 - train_frac], got {self.val_frac!r} "
                f"with train_frac {self.train_frac!r}"
            )
        for name in ("min_user_checkins", "min_place_checkins"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_counts(n: int, train_frac: float = 0.8, val_frac: float = 0.1) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for ``n`` trajectories: ``n_train = round(train_frac n)``,
    ``n_val = round(val_frac n)`` (capped at what is left), the rest test."""
    n_train = min(round(train_frac * n), n)
    n_val = min(round(val_frac * n), n - n_train)
    return n_train, n_val, n - n_train - n_val


def _split_counts_array(n: np.ndarray, train_frac: float, val_frac: float):
    # np.rint rounds halves to even, exactly like Python's round on the same float64.
    n_train = np.minimum(np.rint(train_frac * n).astype(np.int64), n)
    n_val = np.minimum(np.rint(val_frac * n).astype(np.int64), n - n_train)
    return n_train, n_val


def _factorize_sorted(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in sorted order of the values; mixed-type ids are ordered by
    ``(type name, str(id))``."""
    try:
        codes, uniques = pd.factorize(values, sort=True)
        return codes.astype(np.int64), np.asarray(uniques)
    except TypeError:
        codes, uniques = pd.factorize(values, sort=False)
        uniques = np.asarray(uniques, dtype=object)
        order = sorted(
            range(len(uniques)), key=lambda i: (type(uniques[i]).__name__, str(uniques[i]))
        )
        rank = np.empty(len(order), dtype=np.int64)
        rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        return rank[codes], uniques[np.asarray(order, dtype=np.int64)]


def apply_filters(table: pd.DataFrame, config: ProtocolConfig) -> pd.DataFrame:
    """The frequency filters: place filter first, then user filter (counted after it)."""
    if config.min_place_checkins > 0:
        counts = table["location_id"].map(table["location_id"].value_counts())
        table = table[counts.to_numpy() >= config.min_place_checkins]
    if config.min_user_checkins > 0:
        counts = table["user_id"].map(table["user_id"].value_counts())
        table = table[counts.to_numpy() >= config.min_user_checkins]
    return table


def preprocess(
    table: pd.DataFrame, config: ProtocolConfig | None = None, name: str = "dataset"
) -> Dataset:
    """Apply the protocol (see the module docstring) to a canonical check-in table.

    Raises :class:`DataError` when the table is invalid, and its subclass
    :class:`~fedgeo.data.errors.TooLittleData` when nothing is left to train on.
    """
    config = config if config is not None else ProtocolConfig()
    validate_table(table, source=name)
    rows_in = len(table)
    table = apply_filters(table, config)
    if len(table) == 0:
        raise DataError("no check-ins left after the frequency filters", path=name)

    user_codes, user_ids = _factorize_sorted(table["user_id"])
    place_codes, place_ids = _factorize_sorted(table["location_id"])
    times = table["timestamp"].to_numpy(dtype=np.int64)
    lat = table["latitude"].to_numpy(dtype=np.float64)
    lon = table["longitude"].to_numpy(dtype=np.float64)
    if "tz_offset_min" in table.columns:
        offsets = table["tz_offset_min"].to_numpy(dtype=np.int32)
    else:
        offsets = np.zeros(len(table), dtype=np.int32)

    # Places: coordinates of each place's first check-in in time (ties: input order).
    by_time = np.argsort(times, kind="stable")
    _, first = np.unique(place_codes[by_time], return_index=True)
    places = Places(ids=place_ids, latitude=lat[by_time[first]], longitude=lon[by_time[first]])

    # Sort by (user, time), stable so equal times keep input order.
    order = by_time[np.argsort(user_codes[by_time], kind="stable")]
    u, t = user_codes[order], times[order]

    # Trajectories: a new one at each new user or gap strictly above gap_hours.
    gap_s = config.gap_hours * 3600.0
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (u[1:] != u[:-1]) | (np.diff(t) > gap_s)
    traj = np.cumsum(starts) - 1
    lengths = np.bincount(traj)
    n_traj_all = len(lengths)
    keep = lengths[traj] >= 2
    order, u, t, starts = order[keep], u[keep], t[keep], starts[keep]
    traj = np.cumsum(starts) - 1
    first_row = np.flatnonzero(starts)
    traj_user, traj_time = u[first_row], t[first_row]
    n_traj = len(first_row)
    if n_traj == 0:
        raise TooLittleData(
            f"too little data to train: no trajectory with two or more check-ins "
            f"({len(table)} check-in{'s' if len(table) != 1 else ''}, "
            f"{len(user_ids)} user{'s' if len(user_ids) != 1 else ''})",
            path=name,
        )

    # Split label per trajectory: 0 train, 1 validation, 2 test.
    label = np.empty(n_traj, dtype=np.int8)
    if config.split == "global":
        ranked = np.lexsort((np.arange(n_traj), traj_user, traj_time))
        n_train, n_val, _ = split_counts(n_traj, config.train_frac, config.val_frac)
        label[ranked] = np.where(
            np.arange(n_traj) < n_train, 0, np.where(np.arange(n_traj) < n_train + n_val, 1, 2)
        )
    else:  # per-user: trajectories are already in (user, time) order
        user_first = np.flatnonzero(np.r_[True, traj_user[1:] != traj_user[:-1]])
        per_user_n = np.diff(np.r_[user_first, n_traj])
        n_tr, n_va = _split_counts_array(per_user_n, config.train_frac, config.val_frac)
        group = np.repeat(np.arange(len(user_first)), per_user_n)
        rank = np.arange(n_traj) - user_first[group]
        label[:] = np.where(rank < n_tr[group], 0, np.where(rank < n_tr[group] + n_va[group], 1, 2))
    traj_per_split_before = np.bincount(label, minlength=3)

    # Remove users without a training trajectory.
    has_train = np.zeros(len(user_ids), dtype=bool)
    has_train[traj_user[label == 0]] = True
    users_without_train = int(len(np.unique(traj_user)) - has_train.sum())
    if not has_train.any():
        raise TooLittleData(
            f"too little data to train: none of the {n_traj} trajectories is for training "
            f"(split {config.split!r}, train_frac {config.train_frac:g})",
            path=name,
        )
    keep_traj = has_train[traj_user]
    keep = keep_traj[traj]
    order, u, starts = order[keep], u[keep], starts[keep]
    label = label[keep_traj]
    traj = np.cumsum(starts) - 1
    row_label = label[traj]
    ends = np.r_[starts[1:], True]

    # Per-user layout.
    n_rows = len(order)
    user_start_rows = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    user_end_rows = np.r_[user_start_rows[1:], n_rows]
    row_user = np.repeat(np.arange(len(user_start_rows)), user_end_rows - user_start_rows)
    pos = np.arange(n_rows) - user_start_rows[row_user]
    traj_start_pos = pos[np.flatnonzero(starts)][traj]
    sample_rows = {
        "train": np.flatnonzero((row_label == 0) & ~starts),
        "validation": np.flatnonzero((row_label == 1) & ends),
        "test": np.flatnonzero((row_label == 2) & ends),
    }
    sample_bounds = {k: np.searchsorted(rows, user_start_rows) for k, rows in sample_rows.items()}
    places_sorted = place_codes[order]
    times_sorted = times[order]
    offsets_sorted = offsets[order]

    users: list[UserData] = []
    for i, (a, b) in enumerate(zip(user_start_rows, user_end_rows, strict=True)):
        split_pos = {}
        for k, rows in sample_rows.items():
            lo = sample_bounds[k][i]
            hi = sample_bounds[k][i + 1] if i + 1 < len(user_start_rows) else len(rows)
            split_pos[k] = (rows[lo:hi] - a).astype(np.int64)
        users.append(
            UserData(
                user_id=_scalar(user_ids[u[a]]),
                places=places_sorted[a:b].astype(np.int64),
                times=times_sorted[a:b].astype(np.int64),
                local_offsets=offsets_sorted[a:b].astype(np.int32),
                traj_start=traj_start_pos[a:b].astype(np.int64),
                train=split_pos["train"],
                validation=split_pos["validation"],
                test=split_pos["test"],
            )
        )

    counts = {
        "rows_in": int(rows_in),
        "rows_after_filters": int(len(table)),
        "trajectories_all": int(n_traj_all),
        "single_checkin_trajectories_dropped": int(n_traj_all - n_traj),
        "trajectories_before_user_drop": {
            s: int(c) for s, c in zip(SPLIT_NAMES, traj_per_split_before, strict=True)
        },
        "users_without_train_dropped": users_without_train,
        "trajectories": {
            s: int(c) for s, c in zip(SPLIT_NAMES, np.bincount(label, minlength=3), strict=True)
        },
        "samples": {s: int(len(r)) for s, r in sample_rows.items()},
        "users": len(users),
        "places": len(places),
        "checkins": int(n_rows),
    }
    return Dataset(
        places=places, users=users, protocol={**config.to_dict(), "counts": counts}, name=name
    )


def _scalar(value: Any) -> Any:
    """numpy scalars -> Python scalars, so user ids print and serialize cleanly."""
    return value.item() if isinstance(value, np.generic) else value


def trajectory_counts(ds: Dataset) -> dict[str, int]:
    """Number of trajectories per split, from the sample positions (each training
    trajectory has at least one training sample, each validation/test one sample)."""
    out = {}
    for split in SPLIT_NAMES:
        out[split] = int(sum(len(np.unique(u.traj_start[u.split(split)])) for u in ds.users))
    return out


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """Headline numbers of a preprocessed data set (JSON-serializable)."""
    checkins = np.array([len(u) for u in ds.users], dtype=np.int64)
    distinct = np.array([len(np.unique(u.places)) for u in ds.users], dtype=np.int64)
    return {
        "name": ds.name,
        "users": len(ds.users),
        "places": ds.num_places,
        "checkins": int(checkins.sum()),
        "trajectories": trajectory_counts(ds),
        "samples": {s: ds.num_samples(s) for s in SPLIT_NAMES},
        "median_checkins_per_user": float(np.median(checkins)) if len(checkins) else 0.0,
        "median_distinct_places_per_user": float(np.median(distinct)) if len(distinct) else 0.0,
    }
