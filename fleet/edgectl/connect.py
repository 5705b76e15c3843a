"""Broker options shared by every edgectl command, and the fleet MQTT client built from them
(~/.config/edgectl/config.toml, overridden by flags)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from edgectl.client import FleetClient


def broker_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("broker")
    g.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="edgectl config file")
    g.add_argument("--broker", default=argparse.SUPPRESS, help="broker host name or address")
    g.add_argument("--port", type=int, default=argparse.SUPPRESS, help="broker port")
    g.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help="another broker to try when the first does not answer (repeatable; like [mqtt] endpoints)",
    )
    g.add_argument("--prefix", default=argparse.SUPPRESS, help="topic prefix (default edge)")
    # --tls-*: plain --key means a signing key everywhere in edgectl (as in cosign).
    g.add_argument("--tls-ca", type=Path, default=argparse.SUPPRESS, help="CA certificate (PEM); turns TLS on")
    g.add_argument("--tls-cert", type=Path, default=argparse.SUPPRESS, help="client certificate (PEM), mutual TLS")
    g.add_argument("--tls-key", type=Path, default=argparse.SUPPRESS, help="private key for --tls-cert")
    g.add_argument("--username", default=argparse.SUPPRESS, help="broker user name")
    g.add_argument(
        "--password", default=argparse.SUPPRESS, help="secret reference: file:/path, env:NAME (never the password)"
    )
    return common


def fleet_client(args: argparse.Namespace) -> FleetClient:
    from edge_shared.mqtt_params import broker_params
    from edgectl.config import FleetConfigError, fleet_client_id, load_fleet_config

    overrides = {
        "host": getattr(args, "broker", None),
        "port": getattr(args, "port", None),
        "endpoints": getattr(args, "endpoints", None),
        "topic_prefix": getattr(args, "prefix", None),
        "ca_file": getattr(args, "tls_ca", None),
        "cert_file": getattr(args, "tls_cert", None),
        "key_file": getattr(args, "tls_key", None),
        "username": getattr(args, "username", None),
        "password": getattr(args, "password", None),
    }
    try:
        config = load_fleet_config(getattr(args, "config", None), overrides)
        # Always a fresh client id, even when the file names one: two edgectl runs with the
        # same id would disconnect each other.
        params = dataclasses.replace(broker_params(config.mqtt, ""), client_id=fleet_client_id(config))
    except FleetConfigError as exc:
        raise SystemExit(f"edgectl: {exc}") from None
    except (OSError, KeyError) as exc:
        raise SystemExit(f"edgectl: cannot load broker credentials: {exc}") from None
    return FleetClient(params, config.mqtt.topic_prefix)
