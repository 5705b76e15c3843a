"""Broker connection parameters from the config: shared by the twin session and `edge-agent check`."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from pathlib import Path

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


class TlsFileError(ssl.SSLError):
    """A TLS file or secret named in [mqtt] cannot be used. `key` is the config key to blame
    (ca_file, cert_file, key_file, key_password); the message never holds a secret."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(detail)
        self.key = key
        self.detail = detail

    def __str__(self) -> str:
        return f"mqtt.{self.key}: {self.detail}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).strip("'\"")


def _has_certificate(path: Path) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except (OSError, ValueError):
        return False
    return True


def tls_context(cfg: MqttSection) -> ssl.SSLContext | None:
    """The client TLS context `run` connects with (None without TLS). Raises TlsFileError."""
    if not cfg.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    except (OSError, ValueError) as exc:
        raise TlsFileError("ca_file", f"{cfg.ca_file}: not a usable PEM CA file ({_reason(exc)})") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file:
        try:
            password = cfg.key_password.resolve() if cfg.key_password else None
        except (OSError, KeyError, UnicodeDecodeError) as exc:
            raise TlsFileError("key_password", f"cannot read the secret: {_reason(exc)}") from exc
        try:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None, password=password)
        except (OSError, ValueError) as exc:
            if not _has_certificate(cfg.cert_file):
                raise TlsFileError("cert_file", f"{cfg.cert_file}: not a PEM certificate ({_reason(exc)})") from exc
            if cfg.key_file is None:
                detail = (f"{cfg.cert_file}: cannot load a certificate and its private key from it "
                          f"({_reason(exc)}); expected key_file, or the key in the same PEM file")
                raise TlsFileError("cert_file", detail) from exc
            detail = (f"{cfg.cert_file} with {cfg.key_file}: not a usable PEM certificate and matching "
                      f"private key ({_reason(exc)})")
            raise TlsFileError("key_file", detail) from exc
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
