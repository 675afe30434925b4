"""Check-in data: readers, the canonical table, the preprocessing protocol, per-user
partitions (one client per user) and the synthetic city."""

from fedgeo.data.dataset import Dataset, Places, UserData
from fedgeo.data.errors import DataError

__all__ = ["DataError", "Dataset", "Places", "UserData"]
