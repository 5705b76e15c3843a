"""Hostile config files, the way a field technician (or a failing SD card, or a config management
tool) makes them. Each gives exactly one line naming FILE:LINE and the KEY (errors about the file
itself, which has no line or key, name the file and the reason), and loses nothing: the file is
left as it was."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config

GOOD = '[device]\nid = "rover-01"\n[mqtt]\nhost = "broker.example"\n'
NUL = "\\u0000"  # a NUL escaped in a TOML string: valid TOML, a NUL in the value


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]  # writes the file(s) under a folder, returns the config path
    line: int | None  # None: a problem with the file itself (no line, no key)
    key: str
    fragment: str


def text(content: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "config.toml"
        path.write_text(content)
        return path

    return make


def raw(content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "config.toml"
        path.write_bytes(content)
        return path

    return make


def nul_in(table: str, key: str, array: bool = False, extra: str = "") -> Case:
    value = f'["/srv/a{NUL}b"]' if array else f'"/srv/a{NUL}b"'
    header = "" if table == "mqtt" else f"[{table}]\n"  # GOOD ends in the [mqtt] table
    content = GOOD + f"{header}{extra}{key} = {value}\n"
    line = content.count("\n")
    full = f"{table}.{key}" + (".0" if array else "")
    return Case(f"NUL in {table}.{key}", text(content), line, full, "contains the control character '\\x00'")


def directory(folder: Path) -> Path:
    (folder / "config.toml").mkdir()
    return folder / "config.toml"


def symlink_loop(folder: Path) -> Path:
    (folder / "a.toml").symlink_to(folder / "b.toml")
    (folder / "b.toml").symlink_to(folder / "a.toml")
    return folder / "a.toml"


def dangling_symlink(folder: Path) -> Path:
    (folder / "config.toml").symlink_to(folder / "releases" / "gone.toml")
    return folder / "config.toml"


def swapped_symlink(folder: Path) -> Path:
    """A good release is live and loads; then the link is swapped atomically to a broken release:
    the next load reads the new file (it is not resolved once and cached)."""
    releases = folder / "releases"
    releases.mkdir()
    (releases / "v1.toml").write_text(GOOD)
    (releases / "v2.toml").write_text(GOOD + "[mqtt.extra]\n")
    link = folder / "config.toml"
    link.symlink_to(releases / "v1.toml")
    assert load_config(link).device.id == "rover-01"
    new = folder / "config.toml.new"
    new.symlink_to(releases / "v2.toml")
    new.replace(link)
    return link


CASES: list[Case] = [
    Case("empty file", text(""), 1, "device.id", "the file has no settings (empty or truncated?)"),
    Case("comments only", text("# edited on site\n\n# nothing else\n"), 3, "device.id",
         "expected at least device.id and mqtt.host"),
    Case("truncated after the device table", text('[device]\nid = "rover-01"\n'), 2, "mqtt.host",
         "required key is missing (the device's identity must be written in the file)"),
    Case("truncated inside a string", text('[device]\nid = "rover-01"\n[mqtt]\nhost = "bro'), 4, "mqtt.host",
         "TOML syntax error"),
    Case("truncated inside a list", text(GOOD + '[telemetry]\nmodules = ["pilot",\n'), 6, "telemetry.modules",
         "TOML syntax error at the end of the file (truncated?)"),
    Case("truncated table header", text(GOOD + "[telem"), 5, "telem", "TOML syntax error"),
    nul_in("state", "dir"),
    nul_in("telemetry", "runtime_dir"),
    nul_in("mqtt", "ca_file", extra="tls = true\n"),
    nul_in("mqtt", "cert_file"),
    nul_in("mqtt", "key_file"),
    nul_in("attestation", "ima_log"),
    nul_in("attestation", "boot_log"),
    nul_in("trust", "ca_file"),
    nul_in("trust", "document_keys", array=True),
    nul_in("deployment", "allowed_mount_roots", array=True),
    Case("NUL in a trust policy key path", text(GOOD + f'[[trust.policy]]\nscope = "*"\nkeys = ["/k{NUL}.pub"]\n'),
         7, "trust.policy.0.keys.0", "control character"),
    Case("raw NUL byte in the file", raw(GOOD.encode() + b'[state]\ndir = "/var/\x00lib"\n'), 6, "state.dir",
         "TOML syntax error"),
    Case("newline in a user name", text(GOOD.replace("[mqtt]\n", '[mqtt]\nusername = "a\\nb"\n')), 4,
         "mqtt.username", "contains the control character '\\n'"),
    Case("70,000-character topic prefix", text(GOOD + "topic_prefix = \"" + "a" * 70_000 + "\"\n"), 5,
         "mqtt.topic_prefix", "got a string of 70000 characters; expected at most 4096"),
    Case("200-character topic prefix", text(GOOD + "topic_prefix = \"" + "a" * 200 + "\"\n"), 5,
         "mqtt.topic_prefix", "at most 128 characters"),
    Case("oversized host", text(GOOD.replace('"broker.example"', '"' + "b" * 300 + '"')), 4, "mqtt.host",
         "at most 253 characters"),
    Case("host that is no host name", text(GOOD.replace('"broker.example"', '"broker example!"')), 4, "mqtt.host",
         "not a host name"),
    Case("path component over NAME_MAX", text(GOOD + '[state]\ndir = "/' + "x" * 300 + '"\n'), 6, "state.dir",
         "(NAME_MAX)"),
    Case("state dir too long for its control socket", text(GOOD + '[state]\ndir = "/' + "d/" * 50 + '"\n'), 6,
         "state.dir", "longer than the 107 bytes a Unix socket path may have"),
    Case("runtime dir too long for module sockets", text(GOOD + '[telemetry]\nruntime_dir = "/' + "r/" * 40 + '"\n'),
         6, "telemetry.runtime_dir", "Unix socket path"),
    Case("listed module whose socket does not fit",
         text(GOOD + '[telemetry]\nruntime_dir = "/run/' + "e" * 30 + '"\nmodules = ["' + "m" * 60 + '"]\n'),
         7, "telemetry.modules", "Unix socket path"),
    Case("oversized list", text(GOOD + "[telemetry]\nmodules = [" + ", ".join(f'"m{i}"' for i in range(300)) + "]\n"),
         6, "telemetry.modules", "got a list of 300 items; expected at most 256"),
    Case("oversized table", text(GOOD + "".join(f'[telemetry.streams."s{i}"]\npriority = 1\n' for i in range(300))),
         5, "telemetry.streams", "got a table of 300 entries; expected at most 256"),
    Case("wrong type: string port", text(GOOD + 'port = "eighty"\n'), 5, "mqtt.port", "got 'eighty'"),
    Case("wrong type: number id", text(GOOD.replace('id = "rover-01"', "id = 5")), 2, "device.id", "got 5"),
    Case("wrong type: string for a list", text(GOOD + '[telemetry]\nmodules = "pilot"\n'), 6, "telemetry.modules",
         "got 'pilot'"),
    Case("wrong type: table for a string", text(GOOD + "[logging.level]\nx = 1\n"), 5, "logging.level",
         "got {'x': 1}"),
    Case("duplicate key", text(GOOD + "port = 1883\nport = 1884\n"), 6, "mqtt.port", "Cannot overwrite a value"),
    Case("duplicate table", text(GOOD + '[mqtt]\nport = 1\n'), 5, "mqtt", "Cannot declare"),
    Case("non-UTF-8 inside a key", raw(GOOD.encode() + b"po\xffrt = 1883\n"), 5, "mqtt.po\\xffrt",
         "byte ff is not valid UTF-8"),
    Case("non-UTF-8 inside a value", raw(GOOD.encode().replace(b"broker.example", b"br\xc3\x28ker")), 4, "mqtt.host",
         "byte c3 is not valid UTF-8"),
    Case("podman URL without a port", text(GOOD + '[podman]\nsocket = "tcp://podman-host"\n'), 6, "podman.socket",
         "expected tcp://HOST:PORT"),
    Case("podman socket path too long", text(GOOD + '[podman]\nsocket = "unix:///' + "p" * 200 + '.sock"\n'), 6,
         "podman.socket", "AF_UNIX limit"),
    Case("unknown key", text(GOOD + "prot = 1883\n"), 5, "mqtt.prot", "did you mean mqtt.port?"),
    Case("a directory", directory, None, "", "cannot read config: is a directory"),
    Case("a symlink loop", symlink_loop, None, "", "cannot read config: Too many levels of symbolic links"),
    Case("a dangling symlink", dangling_symlink, None, "", "cannot read config: file not found"),
    Case("a symlink swapped between reloads to a broken file", swapped_symlink, 5, "mqtt.extra", "unknown key"),
]


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path)] = path.read_bytes()
        else:
            out[str(path)] = "dir"
    return out


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_gives_one_line_with_file_line_and_key(tmp_path: Path, case: Case) -> None:
    path = case.make(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert len(problems) == 1, str(err.value)
    shown = str(problems[0])
    assert "\n" not in shown and len(shown) < 500, shown
    if case.line is None:
        assert shown.startswith(f"{path}: "), shown
    else:
        assert (problems[0].line, problems[0].key) == (case.line, case.key), shown
        assert shown.startswith(f"{path}:{case.line}: {case.key}: "), shown
    assert case.fragment in shown, shown
    assert _snapshot(tmp_path) == before, "loading a config must not change anything"
