"""Test certificates made with the project's own scripts/make-certs.sh, and the matching
mosquitto TLS + ACL configuration (the same shape as config/mosquitto/)."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devinfra.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parents[1]
MAKE_CERTS = REPO / "scripts" / "make-certs.sh"


@dataclass(frozen=True)
class ClientCert:
    cn: str
    cert: Path
    key: Path


class Pki:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self._run("ca")
        self._run("server", "broker", "DNS:localhost", "IP:127.0.0.1")
        self.ca = workdir / "ca.crt"
        self.server_cert = workdir / "broker.crt"
        self.server_key = workdir / "broker.key"
        self.server_key.chmod(0o644)  # mosquitto may drop to its own user before reading it

    def _run(self, *args: str) -> None:
        subprocess.run([str(MAKE_CERTS), str(self.dir), *args], check=True, capture_output=True)

    def client(self, cn: str) -> ClientCert:
        if not (self.dir / f"{cn}.crt").exists():
            self._run("client", cn)
        return ClientCert(cn, self.dir / f"{cn}.crt", self.dir / f"{cn}.key")


def unique(tag: str = "") -> str:
    return f"t-{secrets.token_hex(3)}{'-' + tag if tag else ''}"


def acl_text(prefix: str, fleet_cn: str) -> str:
    # The same rules as config/mosquitto/edge-agent.acl, for this test's prefix.
    example = (REPO / "config" / "mosquitto" / "edge-agent.acl").read_text()
    return example.replace("edge/", f"{prefix}/").replace("user fleet-ops", f"user {fleet_cn}")


def tls_broker(workdir: Path, pki: Pki, prefix: str, fleet_cn: str, port: int | None = None) -> Mosquitto:
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "edge-agent.acl"
    acl.write_text(acl_text(prefix, fleet_cn))
    acl.chmod(0o644)
    # ("user root" comes from devinfra/mosquitto.py: pytest's temp dirs are 0700.)
    extra = (
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
        f"acl_file {acl}\n"
    )
    return Mosquitto(workdir, extra_conf=extra, port=port, anonymous=False)
