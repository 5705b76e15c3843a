"""edge_agent.config_check beyond the fuzzer: where a problem is blamed (--state-dir), credentials
outside the service, the log sink (journald present, absent, gone while running), and reload
always answering systemd with READY=1."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.config_check import check_config, usable_dir
from edge_agent.daemon import Agent
from edge_agent.logs import JournalHandler, journal_problem, setup_logging
from edge_agent.systemd import Notifier


def write(tmp_path: Path, extra: str = "", name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'[device]\nid = "unit"\n[mqtt]\nhost = "127.0.0.1"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[telemetry]\nruntime_dir = "{tmp_path / "run"}"\n{extra}'
    )
    return path


def test_a_state_dir_override_is_blamed_on_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(write(tmp_path), {"state_dir": Path("/proc")})
    assert str(err.value) == "--state-dir: state.dir: cannot create a file in /proc: No such file or directory"


def test_check_tries_the_directories_and_leaves_the_file_system_as_it_was(tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    (tmp_path / "run").mkdir()
    checked = check_config(write(tmp_path, '[telemetry.streams."a"]\npriority = 1\n'))
    assert checked.warnings == ()
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "c.toml", tmp_path / "run"])
    assert list((tmp_path / "run").iterdir()) == []


def test_the_state_dir_is_tried_with_the_mode_run_gives_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = os.stat

    def spy(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path).endswith("/state"):
            seen.append(result.st_mode & 0o777)
        return result

    monkeypatch.setattr(os, "stat", spy)
    check_config(write(tmp_path))
    assert 0o750 in seen


def test_usable_dir_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    sub = tmp_path / "f" / "sub"
    assert usable_dir(sub, None) == f"cannot create directory {sub}: Not a directory"


@pytest.fixture
def service_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    creds = tmp_path / "service-creds"
    monkeypatch.setattr("edge_agent.config_check.SERVICE_CREDENTIALS", creds)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return creds


def test_credential_outside_the_service_is_read_where_systemd_puts_it(
    tmp_path: Path, service_credentials: Path
) -> None:
    auth = '[[trust.registry_auth]]\nregistry = "r:5000"\nusername = "u"\npassword = "credential:reg"\n'
    path = write(tmp_path, auth)
    with pytest.raises(ConfigError, match=r"c\.toml:12: trust\.registry_auth\.0\.password: .*service is not running"):
        check_config(path)
    service_credentials.mkdir()
    (service_credentials / "reg").write_text("pw\n")
    assert check_config(path).config.trust.registry_auth[0].password == "credential:reg"
    # run (and reload) read credentials from $CREDENTIALS_DIRECTORY only: the service's environment.
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        check_config(path, for_run=True)


# --------------------------------------------------------------------------- the log sink


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_journal_problem_tells_a_listening_socket_from_none(
    tmp_path: Path, journald: tuple[Path, socket.socket]
) -> None:
    assert journal_problem(str(journald[0])) is None
    assert journal_problem(str(tmp_path / "none.sock")) == (
        f"no journald socket at {tmp_path / 'none.sock'} (No such file or directory)")


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_journal_format_without_journald_logs_to_stderr_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    warning = setup_logging("info", "journal", journal_socket=str(tmp_path / "none.sock"))
    assert warning is not None and "logging text to stderr instead" in warning
    logging.getLogger("edge_agent.test").info("kept", extra={"EVENT": "test.kept"})
    err = capsys.readouterr().err
    assert "logging text to stderr instead" in err and "EVENT=logging.journal_unavailable" in err
    assert "kept  [EVENT=test.kept]" in err and "Logging error" not in err


def test_journald_going_away_loses_no_message(
    journald: tuple[Path, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    path, sock = journald
    handler = JournalHandler(path=str(path))
    record = logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 1, "first", (), None, "f")
    handler.handle(record)
    assert b"MESSAGE=first" in sock.recv(65536)
    sock.close()
    path.unlink()  # journald restarted or gone
    handler.handle(logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 2, "second", (), None, "f"))
    handler.close()
    err = capsys.readouterr().err
    assert "second" in err and "Logging error" not in err


# --------------------------------------------------------------------------- reload


class Refuses(BaseComponent):
    name = "refuses"

    async def apply_config(self, config: AgentConfig) -> None:
        raise RuntimeError("cannot take it")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock
    sock.close()


def messages(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def agent_for(path: Path, notify_path: Path) -> Agent:
    agent = Agent(AgentConfig(), path)
    agent.notifier = Notifier(str(notify_path))
    return agent


def test_reload_refusal_names_file_line_key_and_returns_to_ready(
    tmp_path: Path, notify: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "[twin]\nx = " + "[" * 496 + "]" * 496 + "\n")
    agent = agent_for(path, tmp_path / "notify.sock")
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(agent.reload()) is False
    sent = messages(notify)
    assert sent[0].startswith("RELOADING=1") and sent[-1].startswith("READY=1\nSTATUS=config reload refused")
    assert f"config reload refused: {path}:10: twin.x: arrays/tables nested 496 deep" in caplog.text
    assert agent.reported.snapshot()["config"]["status"] == "rejected"


def test_reload_that_a_component_cannot_take_still_returns_to_ready(
    tmp_path: Path, notify: socket.socket, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    path = write(tmp_path, '[logging]\nformat = "text"\n')
    agent = agent_for(path, tmp_path / "notify.sock")
    agent.components = [Refuses()]
    assert asyncio.run(agent.reload()) is False  # the reload sets up logging: text on stderr
    sent = messages(notify)
    assert sent[0].startswith("RELOADING=1") and sent[-1].startswith("READY=1\nSTATUS=config reload failed")
    err = capsys.readouterr().err
    assert f"config reload of {path} failed: RuntimeError: cannot take it" in err
    assert "EVENT=config.reload_failed" in err
    assert agent.reported.snapshot()["config"] == {
        "status": "failed", "description": f"{path}: RuntimeError: cannot take it"}
    assert agent.config == AgentConfig()  # the running config stays
