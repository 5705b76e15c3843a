"""`edgectl rollout` refusals (before any network) and its SQLite state file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgectl import rollout_policy as rp
from edgectl.cli import main
from edgectl.rollout_cmd import render_status
from edgectl.rollout_store import Previous, RolloutMeta, RolloutStore, StoreError, owner_id


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"modules": {"app": {"image": "registry.local/app:1"}}}))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batches", "0"], "a stage must add at least one device"),
        (["--batches", "150%"], "a percentage is at most 100%"),
        (["--batches", "50%,10%"], "cannot shrink"),
        (["--selector", "site==x"], "--selector: selector requirement 'site==x'"),
        (["--selector", "bad key=x"], "--selector: selector requirement"),
        (["--success-threshold", "0%"], "--success-threshold '0%'"),
        (["--success-threshold", "120"], "--success-threshold '120'"),
        (["--max-parallel", "0"], "--max-parallel 0: expected 1 or more"),
        (["--timeout", "0"], "--timeout 0: expected more than 0 seconds"),
        (["--expires-in", "soon"], "--expires-in 'soon'"),
    ],
)
def test_malformed_flags_exit_2_before_any_network(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, manifest: Path, extra: list[str], message: str
) -> None:
    args = {"--selector": "site=turin", "--key": str(tmp_path / "k.key")}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    flat = [x for kv in args.items() for x in kv]
    code, _, err = run(capsys, "rollout", str(manifest), *flat, "--state", str(tmp_path / "s.db"),
                       "--port", "1")  # nothing listens there: a network attempt would fail differently
    assert code == 2, err
    assert message in err


def test_missing_selector_key_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path, manifest: Path) -> None:
    state = ["--state", str(tmp_path / "s.db")]
    assert "--selector is required" in run(capsys, "rollout", str(manifest), "--key", "k", *state)[2]
    assert "--key is required" in run(capsys, "rollout", str(manifest), "--selector", "a=b", *state)[2]
    code, _, err = run(capsys, "rollout", "--selector", "a=b", "--key", "k", *state)
    assert code == 2 and "give one MANIFEST" in err
    code, _, err = run(capsys, "rollout", str(tmp_path / "absent.json"), "--selector", "a=b", "--key", "k", *state)
    assert code == 2 and "absent.json: cannot read" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"modules": []}')
    code, _, err = run(capsys, "rollout", str(bad), "--selector", "a=b", "--key", "k", *state)
    assert code == 2 and "modules: expected a table" in err


def test_unknown_rollout_id_and_resume_misuse(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = ["--state", str(tmp_path / "s.db")]
    code, out, _ = run(capsys, "rollout", "status", *state)
    assert code == 0 and "no rollouts in" in out
    code, _, err = run(capsys, "rollout", "status", "nope", *state)
    assert code == 1 and "no rollout 'nope'" in err and "(there are none)" in err
    code, _, err = run(capsys, "rollout", "--resume", "nope", *state, "--port", "1")
    assert code == 1 and "no rollout 'nope'" in err
    code, _, err = run(capsys, "rollout", "--resume", "x", "--batches", "1", *state)
    assert code == 2 and "--batches: a resumed rollout keeps the settings it started with" in err
    code, _, err = run(capsys, "rollout", "--resume", "x", "m.json", *state)
    assert code == 2 and "give no MANIFEST" in err
    code, _, err = run(capsys, "rollout", "status", "a", "b", *state)
    assert code == 2


def make(store: RolloutStore, rid: str = "r1") -> rp.Rollout:
    r = rp.new_rollout(rid, [["a"], ["b", "c"]], rp.Policy(timeout_s=60, max_parallel=2))
    store.create(r, RolloutMeta(1000.0, 1000.0, "edge", "site=turin", "1,100%", "m.json",
                                {"modules": {}}, None, "/keys/fleet.key", "30d"))
    return r


def test_store_round_trip_and_payloads(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "deep" / "s.db")
    r = make(store)
    loaded, meta = store.load("r1")
    assert loaded == r and meta.selector == "site=turin" and meta.key_path == "/keys/fleet.key"
    a = rp.mark_publishing(r.record("a"), 5, "abc", 4, 1001)
    r = rp.with_records(r, [a])
    store.save(r, [a], payloads={"a": b"signed"}, previous={"a": Previous({"deployment": {"modules": {}}}, "v4")},
               events=["a: publishing"], now=1001)
    store.close()
    store = RolloutStore(tmp_path / "deep" / "s.db")  # as after a SIGKILL: only what was committed
    loaded, meta = store.load("r1")
    assert loaded.record("a") == a and meta.updated == 1001
    assert store.payload("r1", "a") == b"signed" and store.payload("r1", "a", revert=True) is None
    assert store.previous("r1", "a") == Previous({"deployment": {"modules": {}}}, "v4")
    assert store.previous("r1", "b") is None  # nothing made for it yet
    assert store.events("r1") == [(1001.0, "a: publishing")]
    assert [row[0] for row in store.list()] == ["r1"] and store.latest() == "r1"


def test_store_claim_lease(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "s.db")
    make(store)
    store.claim("r1", owner_id(), 2000)
    # another live process on this host that updated it just now holds it
    other = f"{owner_id().rpartition(':')[0]}:{os.getppid()}"
    with pytest.raises(StoreError, match="being run by another edgectl"):
        store.claim("r1", other, 2001)
    store.claim("r1", other, 2000 + 60)  # lease expired: taken over
    # a dead owner never holds it
    dead = f"{owner_id().rpartition(':')[0]}:999999999"
    store.release("r1")
    store.claim("r1", dead, 3000)
    store.claim("r1", owner_id(), 3001)
    with pytest.raises(StoreError, match="no rollout 'zz'"):
        store.claim("zz", owner_id(), 1)


def test_render_status_explains(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "s.db")
    r = make(store)
    a = rp.observe(rp.mark_published(rp.mark_publishing(r.record("a"), 5, "h", 4, 1), 1), "reached", "good", 2,
                   r.policy)
    r = rp.pass_batch(rp.with_records(r, [a]))
    b = rp.observe(rp.mark_published(rp.mark_publishing(r.record("b"), 5, "h", 4, 3), 3), "failed",
                   "rolled_back: module_failed: module app: exited with code 3; version 4 runs again", 4, r.policy)
    r = rp.with_records(r, [b])
    r = rp.fail_batch(r, rp.gate(r.in_batch(1), r.policy), 5)
    b = rp.observe(rp.mark_published(rp.mark_reverting(r.record("b"), 6, "g", 6), 6), "reached", "good", 7, r.policy)
    r = rp.halt(rp.with_records(r, [b]))
    store.save(r, [a, b, r.record("c")], now=8)
    text = render_status(store, "r1", now=9)
    assert text.splitlines()[0] == "rollout r1: HALTED at batch 2 of 2"
    assert "batch 2 of 2 failed its gate: 0/2 good, 1 failed, 1 pending" in text
    assert "1 of 1 devices of batch 2 returned to their previous deployment" in text
    assert ("b  reverted          version 6 (the deployment of version 4) good  [in the rollout: version 5 "
            "rolled_back: module_failed: module app: exited with code 3; version 4 runs again]") in text
    assert "c  skipped           not published: its batch failed first" in text
    assert "batch 1 (1 device): passed: 1 reached" in text


def test_unreadable_signing_key_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECTL_KEY_PASSWORD", "x")
    missing = tmp_path / "absent.key"
    for argv in (["rollout", str(manifest), "--selector", "a=b", "--key", str(missing),
                  "--state", str(tmp_path / "s.db")],
                 ["deploy", "d1", str(manifest), "--key", str(missing)]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--port", "1"])
        assert str(info.value) == f"edgectl: --key {missing}: cannot read private key: No such file or directory"
