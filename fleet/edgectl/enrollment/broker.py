"""What the broker enforces after a revocation: the CRL (mosquitto `crlfile`: a revoked
certificate fails the TLS handshake) and the ACL (a `deny #` block for each revoked device, so
a connection still open is refused every publish and delivery). Both files are replaced
atomically and mosquitto re-reads them on SIGHUP; then the device's open connection is closed
(`disconnect_device`)."""

from __future__ import annotations

import datetime as dt
import os
import signal
from dataclasses import replace

from edge_shared.atomic_file import atomic_write
from edge_shared.mqtt_client import make_client
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.enrollment.ca import FleetCa
from edgectl.enrollment.config import EnrollmentSection
from edgectl.enrollment.store import EnrollmentStore

REVOKED_HEADER = "\n# ---- revoked devices (written by edgectl revoke; do not edit below)\n"


def acl_text(base: str, revoked: list[str]) -> str:
    # A user's "deny" wins over every pattern line in mosquitto 2.x.
    blocks = "".join(f"user {device}\ntopic deny #\n" for device in revoked)
    return base.rstrip("\n") + "\n" + REVOKED_HEADER + blocks


def publish_revocations(section: EnrollmentSection, ca: FleetCa, store: EnrollmentStore, now: dt.datetime) -> list[str]:
    """Write the CRL and the ACL, then SIGHUP the broker. Returns what was done."""
    done = []
    if section.crl_file is not None:
        atomic_write(section.crl_file, ca.crl(store.revoked_certs(now), now, dt.timedelta(seconds=section.crl_valid_s)),
                     0o644)
        done.append(f"wrote {section.crl_file}")
    if section.acl_base is not None and section.acl_file is not None:
        atomic_write(section.acl_file, acl_text(section.acl_base.read_text(), store.revoked_devices()).encode(), 0o644)
        done.append(f"wrote {section.acl_file}")
    if section.broker_pid_file is not None:
        pid = int(section.broker_pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGHUP)
        done.append(f"sent SIGHUP to the broker (pid {pid})")
    return done


async def disconnect_device(mqtt: MqttSection, device_id: str) -> None:
    """Close the device's open connection now: connect under its client id (the broker closes the
    older connection with the same id, a session takeover) with a clean start, then leave. Its
    next connection is refused by the reloaded CRL; mosquitto has no other way to drop one client."""
    params = replace(broker_params(mqtt, device_id), client_id=device_id)
    async with make_client(params, persistent=False):
        pass
