"""The synthetic city: determinism, knobs, bounds, and that it is learnable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from fedgeo.data.loading import load_dataset
from fedgeo.data.protocol import preprocess
from fedgeo.data.synthetic import (
    START_TIMESTAMP,
    SyntheticConfig,
    city_bounds,
    generate_city,
)
from fedgeo.data.table import validate_table

SMALL = SyntheticConfig(num_users=40, num_places=150, days=21, seed=3)


@pytest.fixture(scope="module")
def default_city() -> pd.DataFrame:
    return generate_city()


def test_same_seed_same_table_other_seed_other_table():
    a, b = generate_city(SMALL), generate_city(SMALL)
    pd.testing.assert_frame_equal(a, b)
    c = generate_city(SyntheticConfig(num_users=40, num_places=150, days=21, seed=4))
    assert len(a) != len(c) or not a.equals(c)


def test_canonical_layout_and_time_range():
    table = generate_city(SMALL)
    validate_table(table)
    assert list(table.columns) == [
        "user_id",
        "location_id",
        "latitude",
        "longitude",
        "timestamp",
        "tz_offset_min",
    ]
    assert table["timestamp"].dtype == np.int64 and table["tz_offset_min"].dtype == np.int32
    assert (table["tz_offset_min"] == 0).all()
    assert table["timestamp"].min() >= START_TIMESTAMP
    assert table["timestamp"].max() < START_TIMESTAMP + SMALL.days * 86400
    assert table["user_id"].nunique() == SMALL.num_users
    # a place always has the same coordinates
    assert (table.groupby("location_id")[["latitude", "longitude"]].nunique() == 1).all().all()


def test_coordinates_within_city_bounds(default_city):
    lat_min, lat_max, lon_min, lon_max = city_bounds(SyntheticConfig())
    assert lat_max - lat_min == pytest.approx(15.0 / 111.195, rel=1e-3)
    assert default_city["latitude"].between(lat_min, lat_max).all()
    assert default_city["longitude"].between(lon_min, lon_max).all()


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5])
def test_extreme_fraction_sets_share_of_users_with_at_most_3_places(fraction):
    config = SyntheticConfig(num_users=60, num_places=200, days=28, extreme_fraction=fraction)
    distinct = generate_city(config).groupby("user_id")["location_id"].nunique()
    assert abs((distinct <= 3).mean() - fraction) <= 0.05


def test_daily_rhythm_check_ins_concentrate_in_the_day(default_city):
    hours = (default_city["timestamp"] - START_TIMESTAMP) % 86400 / 3600
    assert ((hours >= 5) & (hours < 24)).mean() > 0.97
    assert ((hours >= 9) & (hours < 22)).mean() > 0.6


def test_consecutive_places_are_closer_than_random_pairs(default_city):
    t = default_city
    same_user = t["user_id"].to_numpy()[1:] == t["user_id"].to_numpy()[:-1]
    lat, lon = np.radians(t["latitude"].to_numpy()), np.radians(t["longitude"].to_numpy())
    x, y = lon * np.cos(np.radians(40.73)), lat
    step = np.hypot(np.diff(x), np.diff(y))[same_user & (np.diff(x) ** 2 + np.diff(y) ** 2 > 0)]
    rng = np.random.default_rng(0)
    i, j = rng.integers(len(t), size=(2, 5000))
    random_pairs = np.hypot(x[i] - x[j], y[i] - y[j])
    assert np.median(step) < 0.7 * np.median(random_pairs)


def test_most_users_have_train_validation_and_test_samples(default_city):
    ds = preprocess(default_city)
    users = ds.users
    assert len(users) >= 0.95 * SyntheticConfig().num_users
    assert np.mean([len(u.train) > 0 for u in users]) == 1.0
    assert np.mean([len(u.validation) > 0 for u in users]) > 0.7
    assert np.mean([len(u.test) > 0 for u in users]) > 0.7


def accuracy_at_1(ds, split="test") -> dict[str, float]:
    """Global popularity, per-user most frequent and first-order Markov predictors."""
    counts = np.zeros(ds.num_places)
    for u in ds.users:
        np.add.at(counts, u.places[u.train], 1)
    top = int(np.argmax(counts))
    hits = Counter()
    n = 0
    for u in ds.users:
        for p in u.split(split):
            hist, target = u.places[:p].tolist(), int(u.places[p])
            freq = Counter(hist).most_common(1)[0][0]
            nxt = Counter(b for a, b in zip(hist, hist[1:], strict=False) if a == hist[-1])
            hits["global"] += top == target
            hits["user_frequent"] += freq == target
            hits["markov"] += (nxt.most_common(1)[0][0] if nxt else freq) == target
            n += 1
    return {k: hits[k] / n for k in ("global", "user_frequent", "markov")}


def test_personal_and_sequence_predictors_beat_global_popularity(default_city):
    acc = accuracy_at_1(preprocess(default_city))
    assert acc["user_frequent"] > acc["global"] + 0.15
    assert acc["markov"] > acc["global"] + 0.15


def test_power_law_decay_and_config_validation():
    table = generate_city(
        SyntheticConfig(num_users=10, num_places=50, days=14, distance_decay="power")
    )
    assert table["user_id"].nunique() == 10
    with pytest.raises(ValueError, match="distance_decay"):
        SyntheticConfig(distance_decay="gravity")
    with pytest.raises(ValueError, match="extreme_fraction"):
        SyntheticConfig(extreme_fraction=1.5)


def test_load_dataset_without_path_uses_synthetic_city():
    ds, result = load_dataset(synthetic=SMALL)
    assert result is None and ds.name == "synthetic"
    assert ds.protocol["synthetic"]["seed"] == 3
    expected = preprocess(generate_city(SMALL))
    assert ds.num_samples("test") == expected.num_samples("test")
    assert [len(u) for u in ds.users] == [len(u) for u in expected.users]
    with pytest.raises(ValueError, match="not both"):
        load_dataset("x.csv", synthetic=SMALL)
