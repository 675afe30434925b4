"""``fedgeo deploy``: server-side helpers for a real deployment (docs/deployment.md).

* ``certs --host HOST --out DIR``: a self-signed CA and the SuperLink's certificate.
* ``superlink --certs DIR --state DIR``: run (or ``--print``) ``flower-superlink`` with
  TLS, SuperNode authentication and a persistent state database.
* ``connection NAME --address HOST:PORT --root-certificates CA``: add the SuperLink to
  the ``flwr`` CLI's ``config.toml`` (for ``flwr run`` and ``flwr supernode ...``).
* ``register KEY.pub ...``: register agents' public keys (``flwr supernode register``).
* ``fetch-model --out-dir RUN_OUT --to FILE``: the run's global model as a portable file.

Starting a run is Flower's own ``flwr run . NAME --run-config ...``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from fedgeo.cli.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``deploy`` command group."""
    parser = subparsers.add_parser("deploy", help="server side of a deployment")
    sub = parser.add_subparsers(dest="deploy_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "certs",
        help="make a CA and the SuperLink's TLS certificate",
        description="Write ca.crt (give it to every device and operator), ca.key, "
        "server.pem and server.key (keep these on the server host) into DIR.",
    )
    p.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="host name or IP address devices use to reach the SuperLink (repeatable)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--days", type=int, default=365, help="validity in days (365)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=_certs)

    p = sub.add_parser(
        "superlink",
        help="run flower-superlink with TLS, SuperNode authentication and a state database",
        description="Run flower-superlink in the foreground (replacing this process). "
        "Arguments after '--' go to flower-superlink.",
    )
    p.add_argument("--certs", type=Path, required=True, metavar="DIR", help="from 'certs'")
    p.add_argument("--state", type=Path, required=True, metavar="DIR", help="state folder")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    p.add_argument("--port", type=int, default=9093, help="HTTPS port of all APIs (9093)")
    p.add_argument("--print", action="store_true", help="print the command, do not run it")
    p.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_superlink)

    p = sub.add_parser(
        "connection",
        help="add a SuperLink connection to the flwr CLI's config.toml",
        description="Add (or replace) [superlink.NAME] in $FLWR_HOME/config.toml "
        "(default ~/.flwr/config.toml) so that 'flwr run . NAME' reaches the SuperLink.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--address", required=True, metavar="HOST:PORT")
    p.add_argument("--root-certificates", type=Path, required=True, metavar="CA")
    p.add_argument("--default", action="store_true", help="make it the default connection")
    p.set_defaults(func=_connection)

    p = sub.add_parser(
        "register",
        help="register agents' public keys with the SuperLink",
        description="Run 'flwr supernode register KEY [NAME]' for every key and print "
        "each key's node id. Exit status 1 when any key was not registered.",
    )
    p.add_argument("keys", nargs="+", type=Path, metavar="KEY.pub")
    p.add_argument("--superlink", default=None, metavar="NAME", help="flwr connection name")
    p.set_defaults(func=_register)

    p = sub.add_parser(
        "fetch-model",
        help="write the run's global model as a portable file for the agents",
    )
    p.add_argument("--out-dir", type=Path, required=True, metavar="RUN_OUT")
    p.add_argument("--to", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=_fetch_model)


def _certs(args: argparse.Namespace) -> int:
    from server.certs import make_certificates

    try:
        paths = make_certificates(args.out, args.host, days=args.days, overwrite=args.force)
    except (FileExistsError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"CA certificate (give to devices and operators): {paths.ca_cert}")
    print(f"CA key (keep offline): {paths.ca_key}")
    print(f"SuperLink certificate and key: {paths.server_cert} {paths.server_key}")
    return 0


def _superlink(args: argparse.Namespace) -> int:
    from server.deployment import executable, superlink_command

    extra = list(args.extra or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        command = superlink_command(
            args.certs, args.state, host=args.host, port=args.port, extra_args=extra
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.print:
        print(subprocess.list2cmdline(command))
        return 0
    Path(command[command.index("--database") + 1]).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    os.execv(executable(command[0]), command)
    return 1  # pragma: no cover (execv does not return)


def _connection(args: argparse.Namespace) -> int:
    from server.deployment import write_connection

    try:
        path = write_connection(
            args.name, args.address, args.root_certificates, default=args.default
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"{path}: [superlink.{args.name}] address = {args.address!r}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from server.deployment import register_keys

    failed = 0
    for result in register_keys(args.keys, args.superlink):
        if result.node_id is None:
            failed += 1
            print(f"fedgeo: error: {result.public_key}: {result.error}", file=sys.stderr)
        else:
            print(f"{result.public_key}\tnode {result.node_id}")
    return 1 if failed else 0


def _fetch_model(args: argparse.Namespace) -> int:
    from server.deployment import fetch_model

    path = fetch_model(args.out_dir, args.to)
    print(f"global model: {path}")
    return 0
