"""The support bundle: what a technician or an operator needs to diagnose a device, in one
tar.gz, with every secret redacted (diagnostics/redact.py runs over every file).

Files (each capped; what could not be collected is named in bundle.json with the reason):
  bundle.json          device, time, what is in the bundle, what is missing and why
  check.txt            `edge-agent check` (one line per check)
  status.json          `edge-agent status --json` of the running agent (or why there is none)
  status.txt           the same as text
  config.toml          the config file: comments removed, secret-named values redacted
  journal.txt          the agent's journal (newest lines)
  modules/NAME.log     each module's recent output (stdout and stderr, timestamped)
  versions.json        agent, Python, OS, kernel, podman, the main libraries
  state-db.json        state.db summary: tables and row counts, schema version (no rows, no keys)
  health.json          temperature, throttling, memory, disk, storage writes, module CPU/memory
  podman-info.json     podman info (host, storage, registries)

Collection is blocking (run it off the event loop in the agent). Pure parts (file layout, caps,
the tar) are separate from the collectors so tests can feed them anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import sqlite3
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.diagnostics.redact import Scrubber, redact_config_text

MAX_FILE_BYTES = 2 * 1024 * 1024  # one file in the bundle; the newest part is kept
JOURNAL_LINES = 5000
MODULE_LINES = 1000
MAX_MODULES = 64
LIBRARIES = ("aiomqtt", "paho-mqtt", "podman", "pydantic", "cryptography", "tpm2-pytss")


@dataclass
class BundleSources:
    """Where each part comes from. Each returns its content, or raises with the reason it is missing."""

    device: str
    config_path: Path
    check: Callable[[], str]
    status: Callable[[], dict[str, Any]]
    journal: Callable[[], str]
    module_logs: Callable[[], dict[str, str]]
    health: Callable[[], dict[str, Any]]
    podman_info: Callable[[], dict[str, Any]]
    state_db: Path
    secrets: Callable[[], list[str]]
    extra_versions: Callable[[], dict[str, Any]] = field(default=lambda: {})


def cap(data: bytes, limit: int = MAX_FILE_BYTES) -> bytes:
    """The newest `limit` bytes (logs grow at the end), starting at a line, marked as cut."""
    if len(data) <= limit:
        return data
    tail = data[-limit:]
    newline = tail.find(b"\n")
    tail = tail[newline + 1 :] if 0 <= newline < 4096 else tail
    return b"[... %d older bytes cut]\n" % (len(data) - len(tail)) + tail


def collect(sources: BundleSources) -> dict[str, bytes]:
    """Every file of the bundle, redacted and capped. Never raises for a missing part."""
    files: dict[str, bytes] = {}
    missing: dict[str, str] = {}

    def part(name: str, make: Callable[[], bytes]) -> None:
        try:
            files[name] = make()
        except Exception as exc:  # one broken part must not cost the whole bundle
            missing[name] = f"{type(exc).__name__}: {exc}"[:500]

    def as_json(value: Any) -> bytes:
        return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()

    part("check.txt", lambda: sources.check().encode())
    status: dict[str, Any] = {}

    def status_json() -> bytes:
        status.update(sources.status())
        return as_json(status)

    part("status.json", status_json)
    if status:
        from edge_shared.status_view import render_status

        part("status.txt", lambda: (render_status(status) + "\n").encode())
    part("config.toml", lambda: sources.config_path.read_text(encoding="utf-8", errors="replace").encode())
    part("journal.txt", lambda: sources.journal().encode())
    try:
        logs = sources.module_logs()
    except Exception as exc:
        logs = {}
        missing["modules/"] = f"{type(exc).__name__}: {exc}"[:500]
    for name, text in sorted(logs.items())[:MAX_MODULES]:
        files[f"modules/{name}.log"] = text.encode()
    part("versions.json", lambda: as_json(versions(sources.extra_versions)))
    part("state-db.json", lambda: as_json(state_db_summary(sources.state_db)))
    part("health.json", lambda: as_json(sources.health()))
    part("podman-info.json", lambda: as_json(sources.podman_info()))

    try:
        scrubber = Scrubber(sources.secrets())
    except Exception as exc:
        scrubber = Scrubber()
        missing["secrets"] = f"known secrets could not all be read ({type(exc).__name__}); redacted by name and shape"
    out: dict[str, bytes] = {}
    for name, data in files.items():
        if name == "config.toml":
            data = redact_config_text(data.decode("utf-8", "replace"), scrubber).encode()
        else:
            data = scrubber.data(data)
        out[name] = cap(data)
    manifest = {
        "device": sources.device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "agentVersion": __version__,
        "files": sorted(out),
        "missing": missing,
        "redaction": "known secret values, secret-named keys and PEM private keys are replaced by [REDACTED]",
    }
    out["bundle.json"] = scrubber.data(as_json(manifest))
    return out


def write_tar(files: Mapping[str, bytes], prefix: str) -> bytes:
    """A tar.gz of `files` under the folder `prefix`, owned by root, mode 0600, fixed times."""
    raw = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o600
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def bundle_name(device: str) -> str:
    return f"support-{device}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


# --------------------------------------------------------------------------- collectors


def versions(extra: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {
        "edge-agent": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        out["os"] = platform.freedesktop_os_release().get("PRETTY_NAME")
    libs = {}
    for lib in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            libs[lib] = metadata.version(lib)
    out["libraries"] = libs
    out.update(extra())
    return out


def state_db_summary(path: Path) -> dict[str, Any]:
    """Tables and their row counts, the schema version, the file size, a quick integrity check:
    no row, no key, no document is read."""
    if not path.exists():
        return {"path": str(path), "exists": False}
    summary: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        summary["userVersion"] = db.execute("PRAGMA user_version").fetchone()[0]
        summary["journalMode"] = db.execute("PRAGMA journal_mode").fetchone()[0]
        summary["quickCheck"] = db.execute("PRAGMA quick_check").fetchone()[0]
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # Table names come from sqlite_master and are quoted: not input from outside.
        summary["tables"] = {
            t: db.execute(f'SELECT count(*) FROM "{_quoted(t)}"').fetchone()[0]  # noqa: S608
            for t in tables
        }
    return summary


def _quoted(identifier: str) -> str:
    return identifier.replace('"', '""')


def journal_text(lines: int = JOURNAL_LINES) -> str:
    from edge_agent.diagnostics.log_sources import read_journal

    out = []
    for line in read_journal(lines, None, None):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(line.ts)) if line.ts else "-"
        fields = "".join(f" {k}={v}" for k, v in (("EVENT", line.event), ("MODULE", line.module)) if v)
        out.append(f"{stamp} {line.stream:<7} {line.text}{fields}")
    return "\n".join(out) + ("\n" if out else "")


def all_module_logs(url: str, device_id: str, lines: int = MODULE_LINES) -> dict[str, str]:
    from edge_agent.diagnostics.log_sources import SourceUnavailable, read_module
    from edge_agent.diagnostics.podman_probe import module_containers

    out = {}
    for module in sorted(set(module_containers(url, device_id).values()))[:MAX_MODULES]:
        try:
            got = read_module(url, device_id, module, lines, None, None)
            out[module] = "".join(
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(line.ts)) if line.ts else '-'} "
                f"{line.stream} {line.text}\n" for line in got
            )
        except SourceUnavailable as exc:
            out[module] = f"(logs unavailable: {exc})\n"
    return out
