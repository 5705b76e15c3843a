"""edgectl's own config file (default ~/.config/edgectl/config.toml, or $EDGECTL_CONFIG):

    [mqtt]                       # the same keys as the agent's [mqtt] table
    host = "broker.example.net"
    port = 8883
    endpoints = ["broker-b.example.net:8883"]   # tried in order when host:port does not answer
    topic_prefix = "edge"
    tls = true
    ca_file = "ca.crt"           # relative paths are relative to this file
    cert_file = "fleet-ops.crt"
    key_file = "fleet-ops.key"

Command-line flags (--broker, --port, --ca, --cert, --key, ...) override the file.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_shared.mqtt_config import MqttSection, Section
from edge_shared.validation import describe, location

DEFAULT_FLEET_CONFIG = Path("~/.config/edgectl/config.toml")


class FleetConfig(Section):
    mqtt: MqttSection = MqttSection()


class FleetConfigError(Exception):
    pass


def default_config_path() -> Path:
    return Path(os.environ.get("EDGECTL_CONFIG") or DEFAULT_FLEET_CONFIG).expanduser()


def _problems(file: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        lines.append(f"{file}: {location(err['loc'])}: {describe(err, noun='key', show_input=False)}")
    return "\n".join(lines)


def load_fleet_config(path: Path | None, overrides: dict[str, Any]) -> FleetConfig:
    """The file (if it exists, or must exist when given explicitly) plus flag overrides."""
    explicit = path is not None
    path = path or default_config_path()
    data: dict[str, Any] = {}
    if path.exists() or explicit:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FleetConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FleetConfigError(f"{path}: {exc}; expected a UTF-8 TOML file") from None
        mqtt = data.get("mqtt")
        if isinstance(mqtt, dict):
            for key in ("ca_file", "cert_file", "key_file"):
                if isinstance(mqtt.get(key), str) and not Path(mqtt[key]).is_absolute():
                    mqtt[key] = str((path.parent / mqtt[key]).resolve())
    mqtt_table = dict(data.get("mqtt") or {})
    mqtt_table.update({k: v for k, v in overrides.items() if v is not None})
    if any(mqtt_table.get(k) for k in ("ca_file", "cert_file")) and "tls" not in mqtt_table:
        mqtt_table["tls"] = True
    data["mqtt"] = mqtt_table
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise FleetConfigError(_problems(str(path), exc)) from None


def fleet_client_id(config: FleetConfig) -> str:
    """A fresh id per run, so two operators (or two edgectl calls) never take over each other's
    connection."""
    base = config.mqtt.client_id or "edgectl"
    return f"{base}-{secrets.token_hex(4)}"
