"""``fedgeo agent``: the device side of a deployment (see docs/deployment.md).

``init``, ``ingest``, ``join``, ``predict`` and ``status``, each on the agent folder
``--dir`` (default ``$FEDGEO_AGENT_DIR`` or ``~/.fedgeo-agent``; layout in
:mod:`client.agent.folder`). Bad input exits with status 2 and one line naming file,
line and field.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from fedgeo.cli.errors import UsageError
from fedgeo.data.readers import FORMATS, TIME_UNITS

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``agent`` command group."""
    parser = subparsers.add_parser("agent", help="device agent: store, join, predict")
    sub = parser.add_subparsers(dest="agent_command", metavar="ACTION")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="AGENT_DIR",
        help="the agent folder (default: $FEDGEO_AGENT_DIR or ~/.fedgeo-agent)",
    )

    p = sub.add_parser(
        "init",
        parents=[common],
        help="create the agent folder: key pair, config, public place table",
        description="Create the agent folder with an ECDSA P-384 key pair for SuperNode "
        "authentication, a config file and a copy of the public place table.",
    )
    p.add_argument("--places", required=True, metavar="CSV", help="the public place table")
    p.add_argument("--format", choices=FORMATS, default="csv", help="default ingest format (csv)")
    p.add_argument("--time-unit", choices=TIME_UNITS, help="default csv time unit")
    p.add_argument(
        "--force",
        action="store_true",
        help="re-initialize: new key pair, config and place table (the store is kept)",
    )
    p.set_defaults(func=_init)

    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="add check-ins to the on-device store",
        description="Append check-ins to the store in one transaction. Check-ins already "
        "stored are skipped. By default a file with a bad row is refused whole (exit 2, "
        "store unchanged); --skip-bad-rows stores the good rows and lists the bad ones.",
    )
    p.add_argument("source", metavar="FILE", help="check-in file, or '-' for standard input")
    from fedgeo.cli.common import add_format_arguments

    add_format_arguments(p)
    for action in p._actions:
        if action.dest == "format":
            action.help = "file format (default: the one set by 'init', csv unless changed)"
    p.set_defaults(func=_ingest, format=None)

    p = sub.add_parser(
        "join",
        parents=[common],
        help="run a Flower SuperNode training on the store (TLS, authenticated)",
        description="Run a Flower SuperNode connected to the SuperLink over TLS, "
        "authenticated with the agent's key; the FedGeo ClientApp trains on the store. "
        "Arguments after '--' go to flower-supernode.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument(
        "--root-certificates",
        required=True,
        type=Path,
        metavar="CA",
        help="PEM file of the CA that signed the SuperLink's certificate",
    )
    p.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_join)

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="top-K next places for this user, on the device",
    )
    p.add_argument("--top", type=int, default=10, metavar="K", help="how many places (10)")
    p.add_argument(
        "--model", type=Path, default=None, help="a global model file (default: the latest seen)"
    )
    p.add_argument(
        "--at",
        default=None,
        metavar="TIME",
        help="predict for this time: UTC epoch seconds or ISO 8601 (default: now); only "
        "check-ins up to it are used",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "status", parents=[common], help="store size, last round joined, model version"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)


def _folder(args: argparse.Namespace):  # -> AgentFolder
    from client.agent.folder import AgentFolder, default_agent_dir

    return AgentFolder(args.dir if args.dir is not None else default_agent_dir())


def _init(args: argparse.Namespace) -> int:
    folder = _folder(args)
    folder.init(
        args.places, data_format=args.format, time_unit=args.time_unit or "", force=args.force
    )
    print(f"agent folder: {folder.root}")
    print(f"public key (register it with the SuperLink): {folder.public_key_path}")
    print(folder.public_key_path.read_text(encoding="ascii").strip())
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from client.agent.store import CheckinStore
    from fedgeo.cli.common import parse_columns
    from fedgeo.data.places_io import read_places_csv

    folder = _folder(args)
    config = folder.load()
    fmt = args.format or config.data_format
    time_unit = args.time_unit or (config.time_unit if fmt == "csv" else None) or None
    columns = parse_columns(args.columns)
    if fmt != "csv" and (columns or args.time_unit is not None):
        raise UsageError(f"--columns and --time-unit apply to --format csv, not {fmt}")
    report = CheckinStore(folder.store_path).ingest(
        args.source,
        fmt,
        columns=columns or None,
        time_unit=time_unit,
        encoding=args.encoding,
        skip_bad=args.skip_bad_rows,
        places=read_places_csv(folder.places_path),
    )
    print(
        f"{report.source}: added {report.added} check-in(s), {report.duplicates} already "
        f"stored, {report.rejected_count} rejected"
    )
    if report.rejected_count:
        for message in report.rejected:
            print(f"fedgeo: rejected: {message}", file=sys.stderr)
        more = report.rejected_count - len(report.rejected)
        if more > 0:
            print(f"fedgeo: ... and {more} more rejected row(s)", file=sys.stderr)
    return 0


def _join(args: argparse.Namespace) -> int:
    folder = _folder(args)
    folder.load()
    match = _HOST_PORT.match(args.superlink)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise UsageError(f"--superlink: expected HOST:PORT, got {args.superlink!r}")
    ca = args.root_certificates.expanduser()
    if not ca.is_file():
        raise FileNotFoundError(2, "no such file", str(ca))
    from client.agent.keys import check_private_key

    try:
        check_private_key(folder.private_key_path)
    except FileNotFoundError:
        raise UsageError(
            f"no private key at {folder.private_key_path}: run 'fedgeo agent init --force'"
        ) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
    extra = list(args.extra or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if "--insecure" in extra:
        raise UsageError("join always uses TLS: --insecure is not allowed")
    folder.record_join(args.superlink, ca)
    from client.agent.supernode import run_supernode
    from fedgeo.data.errors import DataError

    try:
        return int(run_supernode(folder.root, args.superlink, ca, extra_args=extra or None))
    except DataError:
        raise
    except ValueError as err:  # an extra argument the agent never passes on
        raise UsageError(str(err)) from None


def parse_time(text: str) -> int:
    """UTC epoch seconds from epoch seconds or ISO 8601 text (naive = UTC)."""
    try:
        return int(float(text)) if re.fullmatch(r"-?\d+(\.\d*)?", text.strip()) else _iso(text)
    except ValueError:
        raise UsageError(f"--at: expected epoch seconds or ISO 8601 time, got {text!r}") from None


def _iso(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def _predict(args: argparse.Namespace) -> int:
    from client.agent.predict import predict_next

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    at = parse_time(args.at) if args.at is not None else None
    result = predict_next(_folder(args).root, args.top, args.model, at=at)
    if args.json:
        print(
            json.dumps(
                {
                    "at": result.at,
                    "model_round": result.model_round,
                    "run_key": result.run_key,
                    "personal_state": result.personal_state,
                    "history": result.history,
                    "top": [{"place_id": p, "probability": s} for p, s in result.top],
                }
            )
        )
        return 0
    if not result.personal_state:
        print(
            "fedgeo: note: no personal state for this model's run: global model only",
            file=sys.stderr,
        )
    print(f"# next place at {_when(result.at)} (model round {result.model_round})")
    print("rank\tplace_id\tprobability")
    for rank, (place, probability) in enumerate(result.top, start=1):
        print(f"{rank}\t{place}\t{probability:.4f}")
    return 0


def status_info(folder) -> dict[str, Any]:  # folder: AgentFolder
    """What ``status`` reports, as a JSON-ready dict."""
    from client.agent.store import CheckinStore
    from fedgeo.models.portable import load_global_model

    config = folder.load()
    summary = CheckinStore(folder.store_path).summary()
    status = folder.read_status()
    model: dict[str, Any] | None = None
    if folder.model_path.is_file():
        _, meta = load_global_model(folder.model_path)
        model = {key: meta.get(key) for key in ("round", "run_key", "fedgeo_version", "created")}
    return {
        "agent_dir": str(folder.root),
        "superlink": config.superlink or None,
        "store": {
            "rows": summary.rows,
            "distinct_places": summary.distinct_places,
            "user_id": summary.user_id,
            "first_time": summary.first_time,
            "last_time": summary.last_time,
            "batches": summary.batches,
            "last_ingest": summary.last_ingest,
        },
        "last_round": status.get("last_round"),
        "run_key": status.get("run_key"),
        "model": model,
    }


def _status(args: argparse.Namespace) -> int:
    info = status_info(_folder(args))
    if args.json:
        print(json.dumps(info))
        return 0
    store = info["store"]
    span = f"{_when(store['first_time'])} .. {_when(store['last_time'])}" if store["rows"] else "-"
    model = info["model"]
    lines = [
        ("agent folder", info["agent_dir"]),
        ("superlink", info["superlink"] or "not joined"),
        ("check-ins", str(store["rows"])),
        ("distinct places", str(store["distinct_places"])),
        ("time range", span),
        ("last round joined", _or_dash(info["last_round"])),
        ("run", _or_dash(info["run_key"])),
        (
            "model",
            f"round {model['round']} of run {model['run_key'] or '-'} "
            f"(fedgeo {model['fedgeo_version']}, {model['created']})"
            if model
            else "none yet",
        ),
    ]
    for name, value in lines:
        print(f"{name + ':':<19}{value}")
    return 0


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)
