"""A device without a real-time clock: the agent started with the clock in 1970, then a year
ahead (libfaketime), keeps its identity, says "clock not synchronised", stays connected as
itself; with the right clock it carries on as before (same certificate, no re-enrollment)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from devinfra.procs import require_binary
from devinfra.swtpm import Swtpm
from tests.integration.identity.fleet_env import Device, Fleet

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime(spec: str) -> dict[str, str]:
    require_binary("faketime")  # the Debian package that ships libfaketime (scripts/install-deps.sh)
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": spec, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1"}


def clock_says(text: str) -> Callable[[dict[str, Any]], bool]:
    def check(doc: dict[str, Any]) -> bool:
        return text in str((doc.get("identity") or {}).get("clock", ""))

    return check


async def test_clock_in_1970_then_a_year_ahead_keeps_identity_and_says_so(tmp_path: Path) -> None:
    tpm = Swtpm(tmp_path / "tpm").manufacture().start()
    fleet = Fleet(tmp_path / "fleet", cert_lifetime_s=3600, trusted_makers=tpm.ca_certs).start()
    device = Device(fleet, tmp_path / "dev", "pi-11", tpm)
    workdir = device.agent.workdir
    try:
        device.agent.start()
        first = device.wait_identity(lambda s: s["state"] == "valid", "enrolled with the right clock")
        device.agent.stop()
        cert_before = (device.identity_dir / "device.crt").read_bytes()
        key_before = (device.identity_dir / "device.key.tpm").read_bytes()

        for spec, why in (("@1970-01-01 00:00:00", "before this agent was built"),
                          ("+365d", "the clock is ahead")):
            log_mark = len(device.agent.log())
            device.agent.env = {**device.agent.env, **faketime(spec)}
            device.agent.start(timeout=60)
            status = device.wait_identity(lambda s: s["state"] == "clock-unsynchronised",
                                          f"clock not synchronised ({spec})")
            assert status["clock"].startswith("clock not synchronised") and why in status["clock"], status
            assert status["serial"] == first["serial"]
            # Connected as itself: the fleet sees the device's own report of the wrong clock.
            reported = await fleet.reported("pi-11", clock_says(why), f"the fleet told the clock is wrong ({spec})")
            assert reported["identity"]["subject"] == "CN=pi-11"
            device.agent.stop()
            assert "EVENT=identity.enrolling" not in device.agent.log()[log_mark:]
            assert (device.identity_dir / "device.crt").read_bytes() == cert_before
            assert (device.identity_dir / "device.key.tpm").read_bytes() == key_before

        # The right clock: carries on with the same identity, synchronised, renewal scheduled.
        device.agent.env = {k: v for k, v in device.agent.env.items() if "FAKETIME" not in k and k != "LD_PRELOAD"}
        device.agent.start()
        right = device.wait_identity(lambda s: s["state"] == "valid", "valid again with the right clock")
        assert right["clock"] == "synchronised" and right["serial"] == first["serial"]
        await fleet.reported("pi-11", lambda d: (d.get("identity") or {}).get("clock") == "synchronised",
                             "the fleet told the clock is right")
        assert x509.load_pem_x509_certificate(cert_before).serial_number == int(first["serial"], 16)
        assert workdir.exists()
    finally:
        device.agent.stop()
        fleet.stop()
        tpm.stop()
