"""One client per user: the federated partition of a preprocessed :class:`Dataset`.

Client (partition) id ``i`` is ``dataset.users[i]``; users are ordered by original user id
(see :func:`fedgeo.data.protocol.preprocess`), so ids are stable across runs on the same
data and protocol. A client holds its own :class:`UserData` and a reference to the shared
:class:`Places` table (place ids and coordinates are public; trajectories are not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedgeo.data.dataset import Dataset, Places, UserData
from fedgeo.data.stats import user_profile


@dataclass(frozen=True)
class ClientData:
    """What client ``client_id`` holds: its user's data and the shared place table."""

    client_id: int
    user: UserData
    places: Places

    def coordinates(self) -> np.ndarray:
        """``(n, 2)`` (latitude, longitude) of each of the user's check-ins."""
        return self.places.coordinates()[self.user.places]

    def profile(self) -> dict:
        """This client's data profile (see :func:`client_profile`)."""
        return client_profile(self.user, self.places)


def partition(dataset: Dataset) -> list[UserData]:
    """The users' data in client-id order: element ``i`` is client (partition) ``i``."""
    return list(dataset.users)


def client_data(dataset: Dataset, client_id: int) -> ClientData:
    """The data of client ``client_id`` (``0 <= client_id < len(dataset.users)``)."""
    if not 0 <= client_id < len(dataset.users):
        raise IndexError(f"client id {client_id} outside 0..{len(dataset.users) - 1}")
    return ClientData(client_id, dataset.users[client_id], dataset.places)


def client_profile(user: UserData, places: Places) -> dict:
    """Data profile of one client, over all the check-ins it holds.

    Keys: ``user_id``, ``checkins``, ``distinct_places``, ``entropy`` (normalized visit
    entropy), ``radius_of_gyration_km``, ``train_samples``, ``validation_samples``,
    ``test_samples``.
    """
    profile = user_profile(user.places, places.latitude[user.places], places.longitude[user.places])
    return {
        "user_id": user.user_id,
        **profile,
        "train_samples": int(len(user.train)),
        "validation_samples": int(len(user.validation)),
        "test_samples": int(len(user.test)),
    }


def profiles_table(dataset: Dataset) -> pd.DataFrame:
    """One row per client (index ``client_id``), columns as in :func:`client_profile`."""
    rows = [client_profile(u, dataset.places) for u in dataset.users]
    frame = pd.DataFrame(rows)
    frame.index.name = "client_id"
    return frame


def subset_dataset(dataset: Dataset, user_indices: Sequence[int] | np.ndarray) -> Dataset:
    """A data set with only the given clients (in the given order) and all places.

    Place indices stay valid, so models trained on a subset share the place space of the
    full data set. ``protocol`` records the kept client ids under ``"subset"``.
    """
    indices = np.asarray(user_indices, dtype=np.int64).reshape(-1)
    n = len(dataset.users)
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(f"user indices must lie in 0..{n - 1}")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("user indices must not repeat")
    protocol = {**dataset.protocol, "subset": [int(i) for i in indices]}
    return Dataset(
        places=dataset.places,
        users=[dataset.users[i] for i in indices],
        protocol=protocol,
        name=dataset.name,
    )
