"""The population prior: what other users do, learned by federated analytics.

Each client contributes one fixed-length vector of 0/1 indicators over a public index
space, computed on the device from its own training range; the server learns only the
sum (by secure summation, :mod:`fedgeo.secure_sum`), optionally with Gaussian noise for
user-level differential privacy. The sum gives, for every place,

* ``visitors[l]``: how many users visited ``l``;
* ``transitions[i, j]``: how many users moved from ``i`` straight to ``j`` (two
  consecutive check-ins of a training trajectory), for ``j`` among the ``candidates``
  nearest places of ``i`` (public coordinates; ``i`` itself included);
* with ``day_blocks`` (the model's ``population_day_blocks``), ``block_visitors[l, b]``:
  how many users checked in at ``l`` in block ``b`` of the day (local time,
  :data:`~fedgeo.data.dataset.SLOT_HOURS` hours a block).

The index space is public and the same for every client: ``L`` visitor slots, then
``L * candidates`` transition slots (``i * candidates + rank of j among i's
neighbours``), then with ``day_blocks`` ``L * blocks`` slots (``l * blocks + b``). A
client counts each place, transition and (place, block) once, however often it made it,
and with a cap (``max_places`` places and as many (place, block) pairs,
``max_transitions``) keeps its most frequent ones, so that one user moves any slot by at
most 1 and the whole vector by at most ``sqrt(max_places + max_transitions)`` in L2
(``sqrt(2 max_places + max_transitions)`` with day blocks): the sensitivity of the DP
noise.

On the device the model reads the population minus the user's own contribution ("what
others do", :meth:`PopulationPrior.rows_without`), in training and evaluation alike, so
that a training sample never sees its own target through the population counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedgeo.data.dataset import BLOCKS_PER_DAY, Places, UserData, day_block
from fedgeo.secure_sum import DEFAULT_NEIGHBOURS

DEFAULT_CANDIDATES = 50
DEFAULT_MAX_PLACES = 64
DEFAULT_MAX_TRANSITIONS = 64


class ContributionError(ValueError):
    """A client's contribution is malformed: wrong length, not finite, outside [0, 1]."""


@dataclass(frozen=True)
class PopulationConfig:
    """Settings of the population prior (run-config keys ``population-*``)."""

    candidates: int = DEFAULT_CANDIDATES
    """Transitions are counted towards each place's this many nearest places."""
    max_places: int = DEFAULT_MAX_PLACES
    """A user contributes at most this many places (its most visited)."""
    max_transitions: int = DEFAULT_MAX_TRANSITIONS
    """... and at most this many distinct transitions (its most frequent)."""
    dp_epsilon: float = 0.0
    """User-level (epsilon, delta)-DP of all the run's releases together; 0 = no noise."""
    dp_delta: float = 1e-5
    refresh: int = 0
    """A federation rebuilds the prior every this many rounds (0 = once, before round 1)."""
    secure_sum: bool = True
    """Sum the clients' vectors by secure summation (else they are sent in the clear)."""
    cohort_size: int = 100
    """Clients per secure-summation instance (a federation runs one per cohort)."""
    neighbours: int = DEFAULT_NEIGHBOURS
    """Secure summation: masking neighbours per client (SecAgg+'s graph degree)."""

    def __post_init__(self) -> None:
        for name in ("candidates", "max_places", "max_transitions", "cohort_size", "neighbours"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(
                    f"population option {name} (run-config population-{name.replace('_', '-')}) "
                    f"must be an integer >= 1, got {value!r}"
                )
        if int(self.refresh) != self.refresh or self.refresh < 0:
            raise ValueError(
                f"population option refresh (run-config population-refresh) must be an "
                f"integer >= 0, got {self.refresh!r}"
            )
        if self.cohort_size < 2:
            raise ValueError("population option cohort_size must be >= 2")
        if not (self.dp_epsilon >= 0 and math.isfinite(self.dp_epsilon)):
            raise ValueError(
                f"population option dp_epsilon (run-config population-dp-epsilon) must be "
                f">= 0 (0 = no noise), got {self.dp_epsilon!r}"
            )
        if not 0 < self.dp_delta < 1:
            raise ValueError(
                f"population option dp_delta (run-config population-dp-delta) must be in "
                f"(0, 1), got {self.dp_delta!r}"
            )

    def sensitivity(self, day_blocks: bool = False) -> float:
        """L2 norm bound of one user's vector (``day_blocks``: with the (place, block of
        the day) slots, capped at ``max_places`` pairs)."""
        places = self.max_places * (2 if day_blocks else 1)
        return math.sqrt(places + self.max_transitions)

    def releases(self, num_rounds: int) -> int:
        """How many times a run of ``num_rounds`` rounds builds the prior."""
        if self.refresh == 0:
            return 1
        return 1 + (max(num_rounds, 1) - 1) // self.refresh

    def release_rounds(self, num_rounds: int) -> list[int]:
        """The rounds before which the prior is (re)built."""
        return [1 + i * self.refresh for i in range(self.releases(num_rounds))]

    def noise_std(self, releases: int = 1, day_blocks: bool = False) -> float:
        """Std of the Gaussian noise on every summed slot (0 without DP), for
        ``releases`` releases together (``day_blocks``: of the index space with them)."""
        if self.dp_epsilon == 0:
            return 0.0
        sensitivity = self.sensitivity(day_blocks)
        return gaussian_sigma(self.dp_epsilon, self.dp_delta, sensitivity, releases)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- differential privacy ----------------------------------------------------------------


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float, releases: int) -> float:
    """Noise std such that ``releases`` Gaussian releases of L2 sensitivity ``sensitivity``
    are (epsilon, delta)-DP together, by zero-concentrated DP (Bun & Steinke, 2016): a
    release is ``rho = sensitivity^2 / (2 sigma^2)``-zCDP, releases add up, and
    ``rho``-zCDP implies ``(rho + 2 sqrt(rho ln(1/delta)), delta)``-DP."""
    if epsilon <= 0:
        raise ValueError("epsilon must be > 0")
    log_term = math.log(1.0 / delta)
    rho = (math.sqrt(epsilon + log_term) - math.sqrt(log_term)) ** 2
    return sensitivity / math.sqrt(2.0 * rho / releases)


def spent_epsilon(sigma: float, delta: float, sensitivity: float, releases: int) -> float:
    """The epsilon of ``releases`` Gaussian releases of std ``sigma`` (inverse of
    :func:`gaussian_sigma`); ``inf`` without noise."""
    if sigma <= 0:
        return math.inf
    rho = releases * sensitivity**2 / (2.0 * sigma**2)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


# --- the public index space ----------------------------------------------------------------


class CandidateIndex:
    """The public slots: ``L`` visitor slots, then ``candidates`` transition slots per
    place, then (``day_blocks``) one slot per place and block of the day."""

    def __init__(
        self, places: Places, candidates: int = DEFAULT_CANDIDATES, day_blocks: bool = False
    ) -> None:
        from fedgeo.geo.prior import nearest_places

        n = len(places)
        k = max(0, min(candidates, n) - 1)
        neighbours, _ = nearest_places(places.latitude, places.longitude, k)
        self.num_places = n
        self.neighbours = np.column_stack([np.arange(n), neighbours]).astype(np.int64)
        """``(L, K)``: each place itself, then its nearest places."""
        self.candidates = self.neighbours.shape[1]
        keys = (np.arange(n)[:, None] * n + self.neighbours).ravel()
        order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[order]
        self._slot_of_sorted = order
        self.day_blocks = bool(day_blocks)
        self.blocks = BLOCKS_PER_DAY if day_blocks else 0
        """Blocks of the day with their own visitor slots (0 without day blocks)."""

    @property
    def block_offset(self) -> int:
        """The first (place, block of the day) slot."""
        return self.num_places * (1 + self.candidates)

    @property
    def length(self) -> int:
        return self.block_offset + self.num_places * self.blocks

    def transition_slots(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Slot of each transition ``src -> dst`` (offset by ``L``), -1 when ``dst`` is
        not among ``src``'s candidates."""
        keys = np.asarray(src, np.int64) * self.num_places + np.asarray(dst, np.int64)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos = np.minimum(pos, len(self._sorted_keys) - 1)
        found = self._sorted_keys[pos] == keys
        return np.where(found, self.num_places + self._slot_of_sorted[pos], -1)


def _top(keys: np.ndarray, cap: int) -> np.ndarray:
    """Distinct keys, the ``cap`` most frequent (ties: the smaller key)."""
    values, counts = np.unique(keys, return_counts=True)
    if len(values) > cap:
        order = np.lexsort((values, -counts))[:cap]
        values = np.sort(values[order])
    return values


def user_items(user: UserData, index: CandidateIndex, config: PopulationConfig):
    """The slots a user contributes (sorted): its capped visited places, its capped
    distinct candidate transitions and, with day blocks, its capped distinct (place,
    block of the day) pairs, from its training range only."""
    end = int(user.train.max()) + 1 if len(user.train) else 0
    places = _top(user.places[:end], config.max_places)
    slots = index.transition_slots(user.places[user.train - 1], user.places[user.train])
    transitions = _top(slots[slots >= 0], config.max_transitions)
    items = [places, transitions]
    if index.blocks:
        blocks = day_block(user.local_times()[:end])
        pairs = _top(user.places[:end] * index.blocks + blocks, config.max_places)
        items.append(index.block_offset + pairs)
    return np.concatenate(items).astype(np.int64)


def contribution(user: UserData, index: CandidateIndex, config: PopulationConfig) -> np.ndarray:
    """The user's 0/1 vector over the index space (what a client secure-sums)."""
    vector = np.zeros(index.length, dtype=np.float64)
    vector[user_items(user, index, config)] = 1.0
    return vector


def check_contribution(vector: Any, length: int, who: str = "a client") -> np.ndarray:
    """The vector as float64 if well formed, else :class:`ContributionError` naming why."""
    try:
        values = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ContributionError(f"{who}: contribution is not numeric ({err})") from err
    if values.shape != (length,):
        raise ContributionError(
            f"{who}: contribution has shape {values.shape}, expected ({length},)"
        )
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ContributionError(
            f"{who}: contribution slot {i} is {float(values[i])!r}; slots are 0/1 indicators"
        )
    return values


# --- the prior ---------------------------------------------------------------------------


class PopulationPrior:
    """Summed (possibly noisy) population counts, stored sparse."""

    def __init__(
        self,
        visitors: np.ndarray,
        transitions: sp.csr_matrix,
        contributors: int,
        block_visitors: np.ndarray | None = None,
    ) -> None:
        self.visitors = np.asarray(visitors, dtype=np.float32)
        self.transitions = sp.csr_matrix(transitions, dtype=np.float32)
        self.contributors = int(contributors)
        self.block_visitors = (
            None if block_visitors is None else np.asarray(block_visitors, dtype=np.float32)
        )
        """``(L, blocks)`` users per place and block of the day, or None without them."""
        if self.block_visitors is not None and (
            self.block_visitors.ndim != 2 or len(self.block_visitors) != len(self.visitors)
        ):
            raise ValueError(
                f"population prior: block_visitors has shape {self.block_visitors.shape}, "
                f"expected ({len(self.visitors)}, blocks)"
            )

    @property
    def num_places(self) -> int:
        return len(self.visitors)

    @classmethod
    def from_sum(
        cls, total: np.ndarray, index: CandidateIndex, contributors: int, threshold: float = 0.5
    ) -> PopulationPrior:
        """From the summed vector: counts are rounded to integers (DP noise makes them
        real), and only slots with a count of at least 1 are kept (sparse)."""
        total = np.asarray(total, dtype=np.float64)
        if total.shape != (index.length,):
            raise ContributionError(
                f"population sum has shape {total.shape}, expected ({index.length},)"
            )
        counts = np.where(total >= threshold, np.rint(total), 0.0)
        n = index.num_places
        visitors = counts[:n]
        trans = counts[n : index.block_offset].reshape(n, index.candidates)
        rows, cols = np.nonzero(trans)
        matrix = sp.csr_matrix(
            (trans[rows, cols], (rows, index.neighbours[rows, cols])), shape=(n, n)
        )
        blocks = counts[index.block_offset :].reshape(n, index.blocks) if index.blocks else None
        return cls(visitors, matrix, contributors, blocks)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (for messages and files)."""
        t = self.transitions
        arrays = {
            "visitors": self.visitors,
            "indptr": t.indptr.astype(np.int64),
            "indices": t.indices.astype(np.int64),
            "data": t.data.astype(np.float32),
            "contributors": np.array([self.contributors], dtype=np.int64),
        }
        if self.block_visitors is not None:
            arrays["block_visitors"] = self.block_visitors
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PopulationPrior:
        missing = {"visitors", "indptr", "indices", "data", "contributors"} - set(arrays)
        if missing:
            raise ValueError(f"population prior arrays lack {sorted(missing)}")
        n = len(arrays["visitors"])
        try:
            matrix = sp.csr_matrix(
                (arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n)
            )
            matrix.check_format(full_check=True)
        except ValueError as err:
            raise ValueError(f"population prior arrays are inconsistent: {err}") from err
        contributors = int(np.asarray(arrays["contributors"]).ravel()[0])
        return cls(arrays["visitors"], matrix, contributors, arrays.get("block_visitors"))


def plain_sum(users: list[UserData], index: CandidateIndex, config: PopulationConfig) -> np.ndarray:
    """The sum of every user's contribution, computed in one place (centralized runs and
    tests; a federation computes the same sum by secure summation)."""
    total = np.zeros(index.length, dtype=np.float64)
    for user in users:
        np.add.at(total, user_items(user, index, config), 1.0)
    return total


class PopulationFeatures:
    """Per-sample population rows minus each sample's own user's contribution."""

    def __init__(
        self,
        prior: PopulationPrior,
        index: CandidateIndex,
        config: PopulationConfig,
        users: list[UserData],
    ) -> None:
        self.prior = prior
        n = prior.num_places
        self.num_places = n
        self.blocks = index.blocks
        if self.blocks and prior.block_visitors is None:
            raise ValueError("the index counts blocks of the day but the prior has none")
        keys_places, keys_trans, keys_blocks = [], [], []
        for u, user in enumerate(users):
            items = user_items(user, index, config)
            places = items[items < n]
            slots = items[(items >= n) & (items < index.block_offset)] - n
            src, rank = slots // index.candidates, slots % index.candidates
            keys_places.append(u * n + places)
            keys_trans.append((u * n + src) * n + index.neighbours[src, rank])
            # (user, block, place): one block's places of a user are one contiguous range
            pairs = items[items >= index.block_offset] - index.block_offset
            if self.blocks:
                place, block = pairs // self.blocks, pairs % self.blocks
                keys_blocks.append((u * self.blocks + block) * n + place)

        def sorted_keys(keys: list[np.ndarray]) -> np.ndarray:
            return np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)

        self._own_places = sorted_keys(keys_places)
        self._own_trans = sorted_keys(keys_trans)
        self._own_blocks = sorted_keys(keys_blocks)

    def rows(self, users: np.ndarray, last_place: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(transitions, visitors)``, each ``(B, L)`` float32 ``log(1 + count)`` of the
        other users: transitions out of the sample's last place, visitors of each place."""
        n = self.num_places
        b = len(users)
        trans = self.prior.transitions[last_place].toarray()
        rows, cols = _ranges(self._own_trans, (users * n + last_place) * n, n)
        trans[rows, cols] -= 1.0
        visitors = np.repeat(self.prior.visitors[None, :], b, axis=0)
        rows, cols = _ranges(self._own_places, users * n, n)
        visitors[rows, cols] -= 1.0
        return (
            np.log1p(np.maximum(trans, 0.0)).astype(np.float32),
            np.log1p(np.maximum(visitors, 0.0)).astype(np.float32),
        )

    def block_rows(self, users: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """``(B, L)`` float32 ``log(1 + count)`` of the other users who checked in at each
        place in the sample's block of the day (``blocks``, the target's)."""
        if not self.blocks or self.prior.block_visitors is None:
            raise ValueError("this population prior has no visitors by block of the day")
        n = self.num_places
        counts = self.prior.block_visitors[:, blocks].T.copy()
        rows, cols = _ranges(self._own_blocks, (users * self.blocks + blocks) * n, n)
        counts[rows, cols] -= 1.0
        return np.log1p(np.maximum(counts, 0.0)).astype(np.float32)


def _ranges(sorted_keys: np.ndarray, starts: np.ndarray, width: int):
    """(row, column) of every key in ``[starts[r], starts[r] + width)``."""
    lo = np.searchsorted(sorted_keys, starts)
    hi = np.searchsorted(sorted_keys, starts + width)
    counts = hi - lo
    rows = np.repeat(np.arange(len(starts)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    keys = sorted_keys[np.repeat(lo, counts) + offsets]
    return rows, keys - np.repeat(starts, counts)
