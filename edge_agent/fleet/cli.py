"""`edgectl`: the fleet-side command line (operator laptop or CI pipeline)."""

from __future__ import annotations

import argparse
import sys

from edge_agent import __version__

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
    from edge_agent.fleet import telemetry_cmd

    telemetry_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"edgectl {__version__}")
        return 0
    if args.command == "telemetry":
        from edge_agent.fleet import telemetry_cmd

        return telemetry_cmd.run(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
