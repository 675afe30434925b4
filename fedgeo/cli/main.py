"""Entry point of the ``fedgeo`` command.

Each command group is a module with ``register(subparsers)`` that adds its
sub-parsers and sets ``func`` (a callable taking the parsed namespace and
returning an exit status). Library command groups are listed in
``BUILTIN_COMMANDS``; groups that need Flower (``simulate``, ``agent``...) live in
``client/`` and ``server/`` and are found through the ``fedgeo.commands`` entry
point group, so the library itself never imports Flower.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from fedgeo import __version__
from fedgeo.cli.errors import UsageError
from fedgeo.data.errors import DataError

BUILTIN_COMMANDS = (
    "fedgeo.cli.data_cmd",
    "fedgeo.cli.baseline_cmd",
    "fedgeo.cli.centralized_cmd",
)

BAD_PATH_ERRORS = (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
"""OS errors that a wrong path given by the user causes: exit status 2."""

__all__ = ["UsageError", "build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``fedgeo CMD: error: ...``, exit status 2); the
    sub-command parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedgeo",
        description="Federated next-location prediction (FedGeo).",
    )
    parser.add_argument("--version", action="version", version=f"fedgeo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in BUILTIN_COMMANDS:
        importlib.import_module(module_name).register(sub)
    for ep in sorted(entry_points(group="fedgeo.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 failure, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version or a wrong option (status 2)
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    try:
        status = args.func(args)
    except (DataError, UsageError) as err:
        print(f"fedgeo: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"fedgeo: error: {err.filename or err}: file not found", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("fedgeo: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # e.g. --out names a file; a full disk is no bad input (1)
        where = f"{err.filename}: " if err.filename else ""
        print(f"fedgeo: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2 if isinstance(err, BAD_PATH_ERRORS) else 1
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
