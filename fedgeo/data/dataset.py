"""Preprocessed data: places, and one :class:`UserData` per user (= per client).

A *sample* is a position ``p`` in a user's time-ordered check-ins: the target is
``places[p]``; the model may use only ``places[:p]``, ``times[:p]`` and the target's
time ``times[p]`` (the time at which the prediction is asked for). Train,
validation and test samples are arrays of such positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SLOT_HOURS = 4
"""Hours in a block of the day: the personal memory's ``slot`` score and the population
prior's visitors by block of the day count check-ins in the target's block."""
BLOCKS_PER_DAY = 24 // SLOT_HOURS


def day_block(local_seconds: np.ndarray) -> np.ndarray:
    """Block of the day (0 = from midnight, :data:`SLOT_HOURS` hours each) of local times
    in seconds."""
    return (np.asarray(local_seconds, dtype=np.int64) // 3600) % 24 // SLOT_HOURS


@dataclass(frozen=True)
class Places:
    """The place table: position ``i`` is the dense place index ``i``."""

    ids: np.ndarray
    """Original place ids as in the input file (int64 or object)."""
    latitude: np.ndarray
    """WGS84 degrees, float64."""
    longitude: np.ndarray
    """WGS84 degrees, float64."""

    def __len__(self) -> int:
        return int(len(self.ids))

    def coordinates(self) -> np.ndarray:
        """``(n, 2)`` array of (latitude, longitude) in degrees."""
        return np.column_stack([self.latitude, self.longitude])

    def to_geodataframe(self):  # -> geopandas.GeoDataFrame
        """The places as a GeoDataFrame (EPSG:4326), one row per dense index."""
        from fedgeo.geo.places import places_to_geodataframe

        return places_to_geodataframe(self)


@dataclass
class UserData:
    """Everything one user (one client, one device) holds, in time order."""

    user_id: Any
    """Original user id as in the input."""
    places: np.ndarray
    """int64 dense place indices of the user's check-ins, time-ordered."""
    times: np.ndarray
    """int64 UTC seconds of each check-in."""
    local_offsets: np.ndarray
    """int32 minutes to add to UTC for local time (0 when unknown)."""
    traj_start: np.ndarray
    """int64: for each check-in, the position where its trajectory starts."""
    train: np.ndarray
    """int64 positions of training samples."""
    validation: np.ndarray
    """int64 positions of validation samples."""
    test: np.ndarray
    """int64 positions of test samples."""

    def __len__(self) -> int:
        return int(len(self.places))

    def split(self, name: str) -> np.ndarray:
        """Sample positions of ``"train"``, ``"validation"`` or ``"test"``."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def local_times(self) -> np.ndarray:
        """int64 local seconds (UTC + offset) of each check-in."""
        return self.times + self.local_offsets.astype(np.int64) * 60


@dataclass
class Dataset:
    """A preprocessed data set: the place table and the users, one client each."""

    places: Places
    users: list[UserData]
    protocol: dict[str, Any] = field(default_factory=dict)
    """The preprocessing settings that produced it (for results files)."""
    name: str = "dataset"

    @property
    def num_places(self) -> int:
        return len(self.places)

    def num_samples(self, split: str) -> int:
        return int(sum(len(u.split(split)) for u in self.users))
