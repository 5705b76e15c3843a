"""`edgectl`: the fleet-side command line (operator laptop or CI pipeline)."""

from __future__ import annotations

import argparse
import sys

from edge_agent import __version__
from edge_agent.fleet import attest_cmds

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
    attest_cmds.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"edgectl {__version__}")
        return 0
    if args.command in attest_cmds.COMMANDS:
        return attest_cmds.COMMANDS[args.command](args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
