"""Broker connection parameters from the config: shared by the twin session and `edge-agent check`."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace

from edge_shared.broker_endpoints import Endpoint
from edge_shared.mqtt_config import MqttSection


@dataclass(frozen=True)
class BrokerParams:
    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    tls_context: ssl.SSLContext | None
    keepalive: int
    # Every broker in the order they are tried; empty means just host:port. host/port are the
    # first; `at(endpoint)` gives the parameters for another.
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def all_endpoints(self) -> tuple[Endpoint, ...]:
        return self.endpoints or (Endpoint(self.host, self.port),)

    def at(self, endpoint: Endpoint) -> BrokerParams:
        return replace(self, host=endpoint.host, port=endpoint.port)


def tls_context(cfg: MqttSection) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file:
        password = cfg.key_password.resolve() if cfg.key_password else None
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None, password=password)
    return ctx


def broker_params(cfg: MqttSection, device_id: str) -> BrokerParams:
    return BrokerParams(
        host=cfg.host,
        port=cfg.port,
        client_id=cfg.client_id or device_id,
        username=cfg.username,
        password=cfg.password.resolve() if cfg.password else None,
        tls_context=tls_context(cfg),
        keepalive=cfg.keepalive_s,
        endpoints=cfg.broker_endpoints(),
    )
