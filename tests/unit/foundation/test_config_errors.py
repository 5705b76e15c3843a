"""Broken config files: every problem is one line naming file, line, key, value and expectation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, ConfigError, load_config, parse_config, toml_locate
from edge_shared.mqtt_config import SecretRef

from .identity import with_identity

REPO = Path(__file__).resolve().parents[3]

# (name, file text, expected line, expected key, fragments the message must contain)
BROKEN: list[tuple[str, str, int | None, str, list[str]]] = [
    ("wrong type", '[mqtt]\nport = "eighty"\n', 2, "mqtt.port", ["got 'eighty'", "expected TCP port", "1-65535"]),
    ("out-of-range port", "[mqtt]\nhost = 'b'\nport = 70000\n", 3, "mqtt.port", ["got 70000", "1-65535"]),
    ("zero port", "[mqtt]\nport = 0\n", 2, "mqtt.port", ["got 0", "1-65535"]),
    ("typo in key", "[mqtt]\nprot = 1883\n", 2, "mqtt.prot", ["unknown key", "did you mean mqtt.port?"]),
    ("unknown key no match", "[mqtt]\nzzzzzz = 1\n", 2, "mqtt.zzzzzz", ["unknown key"]),
    ("typo in section", "[mqt]\nport = 1883\n", 1, "mqt", ["unknown key", "did you mean mqtt?"]),
    ("bad enum", '[logging]\nlevel = "verbose"\n', 2, "logging.level",
     ["got 'verbose'", "one of debug, info, warning, error"]),
    ("bool as string", '[mqtt]\ntls = "yes please"\n', 2, "mqtt.tls", ["got 'yes please'", "true or false"]),
    ("bad device id", '[device]\nid = "has space"\n', 2, "device.id", ["got 'has space'", "device id"]),
    ("missing CA file", '[mqtt]\ntls = true\nca_file = "/nonexistent/ca.crt"\n', 3, "mqtt.ca_file",
     ["/nonexistent/ca.crt does not exist", "expected an existing PEM file"]),
    ("state dir is a file", '[state]\ndir = "/etc/hostname"\n', 2, "state.dir",
     ["is not a directory", "expected a directory path"]),
    ("literal secret", '[mqtt]\npassword = "hunter2"\n', 2, "mqtt.password",
     ["secrets are not written in the config", "file:/path"]),
    ("negative keepalive", "[mqtt]\nkeepalive_s = -5\n", 2, "mqtt.keepalive_s", ["got -5", "5-3600"]),
    ("section is a value", 'mqtt = "localhost"\n', 1, "mqtt", ["got 'localhost'"]),
    ("bad topic prefix", '[mqtt]\ntopic_prefix = "a/+/b"\n', 2, "mqtt.topic_prefix", ["got 'a/+/b'", "topic prefix"]),
    ("bad podman url", '[podman]\nsocket = "/run/podman.sock"\n', 2, "podman.socket", ["podman API URL"]),
]


@pytest.mark.parametrize(("name", "text", "line", "key", "fragments"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_gives_one_line_with_file_line_key_and_expectation(
    tmp_path: Path, name: str, text: str, line: int | None, key: str, fragments: list[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(with_identity(text))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert len(problems) == 1, str(err.value)
    problem = problems[0]
    rendered = str(problem)
    assert "\n" not in rendered
    assert problem.file == str(path)
    assert problem.line == line, rendered
    assert problem.key == key, rendered
    assert rendered.startswith(f"{path}:{line}: {key}: "), rendered
    for fragment in fragments:
        assert fragment in rendered, rendered


def test_secret_value_is_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(with_identity('[mqtt]\npassword = "hunter2"\nkey_password = "s3cr3t:x"\n'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "hunter2" not in str(err.value)
    assert "s3cr3t" not in str(err.value)
    assert len(err.value.problems) == 2


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\nhost = "a"\nport = = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}:3: mqtt.port: TOML syntax error at column "), text
    assert "expected valid TOML" in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config: file not found"):
        load_config(tmp_path / "nope.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_unreadable_file_real_cli(tmp_path: Path) -> None:
    """The real CLI on a mode-000 file. As root, drop the capabilities that bypass file modes,
    so the read really fails the way it does for the agent's own user."""
    path = tmp_path / "c.toml"
    path.write_text("")
    path.chmod(0)
    argv = [sys.executable, "-m", "edge_agent.cli", "config", "check", str(path)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"{path}: cannot read config: permission denied"


def test_unreadable_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root in CI, where chmod 000 does not stop reads; make the read fail like it would.
    path = tmp_path / "c.toml"
    path.write_text("")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: cannot read config: permission denied"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'[mqtt]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"c\.toml:2: mqtt\.host: byte e9 is not valid UTF-8"):
        load_config(path)


def test_several_problems_are_all_reported_in_file_order_of_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(with_identity("[mqtt]\nport = 0\nprot = 1\nhost = 'b'\n[logging]\nlevel = 'x'\n"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = {p.line for p in err.value.problems}
    assert lines == {2, 3, 6}


def test_annotated_default_config_is_valid_and_matches_model_defaults() -> None:
    config = load_config(REPO / "config" / "config.toml")
    defaults = AgentConfig()
    # The annotated file documents the defaults; it must not silently change them.
    assert config.model_dump(exclude={"device"}) == defaults.model_dump(exclude={"device"})


def test_every_config_field_has_a_description_for_errors() -> None:
    for section_name, section in AgentConfig.model_fields.items():
        model = section.annotation
        assert isinstance(model, type)
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{section_name}.{name} has no description"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    path = tmp_path / "c.toml"
    path.write_text(with_identity('[state]\ndir = "state"\n[mqtt]\ntls = true\nca_file = "ca.crt"\n'))
    config = load_config(path)
    assert config.state.dir == tmp_path / "state"
    assert config.mqtt.ca_file == tmp_path / "ca.crt"


def test_secret_refs_resolve_and_hide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("correct horse\n")
    cred_dir = tmp_path / "creds"
    cred_dir.mkdir()
    (cred_dir / "mqtt").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred_dir))
    monkeypatch.setenv("EDGE_PW", "from-env")
    for ref, value in ((f"file:{secret_file}", "correct horse"), ("credential:mqtt", "from-credential"),
                       ("env:EDGE_PW", "from-env")):
        config = parse_config(f'[mqtt]\npassword = "{ref}"\n')
        assert config.mqtt.password is not None
        assert config.mqtt.password.resolve() == value
        assert value not in repr(config)
    assert isinstance(parse_config('[mqtt]\npassword = "env:X"\n').mqtt.password, SecretRef)


def test_locator_handles_arrays_of_tables_dotted_and_quoted_keys() -> None:
    text = '[a]\nx = 1\n"q k".y = 2\n[[b]]\nz = 1\n[[b]]\nz = 2\n[b.c]\nw = 3\ns = """\nk = 9\n"""\n'
    where = toml_locate(text)
    assert where["a.x"] == 2
    assert where["a.q k.y"] == 3
    assert where["b.0.z"] == 5
    assert where["b.1.z"] == 7
    assert where["b.1.c.w"] == 9
    assert "b.1.c.k" not in where  # inside a multi-line string
