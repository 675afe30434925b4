"""Turn samples (user, position) into model inputs, using only each sample's past.

For a sample at position ``p`` of a user's time-ordered check-ins the inputs are

* the last ``window`` check-ins before ``p`` (place, hour-of-week), left-padded;
* the hour-of-week of the target time and the log time gap since the last check-in;
* personal memory over all places, from the user's own check-ins ``[:p]``:
  ``freq`` = log(1 + visits), ``trans`` = log(1 + transitions from the last place),
  ``slot`` = log(1 + visits in the same 4-hour block of the day as the target time),
  ``recency`` = 0.8^age of the most recent visit within the window (0 if none);
* the adjacency-prior row of the last place, scaled to a maximum of 1.

With ``ModelConfig.training_memory = "leave-one-out"``, *training* batches
(``build(..., training=True)``) count ``freq``, ``trans`` and ``slot`` over the user's whole
training range (every check-in up to the last training target) minus the target check-in
itself, so that training sees memory as rich as the test's; ``recency`` stays the window's.
Validation and test samples always use their past only.

Everything is computed with vectorized numpy over a flat concatenation of the
users' check-ins, so a batch may mix users freely.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from fedgeo.data.dataset import UserData, day_block
from fedgeo.geo.prior import EARTH_RADIUS_KM
from fedgeo.models.config import COORDINATE_MODELS, ModelConfig
from fedgeo.population import PopulationFeatures

HOURS_PER_WEEK = 168
RECENCY_DECAY = 0.8
MEMORY_FEATURES = ("freq", "trans", "slot", "recency")
POPULATION_FEATURES = ("trans-visited", "trans-new", "visitors-visited", "visitors-new")
"""The population scores: others' transitions out of the last place and others' visits,
each on the places the user has visited and on the others."""
DAY_BLOCK_FEATURES = ("block-visitors-visited", "block-visitors-new")
"""With ``ModelConfig.population_day_blocks``: others who checked in at each place in the
target's block of the day, on visited and on new places."""
HISTORY_FEATURES = (
    "weekday", "time-of-day", "hours-since", "checkins-since", "second-order",
    "km-visited", "km-new",
)  # fmt: skip
"""The history scores (``ModelConfig.history_scores``, :meth:`FeatureBuilder.history`):
the user's own visits on the target's weekday and near its time of day, how long ago
(hours, check-ins) the latest visit was, transitions from the last two places, and the
distance from the last place, on visited and on new places."""
TIME_OF_DAY_HOURS = 2
"""A visit counts for ``time-of-day`` when its local hour is within this many hours of the
target's (on any day)."""
WINDOW_FEATURES = ("window-count", "window-recency")
"""The window pointer's scores (:func:`window_pointer_features`)."""
WINDOW_COUNT = WINDOW_FEATURES.index("window-count")
"""Index of the window's visit counts in :func:`window_pointer_features`."""
FREQ = MEMORY_FEATURES.index("freq")
"""Index of the visit counts in a batch's ``memory``."""
# 1970-01-01 was a Thursday: shift so that hour-of-week 0 is Monday 00:00.
_EPOCH_HOUR_SHIFT = 72


def window_pointer_features(window_places: torch.Tensor, num_places: int) -> torch.Tensor:
    """Per sample and place, ``log(1 + visits)`` within the left-padded window
    ``(B, W)`` (padding index ``num_places``) and ``RECENCY_DECAY^age`` of the latest of
    them (age 0: the last check-in); ``(B, 2, num_places)``, zero for places outside it."""
    batch, width = window_places.shape
    valid = (window_places != num_places).to(torch.float32)
    age = torch.arange(width - 1, -1, -1, device=window_places.device, dtype=torch.float32)
    recency = (RECENCY_DECAY**age).expand(batch, width) * valid
    counts = torch.zeros(batch, num_places + 1, device=window_places.device)
    counts.scatter_add_(1, window_places, valid)
    latest = torch.zeros(batch, num_places + 1, device=window_places.device)
    latest.scatter_reduce_(1, window_places, recency, reduce="amax")
    return torch.stack([torch.log1p(counts), latest], dim=1)[:, :, :num_places]


def hour_of_week(local_seconds: np.ndarray) -> np.ndarray:
    """Hour of the week (0 = Monday 00h) of local times in seconds."""
    return ((np.asarray(local_seconds, dtype=np.int64) // 3600) + _EPOCH_HOUR_SHIFT) % (
        HOURS_PER_WEEK
    )


class SampleIndex:
    """Flat, concatenated view of several users' check-ins for fast batching."""

    def __init__(self, users: Sequence[UserData]) -> None:
        self.users = list(users)
        lengths = np.array([len(u) for u in self.users], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        if self.users:
            self.places = np.concatenate([u.places for u in self.users]).astype(np.int64)
            local = np.concatenate([u.local_times() for u in self.users])
            self.times = np.concatenate([u.times for u in self.users]).astype(np.int64)
        else:
            self.places = np.zeros(0, np.int64)
            local = np.zeros(0, np.int64)
            self.times = np.zeros(0, np.int64)
        self.hour_of_week = hour_of_week(local)
        self.day_slot = day_block(local)
        self.train_end = np.array(
            [int(u.train.max()) + 1 if len(u.train) else 0 for u in self.users], dtype=np.int64
        )
        """Per user: one past the last training target (the end of its training range)."""

    def samples(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All samples of a split as (user index, position) arrays."""
        users, positions = [], []
        for i, user in enumerate(self.users):
            pos = user.split(split)
            users.append(np.full(len(pos), i, dtype=np.int64))
            positions.append(np.asarray(pos, dtype=np.int64))
        if not users:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(users), np.concatenate(positions)


class FeatureBuilder:
    """Builds batches of model inputs from a :class:`SampleIndex`."""

    def __init__(
        self,
        num_places: int,
        config: ModelConfig,
        prior_matrix: sp.csr_matrix | None = None,
        population: PopulationFeatures | None = None,
        coordinates: np.ndarray | None = None,
    ) -> None:
        self.num_places = num_places
        self.config = config
        self.population = population
        self.radians: np.ndarray | None = None
        """``(L, 2)`` latitude and longitude in radians (models that need distances)."""
        self.cos_lat: np.ndarray | None = None
        """``(L,)`` cosine of each place's latitude."""
        if config.needs_coordinates:
            if coordinates is None or np.shape(coordinates) != (num_places, 2):
                who = (
                    "the history scores need"
                    if config.history_scores
                    else f"model {config.architecture!r} needs"
                )
                raise ValueError(f"{who} the coordinates of the {num_places} places")
            self.radians = np.radians(np.asarray(coordinates, dtype=np.float64))
            self.cos_lat = np.cos(self.radians[:, 0])
        self.prior_rows: sp.csr_matrix | None = None
        if prior_matrix is not None and config.prior_score:
            rows = sp.csr_matrix(prior_matrix, dtype=np.float32)
            row_max = rows.max(axis=1).toarray().ravel()
            row_max[row_max <= 0] = 1.0
            self.prior_rows = sp.csr_matrix(sp.diags(1.0 / row_max) @ rows, dtype=np.float32)

    def build(
        self,
        index: SampleIndex,
        users: np.ndarray,
        positions: np.ndarray,
        *,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Inputs for samples ``(users[b], positions[b])``; includes ``target``.
        ``training``: these are training samples (see ``training_memory``)."""
        users = np.asarray(users, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if np.any(positions < 1):
            raise ValueError("a sample needs at least one earlier check-in (position >= 1)")
        cfg = self.config
        num = self.num_places
        batch = len(users)
        starts = index.offsets[users]
        flat_target = starts + positions
        # Recent window, left-padded with place index `num` and hour slot 168.
        w = cfg.window
        win_pos = flat_target[:, None] - w + np.arange(w)[None, :]
        valid = win_pos >= starts[:, None]
        win_pos_c = np.where(valid, win_pos, 0)
        window_places = np.where(valid, index.places[win_pos_c], num)
        window_hours = np.where(valid, index.hour_of_week[win_pos_c], HOURS_PER_WEEK)
        last_flat = flat_target - 1
        last_place = index.places[last_flat]
        gap_h = np.maximum(index.times[flat_target] - index.times[last_flat], 0) / 3600.0
        out: dict[str, torch.Tensor] = {
            "users": torch.from_numpy(users),
            "window_places": torch.from_numpy(window_places),
            "window_hours": torch.from_numpy(window_hours),
            "target_hour": torch.from_numpy(index.hour_of_week[flat_target]),
            "log_gap": torch.from_numpy(np.log1p(gap_h).astype(np.float32)),
            "log_history": torch.from_numpy(np.log1p(positions).astype(np.float32)),
            "last_place": torch.from_numpy(last_place),
            "target": torch.from_numpy(index.places[flat_target]),
        }
        if cfg.architecture in COORDINATE_MODELS:  # time gaps, distances to the last check-in
            gap_s = index.times[last_flat][:, None] - index.times[win_pos_c]
            out["window_gap_hours"] = torch.from_numpy(
                np.where(valid, np.maximum(gap_s, 0) / 3600.0, 0.0).astype(np.float32)
            )
            here = self.radians[last_place][:, None, :]
            there = self.radians[index.places[win_pos_c]]
            km = np.where(valid, haversine_km(here, there), 0.0).astype(np.float32)
            out["window_distance_km"] = torch.from_numpy(km)
        if cfg.personal_memory:
            train_end = None
            if training and cfg.training_memory == "leave-one-out":
                train_end = index.train_end[users]
                if np.any(positions >= train_end):
                    raise ValueError("leave-one-out memory is for training samples only")
            out["memory"] = torch.from_numpy(
                self._memory(
                    index,
                    starts,
                    positions,
                    last_place,
                    flat_target,
                    valid,
                    win_pos_c,
                    train_end,
                )
            )
        if cfg.history_scores:
            out["history"] = torch.from_numpy(
                self.history(index, starts, positions, last_place, flat_target, out["memory"])
            )
        if cfg.population_prior and self.population is not None:
            trans, visitors = self.population.rows(users, last_place)
            if cfg.personal_memory:
                seen = (out["memory"][:, FREQ] > 0).numpy().astype(np.float32)
            else:
                seen = np.zeros_like(trans)
            new = 1.0 - seen
            scores = [trans * seen, trans * new, visitors * seen, visitors * new]
            if cfg.population_day_blocks:
                here = self.population.block_rows(users, index.day_slot[flat_target])
                scores += [here * seen, here * new]
            out["population"] = torch.from_numpy(np.stack(scores, axis=1))
        if self.prior_rows is not None:
            out["prior_row"] = torch.from_numpy(self.prior_rows[last_place].toarray())
        assert out["target"].shape[0] == batch
        return out

    def _history_entries(
        self,
        starts: np.ndarray,
        positions: np.ndarray,
        flat_target: np.ndarray,
        train_end: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per sample, how many past check-ins the memory counts (``[:p]``, or
        ``[:train_end]``; at most ``memory_limit``), and their flat indices, sample after
        sample in time order."""
        lengths = positions.copy() if train_end is None else train_end.copy()
        first = starts.copy()
        if self.config.memory_limit > 0:
            lengths = np.minimum(lengths, self.config.memory_limit)
            first = flat_target - lengths
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return lengths, np.repeat(first, lengths) + within

    def _memory(
        self,
        index: SampleIndex,
        starts: np.ndarray,
        positions: np.ndarray,
        last_place: np.ndarray,
        flat_target: np.ndarray,
        valid: np.ndarray,
        win_pos: np.ndarray,
        train_end: np.ndarray | None = None,
    ) -> np.ndarray:
        """Memory over check-ins ``[:p]``, or with ``train_end`` over ``[:train_end]``
        minus the target ``p`` (leave-one-out)."""
        num = self.num_places
        batch = len(positions)
        lengths, hist = self._history_entries(starts, positions, flat_target, train_end)
        hist_places = index.places[hist]
        cell = np.repeat(np.arange(batch), lengths) * num + hist_places
        size = batch * num
        freq = np.bincount(cell, minlength=size)
        # Transitions out of the last place: history entries whose predecessor
        # (same user) is the last place.
        has_prev = hist > np.repeat(starts, lengths)
        prev_places = np.where(has_prev, index.places[np.maximum(hist - 1, 0)], -1)
        is_trans = prev_places == np.repeat(last_place, lengths)
        trans = np.bincount(cell[is_trans], minlength=size)
        same_slot = index.day_slot[hist] == np.repeat(index.day_slot[flat_target], lengths)
        slot = np.bincount(cell[same_slot], minlength=size)
        if train_end is not None:
            # The target check-in itself is in the range: take it out of every count (it
            # is a visit, a transition out of the last place, and in the target's slot).
            target_cell = np.arange(batch) * num + index.places[flat_target]
            for counts in (freq, trans, slot):
                counts[target_cell] -= 1
        memory = np.empty((batch, len(MEMORY_FEATURES), num), dtype=np.float32)
        memory[:, 0] = np.log1p(freq).reshape(batch, num)
        memory[:, 1] = np.log1p(trans).reshape(batch, num)
        memory[:, 2] = np.log1p(slot).reshape(batch, num)
        recency = np.zeros((batch, num), dtype=np.float32)
        w = win_pos.shape[1]
        arange_b = np.arange(batch)
        for j in range(w):  # oldest to newest: newer visits overwrite with larger values
            ok = valid[:, j]
            recency[arange_b[ok], index.places[win_pos[ok, j]]] = RECENCY_DECAY ** (w - 1 - j)
        memory[:, 3] = recency
        return memory

    def history(
        self,
        index: SampleIndex,
        starts: np.ndarray,
        positions: np.ndarray,
        last_place: np.ndarray,
        flat_target: np.ndarray,
        memory: torch.Tensor,
    ) -> np.ndarray:
        """The history maps ``(B, len(HISTORY_FEATURES), L)`` over check-ins ``[:p]``
        (``memory_limit`` applies; always the past, also for leave-one-out training):

        * ``weekday``: ``log(1 + visits on the target's weekday)``;
        * ``time-of-day``: ``log(1 + visits within TIME_OF_DAY_HOURS of its local hour)``;
        * ``hours-since``, ``checkins-since``: ``log(1 + hours)`` and ``log(1 + check-ins)``
          since the latest visit, 0 for places never visited;
        * ``second-order``: ``log(1 + transitions l_{p-2} -> l_{p-1} -> l)``;
        * ``km-visited``, ``km-new``: ``log(1 + km)`` from the last place, on the visited
          places and on the others (needs the coordinates)."""
        num = self.num_places
        batch = len(positions)
        lengths, hist = self._history_entries(starts, positions, flat_target)
        cell = np.repeat(np.arange(batch), lengths) * num + index.places[hist]
        size = batch * num
        how = index.hour_of_week[hist]
        target_how = np.repeat(index.hour_of_week[flat_target], lengths)
        weekday = np.bincount(cell[how // 24 == target_how // 24], minlength=size)
        hour_diff = np.abs(how % 24 - target_how % 24)
        near = np.minimum(hour_diff, 24 - hour_diff) <= TIME_OF_DAY_HOURS
        time_of_day = np.bincount(cell[near], minlength=size)
        # The latest visit of every visited cell: its last entry (entries are time-ordered).
        visited, last_entry = np.unique(cell[::-1], return_index=True)
        latest = hist[::-1][last_entry]
        target_of = flat_target[visited // num]
        hours = (index.times[target_of] - index.times[latest]) / 3600.0
        hours_since = np.zeros(size)
        hours_since[visited] = np.log1p(np.maximum(hours, 0.0))
        checkins_since = np.zeros(size)
        checkins_since[visited] = np.log1p(target_of - latest)
        user_start = np.repeat(starts, lengths)
        has_two = hist - 2 >= user_start
        before = np.where(has_two, index.places[np.maximum(hist - 2, 0)], -1)
        prev = np.where(hist - 1 >= user_start, index.places[np.maximum(hist - 1, 0)], -1)
        second_last = np.where(positions >= 2, index.places[np.maximum(flat_target - 2, 0)], -2)
        is_second = (prev == np.repeat(last_place, lengths)) & (
            before == np.repeat(second_last, lengths)
        )
        second_order = np.bincount(cell[is_second], minlength=size)
        origins, row_of = np.unique(last_place, return_inverse=True)
        km = np.log1p(
            haversine_km(self.radians[origins][:, None, :], self.radians[None], self.cos_lat)
        )[row_of]
        seen = (memory[:, FREQ] > 0).numpy()
        out = np.empty((batch, len(HISTORY_FEATURES), num), dtype=np.float32)
        out[:, 0] = np.log1p(weekday).reshape(batch, num)
        out[:, 1] = np.log1p(time_of_day).reshape(batch, num)
        out[:, 2] = hours_since.reshape(batch, num)
        out[:, 3] = checkins_since.reshape(batch, num)
        out[:, 4] = np.log1p(second_order).reshape(batch, num)
        out[:, 5] = km * seen
        out[:, 6] = km * ~seen
        return out


def haversine_km(a: np.ndarray, b: np.ndarray, cos_lat_b: np.ndarray | None = None) -> np.ndarray:
    """Great-circle distances (km) between ``(..., 2)`` arrays of radians (lat, lon);
    ``cos_lat_b``: ``cos`` of ``b``'s latitudes, when already known."""
    dlat, dlon = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    cos_b = np.cos(b[..., 0]) if cos_lat_b is None else cos_lat_b
    h = np.sin(dlat / 2) ** 2 + np.cos(a[..., 0]) * cos_b * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
