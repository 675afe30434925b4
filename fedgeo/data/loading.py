"""One call from a file (or the synthetic city) to a preprocessed :class:`Dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgeo.data.dataset import Dataset
from fedgeo.data.protocol import ProtocolConfig, preprocess
from fedgeo.data.synthetic import SyntheticConfig, generate_city

if TYPE_CHECKING:
    from fedgeo.data.readers import ReadResult


def load_dataset(
    path: str | Path | None = None,
    format: str = "csv",
    *,
    columns: dict[str, Any] | None = None,
    skip_bad: bool = False,
    time_unit: str | None = None,
    encoding: str | None = None,
    protocol: ProtocolConfig | None = None,
    synthetic: SyntheticConfig | None = None,
) -> tuple[Dataset, ReadResult | None]:
    """Read a check-in file and apply the protocol; with ``path=None`` use the synthetic city.

    Parameters
    ----------
    path, format, columns, skip_bad, encoding
        Passed to :func:`fedgeo.data.readers.read_checkins`.
    time_unit
        When given, passed to the reader as ``time_unit=`` (the unit or style of the time
        column, e.g. ``"min"`` for the NYC file's ``time_min``).
    protocol
        Preprocessing settings (default: the published protocol).
    synthetic
        Settings of the synthetic city, used only when ``path`` is None (default
        ``SyntheticConfig()``).

    Returns
    -------
    The preprocessed data set and the reader's result (``None`` for the synthetic city).
    """
    protocol = protocol if protocol is not None else ProtocolConfig()
    if path is None:
        config = synthetic if synthetic is not None else SyntheticConfig()
        table = generate_city(config)
        dataset = preprocess(table, protocol, name="synthetic")
        dataset.protocol["synthetic"] = config.to_dict()
        return dataset, None
    if synthetic is not None:
        raise ValueError("give either a path or a synthetic config, not both")

    from fedgeo.data.readers import read_checkins

    result = read_checkins(
        path, format, columns=columns, skip_bad=skip_bad, time_unit=time_unit, encoding=encoding
    )
    return preprocess(result.table, protocol, name=str(path)), result
