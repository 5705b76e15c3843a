"""The [mqtt] section both the agent's config and the fleet's edgectl.toml use, and the secret
references it holds (a config never holds a secret itself)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from edge_shared.broker_endpoints import MAX_ENDPOINTS, Endpoint, endpoint_list, parse_endpoint
from edge_shared.names import DEVICE_ID_PATTERN

MAX_TOPIC_PREFIX = 128  # characters; topics are <prefix>/<device>/... and MQTT allows 65535 bytes


class SecretRef(str):
    """Where a secret lives: ``file:/path``, ``credential:NAME`` (systemd LoadCredential=) or
    ``env:NAME``. The config never holds the secret itself, and this object's repr shows only the
    reference, so printing a config cannot leak a password."""

    __slots__ = ()
    SCHEMES = ("file", "credential", "env")

    @property
    def scheme(self) -> str:
        return self.split(":", 1)[0]

    @property
    def target(self) -> str:
        return self.split(":", 1)[1]

    def resolve(self) -> str:
        """Read the secret. Raises OSError/KeyError with a message that names the reference only."""
        scheme, target = self.scheme, self.target
        if scheme == "file":
            return Path(target).read_text(encoding="utf-8").rstrip("\r\n")
        if scheme == "credential":
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise KeyError(f"secret {self}: CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)")
            return (Path(cred_dir) / target).read_text(encoding="utf-8").rstrip("\r\n")
        value = os.environ.get(target)
        if value is None:
            raise KeyError(f"secret {self}: environment variable {target} is not set")
        return value

    def __repr__(self) -> str:
        return f"SecretRef({str(self)!r})"


_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,255}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")


def _parse_secret(value: object) -> SecretRef:
    if not isinstance(value, str):
        raise PydanticCustomError("secret_ref", "expected a string like file:/path or credential:NAME")
    scheme, sep, target = value.partition(":")
    if not sep or scheme not in SecretRef.SCHEMES or not target:
        # Deliberately do not echo the value: it may be the secret itself.
        raise PydanticCustomError(
            "secret_ref",
            "secrets are not written in the config; expected file:/path, credential:NAME or env:NAME",
        )
    if scheme == "credential" and (not _CREDENTIAL_NAME.fullmatch(target) or target in (".", "..")):
        # systemd credential names are file names in $CREDENTIALS_DIRECTORY: no '/', no '..'.
        # The name is not echoed: it may be a secret written in the wrong place.
        raise PydanticCustomError(
            "secret_ref", "the credential name is not a file name; expected letters, digits, '_', '.', '-'"
        )
    if scheme == "env" and not _ENV_NAME.fullmatch(target):
        raise PydanticCustomError(
            "secret_ref",
            "not an environment variable name; expected letters, digits and '_', not starting with a digit",
        )
    if scheme == "file" and not Path(target).is_file():
        raise PydanticCustomError("secret_ref", "secret file {path} does not exist", {"path": target})
    return SecretRef(value)


class Section(BaseModel):
    """Strict: a value of the wrong TOML type is refused, never converted (port = "1883",
    port = true, tls = 1, min_free_mb = 1.0 are errors); an integer is a valid float; inf and nan
    are refused. Paths are the one exception: TOML has no path type, so they are written as strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


# A file system path, written as a TOML string (the only lax type in the file).
FsPath = Annotated[Path, Strict(False)]


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise PydanticCustomError("file_missing", "file {path} does not exist", {"path": str(value)})
    return value


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def broker_host(value: str) -> str | None:
    """The host as the MQTT client is given it, or None when `value` is no host: a DNS name
    (ASCII labels), an IPv4 address, an IPv6 address, or an IPv6 address in brackets ([::1], as
    URLs write it; the brackets are notation, so ::1 is what is connected to and shown as [::1])."""
    import ipaddress

    if value.startswith("[") and value.endswith("]"):
        inner = value[1:-1]
        try:
            return inner if ipaddress.ip_address(inner).version == 6 else None
        except ValueError:
            return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split(".")):
        return value
    return None


def _is_host(value: str) -> bool:
    return broker_host(value) is not None


class MqttSection(Section):
    host: str = Field(
        "localhost", min_length=1, max_length=253, description="broker host name or IP address (at most 253 characters)"
    )
    port: int = Field(1883, ge=1, le=65535, description="TCP port of the broker, 1-65535")
    endpoints: list[str] = Field(
        default_factory=list,
        max_length=MAX_ENDPOINTS,
        description=f"more brokers to move to when one is gone, in order, like [\"mqtt-b.example:8883\"] "
        f"(host:port, host, or [IPv6]:port; at most {MAX_ENDPOINTS})",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds, 5-3600")
    topic_prefix: str = Field(
        "edge",
        max_length=MAX_TOPIC_PREFIX,
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description=f"topic prefix like edge or acme/edge, at most {MAX_TOPIC_PREFIX} characters",
    )
    client_id: str | None = Field(None, pattern=DEVICE_ID_PATTERN, description="MQTT client id (default: device id)")
    username: str | None = Field(None, min_length=1, max_length=256, description="broker user name, 1-256 characters")
    password: SecretRef | None = Field(None, description="file:/path, credential:NAME or env:NAME")
    tls: bool = Field(False, description="true or false")
    ca_file: FsPath | None = Field(None, description="an existing PEM file with the CA that signed the broker")
    cert_file: FsPath | None = Field(None, description="an existing PEM client certificate (mutual TLS)")
    key_file: FsPath | None = Field(None, description="an existing PEM private key for cert_file")
    key_password: SecretRef | None = Field(None, description="file:/path, credential:NAME or env:NAME")
    reconnect_max_delay_s: float = Field(60.0, ge=1, le=3600, description="seconds, 1-3600")
    session_expiry_s: int = Field(
        604800, ge=0, le=4294967295, description="seconds the broker keeps the session while offline, 0-4294967295"
    )

    _files = field_validator("ca_file", "cert_file", "key_file")(_existing_file)

    @field_validator("host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        host = broker_host(value)
        if host is None:
            raise PydanticCustomError(
                "host",
                "not a host name (labels of letters, digits and '-', at most 63 each) or an IP address "
                "(IPv6 with or without [brackets])",
            )
        return host

    @field_validator("ca_file", "cert_file", "key_file", "key_password")
    @classmethod
    def _tls_on(cls, value: object, info: ValidationInfo) -> object:
        # A file that would be ignored is a mistake in the file, not a choice: say so.
        if value is not None and info.data.get("tls") is False:
            raise PydanticCustomError(
                "tls_off", "given but tls = false, so it would be ignored; write tls = true or remove it"
            )
        return value

    @field_validator("key_file", "key_password")
    @classmethod
    def _with_cert(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and "cert_file" in info.data and info.data["cert_file"] is None:
            raise PydanticCustomError("tls_key", "given without cert_file; expected a cert_file it is the key of")
        return value

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str], info: ValidationInfo) -> list[str]:
        default_port = info.data.get("port", 1883)
        for number, text in enumerate(value, start=1):
            try:
                endpoint = parse_endpoint(text, default_port)
            except ValueError as exc:
                raise PydanticCustomError(
                    "endpoint", "entry {number}: {problem}", {"number": number, "problem": str(exc)}
                ) from None
            if not _is_host(endpoint.host):
                raise PydanticCustomError(
                    "endpoint",
                    "entry {number} ({text}): {host} is not a host name (labels of letters, digits and '-', "
                    "at most 63 each) or an IP address",
                    {"number": number, "text": repr(text), "host": repr(endpoint.host)},
                )
        return value

    def broker_endpoints(self) -> tuple[Endpoint, ...]:
        """Every broker in the order the agent tries them: host:port, then `endpoints`."""
        return endpoint_list(Endpoint(self.host, self.port), [parse_endpoint(e, self.port) for e in self.endpoints])

    @field_validator("password", "key_password", mode="plain")
    @classmethod
    def _secret(cls, value: object) -> SecretRef | None:
        return None if value is None else _parse_secret(value)
