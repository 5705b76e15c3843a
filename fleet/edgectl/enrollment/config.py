"""The enrollment service's config file (default /etc/edgectl/enrollment.toml, or
$EDGECTL_ENROLLMENT_CONFIG, or --enrollment-config). Relative paths are relative to the file.

    [mqtt]                       # the service's own broker identity (same keys as the agent's)
    host = "broker.example.net"
    port = 8883
    tls = true
    ca_file = "ca.crt"
    cert_file = "enrollment-service.crt"   # its CN has "topic read edge/enroll/+/request" in the ACL
    key_file = "enrollment-service.key"

    [enrollment]
    ca_cert = "fleet-ca.crt"     # the fleet CA that signs device certificates
    ca_key = "fleet-ca.key"      # mode 0600; only on this host
    previous_cas = "old-fleet-ca.crt"      # during a CA rotation: devices holding its certificates renew
    database = "/var/lib/edgectl/enrollment.db"
    cert_lifetime_s = 7776000    # 90 days
    ek_allowlist = "ek-allowlist.txt"      # EK SHA-256 hashes, one per line (# comments)
    tpm_maker_cas = "tpm-makers.pem"       # CAs of TPM makers whose EK certificates are trusted
    crl_file = "/etc/mosquitto/edge-agent.crl"     # mosquitto crlfile
    acl_base = "/etc/mosquitto/edge-agent.acl.base" # the ACL without revoked devices
    acl_file = "/etc/mosquitto/edge-agent.acl"      # mosquitto acl_file: acl_base + revoked devices
    broker_pid_file = "/run/mosquitto/mosquitto.pid" # SIGHUP makes mosquitto re-read both
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import Field, ValidationError

from edge_shared.mqtt_config import FsPath, MqttSection, Section
from edge_shared.validation import describe, location

DEFAULT_PATH = Path("/etc/edgectl/enrollment.toml")
PATH_KEYS = ("ca_cert", "ca_key", "previous_cas", "database", "ek_allowlist", "tpm_maker_cas", "crl_file",
             "acl_base", "acl_file", "broker_pid_file")


class EnrollmentSection(Section):
    ca_cert: FsPath = Field(description="the fleet CA certificate (PEM)")
    ca_key: FsPath = Field(description="the fleet CA private key (PEM, EC)")
    database: FsPath = Field(Path("/var/lib/edgectl/enrollment.db"), description="SQLite file of enrollment records")
    cert_lifetime_s: int = Field(90 * 86400, ge=10, le=10 * 365 * 86400,
                                 description="lifetime of a device certificate in seconds, 10-315360000")
    previous_cas: FsPath | None = Field(
        None, description="PEM bundle of retired fleet CAs whose device certificates may still renew (CA rotation)")
    ek_allowlist: FsPath | None = Field(None, description="file of EK SHA-256 hashes approved by policy")
    tpm_maker_cas: FsPath | None = Field(None, description="PEM bundle of TPM makers' EK certificate CAs")
    crl_file: FsPath | None = Field(None, description="where the CRL is written for the broker (mosquitto crlfile)")
    crl_valid_s: int = Field(7 * 86400, ge=60, description="validity of each CRL (re-issued at a quarter of it)")
    acl_base: FsPath | None = Field(None, description="the broker ACL without revoked devices")
    acl_file: FsPath | None = Field(
        None, description="the ACL the broker reads: acl_base plus a deny for each revoked device")
    broker_pid_file: FsPath | None = Field(None, description="mosquitto's pid file: it gets SIGHUP after a change")


class ServiceConfig(Section):
    mqtt: MqttSection = MqttSection()
    enrollment: EnrollmentSection


class ServiceConfigError(Exception):
    pass


def config_path(given: Path | None) -> Path:
    return given or Path(os.environ.get("EDGECTL_ENROLLMENT_CONFIG") or DEFAULT_PATH)


def load_service_config(path: Path) -> ServiceConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServiceConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ServiceConfigError(f"{path}: {exc}; expected a UTF-8 TOML file") from None
    for table, keys in (("mqtt", ("ca_file", "cert_file", "key_file")), ("enrollment", PATH_KEYS)):
        section = data.get(table)
        if isinstance(section, dict):
            for key in keys:
                if isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
                    section[key] = str((path.parent / section[key]).resolve())
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ServiceConfigError("\n".join(
            f"{path}: {location(e['loc'])}: {describe(e, noun='key', show_input=False)}" for e in exc.errors()
        )) from None
