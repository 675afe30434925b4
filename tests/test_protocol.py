"""The preprocessing protocol, rule by rule, plus a reference implementation and NYC counts."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgeo.data.dataset import Dataset
from fedgeo.data.errors import DataError
from fedgeo.data.protocol import (
    ProtocolConfig,
    dataset_summary,
    preprocess,
    split_counts,
)

H = 3600
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NYC = DATA_DIR / "foursquare-nyc" / "checkins.csv"


def make_table(rows, tz=None) -> pd.DataFrame:
    """rows: (user, location, seconds); coordinates derived from the location id."""
    users, locs, secs = zip(*rows, strict=True)
    loc_num = np.array([zlib.crc32(str(loc).encode()) % 1000 for loc in locs], dtype=np.float64)
    table = pd.DataFrame(
        {
            "user_id": list(users),
            "location_id": list(locs),
            "latitude": 40.0 + loc_num / 1e4,
            "longitude": -74.0 + loc_num / 1e4,
            "timestamp": np.asarray(secs, dtype=np.int64),
        }
    )
    if tz is not None:
        table["tz_offset_min"] = np.asarray(tz, dtype=np.int32)
    return table


def user(ds: Dataset, user_id):
    matches = [u for u in ds.users if u.user_id == user_id]
    assert len(matches) == 1, f"user {user_id!r} not found once"
    return matches[0]


def trajectories(start_hours, user_id, n_each=2, loc0=0):
    """Rows for trajectories of `n_each` check-ins one hour apart, starting at the hours."""
    rows = []
    for k, h in enumerate(start_hours):
        for j in range(n_each):
            rows.append((user_id, loc0 + k * n_each + j, (h + j) * H))
    return rows


# --- trajectory cutting -------------------------------------------------------------


def test_gap_of_exactly_24h_stays_in_trajectory_and_one_second_more_cuts():
    rows = [(1, 10, 0), (1, 11, 24 * H), (1, 12, 48 * H + 1), (1, 13, 49 * H)]
    rows += trajectories(range(200, 2000, 100), user_id=1, loc0=100)  # plenty of trajectories
    ds = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    u = user(ds, 1)
    assert list(u.traj_start[:4]) == [0, 0, 2, 2]


def test_single_checkin_trajectories_are_removed_entirely():
    rows = [(1, 1, 0), (1, 2, 1 * H), (1, 3, 30 * H), (1, 4, 60 * H), (1, 5, 61 * H)]
    ds = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    u = user(ds, 1)
    loc_ids = ds.places.ids[u.places]
    assert list(loc_ids) == [1, 2, 4, 5]
    assert ds.protocol["counts"]["single_checkin_trajectories_dropped"] == 1
    # the place of the dropped check-in stays in the place table
    assert 3 in set(ds.places.ids.tolist())


def test_equal_timestamps_keep_input_order():
    rows = [(1, 7, 5 * H), (1, 3, 5 * H), (1, 9, 6 * H), (1, 4, 0)]
    ds = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    assert list(ds.places.ids[user(ds, 1).places]) == [4, 7, 3, 9]


# --- global split -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (10, (8, 1, 1)),
        (5, (4, 0, 1)),
        (15, (12, 2, 1)),
        (25, (20, 2, 3)),
        (1, (1, 0, 0)),
        (23842, (19074, 2384, 2384)),
    ],
)
def test_split_counts_use_round_half_to_even(n, expected):
    assert split_counts(n) == expected


def test_global_split_by_start_time_with_ties_by_user_id():
    # 10 trajectories: 8 train, 1 validation, 1 test. The last two start at the same
    # time; user 1 (smaller id) gets the validation one although user 2 comes first.
    rows = trajectories([1000], user_id=2, loc0=500)
    rows += trajectories([0, 100, 200, 300], user_id=1)
    rows += trajectories([50, 150, 250, 350], user_id=2, loc0=300)
    rows += trajectories([1000], user_id=1, loc0=600)
    ds = preprocess(make_table(rows))
    u1, u2 = user(ds, 1), user(ds, 2)
    assert [u.user_id for u in ds.users] == [1, 2]
    assert len(u1.validation) == 1 and len(u1.test) == 0
    assert len(u2.test) == 1 and len(u2.validation) == 0
    assert u1.times[u1.validation[0]] == 1001 * H
    assert ds.protocol["counts"]["trajectories"] == {"train": 8, "validation": 1, "test": 1}


def test_samples_are_last_checkins_and_training_targets_skip_first():
    # user 1: 8 train trajectories of 3 check-ins, then a validation and a test one of 4
    rows = trajectories(range(0, 800, 100), user_id=1, n_each=3)
    rows += trajectories([1000, 1100], user_id=1, n_each=4, loc0=100)
    ds = preprocess(make_table(rows))
    u = user(ds, 1)
    assert list(u.train) == [p for k in range(8) for p in (3 * k + 1, 3 * k + 2)]
    assert list(u.validation) == [24 + 3]
    assert list(u.test) == [28 + 3]
    assert list(u.traj_start[24:32]) == [24] * 4 + [28] * 4


def test_users_without_training_trajectory_are_removed():
    rows = trajectories(range(0, 800, 100), user_id="a")
    rows += trajectories([900, 950], user_id="b", loc0=200)  # only val/test trajectories
    ds = preprocess(make_table(rows))
    assert [u.user_id for u in ds.users] == ["a"]
    counts = ds.protocol["counts"]
    assert counts["users_without_train_dropped"] == 1
    assert counts["trajectories_before_user_drop"] == {"train": 8, "validation": 1, "test": 1}
    assert counts["trajectories"] == {"train": 8, "validation": 0, "test": 0}
    assert ds.num_places == 20  # b's places stay in the place table


def test_nothing_left_raises_data_error():
    with pytest.raises(DataError, match="no trajectory"):
        preprocess(make_table([(1, 1, 0), (1, 2, 30 * H), (2, 1, 0)]))


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="split"):
        ProtocolConfig(split="random")
    with pytest.raises(ValueError, match="val_frac"):
        ProtocolConfig(train_frac=0.8, val_frac=0.3)
    with pytest.raises(ValueError, match="gap_hours"):
        ProtocolConfig(gap_hours=0)


# --- per-user split -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_traj", "expected"),
    [
        (1, (1, 0, 0)),
        (2, (2, 0, 0)),
        (3, (2, 0, 1)),
        (5, (4, 0, 1)),
        (6, (5, 1, 0)),
        (8, (6, 1, 1)),
        (10, (8, 1, 1)),
    ],
)
def test_per_user_split_is_chronological_per_user(n_traj, expected):
    rows = trajectories(range(0, 100 * n_traj, 100), user_id=1)
    rows += trajectories([5000, 5100], user_id=2, loc0=900)  # another user: own split
    ds = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    u = user(ds, 1)
    n_train = len(np.unique(u.traj_start[u.train]))
    assert (n_train, len(u.validation), len(u.test)) == expected
    assert len(user(ds, 2).train) == 2 and len(user(ds, 2).test) == 0
    assert list(u.train) == [2 * k + 1 for k in range(expected[0])]


# --- frequency filters, places ------------------------------------------------------


def test_place_filter_applies_before_user_filter():
    rows = [(1, "rare", 0), (1, "x", H), (1, "y", 2 * H)]  # user 1: 3 -> 2 after place filter
    rows += [(2, "x", 0), (2, "y", H), (2, "x", 2 * H), (2, "y", 3 * H)]
    off = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    assert [u.user_id for u in off.users] == [1, 2]
    on = preprocess(
        make_table(rows),
        ProtocolConfig(split="per-user", min_place_checkins=2, min_user_checkins=3),
    )
    assert [u.user_id for u in on.users] == [2]
    assert sorted(on.places.ids.tolist()) == ["x", "y"]
    assert on.protocol["counts"]["rows_after_filters"] == 4


def test_places_dense_sorted_with_first_reported_coordinates():
    table = make_table([(1, 30, 5 * H), (1, 10, 6 * H), (1, 20, 7 * H), (1, 30, 2 * H)])
    table.loc[0, "latitude"] = 41.5  # a later check-in at place 30 reports other coordinates
    ds = preprocess(table, ProtocolConfig(split="per-user"))
    assert ds.places.ids.tolist() == [10, 20, 30]
    assert ds.places.latitude[2] == table.loc[3, "latitude"]
    assert list(user(ds, 1).places) == [2, 2, 0, 1]


def test_mixed_type_ids_are_ordered_by_type_name_then_text():
    rows = [("b", 3, 0), ("b", "x", H), (2, "a", 0), (2, 1, H)]
    ds = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    assert ds.places.ids.tolist() == [1, 3, "a", "x"]  # int before str
    assert [u.user_id for u in ds.users] == [2, "b"]


def test_local_offsets_come_from_tz_column_and_default_to_zero():
    rows = [(1, 1, 0), (1, 2, H), (1, 3, 2 * H)]
    with_tz = preprocess(make_table(rows, tz=[-240, -240, -300]), ProtocolConfig(split="per-user"))
    assert list(with_tz.users[0].local_offsets) == [-240, -240, -300]
    without = preprocess(make_table(rows), ProtocolConfig(split="per-user"))
    assert list(without.users[0].local_offsets) == [0, 0, 0]


def test_dataset_summary_on_hand_case():
    rows = trajectories(range(0, 800, 100), user_id=1, n_each=3)
    rows += trajectories([1000, 1100], user_id=1, n_each=4, loc0=100)
    rows += trajectories([50, 150], user_id=2, loc0=0)
    ds = preprocess(make_table(rows))
    s = dataset_summary(ds)
    assert s["users"] == 2 and s["checkins"] == 36
    assert s["trajectories"] == {"train": 10, "validation": 1, "test": 1}
    assert s["samples"] == {"train": 18, "validation": 1, "test": 1}
    assert s["median_checkins_per_user"] == 18.0
    assert s["median_distinct_places_per_user"] == (32 + 4) / 2


# --- reference implementation and invariants on random tables -----------------------


def reference(table: pd.DataFrame, config: ProtocolConfig) -> dict:
    """Slow, plain-Python statement of the protocol: user -> (times, place ids, splits)."""
    by_user: dict = {}
    for i, r in enumerate(table.itertuples(index=False)):
        by_user.setdefault(r.user_id, []).append((r.timestamp, i, r.location_id))
    trajs = []  # (start time, user, [checkins])
    for uid in sorted(by_user):
        current: list = []
        for c in sorted(by_user[uid]):
            if current and c[0] - current[-1][0] > config.gap_hours * H:
                trajs.append(current)
                current = []
            current.append(c)
        trajs.append(current)
    trajs = [t for t in trajs if len(t) >= 2]
    owner = {id(t): table.user_id.iloc[t[0][1]] for t in trajs}
    label = {}
    if config.split == "global":
        ordered = sorted(trajs, key=lambda t: (t[0][0], owner[id(t)]))
        n_tr, n_va, _ = split_counts(len(ordered), config.train_frac, config.val_frac)
        for k, t in enumerate(ordered):
            label[id(t)] = 0 if k < n_tr else (1 if k < n_tr + n_va else 2)
    else:
        for uid in by_user:
            mine = [t for t in trajs if owner[id(t)] == uid]
            n_tr, n_va, _ = split_counts(len(mine), config.train_frac, config.val_frac)
            for k, t in enumerate(mine):
                label[id(t)] = 0 if k < n_tr else (1 if k < n_tr + n_va else 2)
    out = {}
    for uid in sorted(by_user):
        mine = [t for t in trajs if owner[id(t)] == uid]
        if not any(label[id(t)] == 0 for t in mine):
            continue
        times, locs, splits = [], [], {"train": [], "validation": [], "test": []}
        for t in mine:
            base = len(times)
            times += [c[0] for c in t]
            locs += [c[2] for c in t]
            if label[id(t)] == 0:
                splits["train"] += list(range(base + 1, base + len(t)))
            else:
                splits["validation" if label[id(t)] == 1 else "test"].append(base + len(t) - 1)
        out[uid] = (times, locs, splits)
    return out


random_rows = st.lists(
    st.tuples(
        st.integers(1, 4),  # user
        st.integers(1, 6),  # place
        st.integers(0, 12 * 24).map(lambda h: h * 3 * H // 4),  # times on a 45-min grid
    ),
    min_size=2,
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(rows=random_rows, split=st.sampled_from(["global", "per-user"]))
def test_matches_reference_and_never_uses_the_future(rows, split):
    table = make_table(rows)
    config = ProtocolConfig(split=split)
    expected = reference(table, config)
    if not expected:
        with pytest.raises(DataError):
            preprocess(table, config)
        return
    ds = preprocess(table, config)
    assert [u.user_id for u in ds.users] == list(expected)
    for u in ds.users:
        times, locs, splits = expected[u.user_id]
        assert u.times.tolist() == times
        assert ds.places.ids[u.places].tolist() == locs
        for name in ("train", "validation", "test"):
            assert u.split(name).tolist() == splits[name]
        # no sample sees its own future; each sample has history in its trajectory
        assert np.all(np.diff(u.times) >= 0)
        for name in ("train", "validation", "test"):
            for p in u.split(name):
                assert np.all(u.times[:p] <= u.times[p])
                assert u.traj_start[p] < p
        # split ordering in time: train targets < validation targets < test targets
        tr, va, te = (u.times[u.split(s)] for s in ("train", "validation", "test"))
        if len(tr) and len(va):
            assert tr.max() < va.min()
        if len(va) and len(te):
            assert va.max() < te.min()
        if len(tr) and len(te):
            assert tr.max() < te.min()


# --- the real NYC file --------------------------------------------------------------


def nyc_table() -> pd.DataFrame:
    if not NYC.exists():
        pytest.skip(f"{NYC} not found: real data is not shipped with the repository")
    df = pd.read_csv(NYC)
    return pd.DataFrame(
        {
            "user_id": df["user_id"],
            "location_id": df["location_id"],
            "latitude": df["latitude"],
            "longitude": df["longitude"],
            "timestamp": df["time_min"].astype(np.int64) * 60,
        }
    )


def test_nyc_default_protocol_gives_published_counts():
    table = nyc_table()
    t0 = time.perf_counter()
    ds = preprocess(table, name="foursquare-nyc")
    elapsed = time.perf_counter() - t0
    counts = ds.protocol["counts"]
    assert counts["trajectories_all"] - counts["single_checkin_trajectories_dropped"] == 23842
    assert counts["trajectories_before_user_drop"] == {
        "train": 19074,
        "validation": 2384,
        "test": 2384,
    }
    assert ds.num_samples("test") == 2335
    assert ds.num_samples("validation") == 2356
    assert ds.num_places == 5135
    summary = dataset_summary(ds)
    assert summary["trajectories"] == {"train": 19074, "validation": 2356, "test": 2335}
    assert elapsed < 10.0  # ~0.1 s on a laptop; generous for slow CI


def test_nyc_per_user_split_gives_every_user_with_trajectories_a_split():
    ds = preprocess(nyc_table(), ProtocolConfig(split="per-user"))
    assert ds.protocol["counts"]["users_without_train_dropped"] == 0
    for u in ds.users[:200]:
        if len(u.test):
            assert u.times[u.train].max() < u.times[u.test].min()


def test_load_dataset_reads_nyc_through_the_reader():
    if not NYC.exists():
        pytest.skip(f"{NYC} not found: real data is not shipped with the repository")
    from fedgeo.data.loading import load_dataset

    ds, result = load_dataset(NYC, "csv", time_unit="min")
    assert result is not None and len(result.table) == 147938
    assert ds.num_samples("test") == 2335 and ds.num_samples("validation") == 2356
