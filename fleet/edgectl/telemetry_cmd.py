"""`edgectl telemetry DEVICE`: follow the telemetry a device uploads, without duplicates.

The device sends at least once (a record may arrive twice after a reconnect or an agent crash);
every record carries a unique id, and this command prints each id once (the last `--dedup-window`
ids are remembered). With --client-id the broker keeps a persistent session, so records uploaded
while edgectl was away are delivered when it comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_shared.batch import decode_batch
from edge_shared.broker_endpoints import Endpoint, endpoint_list, parse_endpoint

DEFAULT_DEDUP_WINDOW = 1_000_000


class Deduplicator:
    """Remembers the last `window` record ids."""

    def __init__(self, window: int = DEFAULT_DEDUP_WINDOW) -> None:
        self.window = window
        self.seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, record_id: str) -> bool:
        if record_id in self.seen:
            self.seen.move_to_end(record_id)
            return False
        self.seen[record_id] = None
        if len(self.seen) > self.window:
            self.seen.popitem(last=False)
        return True


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "telemetry",
        help="follow a device's uploaded telemetry (deduplicated)",
        description="Subscribe to <prefix>/DEVICE/telemetry/STREAM and print every record once.",
    )
    p.add_argument("device", help="device id")
    p.add_argument("--host", default=os.environ.get("EDGECTL_MQTT_HOST", "localhost"), help="broker host")
    p.add_argument("--port", type=int, default=int(os.environ.get("EDGECTL_MQTT_PORT", "1883")), help="broker port")
    p.add_argument(
        "--endpoint", action="append", default=[], metavar="HOST:PORT",
        help="another broker to move to when the current one is gone (repeatable, tried in order)",
    )
    p.add_argument("--prefix", default=os.environ.get("EDGECTL_TOPIC_PREFIX", "edge"), help="topic prefix")
    p.add_argument("--stream", default="+", help="only this stream (default: all)")
    p.add_argument("--client-id", help="MQTT client id; keeps a persistent session so nothing is missed")
    p.add_argument("--json", action="store_true", help="print one JSON object per record")
    p.add_argument("--all", action="store_true", help="also print duplicates, marked duplicate=true")
    p.add_argument("--count", type=int, help="exit after this many distinct records")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.add_argument("--dedup-window", type=int, default=DEFAULT_DEDUP_WINDOW, help="record ids remembered")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM); turns TLS on")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM), mutual TLS")
    p.add_argument("--tls-key", type=Path, help="private key for --tls-cert")


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS from the --tls-* flags (the same meaning as for the other edgectl commands)."""
    if not (getattr(args, "tls_ca", None) or getattr(args, "tls_cert", None)):
        return None
    from edge_shared.mqtt_config import MqttSection
    from edge_shared.mqtt_params import tls_context

    return tls_context(MqttSection(tls=True, ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key))


def format_record(rec: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(rec, separators=(",", ":"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(rec.get("ts", 0))))
    dup = " DUPLICATE" if rec.get("duplicate") else ""
    return (
        f"{stamp} {rec['stream']} seq={rec['seq']} prio={rec['priority']} module={rec['module']} "
        f"id={rec['id']}{dup} {json.dumps(rec['payload'], separators=(',', ':'))}"
    )


def records_of(payload: bytes, content_type: str | None) -> list[dict[str, Any]]:
    doc = decode_batch(payload, content_type)
    out = []
    for rec in doc["records"]:
        if isinstance(rec, dict) and "id" in rec:
            out.append({"device": doc.get("device"), "stream": doc.get("stream"), **rec})
    return out


async def follow(
    args: argparse.Namespace, emit: Callable[[dict[str, Any]], None], err: TextIO = sys.stderr
) -> int:
    dedup = Deduplicator(args.dedup_window)
    topic = f"{args.prefix}/{args.device}/telemetry/{args.stream}"
    distinct = 0
    delay = 0.2
    persistent = args.client_id is not None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        props.SessionExpiryInterval = 7 * 86400
    tls = _tls_context(args)
    endpoints = endpoint_list(Endpoint(args.host, args.port), [parse_endpoint(e, args.port) for e in args.endpoint])
    index = 0
    while True:
        endpoint = endpoints[index]
        try:
            async with aiomqtt.Client(
                endpoint.host,
                endpoint.port,
                identifier=args.client_id or "",
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=not persistent,
                properties=props,
                tls_context=tls,
                timeout=10,
            ) as client:
                await client.subscribe(topic, qos=1)
                delay = 0.2
                async for message in client.messages:
                    raw = message.payload
                    content_type = getattr(message.properties, "ContentType", None) if message.properties else None
                    try:
                        records = records_of(bytes(raw), content_type)
                    except (ValueError, UnicodeDecodeError) as exc:
                        print(f"edgectl: skipping a malformed message on {message.topic}: {exc}", file=err)
                        continue
                    for rec in records:
                        if dedup.first_time(str(rec["id"])):
                            distinct += 1
                            emit(rec)
                        elif args.all:
                            emit({**rec, "duplicate": True})
                        if args.count is not None and distinct >= args.count:
                            return 0
        except aiomqtt.MqttError as exc:
            index = (index + 1) % len(endpoints)  # the next broker in the list (the same one when alone)
            print(f"edgectl: broker {endpoint}: {exc}; reconnecting to {endpoints[index]}", file=err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def run(args: argparse.Namespace) -> int:
    try:
        for text in args.endpoint:
            parse_endpoint(text, args.port)
    except ValueError as exc:
        print(f"edgectl telemetry: --endpoint {exc}", file=sys.stderr)
        return 2

    def emit(rec: dict[str, Any]) -> None:
        sys.stdout.write(format_record(rec, args.json) + "\n")
        sys.stdout.flush()

    async def main() -> int:
        if args.timeout is None:
            return await follow(args, emit)
        try:
            return await asyncio.wait_for(follow(args, emit), args.timeout)
        except TimeoutError:
            return 0 if args.count is None else 1

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
