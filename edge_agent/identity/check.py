"""`edge-agent check` lines for the device identity: the certificate in use (made by enrollment,
or mqtt.cert_file written by hand) and how long it has left; warns before it expires."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

from cryptography import x509

from edge_agent.check_result import CheckResult
from edge_agent.config import AgentConfig
from edge_agent.identity.clock import CLOCK_FILE, ClockWatch, env_build_date

WARN_BEFORE = dt.timedelta(days=14)


def check_identity(config: AgentConfig) -> CheckResult:
    name = "device certificate"
    if config.identity.enabled:
        folder = config.identity.dir or config.state.dir / "identity"
        path: Path | None = folder / "device.crt"
    else:
        path = config.mqtt.cert_file
    if path is None:
        return CheckResult(name, "pass", "no client certificate configured (mqtt.cert_file, identity.enabled)")
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        if config.identity.enabled:
            return CheckResult(name, "warn", f"not enrolled yet ({path} does not exist)",
                               "the agent enrolls with identity.claim_cert; see `edge-agent status`")
        return CheckResult(name, "fail", f"{path} does not exist", "check mqtt.cert_file")
    except (OSError, ValueError) as exc:
        return CheckResult(name, "fail", f"{path}: {exc}")
    now = dt.datetime.now(dt.UTC)
    clock = ClockWatch(config.state.dir / CLOCK_FILE, build_date=env_build_date()).state(now)
    subject, until = cert.subject.rfc4514_string(), cert.not_valid_after_utc
    text = f"{subject}, expires {until:%Y-%m-%d %H:%M}Z"
    if not clock.synchronised:
        return CheckResult(name, "warn", f"{text}; clock not synchronised ({clock.reason}): validity not judged",
                           "enable NTP (timedatectl set-ntp true)")
    lifetime = until - cert.not_valid_before_utc
    renew = cert.not_valid_before_utc + lifetime * config.identity.renew_at
    if now >= until:
        hint = ("it enrolls again with identity.claim_cert" if config.identity.enabled
                else "make a new certificate (scripts/make-certs.sh) or turn identity.enabled on")
        return CheckResult(name, "fail", f"{text}: EXPIRED", hint)
    left = until - now
    if config.identity.enabled and now >= renew + min(lifetime / 10, dt.timedelta(days=1)):
        return CheckResult(name, "warn", f"{text}; renewal overdue (due {renew:%Y-%m-%d %H:%M}Z)",
                           "see `edge-agent status` for why renewal does not succeed")
    if not config.identity.enabled and left < WARN_BEFORE:
        return CheckResult(name, "warn", f"{text}: expires in {left.days} days", "renew it before it expires")
    return CheckResult(name, "pass", text + (f"; renews at {renew:%Y-%m-%d %H:%M}Z" if config.identity.enabled else ""))


def check_broker_tcp(config: AgentConfig) -> CheckResult:
    """With enrollment, the key may be sealed to the TPM (the check cannot use it): whether each
    broker answers on its port; the agent's own connection is in `edge-agent status`."""
    good, bad = [], []
    for endpoint in config.mqtt.broker_endpoints():
        try:
            socket.create_connection((endpoint.host, endpoint.port), timeout=5).close()
            good.append(str(endpoint))
        except OSError as exc:
            bad.append(f"{endpoint}: {exc}")
    name = "broker reachable (TCP; the device certificate is the agent's)"
    if not bad:
        return CheckResult(name, "pass", ", ".join(good))
    return CheckResult(name, "warn" if good else "fail", "; ".join(bad), "is the broker running and the port open?")
