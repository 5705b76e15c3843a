"""`edgectl dashboard`: serve the live fleet page (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TOKEN_ENV = "EDGECTL_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a token

DESCRIPTION = """\
Serve a live, read-only web page of the fleet: every device (online, last report, labels, agent,
deployment and its state, telemetry queue, certificate expiry once reported; filter by label
selector, sort, search), one device (modules, artifacts and the model the module confirms, the
last versions with their reasons, attestation, pilot charts and the driven path), rollouts
(batches, progress, each device's reason, halted and reverted marked) and an A/B compare. It
reads what edgectl reads: the broker's retained messages, the rollout state file, the pilot's
telemetry; it changes nothing (every action stays in edgectl). The page updates itself.

It listens on 127.0.0.1 by default (reach it from elsewhere through an SSH tunnel). Listening
on any other address needs TLS (--https-cert, --https-key) and an access token (--token-file,
or $EDGECTL_DASHBOARD_TOKEN; at least 16 characters); it refuses to start without them.

  edgectl dashboard                                   http://127.0.0.1:8088/
  edgectl dashboard --listen 0.0.0.0:8443 --https-cert dash.crt --https-key dash.key \\
      --token-file ~/.config/edgectl/dashboard.token
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dashboard", parents=[common], help="serve a live read-only web page of the fleet",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:8088", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8088; port 0 picks a free one)")
    p.add_argument("--https-cert", type=Path, help="TLS certificate (PEM) for the page; needs --https-key")
    p.add_argument("--https-key", type=Path, help="its private key (PEM)")
    p.add_argument("--token-file", type=Path,
                   help=f"file holding the access token (else ${TOKEN_ENV}); browsers ask for it as the password")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another host name the page may be reached by (repeatable; loopback names always)")
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="the rollout state file edgectl rollout uses (default ~/.local/state/edgectl/rollouts.db)")
    p.add_argument("--attestation-dir", type=Path, metavar="DIR",
                   help="enrollment records of edgectl enroll (default ~/.config/edgectl/attestation)")
    p.add_argument("--stream", default="pilot.stats", help="the telemetry stream of the pilot charts (pilot.stats)")
    p.add_argument("--group", "-g", action="append", default=[], metavar="NAME=SELECTOR",
                   help="A/B compare groups shown by default (as edgectl compare --group; repeatable)")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8088")
    return host.strip("[]"), int(port)


def read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        path: Path = args.token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--token-file {args.token_file}: cannot read: {exc.strerror}") from None
        if not token:
            raise ValueError(f"--token-file {args.token_file}: the file is empty")
        return token
    env = os.environ.get(TOKEN_ENV, "")
    return env or None


class EventFormatter(logging.Formatter):
    """One line per event: time, level, message, then the journald-style EVENT= field."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.getMessage()}"
        event = getattr(record, "EVENT", None)
        return f"{line} EVENT={event}" if event else line


def run(args: argparse.Namespace) -> int:
    from edgectl.dashboard.security import bind_problem

    try:
        host, port = parse_listen(args.listen)
        token = read_token(args)
        if (args.https_cert is None) != (args.https_key is None):
            raise ValueError("--https-cert and --https-key go together")
        for path in (args.https_cert, args.https_key):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        if args.group:
            from edgectl.compare_cmd import parse_groups

            parse_groups(args.group)
    except ValueError as exc:
        print(f"edgectl dashboard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tls = args.https_cert is not None
    problem = bind_problem(host, tls=tls, token=token)
    if problem:
        print(f"edgectl dashboard: refusing to start: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_serve(args, host, port, token, tls))
    except KeyboardInterrupt:
        return EXIT_OK


async def _serve(args: argparse.Namespace, host: str, port: int, token: str | None, tls: bool) -> int:
    import uvicorn

    from edgectl.attest_cmds import records_dir
    from edgectl.connect import fleet_client
    from edgectl.dashboard.app import create_app
    from edgectl.dashboard.feed import FleetFeed
    from edgectl.rollout_store import default_state_path
    handler = logging.StreamHandler()
    handler.setFormatter(EventFormatter())
    log = logging.getLogger(__package__)  # the dashboard package: feed.py logs under it
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    feed = FleetFeed(lambda: fleet_client(args), rollout_state=args.state or default_state_path(),
                     attestation_dir=records_dir(args.attestation_dir), stream=args.stream)
    app = create_app(feed, token=token, bind=host, tls=tls, extra_hosts=tuple(args.allow_host),
                     compare_groups=args.group)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"edgectl dashboard: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    sock.listen(128)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"edgectl dashboard: {'https' if tls else 'http'}://{shown}:{bound}/", flush=True)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=2, lifespan="on",
        ssl_certfile=str(args.https_cert) if tls else None, ssl_keyfile=str(args.https_key) if tls else None,
        server_header=False,
    )
    await uvicorn.Server(config).serve(sockets=[sock])
    return EXIT_OK
