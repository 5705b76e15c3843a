"""`edgectl compare`: an A/B comparison of what groups of devices send (fleet/edgectl/compare.py
does the arithmetic; this is the broker side and the command line)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from edgectl.compare import DEFAULT_METRICS, METRICS, as_json, compare, render_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

DESCRIPTION = """\
Compare the telemetry of groups of devices side by side: for example two deployments rolled out
to two label groups (edgectl rollout/deploy), the pilot's latency, cross-track error and stops per
group and deployment version.

Each --group is NAME=SELECTOR (the selector is matched against the devices' reported labels, as in
edgectl devices --selector). edgectl subscribes to <prefix>/+/telemetry/STREAM for --duration
seconds (or until every group has --records records) and reduces what arrived: one column per
group and deployment version (every record carries the deployment version its module was started
for), one line per metric. Telemetry is not retained: give --client-id to keep a persistent
session, so records uploaded while compare was not running are delivered on its next run.

  edgectl compare --group A=ring=canary --group B=ring=stable --duration 60 --png ab.png

Exit status: 0 when every group has records; 1 when a group has no device or no record, or the
broker cannot be reached; 2 for bad arguments.
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "compare",
        parents=[common],
        help="A/B: compare the telemetry of label groups side by side (table and PNG)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--group",
        "-g",
        action="append",
        required=True,
        metavar="NAME=SELECTOR",
        help="a group: its name, '=', then a label selector (key=value,key!=value,key,!key); give two or more",
    )
    p.add_argument(
        "--metric",
        "-m",
        action="append",
        choices=sorted(METRICS),
        metavar="METRIC",
        help="a metric to show (repeatable; default: "
        + ", ".join(DEFAULT_METRICS)
        + "). "
        + "; ".join(f"{name}: {spec[0]}" for name, spec in METRICS.items()),
    )
    p.add_argument("--stream", default="pilot.stats", help="telemetry stream to read (default pilot.stats)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to collect (default 30)")
    p.add_argument("--records", type=int, metavar="N", help="stop early once every group has N records")
    p.add_argument("--client-id", help="MQTT client id with a persistent session (records queued between runs)")
    p.add_argument("--png", type=Path, help="also draw the table as a PNG (needs OpenCV)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--save-records", type=Path, metavar="FILE", help="write the records used, one JSON per line")


def parse_groups(specs: list[str]) -> dict[str, Any]:
    """NAME=SELECTOR -> {name: Selector}, in order. ValueError naming the bad --group."""
    from edge_shared.labels import LabelError, parse_selector

    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, selector = spec.partition("=")
        if not sep or not GROUP_NAME.match(name):
            raise ValueError(
                f"--group {spec!r}: expected NAME=SELECTOR, NAME of letters, digits, '_', '.', '-' (at most 32)"
            )
        if name in out:
            raise ValueError(f"--group {spec!r}: group {name} is given twice")
        try:
            out[name] = parse_selector(selector)
        except LabelError as exc:
            raise ValueError(f"--group {spec!r}: {exc}") from None
    if len(out) < 2:
        raise ValueError("give at least two --group options (what would the table compare?)")
    return out


def assign_groups(labels: dict[str, dict[str, str] | None], selectors: dict[str, Any]) -> dict[str, str]:
    """device -> group; ValueError when a device matches two groups (the groups must not overlap)."""
    out: dict[str, str] = {}
    for device, device_labels in sorted(labels.items()):
        matching = [name for name, selector in selectors.items() if selector.matches(device_labels)]
        if len(matching) > 1:
            raise ValueError(f"device {device} matches groups {' and '.join(matching)}; the groups must not overlap")
        if matching:
            out[device] = matching[0]
    return out


async def collect(args: argparse.Namespace, selectors: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    import aiomqtt

    from edge_shared.labels import reported_labels
    from edge_shared.mqtt_client import make_client
    from edgectl.client import FleetError
    from edgectl.connect import fleet_client
    from edgectl.telemetry_cmd import records_of

    fleet = fleet_client(args)
    # Its own client id: the fleet client (device labels) connects with fleet.params' id at the
    # same time, and a second connection with one id takes the first one's place.
    params = dataclasses.replace(fleet.params, client_id=args.client_id or f"{fleet.params.client_id}-telemetry")
    records: list[dict[str, Any]] = []
    client = None
    problems = []
    for endpoint in params.all_endpoints:
        candidate = make_client(
            params.at(endpoint), persistent=bool(args.client_id), session_expiry_s=7 * 86400, max_queued_incoming=0
        )
        try:
            await candidate.__aenter__()
            client = candidate
            break
        except aiomqtt.MqttError as exc:
            problems.append(f"{endpoint}: {exc}")
    if client is None:
        raise FleetError(f"cannot connect to broker {'; '.join(problems)}")
    try:
        await client.subscribe(f"{fleet.prefix}/+/telemetry/{args.stream}", qos=1)
        async with fleet:
            views = await fleet.devices()
        group_of = assign_groups(
            {v.device: reported_labels((v.reported or {}).get("device")) for v in views}, selectors
        )

        def enough() -> bool:
            if args.records is None:
                return False
            counts = {name: 0 for name in selectors}
            for rec in records:
                group = group_of.get(str(rec.get("device")))
                if group is not None:
                    counts[group] += 1
            return all(n >= args.records for n in counts.values())

        async def read() -> None:
            async for message in client.messages:
                content_type = getattr(message.properties, "ContentType", None) if message.properties else None
                try:
                    records.extend(records_of(bytes(message.payload), content_type))
                except (ValueError, UnicodeDecodeError) as exc:
                    print(f"edgectl compare: skipping a malformed message on {message.topic}: {exc}", file=sys.stderr)
                    continue
                if enough():
                    return

        try:
            await asyncio.wait_for(read(), args.duration)
        except TimeoutError:
            pass
        except aiomqtt.MqttError as exc:
            raise FleetError(f"lost the broker while collecting telemetry: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
    return records, group_of


def run(args: argparse.Namespace) -> int:
    from edgectl.client import FleetError

    try:
        selectors = parse_groups(args.group)
    except ValueError as exc:
        print(f"edgectl compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.duration <= 0 or (args.records is not None and args.records < 1):
        print("edgectl compare: --duration must be above 0 and --records at least 1", file=sys.stderr)
        return EXIT_USAGE
    metrics = list(dict.fromkeys(args.metric or DEFAULT_METRICS))
    try:
        records, group_of = asyncio.run(collect(args, selectors))
    except ValueError as exc:  # overlapping groups
        print(f"edgectl compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FleetError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    comparison = compare(records, group_of, metrics, groups=list(selectors))
    shown = {name: spec.partition("=")[2] for name, spec in ((s.partition("=")[0], s) for s in args.group)}
    if args.save_records:
        used = [r for r in records if str(r.get("device")) in group_of]
        args.save_records.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in used))
    png = None
    if args.png:
        from edgectl.compare_chart import draw_chart

        try:
            size = draw_chart(
                comparison, args.png, f"edgectl compare: {', '.join(f'{k}={v}' for k, v in shown.items())}"
            )
        except RuntimeError as exc:
            print(f"edgectl compare: {exc}", file=sys.stderr)
            return EXIT_FAILED
        png = {"path": str(args.png), "width": size[0], "height": size[1]}
    if args.json:
        print(json.dumps({**as_json(comparison), "selectors": shown, "png": png, "collectedAt": time.time()}))
    else:
        print(render_table(comparison, shown))
        if png:
            print(f"picture: {png['path']} ({png['width']}x{png['height']})")
    silent = [name for name in selectors if not any(c.group == name and c.records for c in comparison.columns)]
    for name in silent:
        devices = sorted(d for d, g in group_of.items() if g == name)
        why = f"no telemetry on {args.stream} from {', '.join(devices)}" if devices else "no device matches"
        print(f"edgectl compare: group {name} ({shown[name]}): {why}", file=sys.stderr)
    return EXIT_FAILED if silent else EXIT_OK
