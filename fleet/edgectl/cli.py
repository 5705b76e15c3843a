"""`edgectl`: the fleet-side command line (operator laptop or CI pipeline)."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path

from edge_shared.rollout_claim import RolloutClaim, claim_of_envelope
from edgectl import __version__, attest_cmds, diagnostics_cmds
from edgectl.connect import broker_flags, fleet_client
from edgectl.document_input import document_signer, load_document
from edgectl.enrollment import commands as enrollment_commands
from edgectl.trust_cmds import COMMANDS as TRUST_COMMANDS
from edgectl.trust_cmds import add_trust_commands, run_trust_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
edgectl talks to a fleet of edge-agent devices through the MQTT broker: make keys, sign
images and deployments, deploy, read reported state, request attestation.

Broker settings come from ~/.config/edgectl/config.toml ([mqtt] table, same keys as the
agent's; $EDGECTL_CONFIG or --config to use another file), overridden by the flags below.

  edgectl deploy rover-01 rover-02 deployment.json    publish the next desired version
  edgectl show rover-01                               desired vs reported, differences marked
  edgectl devices --selector site=turin               online/offline, last seen, version and state, labels
  edgectl rollout deployment.json --selector site=turin --key fleet.key
                                                      staged rollout in batches with health gates
  edgectl compare --group A=ring=canary --group B=ring=stable --png ab.png
                                                      A/B: telemetry of two label groups side by side
"""


def build_parser() -> argparse.ArgumentParser:
    common = broker_flags()
    parser = argparse.ArgumentParser(
        prog="edgectl",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the edgectl version")

    deploy = sub.add_parser(
        "deploy",
        parents=[common],
        help="publish a deployment to devices (next version each)",
        description="Publish MANIFEST (a JSON or TOML deployment with a modules table) as the next desired "
        "version of each DEVICE: retained, QoS 1. The version is one above the highest the device reports "
        "it authenticated (or the retained document, when it is signed by --key). Exit status: 0 when every "
        "device published (and, with --wait, reached the --until state), 1 otherwise.",
    )
    deploy.add_argument("targets", nargs="+", metavar="DEVICE... MANIFEST", help="device ids, then the manifest file")
    deploy.add_argument("--properties", type=Path, help="JSON/TOML file with per-module desired properties")
    deploy.add_argument("--version", type=int, dest="set_version", help="use this version instead of the next one")
    deploy.add_argument(
        "--wait", type=float, metavar="SECONDS",
        help="wait up to SECONDS until every device reports the version in the --until state; exit 1 with the "
        "device's reason if it refuses, rejects, supersedes or rolls it back, or says nothing in time",
    )
    deploy.add_argument(
        "--until", choices=("admitted", "accepted", "running", "good"), default="good",
        help="the state --wait waits for: admitted (passed the signature, replay and validation checks), "
        "accepted (images verified and pinned, committed as the device's deployment), "
        "running (every module runs), good (ran through the stabilisation window: the default, so a "
        "version the device refuses, rejects or rolls back after it was accepted is a failure)",
    )
    deploy.add_argument(
        "--force", action="store_true",
        help="publish even to a device a rollout holds (its lease has not run out): the device then refuses "
        "that rollout's documents; without it such a device refuses this one (rollout_in_flight)",
    )
    deploy.add_argument(
        "--key", type=Path, help="sign the document with this cosign private key (passphrase from "
        "$EDGECTL_KEY_PASSWORD, else $COSIGN_PASSWORD, else prompted); devices enforcing signed documents need it",
    )
    deploy.add_argument(
        "--expires-in", default="30d", metavar="DURATION",
        help="signed documents expire after this long (e.g. 12h, 30d; 'never' for no expiry); default 30d",
    )
    deploy.add_argument(
        "--rotate-to", type=Path, action="append", default=[], metavar="PUBKEY",
        help="introduce this public key as a trusted document key on the devices (repeatable; see docs/security.md)",
    )

    show = sub.add_parser("show", parents=[common], help="desired vs reported state of a device")
    show.add_argument("device")
    show.add_argument("--json", action="store_true", help="print desired, reported and presence as JSON")

    devices = sub.add_parser(
        "devices", parents=[common], help="list devices: online/offline, last seen, deployment state, labels",
        description="Every device under the prefix (or those --selector picks by their reported labels): "
        "online/offline, last seen, the version it runs and its state (and the newest version's when another), "
        "agent version, labels. Exit status 0; 1 when the broker cannot be read; 2 for a malformed selector.",
    )
    devices.add_argument("--json", action="store_true")
    devices.add_argument(
        "--selector", "-l", metavar="SELECTOR",
        help="only devices whose reported labels match: key=value, key!=value, key (present), !key (absent), "
        "comma-separated, all must hold (e.g. site=turin,hw!=rev-b)",
    )

    call = sub.add_parser("call", parents=[common], help="send a command to a device and print the answer")
    call.add_argument("device")
    call.add_argument("name", help="command name, e.g. ping")
    call.add_argument("--args", default="{}", help="JSON object of arguments")
    call.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the answer (30)")

    from edgectl import rollout_cmd

    rollout_cmd.add_parser(sub, common)
    attest_cmds.add_parsers(sub, common)
    diagnostics_cmds.add_parsers(sub, common)
    enrollment_commands.add_parsers(sub)
    add_trust_commands(sub)

    from edgectl import telemetry_cmd

    telemetry_cmd.add_parser(sub)
    from edgectl import compare_cmd

    compare_cmd.add_parser(sub, common)
    from edgectl.dashboard import command as dashboard_cmd

    dashboard_cmd.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"edgectl {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command in attest_cmds.COMMANDS:
        return attest_cmds.COMMANDS[args.command](args)
    if args.command in diagnostics_cmds.COMMANDS:
        return diagnostics_cmds.COMMANDS[args.command](args)
    if args.command in TRUST_COMMANDS:
        return run_trust_command(args)
    if args.command in enrollment_commands.COMMANDS:
        return enrollment_commands.run(args)
    if args.command == "rollout":
        from edgectl import rollout_cmd

        return rollout_cmd.run(args)
    if args.command == "telemetry":
        from edgectl import telemetry_cmd

        return telemetry_cmd.run(args)
    if args.command == "compare":
        from edgectl import compare_cmd

        return compare_cmd.run(args)
    if args.command == "dashboard":
        from edgectl.dashboard import command as dashboard_cmd

        return dashboard_cmd.run(args)
    from edgectl.client import FleetError

    handler = {"deploy": cmd_deploy, "show": cmd_show, "devices": cmd_devices, "call": cmd_call}[args.command]
    try:
        return asyncio.run(handler(args))
    except FleetError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


# What `edgectl deploy` reads of each device: its retained document (version, rollout claim) and
# its report (versions it authenticated, its document size limit, the outcome --wait waits for).
DEPLOY_LEAVES = ("desired", "reported")


async def cmd_deploy(args: argparse.Namespace) -> int:
    if len(args.targets) < 2:
        print("edgectl deploy: give at least one DEVICE and the MANIFEST file", file=sys.stderr)
        return EXIT_USAGE
    *devices, manifest_path = args.targets
    deployment = load_document(Path(manifest_path))
    properties = load_document(args.properties) if args.properties else None
    if not isinstance(deployment.get("modules"), dict):
        print(f"edgectl: {manifest_path}: modules: expected a table/object of module specs", file=sys.stderr)
        return EXIT_USAGE
    sign, verify_key = document_signer(args.key, args.expires_in, args.rotate_to) if args.key else (None, None)
    failed = 0
    # A forced plain deploy takes the device from a rollout and holds it no longer than now.
    forced = {"rollout": RolloutClaim(f"deploy-{secrets.token_hex(4)}", time.time(), True).to_json()} \
        if args.force else None
    async with fleet_client(args) as fleet:
        from edgectl.client import FleetError, Published

        # One subscription for every device's retained documents and reports (presence is not
        # needed here: a third fewer messages to read), documents made locally, then published
        # concurrently (QoS 1, a bounded number waiting for PUBACK at once).
        await fleet.watch(None if len(devices) > 50 else list(dict.fromkeys(devices)), leaves=DEPLOY_LEAVES)
        prepared: dict[str, tuple[Published, bytes]] = {}
        for device in dict.fromkeys(devices):
            holder = claim_of_envelope(fleet.cached_view(device).desired_raw)
            if holder is not None and holder.holds(time.time()) and not args.force:
                print(f"edgectl: {device}: rollout {holder.id} holds it until {holder.until_text()}; only one "
                      "rollout at a time may change a device: wait for it, or give --force", file=sys.stderr)
                failed += 1
                continue
            try:
                prepared[device] = fleet.prepare(
                    fleet.cached_view(device), deployment, properties, version=args.set_version, sign=sign,
                    verify_key=verify_key, meta=forced,
                )
            except FleetError as exc:
                print(f"edgectl: {exc}", file=sys.stderr)
                failed += 1
        results = await fleet.publish_many([(d, payload) for d, (_, payload) in prepared.items()])
        published: list[Published] = []
        for device, (done, _) in prepared.items():
            error = results.get(device)
            if error is not None:
                print(f"edgectl: {error}", file=sys.stderr)
                failed += 1
                continue
            published.append(done)
            print(f"{device}: published desired version {done.version}")
        if args.wait:

            async def wait_one(done: Published) -> bool:
                try:
                    state = await fleet.wait_for(done, args.until, args.wait)
                except FleetError as exc:
                    print(f"edgectl: {exc}", file=sys.stderr)
                    if await fleet.remove_if_refused(done):
                        print(f"{done.device}: the refused version {done.version} was removed from the broker "
                              "(the device keeps what it ran)")
                    return False
                print(f"{done.device}: version {done.version} {state}")
                return True

            async with asyncio.TaskGroup() as tg:
                waits = [tg.create_task(wait_one(done)) for done in published]
            failed += sum(not w.result() for w in waits)
    return EXIT_FAILED if failed else EXIT_OK


async def cmd_show(args: argparse.Namespace) -> int:
    from edgectl.show import render_view

    async with fleet_client(args) as fleet:
        view = await fleet.view(args.device)
    if args.json:
        print(
            json.dumps(
                {
                    "device": view.device,
                    "presence": view.presence,
                    "desired": view.desired,
                    "reported": view.reported,
                },
                indent=2,
            )
        )
    else:
        print(render_view(view, color=sys.stdout.isatty(), now=time.time()))
    return EXIT_OK if (view.desired or view.reported) else EXIT_FAILED


async def cmd_devices(args: argparse.Namespace) -> int:
    from edge_shared.labels import LabelError, parse_selector, reported_labels
    from edgectl.show import device_rows, render_devices

    selector = None
    if args.selector is not None:
        try:
            selector = parse_selector(args.selector)
        except LabelError as exc:
            print(f"edgectl devices: --selector: {exc}", file=sys.stderr)
            return EXIT_USAGE
    async with fleet_client(args) as fleet:
        views = await fleet.devices()
    if selector is not None:
        views = [v for v in views if selector.matches(reported_labels((v.reported or {}).get("device")))]
    if args.json:
        print(json.dumps(device_rows(views, time.time()), indent=2))
    else:
        print(render_devices(views, time.time(), selector=args.selector))
    return EXIT_OK


async def cmd_call(args: argparse.Namespace) -> int:
    try:
        call_args = json.loads(args.args)
        if not isinstance(call_args, dict):
            raise ValueError("expected an object")
    except ValueError as exc:
        print(f"edgectl call: --args: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with fleet_client(args) as fleet:
        answer = await fleet.call(args.device, args.name, call_args, timeout=args.wait)
    print(json.dumps(answer, indent=2))
    return EXIT_OK if answer.get("ok") else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
