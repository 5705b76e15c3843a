"""A TLS broker with one topic prefix and a fleet identity: device configs and fleet clients
for the twin tests and bench/twin_latency.py."""

from __future__ import annotations

from pathlib import Path

from devinfra.mosquitto import Mosquitto
from devinfra.pki import ClientCert, Pki, unique
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient


class TwinEnv:
    """One broker + one prefix + a fleet identity; makes device configs and fleet clients."""

    def __init__(self, pki: Pki, broker: Mosquitto, prefix: str, fleet: ClientCert) -> None:
        self.pki = pki
        self.broker = broker
        self.prefix = prefix
        self.fleet = fleet

    def mqtt_section(self, cert: ClientCert, **extra: object) -> MqttSection:
        return MqttSection(
            host="127.0.0.1",
            port=self.broker.port,
            topic_prefix=self.prefix,
            tls=True,
            ca_file=self.pki.ca,
            cert_file=cert.cert,
            key_file=cert.key,
            **extra,  # type: ignore[arg-type]
        )

    def fleet_client(self, cn: str | None = None) -> FleetClient:
        cert = self.fleet if cn is None else self.pki.client(cn)
        return FleetClient(broker_params(self.mqtt_section(cert), f"{cert.cn}-{unique()}"), self.prefix)

    def agent_config(self, device: str, document_keys: list[Path] | None = None, **twin: object) -> str:
        """Transport tests send unsigned documents, so they turn document signatures off
        explicitly; pass document_keys to enforce them."""
        cert = self.pki.client(device)
        twin_lines = "".join(f"{k} = {v!r}\n" for k, v in {"report_min_interval_s": 0.2, **twin}.items())
        if document_keys is None:
            trust = '[trust]\ndocument_mode = "off"\n'
        else:
            trust = "[trust]\ndocument_keys = [" + ", ".join(f'"{k}"' for k in document_keys) + "]\n"
        return (
            f'[device]\nid = "{device}"\n'
            f'[logging]\nlevel = "info"\nformat = "text"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\ntopic_prefix = "{self.prefix}"\n'
            f'tls = true\nca_file = "{self.pki.ca}"\ncert_file = "{cert.cert}"\nkey_file = "{cert.key}"\n'
            f"reconnect_max_delay_s = 2\nkeepalive_s = 5\n"
            f"[twin]\n{twin_lines}{trust}"
            # Image trust off, written out: these images do not exist, so a document stays
            # "verifying" (registry unreachable, retried) once it passed the document gate.
            '[[trust.policy]]\nscope = "*"\nmode = "off"\n'
        )

    def edgectl_flags(self) -> list[str]:
        return [
            "--broker",
            "127.0.0.1",
            "--port",
            str(self.broker.port),
            "--prefix",
            self.prefix,
            "--tls-ca",
            str(self.pki.ca),
            "--tls-cert",
            str(self.fleet.cert),
            "--tls-key",
            str(self.fleet.key),
        ]
