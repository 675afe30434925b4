"""Command-line options shared by ``fedgeo`` commands.

Each ``add_*_arguments(parser)`` adds one group of options; the matching
``*_from_args(args)`` turns the parsed values into library objects, raising
:class:`~fedgeo.cli.errors.UsageError` for a wrong value.
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys
from collections.abc import Callable
from pathlib import Path

from fedgeo.cli.errors import UsageError
from fedgeo.data.readers import FORMATS, TIME_UNITS, ReadResult, read_checkins
from fedgeo.data.readers.columns import CANONICAL


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _number(text: str, accept: Callable[[float], bool], expected: str) -> float:
    """A finite number that ``accept`` takes, or an argparse error naming ``expected``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def prepare_out_dir(path: Path) -> Path:
    """Create the output folder before any work, so that a wrong ``--out`` (a file, no
    permission) fails at once rather than after training."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """``--data PATH`` and the options of :func:`add_format_arguments`."""
    group = parser.add_argument_group("input data")
    group.add_argument(
        "--data",
        metavar="PATH",
        required=required,
        help="check-in file, optionally gzip-compressed ('-' = standard input)",
    )
    add_format_arguments(group)


def add_format_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How to read a check-in file: ``--format``, ``--columns``, ``--time-unit``,
    ``--encoding``, ``--skip-bad-rows``."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="csv",
        help="file format: raw Foursquare TSMC2014, raw SNAP Gowalla/Brightkite, or a "
        "headed CSV (default csv)",
    )
    parser.add_argument(
        "--columns",
        metavar="NAME=COLUMN,...",
        action="append",
        help="csv: file columns for canonical ones the reader does not recognize, e.g. "
        "user_id=uid,timestamp=t (names: " + ", ".join(CANONICAL) + ")",
    )
    parser.add_argument(
        "--time-unit",
        choices=TIME_UNITS,
        help="csv: read the time column as seconds, minutes, milliseconds or ISO 8601 "
        "text (default: from the column's name)",
    )
    parser.add_argument(
        "--encoding",
        help="text encoding (default latin-1 for tsmc2014, utf-8 otherwise)",
    )
    parser.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="drop bad rows (and report how many) instead of stopping at the first one",
    )


def parse_columns(values: list[str] | str | None) -> dict[str, str]:
    """``["user_id=uid,timestamp=t"]`` -> ``{"user_id": "uid", "timestamp": "t"}``."""
    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    mapping: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            key, sep, column = (part.strip() for part in item.partition("="))
            if not sep or not key or not column:
                raise UsageError(
                    f"--columns: expected NAME=COLUMN pairs separated by commas, e.g. "
                    f"user_id=uid,timestamp=t; got {item.strip()!r}"
                )
            canonical = "timestamp" if key == "time" else key
            if canonical not in CANONICAL:
                raise UsageError(
                    f"--columns: unknown column name {key!r}; use one of {', '.join(CANONICAL)}"
                )
            mapping[canonical] = column
    return mapping


def read_from_args(args: argparse.Namespace) -> ReadResult:
    """Read the check-in file named by the parsed options (``args.data`` and those of
    :func:`add_format_arguments`); report skipped rows on stderr."""
    path = getattr(args, "data", None)
    if path is None:
        raise UsageError("no check-in data: pass --data PATH")
    columns = parse_columns(args.columns)
    if args.format != "csv" and (columns or args.time_unit is not None):
        raise UsageError(f"--columns and --time-unit apply to --format csv, not {args.format}")
    if args.encoding is not None:
        try:
            codecs.lookup(args.encoding)
        except LookupError:
            raise UsageError(f"--encoding: unknown encoding {args.encoding!r}") from None
    result = read_checkins(
        path,
        args.format,
        columns=columns or None,
        skip_bad=args.skip_bad_rows,
        time_unit=args.time_unit,
        encoding=args.encoding,
    )
    if result.skipped:
        rows = "row" if result.skipped == 1 else "rows"
        print(
            f"fedgeo: skipped {result.skipped} bad {rows} (first: {result.skipped_examples[0]})",
            file=sys.stderr,
        )
    return result


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the preprocessing protocol (defaults: the published protocol)."""
    from fedgeo.data.protocol import SPLITS, ProtocolConfig

    d = ProtocolConfig()
    group = parser.add_argument_group("preprocessing protocol")
    group.add_argument(
        "--split",
        choices=SPLITS,
        default=d.split,
        help="'global': all trajectories split into train/validation/test by start time (the "
        "published protocol); 'per-user': each user's trajectories split chronologically "
        f"(default {d.split})",
    )
    group.add_argument(
        "--gap-hours",
        type=float,
        default=d.gap_hours,
        metavar="H",
        help=f"a gap longer than H hours starts a new trajectory (default {d.gap_hours:g})",
    )
    group.add_argument(
        "--train-frac",
        type=float,
        default=d.train_frac,
        metavar="F",
        help=f"share of trajectories for training (default {d.train_frac:g})",
    )
    group.add_argument(
        "--val-frac",
        type=float,
        default=d.val_frac,
        metavar="F",
        help=f"share of trajectories for validation; the rest is test (default {d.val_frac:g})",
    )
    group.add_argument(
        "--min-user-checkins",
        type=int,
        default=d.min_user_checkins,
        metavar="N",
        help="drop users with fewer check-ins, counted after the place filter (default 0: off)",
    )
    group.add_argument(
        "--min-place-checkins",
        type=int,
        default=d.min_place_checkins,
        metavar="N",
        help="drop check-ins at places with fewer check-ins (default 0: off)",
    )


def protocol_from_args(args: argparse.Namespace):  # -> fedgeo.data.protocol.ProtocolConfig
    """The :class:`ProtocolConfig` of parsed :func:`add_protocol_arguments` options."""
    from fedgeo.data.protocol import ProtocolConfig

    try:
        return ProtocolConfig(
            split=args.split,
            gap_hours=args.gap_hours,
            train_frac=args.train_frac,
            val_frac=args.val_frac,
            min_user_checkins=args.min_user_checkins,
            min_place_checkins=args.min_place_checkins,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the synthetic city, used when ``--data`` is absent."""
    group = parser.add_argument_group("synthetic city (used without --data)")
    group.add_argument("--city-users", type=int, default=None, metavar="N", help="users (200)")
    group.add_argument("--city-places", type=int, default=None, metavar="N", help="places (600)")
    group.add_argument("--city-seed", type=int, default=None, metavar="S", help="generator seed")
    group.add_argument(
        "--extreme-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of extremely heterogeneous users visiting 2-3 places (0.1)",
    )


def synthetic_from_args(args: argparse.Namespace):  # -> fedgeo.data.synthetic.SyntheticConfig
    """The synthetic city configuration of the parsed options."""
    from fedgeo.data.synthetic import SyntheticConfig

    values = {
        "num_users": getattr(args, "city_users", None),
        "num_places": getattr(args, "city_places", None),
        "seed": getattr(args, "city_seed", None),
        "extreme_fraction": getattr(args, "extreme_fraction", None),
    }
    try:
        return SyntheticConfig(**{k: v for k, v in values.items() if v is not None})
    except (TypeError, ValueError) as err:
        raise UsageError(f"synthetic city: {err}") from err


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, protocol and synthetic-city options of commands that train or evaluate."""
    add_data_arguments(parser, required=False)
    add_protocol_arguments(parser)
    add_synthetic_arguments(parser)


def dataset_from_args(args: argparse.Namespace):  # -> fedgeo.data.dataset.Dataset
    """Read and preprocess ``--data`` (or generate the synthetic city without it)."""
    from fedgeo.data.loading import load_dataset
    from fedgeo.data.protocol import preprocess

    protocol = protocol_from_args(args)
    if getattr(args, "data", None) is None:
        dataset, _ = load_dataset(None, protocol=protocol, synthetic=synthetic_from_args(args))
        return dataset
    result = read_from_args(args)
    return preprocess(result.table, protocol, name=str(args.data))
