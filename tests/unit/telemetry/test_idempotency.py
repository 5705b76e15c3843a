"""Idempotency keys: a module re-sending a record that got no answer never stores it twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.telemetry.ingest import answer_line, parse_request
from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import Accepted, NewRecord, Refused, TelemetryQueue


def keyed(key: str | None, payload: object = 1, module: str = "m", stream: str = "s") -> NewRecord:
    return NewRecord(module, stream, 5, None, json.dumps(payload).encode(), key)


def make_queue(path: Path, now: list[float], cap: int = 1 << 20, **kw: float) -> TelemetryQueue:
    q = TelemetryQueue(path / "t.db", cap, Rules(StreamRules(None, "drop-oldest", 0), {}), clock=lambda: now[0],
                       **kw)  # type: ignore[arg-type]
    q.open()
    return q


def test_parse_accepts_a_key_and_refuses_bad_ones() -> None:
    out = parse_request(b'{"stream": "s", "payload": 1, "key": "3f2a-17"}', "m")
    assert out == NewRecord("m", "s", 5, None, b"1", "3f2a-17")
    for bad in (b'"has space"', b'""', b"17", b'"' + b"k" * 129 + b'"', b'"caf\\u00e9"'):
        refused = parse_request(b'{"stream": "s", "payload": 1, "key": ' + bad + b"}", "m")
        assert isinstance(refused, Refused) and refused.code == "invalid" and refused.error.startswith("key: got ")


def test_answer_says_duplicate() -> None:
    assert json.loads(answer_line(Accepted("e-7", 3, duplicate=True))) == {"ok": True, "id": "e-7", "duplicate": True}
    assert json.loads(answer_line(Accepted("e-7", 3))) == {"ok": True, "id": "e-7"}


def test_a_key_is_stored_once_and_the_resend_gets_the_same_id(tmp_path: Path) -> None:
    now = [1000.0]
    q = make_queue(tmp_path, now)
    (first,) = q.append([keyed("a", {"v": 1})])
    assert isinstance(first, Accepted) and not first.duplicate
    # The answer was lost (agent killed after the commit): the module sends it again, after a restart.
    q.close()
    q = make_queue(tmp_path, now)
    again, other = q.append([keyed("a", {"v": 1}), keyed("b", {"v": 2})])
    assert again == Accepted(first.id, first.seq, duplicate=True)
    assert isinstance(other, Accepted) and not other.duplicate
    assert q.depth == 2
    # The same key from another module is another record: keys are per module.
    (theirs,) = q.append([keyed("a", module="other")])
    assert isinstance(theirs, Accepted) and not theirs.duplicate and q.depth == 3
    # Records without a key are never de-duplicated.
    plain = q.append([keyed(None), keyed(None)])
    assert len({o.id for o in plain if isinstance(o, Accepted) and not o.duplicate}) == 2
    assert q.depth == 5


def test_same_key_twice_in_one_group_commit(tmp_path: Path) -> None:
    q = make_queue(tmp_path, [1000.0])
    a, b = q.append([keyed("k"), keyed("k")])
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert (b.id, b.seq, b.duplicate) == (a.id, a.seq, True) and not a.duplicate
    assert q.depth == 1


def test_key_survives_upload_and_delete_within_the_window(tmp_path: Path) -> None:
    now = [1000.0]
    q = make_queue(tmp_path, now, key_window_s=60)
    (first,) = q.append([keyed("k")])
    assert isinstance(first, Accepted)
    batch = q.read_batch("s", 0, 10, 1 << 20)
    q.delete_sent("s", batch[0].n, batch[-1].n)  # uploaded: the record is gone, its key is not
    now[0] += 59
    q.expire()
    (again,) = q.append([keyed("k")])
    assert again == Accepted(first.id, first.seq, duplicate=True) and q.depth == 0
    now[0] += 2  # past the window: the key is forgotten, a send is a new record
    q.expire()
    (late,) = q.append([keyed("k")])
    assert isinstance(late, Accepted) and not late.duplicate and late.id != first.id


def test_a_queued_record_keeps_its_key_past_the_key_limit(tmp_path: Path) -> None:
    # The key lives in the record's row while it is queued: a re-send is never stored twice.
    q = make_queue(tmp_path, [1000.0], key_max=1000)
    q.append([keyed(f"k{i}") for i in range(1500)])
    assert q.forget_keys() == 0
    assert q.append([keyed("k0")])[0].duplicate  # type: ignore[union-attr]


def test_only_the_newest_keys_are_kept(tmp_path: Path) -> None:
    q = make_queue(tmp_path, [1000.0], key_max=1000)
    q.append([keyed(f"k{i}") for i in range(1500)])
    q.delete_sent("s", 1, 1500)
    assert q.flush_sent() == 1500  # their keys move to the idempotency table
    assert q.forget_keys() == 500
    assert not q.append([keyed("k0")])[0].duplicate  # type: ignore[union-attr]
    assert q.append([keyed("k1499")])[0].duplicate  # type: ignore[union-attr]


def test_a_refused_record_does_not_keep_its_key(tmp_path: Path) -> None:
    q = TelemetryQueue(tmp_path / "t.db", 64 * 1024, Rules(StreamRules(None, "refuse-new", 0), {}))
    q.open()
    big = "x" * 30_000
    outcomes = q.append([keyed(f"k{i}", big) for i in range(3)])
    assert isinstance(outcomes[-1], Refused) and outcomes[-1].code == "queue_full"
    batch = q.read_batch("s", 0, 10, 1 << 20)
    q.delete_sent("s", batch[0].n, batch[-1].n)
    (retry,) = q.append([keyed("k2", big)])
    assert isinstance(retry, Accepted) and not retry.duplicate


@pytest.mark.parametrize("key", ["uuid-0b1e6f1c-7d0e-4a43-9b6c-111111111111", "17", "a:b/c"])
def test_keys_round_trip(tmp_path: Path, key: str) -> None:
    q = make_queue(tmp_path, [1000.0])
    (first,) = q.append([keyed(key)])
    (again,) = q.append([keyed(key)])
    assert isinstance(first, Accepted) and isinstance(again, Accepted) and again.id == first.id
