"""`edge-agent config check` answers for `run`: everything `run` does with the config file short of
touching the network, so that a file that passes starts.

After the file parses (edge_agent.config: types, bounds, names), the values are used the way
`run` uses them:

- state.dir and telemetry.runtime_dir are created as `run` creates them, and a file and a Unix
  socket are made in each (all removed again): /proc, /sys/kernel, a dangling symlink, a symlink loop,
  a regular file, a read-only file system all fail here, not at start (what is in state.db is
  state, not config: `edge-agent check` reads its schema version);
- every secret (file:, credential:, env:) is read, and must not be empty;
- the broker TLS context is built from ca_file/cert_file/key_file, the registry CA file loaded;
- the log sink is opened: logging.format = "journal" without journald is a warning (the agent
  then logs text to stderr), not a refusal.

One function (`check_config`) serves `config check`, `edge-agent check`, `run` (before anything
starts) and reload (SIGHUP), so they refuse the same files with the same FILE:LINE: KEY: lines.
Checking leaves the file system as it found it: folders it creates to try them are removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.config import (
    REQUIRED_KEYS,
    AgentConfig,
    ConfigError,
    ConfigProblem,
    StateSection,
    key_line,
    parse_config,
    read_config_text,
    toml_locate,
    value_problems,
)
from edge_shared.mqtt_config import SecretRef

STATE_DIR_MODE = 0o750  # as edge_agent.store.open_state_db creates it
# Where systemd puts the credentials of the running service (LoadCredential=): `config check` in a
# technician's shell has no $CREDENTIALS_DIRECTORY, so it reads a credential:NAME from there.
SERVICE_CREDENTIALS = Path("/run/credentials/edge-agent.service")


@dataclass(frozen=True)
class CheckedConfig:
    """A config `run` can start with, and what it will warn about (each a FILE:LINE: KEY: line)."""

    config: AgentConfig
    warnings: tuple[ConfigProblem, ...] = ()


def check_config(
    path: Path, overrides: Mapping[str, Any] | None = None, *, for_run: bool = False
) -> CheckedConfig:
    """Read, parse and prepare `path` as `run` would. Raises ConfigError, one line per problem.
    `for_run`: the caller is `run` or a reload, whose environment is the service's (a credential
    is read from $CREDENTIALS_DIRECTORY only); otherwise, outside the service, from
    SERVICE_CREDENTIALS when $CREDENTIALS_DIRECTORY is not set."""
    text = read_config_text(path)
    shown = str(path)
    config = parse_config(text, shown, base_dir=path.parent, require=REQUIRED_KEYS)
    config = apply_overrides(config, dict(overrides or {}))
    where = Locations(shown, toml_locate(text), overrides or {})
    errors, warnings = preflight(config, where, for_run=for_run)
    if errors:
        raise ConfigError(errors)
    return CheckedConfig(config, tuple(warnings))


def apply_overrides(config: AgentConfig, overrides: dict[str, Any]) -> AgentConfig:
    """Command-line overrides (e.g. --state-dir) win over the file, also after a reload. They obey
    the file's rules (a ConfigError naming the option otherwise)."""
    if "state_dir" in overrides:
        config = config.model_copy(update={"state": override_state_dir(config, Path(overrides["state_dir"]))})
    return config


def override_state_dir(config: AgentConfig, state_dir: Path) -> StateSection:
    problems = value_problems("--state-dir", {}, {"state": {"dir": str(state_dir)}})
    if not problems:
        try:
            return StateSection.model_validate({**config.state.model_dump(), "dir": state_dir})
        except ValidationError as exc:
            problems = [ConfigProblem("--state-dir", None, "state.dir", str(e["msg"])) for e in exc.errors()]
    raise ConfigError(problems)


@dataclass(frozen=True)
class Locations:
    """Where a key is written: FILE:LINE, or the command-line option that overrode it."""

    file: str
    lines: Mapping[str, int]
    overrides: Mapping[str, Any]

    def problem(self, key: str, message: str) -> ConfigProblem:
        if key == "state.dir" and "state_dir" in self.overrides:
            return ConfigProblem("--state-dir", None, key, message)
        return ConfigProblem(self.file, key_line(self.lines, key), key, message)


def preflight(
    config: AgentConfig, where: Locations, *, for_run: bool = True
) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """(errors, warnings) from using the config's values as `run` does, network aside."""
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    state_problem = usable_dir(config.state.dir, STATE_DIR_MODE)
    if state_problem is not None:
        errors.append(where.problem("state.dir", state_problem))
    if config.telemetry.enabled:
        runtime_problem = usable_dir(config.telemetry.runtime_dir, None)
        if runtime_problem is not None:
            errors.append(where.problem("telemetry.runtime_dir", runtime_problem))
    for key, ref in _secrets(config):
        secret_problem = _secret_problem(ref, for_run)
        if secret_problem is not None:
            errors.append(where.problem(key, secret_problem))
    errors.extend(_tls_problems(config, where))
    journal = _log_sink_problem(config)
    if journal is not None:
        warnings.append(where.problem("logging.format", journal))
    return sorted(errors, key=lambda p: p.line or 0), warnings


# --------------------------------------------------------------------------- directories


def usable_dir(path: Path, mode: int | None) -> str | None:
    """Why `run` could not use `path` as its directory (None when it can): it is created (with
    its parents, as `run` does), a file and a Unix socket are made in it and removed, and the
    folders this check created are removed again: checking changes nothing."""
    created = _missing_parts(path)
    try:
        return _try_dir(path, mode)
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def _missing_parts(path: Path) -> list[Path]:
    out = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        out.append(folder)
    return out


def _try_dir(path: Path, mode: int | None) -> str | None:
    try:
        if mode is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        return _not_a_dir(path)
    except OSError as exc:
        return f"cannot create directory {path}: {_strerror(exc)}"
    if not path.is_dir():
        return _not_a_dir(path)
    try:
        fd, name = tempfile.mkstemp(dir=path, prefix=".config-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot create a file in {path}: {_strerror(exc)}"
    return _socket_problem(path)


def _not_a_dir(path: Path) -> str:
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{path} is a symlink loop; expected a directory"
            return f"{path} is a symlink to {os.readlink(path)}, which does not exist; expected a directory"
        return f"{path} is a symlink to {os.readlink(path)}, which is not a directory; expected a directory"
    return f"{path} exists and is not a directory; expected a directory"


def _socket_problem(path: Path) -> str | None:
    # The control socket (state.dir) and the ingest sockets (runtime_dir) are Unix sockets: some
    # file systems (FUSE, 9p, vfat) refuse them. Short name: the path limit is checked on parse.
    probe = path / f".cc{os.getpid() % 100000}"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(str(probe))
        except OSError as exc:
            return f"cannot create a Unix socket in {path}: {_strerror(exc)}"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    return None


def _strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text + ("" if os.geteuid() == 0 else f" (checked as uid {os.geteuid()}: run as the agent's user)")


# --------------------------------------------------------------------------- secrets and TLS


def _secrets(config: AgentConfig) -> Iterator[tuple[str, SecretRef]]:
    if config.mqtt.password is not None:
        yield "mqtt.password", config.mqtt.password
    if config.mqtt.key_password is not None:
        yield "mqtt.key_password", config.mqtt.key_password
    for index, auth in enumerate(config.trust.registry_auth):
        yield f"trust.registry_auth.{index}.password", auth.password


def _secret_problem(ref: SecretRef, for_run: bool = True) -> str | None:
    """Why the secret cannot be read (never the secret itself)."""
    try:
        if ref.scheme == "credential" and not for_run and not os.environ.get("CREDENTIALS_DIRECTORY"):
            if not SERVICE_CREDENTIALS.is_dir():
                return (f"secret {ref}: CREDENTIALS_DIRECTORY is not set here and {SERVICE_CREDENTIALS} does "
                        "not exist (the service is not running); LoadCredential= in the unit provides it")
            value = (SERVICE_CREDENTIALS / ref.target).read_text(encoding="utf-8").rstrip("\r\n")
        else:
            value = ref.resolve()
    except KeyError as exc:
        return str(exc.args[0]) if exc.args else f"secret {ref} is not set"
    except UnicodeDecodeError:
        return f"secret {ref} is not UTF-8 text"
    except OSError as exc:
        return f"cannot read secret {ref}: {exc.strerror or exc}"
    if not value:
        return f"secret {ref} is empty"
    return None


def _tls_problems(config: AgentConfig, where: Locations) -> list[ConfigProblem]:
    from edge_shared.mqtt_params import TlsFileError, tls_context

    out: list[ConfigProblem] = []
    try:
        tls_context(config.mqtt)
    except TlsFileError as exc:
        if exc.key != "key_password" or config.mqtt.key_password is None or _secret_problem(
            config.mqtt.key_password
        ) is None:  # an unreadable key_password is already reported as a secret
            out.append(where.problem(f"mqtt.{exc.key}", exc.detail))
    if config.trust.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.trust.ca_file))
        except (OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
            out.append(where.problem("trust.ca_file", f"{config.trust.ca_file}: not a usable PEM CA file ({reason})"))
    return out


# --------------------------------------------------------------------------- log sink


def _log_sink_problem(config: AgentConfig) -> str | None:
    from edge_agent.logs import journal_problem, under_journald

    fmt = config.logging.format
    if fmt == "journal" or (fmt == "auto" and under_journald()):
        problem = journal_problem()
        if problem is not None:
            return f"{problem}: the agent logs text to stderr instead"
    return None
