"""edgectl's enrollment commands, run on the enrollment service's host (they open its database
and CA): `enroll-service`, `enrollments` (list, approve, deny, forget, claim), `revoke`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
from pathlib import Path

from edgectl.enrollment.config import ServiceConfig, ServiceConfigError, config_path, load_service_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
COMMANDS = ("enroll-service", "enrollments", "revoke")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    flag = argparse.ArgumentParser(add_help=False)
    flag.add_argument("--enrollment-config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                      help="the enrollment service's config (default $EDGECTL_ENROLLMENT_CONFIG, "
                           "else /etc/edgectl/enrollment.toml)")
    sub.add_parser("enroll-service", parents=[flag], help="run the enrollment service (long-running)",
                   description="Answer devices' enrollment and renewal requests: sign with the fleet CA what the "
                   "policy (EK allowlist, trusted TPM makers) or an operator approved. Runs until stopped.")
    enr = sub.add_parser("enrollments", parents=[flag], help="list, approve or deny device enrollments; make claims",
                         description="Without an action: every device's enrollment record.")
    actions = enr.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[flag], help="every enrollment record (the default)").add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS)
    for name, what in (("approve", "let the device enroll (the same TPM, or key, that asked)"),
                       ("deny", "refuse the device from now on"),
                       ("forget", "delete the record: the next request starts over")):
        actions.add_parser(name, parents=[flag], help=what).add_argument("device")
    claim = actions.add_parser("claim", parents=[flag], help="make a claim certificate for a batch of devices")
    claim.add_argument("batch", help="batch name (letters, digits, _ . -)")
    claim.add_argument("--out", type=Path, required=True, help="folder for claim.crt and claim.key")
    claim.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    enr.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable list")
    revoke = sub.add_parser("revoke", parents=[flag], help="revoke a device: cut off at the broker, no re-enrollment",
                            description="Revoke every certificate of DEVICE: the broker's CRL and ACL are rewritten "
                            "and the broker reloads them (seconds). The device can enroll again only after "
                            "`edgectl enrollments approve DEVICE`.")
    revoke.add_argument("device", help="a device id, or claim:BATCH for a batch's claim certificate")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_service_config(config_path(getattr(args, "enrollment_config", None)))
    except ServiceConfigError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "enroll-service":
        return _service(config)
    if args.command == "revoke":
        return _revoke(config, args.device)
    return _enrollments(config, args)


def _service(config: ServiceConfig) -> int:
    from edgectl.enrollment.ca import CaError
    from edgectl.enrollment.logs import setup_logging
    from edgectl.enrollment.service import EnrollmentService

    setup_logging()
    try:
        service = EnrollmentService(config)
    except CaError as exc:
        print(f"edgectl enroll-service: {exc}", file=sys.stderr)
        return EXIT_FAILED
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(service.run())
    return EXIT_OK


def _revoke(config: ServiceConfig, device: str) -> int:
    import aiomqtt

    from edgectl.enrollment.broker import disconnect_device, publish_revocations
    from edgectl.enrollment.ca import CLAIM_PREFIX, FleetCa
    from edgectl.enrollment.store import EnrollmentStore

    store = EnrollmentStore(config.enrollment.database)
    now = dt.datetime.now(dt.UTC)
    if device.startswith(CLAIM_PREFIX):
        # A claim certificate: into the CRL, so that no device of the batch can enroll with it.
        count = store.revoke_claim(device, now)
        if count == 0:
            print(f"edgectl revoke: no claim certificate {device} made by `edgectl enrollments claim` here",
                  file=sys.stderr)
            return EXIT_FAILED
        ca = FleetCa.load(config.enrollment.ca_cert, config.enrollment.ca_key)
        for line in publish_revocations(config.enrollment, ca, store, now):
            print(line)
        print(f"{device}: revoked ({count} certificate{'s' if count != 1 else ''})")
        return EXIT_OK
    if store.record(device) is None:
        print(f"edgectl revoke: no enrollment record for {device}", file=sys.stderr)
        return EXIT_FAILED
    count = store.revoke(device, now)
    ca = FleetCa.load(config.enrollment.ca_cert, config.enrollment.ca_key)
    for line in publish_revocations(config.enrollment, ca, store, now):
        print(line)
    try:
        asyncio.run(disconnect_device(config.mqtt, device))
        print(f"closed {device}'s open connection to the broker")
    except (aiomqtt.MqttError, OSError) as exc:  # revoked all the same: the ACL refuses it
        print(f"edgectl revoke: could not close {device}'s open connection ({exc}); the broker's ACL refuses "
              "everything it sends", file=sys.stderr)
    print(f"{device}: revoked ({count} certificate{'s' if count != 1 else ''})")
    return EXIT_OK


def _enrollments(config: ServiceConfig, args: argparse.Namespace) -> int:
    from edgectl.enrollment.store import EnrollmentStore

    store = EnrollmentStore(config.enrollment.database)
    now = dt.datetime.now(dt.UTC)
    action = args.action or "list"
    if action == "list":
        rows = store.rows()
        if getattr(args, "json", False):
            print(json.dumps([r.__dict__ for r in rows], indent=2))
            return EXIT_OK
        print(f"{'DEVICE':<24} {'STATUS':<9} {'EK':<14} {'CERT EXPIRES':<26} REASON")
        for r in rows:
            print(f"{r.device_id:<24} {r.status:<9} {(r.ek_hash or '-')[:12]:<14} {r.not_after or '-':<26} {r.reason}")
        return EXIT_OK
    if action == "claim":
        return _claim(config, args.batch, args.out, args.days, now)
    device = args.device
    record = store.record(device)
    if record is None:
        print(f"edgectl enrollments {action}: no enrollment record for {device} (it has not asked yet)",
              file=sys.stderr)
        return EXIT_FAILED
    if action == "forget":
        store.db.execute("DELETE FROM devices WHERE device_id = ?", (device,))
        print(f"{device}: record deleted")
    else:
        status = "approved" if action == "approve" else "denied"
        store.set_status(device, status, f"{status} by an operator", now)  # type: ignore[arg-type]
        print(f"{device}: {status}")
    if record.status == "revoked":
        # No longer revoked: the broker's ACL drops its deny block (its old certificates stay in the CRL).
        from edgectl.enrollment.broker import publish_revocations
        from edgectl.enrollment.ca import FleetCa

        ca = FleetCa.load(config.enrollment.ca_cert, config.enrollment.ca_key)
        for line in publish_revocations(config.enrollment, ca, store, now):
            print(line)
    return EXIT_OK


def _claim(config: ServiceConfig, batch: str, out: Path, days: int, now: dt.datetime) -> int:
    import re

    from edge_shared.atomic_file import atomic_write
    from edgectl.enrollment.ca import CLAIM_PREFIX, FleetCa, cert_pem, key_pem, new_key
    from edgectl.enrollment.store import EnrollmentStore

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,56}", batch):
        print(f"edgectl enrollments claim: batch {batch!r}: expected letters, digits, _ . -", file=sys.stderr)
        return EXIT_USAGE
    ca = FleetCa.load(config.enrollment.ca_cert, config.enrollment.ca_key)
    key = new_key()
    cert = ca.issue_claim(batch, key.public_key(), dt.timedelta(days=days), now)
    EnrollmentStore(config.enrollment.database).issued_claim(CLAIM_PREFIX + batch, cert.serial_number,
                                                             cert.not_valid_after_utc)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "claim.key", key_pem(key), 0o600)
    atomic_write(out / "claim.crt", cert_pem(cert), 0o644)
    print(f"wrote {out / 'claim.crt'} (CN {cert.subject.rfc4514_string()}, until {cert.not_valid_after_utc:%Y-%m-%d}) "
          f"and {out / 'claim.key'}")
    return EXIT_OK
