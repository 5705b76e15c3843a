"""The bundle's pure parts (caps, the tar, the state.db summary) and `edge-agent support-bundle`
with a broken config and no agent: a bundle anyway, saying what is missing, secrets redacted."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path

from edge_agent.cli import main
from edge_agent.diagnostics.bundle import cap, state_db_summary, write_tar


def test_cap_keeps_the_newest_whole_lines() -> None:
    data = b"".join(b"line %d\n" % i for i in range(1000))
    out = cap(data, 100)
    assert out.startswith(b"[... ") and out.endswith(b"line 999\n") and len(out) < 140
    assert cap(b"small", 100) == b"small"


def test_tar_members_are_private_files_under_one_folder() -> None:
    blob = write_tar({"a.txt": b"A", "modules/m.log": b"M"}, "support-x")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        members = {m.name: (m.mode, m.isfile()) for m in tar.getmembers()}
    assert members == {"support-x/a.txt": (0o600, True), "support-x/modules/m.log": (0o600, True)}


def test_state_db_summary_counts_rows_and_reads_none(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("CREATE TABLE trust_document_keys (key_id TEXT, public_key TEXT)")
    db.execute("INSERT INTO trust_document_keys VALUES ('k1', 'SECRET-LOOKING-KEY-MATERIAL')")
    db.execute('CREATE TABLE "odd""name" (x)')
    db.commit()
    db.close()
    summary = state_db_summary(tmp_path / "state.db")
    assert summary["tables"] == {"odd\"name": 0, "trust_document_keys": 1} and summary["quickCheck"] == "ok"
    assert "SECRET-LOOKING" not in json.dumps(summary)
    assert state_db_summary(tmp_path / "none.db") == {"path": str(tmp_path / "none.db"), "exists": False}


def test_cli_bundle_with_a_broken_config_and_no_agent(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.toml"
    config.write_text('[mqtt]\npassword = "literal-password-in-file"\nport = "x"\n# note: token abc\n')
    out = tmp_path / "b.tar.gz"
    code = main(["support-bundle", "--config", str(config), "--state-dir", str(tmp_path / "state"), "-o", str(out)])
    assert code == 0 and out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out, "r:gz") as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert b"literal-password-in-file" not in b"".join(files.values())
    assert files["check.txt"].startswith(b"FAIL  config valid")
    manifest = json.loads(files["bundle.json"])
    assert "the agent did not answer" in manifest["missing"]["status.json"]
    assert "status.json" not in files and "config.toml" in files and "versions.json" in files
    if not Path("/run/podman/podman.sock").exists():  # no podman where the defaults say: named, rest collected
        assert manifest["missing"]["podman-info.json"].startswith("RuntimeError: podman at unix:///run/podman/")
        assert json.loads(files["versions.json"])["podmanUnavailable"].startswith("podman at")
    assert b"literal-password" not in files["config.toml"] and b"token abc" not in files["config.toml"]
    assert "wrote" in capsys.readouterr().out
