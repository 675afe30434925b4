"""A seeded synthetic city: check-ins with learnable personal routines and spatial structure.

Places sit in Gaussian neighbourhood clusters around a city centre and have heavy-tailed
(Pareto) popularity. Each user has anchors (home, work, a few lunch places near work)
and follows a daily rhythm; free-time stops follow the exploration and preferential
return (EPR) model of Song et al. (Nature Physics 2010): explore a new place with
probability ``rho * S**-gamma`` (``S`` = distinct places so far), chosen with probability
proportional to ``popularity * decay(distance from the current place)``, else return to
a visited free-time place proportionally to its visit count. Users are active on random
days, so gaps of more than 24 h cut the check-ins into trajectories. A share
``extreme_fraction`` of users are extremely heterogeneous: they only ever visit 2-3
places. See ``docs/synthetic.md`` for the full model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedgeo.data.stats import EARTH_RADIUS_KM
from fedgeo.data.table import SECONDS_PER_DAY

KM_PER_DEG_LAT = np.pi * EARTH_RADIUS_KM / 180.0
START_TIMESTAMP = 1704067200
"""2024-01-01 00:00:00 UTC, a Monday."""

DECAYS = ("exponential", "power")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`generate_city` (all distances in km, times in hours)."""

    seed: int = 0
    num_users: int = 200
    num_places: int = 600
    num_neighbourhoods: int = 12
    days: int = 60
    extreme_fraction: float = 0.1
    """Share of users (rounded to a whole number) who visit only 2-3 places."""
    rho: float = 0.6
    """EPR exploration: P(explore) = rho * S**-gamma."""
    gamma: float = 0.21
    distance_decay: str = "exponential"
    """``"exponential"``: exp(-d / distance_scale_km); ``"power"``:
    (1 + d / distance_scale_km) ** -distance_exponent."""
    distance_scale_km: float = 1.5
    distance_exponent: float = 2.0
    commute_scale_km: float = 4.0
    """Work is drawn with weight popularity * exp(-d(home, work) / commute_scale_km)."""
    lunch_scale_km: float = 0.6
    """Lunch places are drawn with weight popularity * exp(-d(work, place) / lunch_scale_km)."""
    centre_lat: float = 40.73
    centre_lon: float = -73.99
    city_size_km: float = 15.0
    """The city is the square of this side around the centre; all places lie in it."""
    neighbourhood_sigma_km: float = 0.8
    popularity_shape: float = 1.2
    """Pareto tail index of place popularity (smaller = heavier tail)."""
    worker_fraction: float = 0.85
    """Share of regular users with a workplace (the others live every day like a weekend)."""
    active_day_prob: tuple[float, float] = (0.45, 0.85)
    """Each user's daily activity probability is uniform in this range."""
    checkin_prob: tuple[float, float] = (0.65, 0.95)
    """Each user's probability of checking in at a stop is uniform in this range."""
    home_checkin_prob: tuple[float, float] = (0.3, 0.7)
    """Each user's extra factor on the check-in probability at home (people report home
    less often than venues), uniform in this range."""
    evening_out_prob: tuple[float, float] = (0.2, 0.7)
    """Each worker's probability of a free-time stop after work, uniform in this range."""
    noise_prob: float = 0.05
    """Probability that a routine stop is replaced by a free-time (EPR) stop."""

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_places < 10 or self.num_neighbourhoods < 1:
            raise ValueError("need num_users >= 1, num_places >= 10, num_neighbourhoods >= 1")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if not 0.0 <= self.extreme_fraction <= 1.0:
            raise ValueError(f"extreme_fraction must be in [0, 1], got {self.extreme_fraction}")
        if self.distance_decay not in DECAYS:
            raise ValueError(f"distance_decay must be one of {DECAYS}")
        if not (0.0 < self.rho <= 1.0 and self.gamma >= 0.0):
            raise ValueError("need 0 < rho <= 1 and gamma >= 0")
        for name in (
            "active_day_prob",
            "checkin_prob",
            "home_checkin_prob",
            "evening_out_prob",
        ):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"{name} must be a range inside [0, 1], got {(lo, hi)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def city_bounds(config: SyntheticConfig) -> tuple[float, float, float, float]:
    """``(lat_min, lat_max, lon_min, lon_max)`` of the city square."""
    half_lat = config.city_size_km / 2.0 / KM_PER_DEG_LAT
    half_lon = half_lat / np.cos(np.radians(config.centre_lat))
    return (
        config.centre_lat - half_lat,
        config.centre_lat + half_lat,
        config.centre_lon - half_lon,
        config.centre_lon + half_lon,
    )


def _generate_places(config: SyntheticConfig, rng: np.random.Generator):
    """Neighbourhood-clustered places: (lat, lon, popularity, distance matrix km)."""
    half = config.city_size_km / 2.0
    k = config.num_neighbourhoods
    centres = rng.uniform(-0.6 * half, 0.6 * half, size=(k, 2))  # (north km, east km)
    sizes = rng.dirichlet(np.full(k, 2.0))
    hood = rng.choice(k, size=config.num_places, p=sizes)
    xy = centres[hood] + rng.normal(0.0, config.neighbourhood_sigma_km, (config.num_places, 2))
    xy = np.clip(xy, -half * 0.999, half * 0.999)
    lat = config.centre_lat + xy[:, 0] / KM_PER_DEG_LAT
    lon = config.centre_lon + xy[:, 1] / (KM_PER_DEG_LAT * np.cos(np.radians(config.centre_lat)))
    popularity = rng.pareto(config.popularity_shape, config.num_places) + 1.0
    # Distances on the city's local tangent plane (km): within 15 km this is within
    # 0.1% of the great-circle distance.
    dist = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    return lat, lon, popularity, dist


def _decay(config: SyntheticConfig, dist: np.ndarray) -> np.ndarray:
    if config.distance_decay == "exponential":
        return np.exp(-dist / config.distance_scale_km)
    return (1.0 + dist / config.distance_scale_km) ** -config.distance_exponent


def _draw(rng: np.random.Generator, weights: np.ndarray) -> int:
    cum = np.cumsum(weights)
    return int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))


class _Walker:
    """One user's EPR state for free-time stops."""

    def __init__(self, rng, explore_weights, anchors):
        self.rng = rng
        self.weights = explore_weights
        self.visited = np.zeros(explore_weights.shape[0], dtype=bool)
        self.visited[list(anchors)] = True
        self.distinct = len(set(anchors))
        self.free_places: list[int] = []
        self.free_counts: list[int] = []

    def free_stop(self, current: int, rho: float, gamma: float) -> int:
        explore = not self.free_places or self.rng.random() < rho * self.distinct**-gamma
        if explore:
            w = np.where(self.visited, 0.0, self.weights[current])
            if w.sum() > 0:
                place = _draw(self.rng, w)
                self.visited[place] = True
                self.distinct += 1
                self.free_places.append(place)
                self.free_counts.append(1)
                return place
        if not self.free_places:
            return current
        i = _draw(self.rng, np.asarray(self.free_counts, dtype=np.float64))
        self.free_counts[i] += 1
        return self.free_places[i]


def _day_times(rng, means_sd) -> np.ndarray:
    """Jittered stop times (hours) kept in stop order and inside the day."""
    means = np.array([m for m, _ in means_sd])
    sds = np.array([s for _, s in means_sd])
    hours = np.sort(np.clip(means + rng.normal(0.0, 1.0, len(means)) * sds, 0.0, 23.98))
    return hours


def generate_city(config: SyntheticConfig | None = None) -> pd.DataFrame:
    """Generate the synthetic city's check-in table (canonical layout, sorted by user, time).

    Columns: ``user_id`` (int64, 1..), ``location_id`` (int64, 1..num_places),
    ``latitude``, ``longitude``, ``timestamp`` (int64 UTC seconds from 2024-01-01),
    ``tz_offset_min`` (int32 zeros). The same config (seed included) gives the same table.
    """
    config = config if config is not None else SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    lat, lon, pop, dist = _generate_places(config, rng)
    n_places = config.num_places
    explore_w = pop[None, :] * _decay(config, dist)
    commute_w = pop[None, :] * np.exp(-dist / config.commute_scale_km)
    lunch_w = pop[None, :] * np.exp(-dist / config.lunch_scale_km)

    n_extreme = round(config.extreme_fraction * config.num_users)
    extreme = np.zeros(config.num_users, dtype=bool)
    extreme[rng.choice(config.num_users, size=n_extreme, replace=False)] = True

    users: list[np.ndarray] = []
    places: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    for uid in range(config.num_users):
        home = int(rng.integers(n_places))
        w = commute_w[home].copy()
        w[home] = 0.0
        work = _draw(rng, w)
        active_p = rng.uniform(*config.active_day_prob)
        checkin_p = rng.uniform(*config.checkin_prob)
        home_p = rng.uniform(*config.home_checkin_prob)
        if extreme[uid]:
            p_list, t_list = _extreme_user(config, rng, home, work, lunch_w, active_p)
        else:
            p_list, t_list = _regular_user(config, rng, home, work, lunch_w, explore_w, active_p)
        p_arr = np.asarray(p_list, dtype=np.int64)
        t_arr = np.asarray(t_list, dtype=np.int64)
        report_p = np.where(p_arr == home, checkin_p * home_p, checkin_p)
        keep = rng.random(len(p_arr)) < report_p
        if keep.sum() < 2:  # every user reports at least a couple of check-ins
            keep[: min(2, len(keep))] = True
        users.append(np.full(int(keep.sum()), uid + 1, dtype=np.int64))
        places.append(p_arr[keep])
        stamps.append(t_arr[keep])

    place_idx = np.concatenate(places)
    return pd.DataFrame(
        {
            "user_id": np.concatenate(users),
            "location_id": place_idx + 1,
            "latitude": lat[place_idx],
            "longitude": lon[place_idx],
            "timestamp": np.concatenate(stamps) + START_TIMESTAMP,
            "tz_offset_min": np.zeros(len(place_idx), dtype=np.int32),
        }
    )


def _active_days(config: SyntheticConfig, rng: np.random.Generator, p: float) -> np.ndarray:
    days = np.flatnonzero(rng.random(config.days) < p)
    return days if len(days) else np.array([int(rng.integers(config.days))])


def _extreme_user(config, rng, home, work, lunch_w, active_p):
    """Only home, work and (for half of them) one haunt near work: 2-3 places."""
    haunt = None
    if rng.random() < 0.5:
        w = lunch_w[work].copy()
        w[[home, work]] = 0.0
        haunt = _draw(rng, w)
    p_out: list[int] = []
    t_out: list[int] = []
    for day in _active_days(config, rng, active_p):
        if day % 7 < 5:
            stops = [(home, 7.5, 0.6), (work, 9.0, 0.5), (work, 13.5, 0.5), (home, 20.0, 1.0)]
        else:
            stops = [(home, 10.0, 1.0)]
            if haunt is not None:
                stops.append((haunt, 15.0, 1.5))
            stops.append((home, 21.0, 1.0))
        hours = _day_times(rng, [(m, s) for _, m, s in stops])
        for (place, _, _), h in zip(stops, hours, strict=True):
            p_out.append(place)
            t_out.append(int(day * SECONDS_PER_DAY + round(h * 3600)))
    return p_out, t_out


def _regular_user(config, rng, home, work, lunch_w, explore_w, active_p):
    """Home/work/lunch routine on weekdays, EPR free time in evenings and weekends."""
    is_worker = rng.random() < config.worker_fraction
    w = lunch_w[work].copy()
    w[[home, work]] = 0.0
    n_lunch = int(rng.integers(1, 4))
    lunch = []
    for _ in range(n_lunch):
        place = _draw(rng, w)
        lunch.append(place)
        w[place] = 0.0
    lunch_pref = rng.dirichlet(np.full(n_lunch, 1.0))
    evening_p = rng.uniform(*config.evening_out_prob)
    walker = _Walker(rng, explore_w, [home, work, *lunch] if is_worker else [home])

    p_out: list[int] = []
    t_out: list[int] = []
    for day in _active_days(config, rng, active_p):
        if is_worker and day % 7 < 5:
            stops: list[tuple[Any, float, float]] = [
                (home, 7.5, 0.6),
                (work, 9.0, 0.4),
                (lunch[_draw(rng, lunch_pref)], 12.5, 0.3),
                (work, 13.75, 0.3),
            ]
            if rng.random() < evening_p:
                stops.append(("free", 18.75, 0.7))
            stops.append((home, 21.5, 0.8))
        else:
            n_free = int(rng.integers(1, 4))
            stops = [(home, 10.0, 0.8)]
            stops += [("free", 12.0 + 8.0 * (i + 0.5) / n_free, 0.6) for i in range(n_free)]
            stops.append((home, 22.0, 0.7))
        hours = _day_times(rng, [(m, s) for _, m, s in stops])
        current = home
        for (place, _, _), h in zip(stops, hours, strict=True):
            if place == "free" or (place != home and rng.random() < config.noise_prob):
                place = walker.free_stop(current, config.rho, config.gamma)
            current = int(place)
            p_out.append(current)
            t_out.append(int(day * SECONDS_PER_DAY + round(h * 3600)))
    return p_out, t_out
