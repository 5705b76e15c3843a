"""`edgectl`: the fleet-side command line (operator laptop or CI pipeline)."""

from __future__ import annotations

import argparse
import sys

from edge_agent import __version__
from edge_agent.fleet.trust_cmds import COMMANDS as TRUST_COMMANDS
from edge_agent.fleet.trust_cmds import add_trust_commands, run_trust_command

DESCRIPTION = """\
edgectl talks to a fleet of edge-agent devices through the MQTT broker: make keys, sign
images and deployments, deploy, read reported state, request attestation.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgectl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the edgectl version")
    add_trust_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"edgectl {__version__}")
        return 0
    if args.command in TRUST_COMMANDS:
        return run_trust_command(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
