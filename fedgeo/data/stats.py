"""Per-user mobility statistics (the data profile a client can report)."""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG) used to turn haversine angles into kilometres."""


def normalized_entropy(places: np.ndarray) -> float:
    """Shannon entropy of the visit distribution over distinct places, divided by
    ``log(#distinct)``: 0 for one place, 1 for uniform visits; 0 when fewer than 2 places."""
    _, counts = np.unique(np.asarray(places), return_counts=True)
    if len(counts) < 2:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


def radius_of_gyration_km(latitude: np.ndarray, longitude: np.ndarray) -> float:
    """Radius of gyration of the check-ins in km: the RMS great-circle distance to
    their centroid (the centroid is the normalized mean of the unit vectors)."""
    lat = np.radians(np.asarray(latitude, dtype=np.float64))
    lon = np.radians(np.asarray(longitude, dtype=np.float64))
    if len(lat) == 0:
        return 0.0
    xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    centre = xyz.mean(axis=0)
    norm = np.linalg.norm(centre)
    if norm == 0.0:
        return float("nan")
    centre /= norm
    angles = np.arccos(np.clip(xyz @ centre, -1.0, 1.0))
    return float(EARTH_RADIUS_KM * np.sqrt(np.mean(angles**2)))


def user_profile(places: np.ndarray, latitude: np.ndarray, longitude: np.ndarray) -> dict:
    """The data profile of one user's check-ins: ``checkins``, ``distinct_places``,
    ``entropy`` (normalized) and ``radius_of_gyration_km``."""
    return {
        "checkins": int(len(places)),
        "distinct_places": int(len(np.unique(places))),
        "entropy": normalized_entropy(places),
        "radius_of_gyration_km": radius_of_gyration_km(latitude, longitude),
    }
