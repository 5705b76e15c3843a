"""`edge-agent support-bundle`: the technician's bundle, made on the device by the CLI (the
agent may be down, or the config broken: the bundle is made anyway and says what is missing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.diagnostics.bundle import bundle_name, collect, write_tar
from edge_agent.diagnostics.bundle_sources import agent_process_secrets, device_sources, status_from_socket


def write_support_bundle(config_path: Path, state_dir: Path | None, output: Path | None) -> int:
    try:
        config = load_config(config_path)
        problem = None
    except ConfigError as exc:
        # A broken file is when a bundle is needed most: collect with the defaults (device id,
        # paths) and put the problems in check.txt.
        config, problem = parse_config(""), str(exc)
    if state_dir is not None:
        from edge_agent.config_check import apply_overrides

        try:
            config = apply_overrides(config, {"state_dir": state_dir.resolve()})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    status = status_from_socket(config)
    sources = device_sources(config, config_path, status)
    own_secrets = sources.secrets
    sources.secrets = lambda: own_secrets() + agent_process_secrets(status)
    if problem is not None:
        sources.check = lambda: f"FAIL  config valid             {problem}\n"
    name = bundle_name(config.device.id)
    data = write_tar(collect(sources), name)
    dest = output or Path(f"{name}.tar.gz")
    tmp = dest.with_name(dest.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(dest)
    print(f"wrote {dest} ({len(data)} bytes); secrets are redacted, but read it before you send it")
    return 0
