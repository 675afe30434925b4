"""One call from a file (or the synthetic city) to a preprocessed :class:`Dataset`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
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


@dataclass(frozen=True)
class DataSpec:
    """What a simulated federation's data set is: a file (``path``, ``format``,
    ``time_unit``) or the synthetic city (``synthetic``), preprocessed with ``protocol``.

    The server sends it with every instruction as JSON (:meth:`to_json`); each simulated
    node loads the data set it describes (:func:`load_spec`, once per process) and keeps
    its own user. A device uses only its ``protocol``.
    """

    path: str | None
    format: str
    time_unit: str | None
    protocol: ProtocolConfig
    synthetic: SyntheticConfig | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "path": self.path,
                "format": self.format,
                "time_unit": self.time_unit,
                "protocol": self.protocol.to_dict(),
                "synthetic": self.synthetic.to_dict() if self.synthetic is not None else None,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, key: str = "data-spec") -> DataSpec:
        """Parse :meth:`to_json`'s output; ``ValueError`` naming ``key`` otherwise."""
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"'{key}' is not valid JSON: {err}") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("protocol"), dict):
            raise ValueError(f"'{key}' must be an object with a 'protocol' entry")
        try:
            synthetic = parsed.get("synthetic")
            return cls(
                path=parsed.get("path") or None,
                format=str(parsed.get("format", "csv")),
                time_unit=parsed.get("time_unit") or None,
                protocol=ProtocolConfig(**parsed["protocol"]),
                synthetic=SyntheticConfig(**_tuples(synthetic)) if synthetic else None,
            )
        except TypeError as err:
            raise ValueError(f"'{key}': {err}") from None


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the synthetic config's tuples into lists; turn them back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


@lru_cache(maxsize=4)
def load_spec(spec: DataSpec) -> Dataset:
    """The data set ``spec`` describes, loaded once per process and spec."""
    if spec.path is None:
        return load_dataset(None, protocol=spec.protocol, synthetic=spec.synthetic)[0]
    return load_dataset(spec.path, spec.format, time_unit=spec.time_unit, protocol=spec.protocol)[0]
