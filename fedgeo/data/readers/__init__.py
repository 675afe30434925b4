"""Readers of check-in files into the canonical check-in table.

>>> from fedgeo.data.readers import read_checkins
>>> result = read_checkins("checkins.csv", "csv")            # doctest: +SKIP
>>> result.table.head()                                      # doctest: +SKIP

Formats (:data:`FORMATS`): ``tsmc2014`` (raw Foursquare TSMC2014), ``snap`` (raw SNAP
Gowalla/Brightkite) and ``csv`` (headed CSV, columns recognized by name). Bad input
raises :class:`~fedgeo.data.errors.DataError` naming file, line and field, or with
``skip_bad=True`` is dropped and counted. See ``docs/data.md``.
"""

from fedgeo.data.readers.core import FORMATS, ReadResult, read_checkins
from fedgeo.data.readers.fields import TIME_UNITS

__all__ = ["FORMATS", "TIME_UNITS", "ReadResult", "read_checkins"]
