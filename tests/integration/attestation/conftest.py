"""Fixtures for attestation tests: real swtpm instances (a fresh TPM per test, so PCRs start at
zero), an AttestationService on it, and a transport that calls the service's command handlers
through the same JSON envelope the MQTT path uses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from devinfra.swtpm import Swtpm
from edge_agent.attestation.mqtt_command import dispatch
from edge_agent.attestation.service import AttestationService
from edge_agent.config import parse_config
from edge_agent.reported import ReportedState
from edge_shared.protocol import CommandFailed
from edgectl.attestation.bootlog import build_boot_log
from edgectl.attestation.ima import make_entry


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    tpm = Swtpm(tmp_path / "swtpm-a").start()
    yield tpm
    tpm.stop()


@pytest.fixture
def other_swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    """A second, unrelated TPM (another device)."""
    tpm = Swtpm(tmp_path / "swtpm-b").start()
    yield tpm
    tpm.stop()


def agent_config(state_dir: Path, tcti: str, ima_log: Path, extra: str = "", boot_log: Path | None = None) -> Any:
    return parse_config(
        f'[state]\ndir = "{state_dir}"\n'
        f'[attestation]\ntcti = "{tcti}"\nima_log = "{ima_log}"\n'
        f'boot_log = "{boot_log or state_dir / "no-boot-log"}"\n{extra}'
    )


ServiceFactory = Callable[..., Any]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    started: list[AttestationService] = []

    async def factory(tpm: Swtpm | None, name: str = "dev", tcti: str | None = None,
                      ek_type: str = "ecc", extra: str = "") -> AttestationService:
        state = tmp_path / f"state-{name}"
        config = agent_config(state, tcti or (tpm.tcti if tpm else "device:/dev/nonexistent-tpm"),
                              tmp_path / f"ima-{name}.txt", f'ek_type = "{ek_type}"\n{extra}',
                              tmp_path / f"boot-{name}.bin")
        service = AttestationService(config, ReportedState())
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in started:
        service.close()


def local_transport(services: Mapping[str, AttestationService],
                    tamper: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None) -> Any:
    """Transport for the edgectl flows: JSON round trip through the command envelope. `tamper`
    (command, request, answer) -> answer plays a man in the middle."""

    async def send(device: str, command: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        service = services[device]
        request = json.loads(json.dumps(dict(payload)))
        answer = await dispatch(service.handlers()[command], json.dumps(request).encode())
        answer = json.loads(json.dumps(answer))
        if not answer["ok"]:
            raise CommandFailed(answer["error"]["code"], answer["error"]["description"])
        result: dict[str, Any] = answer["result"]
        return tamper(command, request, result) if tamper else result

    return send


BOOT_EVENTS = [
    (0, 0x80000008, hashlib.sha256(b"firmware volume").digest(), b"fv"),
    (4, 0x80000003, hashlib.sha256(b"boot loader").digest(), b"grub"),
    (7, 0x800000E0, hashlib.sha256(b"secure boot db").digest(), b"db"),
    (4, 0x80000003, hashlib.sha256(b"kernel").digest(), b"vmlinuz"),
]


def write_boot_log(path: Path) -> list[tuple[int, bytes]]:
    """A firmware boot event log; returns the (PCR, digest) extends the "firmware" must do."""
    path.write_bytes(build_boot_log(BOOT_EVENTS))
    return [(pcr, digest) for pcr, _, digest, _ in BOOT_EVENTS]


def synthetic_files(count: int = 5) -> list[tuple[str, bytes]]:
    return [(f"/usr/lib/edge/file{i}.so", hashlib.sha256(f"content {i}".encode()).digest()) for i in range(count)]


def write_ima_list(path: Path, files: list[tuple[str, bytes]]) -> list[Any]:
    """An ima-ng measurement list (boot_aggregate first, as the kernel writes it)."""
    entries = [make_entry("boot_aggregate", hashlib.sha256(b"boot").digest(), 1)]
    entries += [make_entry(p, d, i + 2) for i, (p, d) in enumerate(files)]
    path.write_text("".join(e.to_line() + "\n" for e in entries))
    return entries
