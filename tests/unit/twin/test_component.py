"""TwinComponent without a broker: decide, persist, hand over, report; offline boot."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, parse_config
from edge_agent.reported import ReportedState
from edge_agent.store import open_state_db
from edge_agent.twin.component import TwinComponent
from edge_agent.twin.events import DesiredRejected, DesiredState
from edge_agent.twin.store import DesiredStore


def doc(version: int, **extra: Any) -> bytes:
    return json.dumps(
        {"schema": 1, "version": version, "deployment": {"modules": {"m": {"image": "i"}}}, **extra}
    ).encode()


class Deployment:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.seen: list[DesiredState] = []
        self.stored_at_handover: list[int | None] = []

    async def desired(self, state: DesiredState) -> None:
        stored = DesiredStore(self.db).load()
        self.stored_at_handover.append(stored.version if stored else None)
        self.seen.append(state)


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return parse_config(f'[device]\nid = "unit-dev"\n[state]\ndir = "{tmp_path / "state"}"\n')


def make(config: AgentConfig, **kwargs: Any) -> tuple[TwinComponent, Deployment, ReportedState]:
    db = open_state_db(config.state.dir)
    deployment = Deployment(db)
    reported = ReportedState()
    return TwinComponent(config, db, reported, deployment.desired, **kwargs), deployment, reported


async def test_accept_persists_before_handover_and_reports(config: AgentConfig) -> None:
    twin, deployment, reported = make(config)
    await twin.start()
    assert deployment.seen == []
    assert reported.get("desired")["lastDesiredStatus"]["code"] == "none"

    await twin.handle_desired(doc(4, properties={"m": {"speed": 2}}))
    assert [s.version for s in deployment.seen] == [4]
    assert deployment.stored_at_handover == [4]  # persisted before the deployment layer heard of it
    assert deployment.seen[0].properties == {"m": {"speed": 2}} and deployment.seen[0].source == "broker"
    assert reported.get("desired") == {
        "acceptedVersion": 4,
        "lastDesiredVersion": 4,
        "lastDesiredStatus": {"code": "ok", "description": "accepted version 4"},
    }
    # The retained copy arriving again (reconnect) changes nothing.
    await twin.handle_desired(doc(4, properties={"m": {"speed": 2}}))
    assert len(deployment.seen) == 1


@pytest.mark.parametrize(
    ("raw", "code", "version"),
    [
        (b"{", "invalid_json", None),
        (doc(3), "replayed", 3),
        (json.dumps({"schema": 1, "version": 5, "deployment": {}, "surprise": 1}).encode(), "invalid_document", 5),
        (b"", "cleared", None),
        (b"\xff", "invalid_utf8", None),
    ],
)
async def test_refusals_keep_state_and_are_reported(config: AgentConfig, raw: bytes, code: str, version: Any) -> None:
    twin, deployment, reported = make(config)
    await twin.start()
    await twin.handle_desired(doc(4))
    before = DesiredStore(twin.store.db).load()
    await twin.handle_desired(raw)
    assert DesiredStore(twin.store.db).load() == before
    assert [s.version for s in deployment.seen] == [4]
    section = reported.get("desired")
    assert section["acceptedVersion"] == 4
    assert section["lastDesiredVersion"] == version
    assert section["lastDesiredStatus"]["code"] == code


async def test_offline_boot_hands_over_stored_document_in_start(config: AgentConfig) -> None:
    twin, _, _ = make(config)
    await twin.start()
    await twin.handle_desired(doc(7, properties={"m": {"a": 1}}))
    await twin.handle_desired(b"junk")  # last status is a refusal

    # "Reboot": a new component over the same database, no broker anywhere.
    twin2, deployment2, reported2 = make(config)
    await twin2.start()
    assert [(s.version, s.source) for s in deployment2.seen] == [(7, "stored")]
    assert deployment2.seen[0].properties == {"m": {"a": 1}}
    section = reported2.get("desired")
    assert section["acceptedVersion"] == 7 and section["lastDesiredStatus"]["code"] == "invalid_json"
    # Replay protection survives the reboot.
    await twin2.handle_desired(doc(6))
    assert reported2.get("desired")["lastDesiredStatus"]["code"] == "replayed"
    await twin2.handle_desired(doc(7, properties={"m": {"a": 1}}))  # the retained copy: duplicate
    assert len(deployment2.seen) == 1


async def test_deployment_validator_and_signature_gate_seams(config: AgentConfig) -> None:
    def validator(deployment: Any) -> object:
        if "m" in deployment["modules"]:
            raise DesiredRejected("invalid_deployment", "modules.m.image: not allowed here")
        return deployment

    def gate(raw: bytes) -> bytes:
        if not raw.startswith(b"SIG"):
            raise DesiredRejected("unsigned", "desired document is not signed")
        return raw[3:]

    twin, deployment, reported = make(config, validate_deployment=validator, signature_gate=gate)
    await twin.start()
    await twin.handle_desired(doc(1))
    assert reported.get("desired")["lastDesiredStatus"]["code"] == "unsigned"
    await twin.handle_desired(b"SIG" + doc(1))
    assert reported.get("desired")["lastDesiredStatus"] == {
        "code": "invalid_deployment",
        "description": "modules.m.image: not allowed here",
    }
    ok = json.dumps({"schema": 1, "version": 2, "deployment": {"modules": {}}}).encode()
    await twin.handle_desired(b"SIG" + ok)
    assert [s.version for s in deployment.seen] == [2]
    # What is stored is the gate's output, so an offline boot needs no re-verification.
    stored = DesiredStore(twin.store.db).load()
    assert stored is not None and stored.payload == ok


async def test_failing_deployment_layer_is_reported_not_fatal(config: AgentConfig) -> None:
    db = open_state_db(config.state.dir)
    reported = ReportedState()

    async def broken(state: DesiredState) -> None:
        raise RuntimeError("boom")

    twin = TwinComponent(config, db, reported, broken)
    await twin.start()
    await twin.handle_desired(doc(1))
    assert reported.get("desired")["lastDesiredStatus"] == {
        "code": "handover_failed",
        "description": "RuntimeError: boom",
    }
    assert DesiredStore(db).load() is not None


async def test_a_document_that_cannot_be_stored_is_not_applied(config: AgentConfig) -> None:
    twin, deployment, reported = make(config)
    await twin.start()
    await twin.handle_desired(doc(1))
    twin.store.db.execute("PRAGMA query_only = ON")  # stands in for a full or read-only disk
    await twin.handle_desired(doc(2))
    twin.store.db.execute("PRAGMA query_only = OFF")
    assert [s.version for s in deployment.seen] == [1]
    section = reported.get("desired")
    assert section["acceptedVersion"] == 1 and section["lastDesiredStatus"]["code"] == "store_failed"
    # Once the disk is fine again, the same document (redelivered) is taken.
    await twin.handle_desired(doc(2))
    assert [s.version for s in deployment.seen] == [1, 2]
