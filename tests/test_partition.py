"""One client per user: partition order, client profiles, subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgeo.data.partition import (
    ClientData,
    client_data,
    client_profile,
    partition,
    profiles_table,
    subset_dataset,
)
from fedgeo.data.protocol import ProtocolConfig, preprocess
from fedgeo.data.stats import EARTH_RADIUS_KM

H = 3600
COORDS = {"A": (0.0, 0.0), "B": (0.0, 1.0), "C": (10.0, 10.0)}


def hand_dataset():
    """User "u2": 10 trajectories alternating A, B (8 train / 1 val / 1 test, per user);
    user "u1": three check-ins at C in one trajectory (train only)."""
    rows = []
    for k in range(10):
        rows += [("u2", "A", k * 100 * H), ("u2", "B", (k * 100 + 1) * H)]
    rows += [("u1", "C", 0), ("u1", "C", H), ("u1", "C", 2 * H)]
    users, locs, times = zip(*rows, strict=True)
    table = pd.DataFrame(
        {
            "user_id": users,
            "location_id": locs,
            "latitude": [COORDS[loc][0] for loc in locs],
            "longitude": [COORDS[loc][1] for loc in locs],
            "timestamp": np.asarray(times, dtype=np.int64),
        }
    )
    return preprocess(table, ProtocolConfig(split="per-user"), name="hand")


def test_partition_is_one_client_per_user_in_user_id_order():
    ds = hand_dataset()
    clients = partition(ds)
    assert [u.user_id for u in clients] == ["u1", "u2"]
    assert clients[1] is ds.users[1]
    c = client_data(ds, 1)
    assert isinstance(c, ClientData) and c.client_id == 1 and c.places is ds.places
    assert c.coordinates().shape == (20, 2)
    assert tuple(c.coordinates()[0]) == COORDS["A"]
    with pytest.raises(IndexError):
        client_data(ds, 2)


def test_client_profile_values_on_hand_case():
    ds = hand_dataset()
    p2 = client_profile(ds.users[1], ds.places)
    assert p2["user_id"] == "u2"
    assert p2["checkins"] == 20 and p2["distinct_places"] == 2
    assert p2["entropy"] == pytest.approx(1.0)
    # half the check-ins 0.5 degree either side of the centroid on the equator
    assert p2["radius_of_gyration_km"] == pytest.approx(np.radians(0.5) * EARTH_RADIUS_KM)
    assert (p2["train_samples"], p2["validation_samples"], p2["test_samples"]) == (8, 1, 1)
    p1 = client_profile(ds.users[0], ds.places)
    assert (p1["checkins"], p1["distinct_places"], p1["entropy"]) == (3, 1, 0.0)
    assert p1["radius_of_gyration_km"] == pytest.approx(0.0, abs=1e-3)  # arccos: ~10 cm
    assert (p1["train_samples"], p1["validation_samples"], p1["test_samples"]) == (2, 0, 0)


def test_profiles_table_has_one_row_per_client():
    ds = hand_dataset()
    frame = profiles_table(ds)
    assert frame.index.name == "client_id"
    assert frame.index.tolist() == [0, 1]
    assert frame["user_id"].tolist() == ["u1", "u2"]
    assert frame["checkins"].tolist() == [3, 20]
    assert frame.loc[1].to_dict() == client_profile(ds.users[1], ds.places)


def test_subset_keeps_places_and_given_order():
    ds = hand_dataset()
    sub = subset_dataset(ds, [1])
    assert sub.places is ds.places and sub.num_places == 3
    assert [u.user_id for u in sub.users] == ["u2"]
    assert sub.protocol["subset"] == [1]
    assert sub.protocol["split"] == "per-user"
    assert [u.user_id for u in subset_dataset(ds, [1, 0]).users] == ["u2", "u1"]
    assert sub.num_samples("test") == 1
    with pytest.raises(IndexError):
        subset_dataset(ds, [2])
    with pytest.raises(ValueError, match="repeat"):
        subset_dataset(ds, [0, 0])
