"""Errors raised for bad input data."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data, located as precisely as known.

    ``str(err)`` is one readable line: ``file:line: field 'x': message``; the CLI
    prints it and exits with status 2.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        field = f"field '{self.field}': " if self.field else ""
        return f"{where}{field}{self.message}"


class TooLittleData(DataError):
    """Valid data, but too little of it to train on (for example one check-in, or no
    training sample left after the protocol).

    The CLI treats it like any :class:`DataError` (exit status 2). A federated client
    that raises it replies with an error of code :data:`TOO_LITTLE_DATA_CODE`, so that
    the server counts it as skipped for lack of data rather than as a failure.
    """


TOO_LITTLE_DATA_CODE = 100
"""Error code (Flower ``Error.code``) of a client reply that reports
:class:`TooLittleData`. Flower's own codes are single digits."""
