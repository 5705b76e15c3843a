"""One rollout at a time on a device: the claim a document carries (edge_shared/rollout_claim.py),
the pure rule over it (edge_agent/desired/rollout_guard.py), and the gate's use of it
(admission.admit with History.rollout), every case of the table."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from edge_agent.desired import rollout_guard
from edge_agent.desired.admission import Admitted, DocumentTrust, History, Refused, admit
from edge_shared.document import DesiredRejected, Limits
from edge_shared.rollout_claim import (
    INVALID_CODE,
    REFUSAL_CODE,
    RolloutClaim,
    claim_of,
    claim_of_envelope,
    format_time,
)
from edge_shared.spec import validate_deployment
from edge_shared.trust import keys
from edgectl.documents import sign_document

NOW = float(int(time.time()))  # whole seconds: claims carry RFC 3339 seconds
HOLDER = RolloutClaim("r-one", NOW + 600)
EXPIRED = RolloutClaim("r-one", NOW - 1)
AT_END = RolloutClaim("r-one", NOW)  # the lease ends exactly now: no longer held
SAME = RolloutClaim("r-one", NOW + 900)
OTHER = RolloutClaim("r-two", NOW + 600)
FORCED = RolloutClaim("r-two", NOW + 600, forced=True)


@pytest.mark.parametrize(
    ("incoming", "holder", "refused"),
    [
        (None, None, False),  # nothing holds the device: a plain deploy passes
        (OTHER, None, False),  # nothing holds it: any rollout takes it
        (None, EXPIRED, False),  # the holder's lease ran out (its edgectl died): free again
        (OTHER, EXPIRED, False),
        (OTHER, AT_END, False),
        (SAME, HOLDER, False),  # the holder's own next document (its return of a failed batch)
        (FORCED, HOLDER, False),  # the operator took the device over
        (RolloutClaim("x", NOW - 5, forced=True), HOLDER, False),  # forced, even with a lapsed own lease
        (OTHER, HOLDER, True),  # another rollout while one is in flight
        (None, HOLDER, True),  # a plain deploy while a rollout is in flight
        (RolloutClaim("r-one-b", NOW + 600), HOLDER, True),  # a prefix of the id is another rollout
    ],
)
def test_the_rule(incoming: RolloutClaim | None, holder: RolloutClaim | None, refused: bool) -> None:
    if not refused:
        rollout_guard.check(incoming, holder, NOW)  # raises nothing
        return
    with pytest.raises(DesiredRejected) as caught:
        rollout_guard.check(incoming, holder, NOW)
    assert caught.value.code == REFUSAL_CODE
    text = caught.value.description
    assert f"rollout {HOLDER.id} holds this device until {format_time(HOLDER.until)}" in text
    assert ("a document of no rollout" if incoming is None else f"rollout {incoming.id}") in text
    assert "--force" in text


def test_claims_are_read_strictly() -> None:
    until = "2027-01-15T08:00:00Z"
    assert claim_of(None) is None and claim_of({}) is None and claim_of({"by": "ci"}) is None
    assert claim_of({"rollout": "3fa2c1d0"}) is None  # what older edgectl wrote: a label only
    got = claim_of({"rollout": {"id": "3fa2c1d0", "until": until}})
    assert got == RolloutClaim("3fa2c1d0", 1_800_000_000.0)  # 2027-01-15T08:00:00Z
    assert got is not None and format_time(got.until) == until and not got.forced
    assert claim_of({"rollout": {"id": "a", "until": "2027-01-15T09:00:00+01:00", "forced": True}}) == RolloutClaim(
        "a", got.until, True)
    bad: list[tuple[Any, str]] = [
        (["x"], "expected an object"),
        ({"id": "a", "until": until, "owner": "me"}, "unknown field 'owner'"),
        ({"until": until}, "payload.meta.rollout.id"),
        ({"id": "", "until": until}, "payload.meta.rollout.id"),
        ({"id": "a b", "until": until}, "payload.meta.rollout.id"),
        ({"id": "x" * 65, "until": until}, "payload.meta.rollout.id"),
        ({"id": 7, "until": until}, "payload.meta.rollout.id"),
        ({"id": "a"}, "payload.meta.rollout.until: expected an RFC 3339"),
        ({"id": "a", "until": 1800000000}, "payload.meta.rollout.until: expected an RFC 3339"),
        ({"id": "a", "until": "tomorrow"}, "payload.meta.rollout.until: 'tomorrow'"),
        ({"id": "a", "until": "2027-01-15T08:00:00"}, "no time zone"),
        ({"id": "a", "until": until, "forced": "yes"}, "payload.meta.rollout.forced"),
    ]
    for value, words in bad:
        with pytest.raises(DesiredRejected) as caught:
            claim_of({"rollout": value})
        assert caught.value.code == INVALID_CODE and words in caught.value.description, (value, caught.value)


KEY = keys.generate_private_key()
TRUST = DocumentTrust("enforce", (keys.parse_public_key(keys.public_key_pem(KEY.public_key()), "test"),))


def _doc(version: int, rollout: dict[str, Any] | str | None) -> bytes:
    meta: dict[str, Any] = {"by": "test"}
    if rollout is not None:
        meta["rollout"] = rollout
    return sign_document({"schema": 1, "version": version, "deployment": {"modules": {}}, "meta": meta}, KEY)


def _admit(raw: bytes, holder: RolloutClaim | None) -> Admitted | Refused:
    decision = admit(raw, limits=Limits(), trust=TRUST, history=History(4, "d" * 64, holder), now=NOW,
                     validate=lambda d: validate_deployment(d, allowed_mount_roots=[]))
    assert isinstance(decision, Admitted | Refused)
    return decision


def test_the_gate_refuses_another_rollout_and_keeps_the_claim_of_what_it_admits() -> None:
    mine = {"id": "r-one", "until": format_time(NOW + 300)}
    other = {"id": "r-two", "until": format_time(NOW + 300)}
    admitted = _admit(_doc(5, mine), HOLDER)
    assert isinstance(admitted, Admitted) and admitted.rollout == RolloutClaim("r-one", NOW + 300)
    refused = _admit(_doc(5, other), HOLDER)
    assert isinstance(refused, Refused) and refused.code == REFUSAL_CODE and refused.version == 5
    assert "rollout r-one holds this device" in refused.description
    plain = _admit(_doc(5, None), HOLDER)
    assert isinstance(plain, Refused) and plain.code == REFUSAL_CODE
    forced = _admit(_doc(5, {**other, "forced": True}), HOLDER)
    assert isinstance(forced, Admitted) and forced.rollout is not None and forced.rollout.forced
    assert isinstance(_admit(_doc(5, other), EXPIRED), Admitted)
    assert isinstance(_admit(_doc(5, "legacy-label"), None), Admitted)
    broken = _admit(_doc(5, {"id": "r-two"}), None)
    assert isinstance(broken, Refused) and broken.code == INVALID_CODE
    # a replay is refused as a replay first (cheaper, and the more useful reason)
    old = _admit(_doc(3, other), HOLDER)
    assert isinstance(old, Refused) and old.code == "replayed"


def test_the_claim_of_stored_bytes_is_read_without_a_signature_check() -> None:
    raw = _doc(5, {"id": "r-one", "until": format_time(NOW + 300)})
    assert claim_of_envelope(raw) == RolloutClaim("r-one", NOW + 300)
    unsigned = json.dumps({"schema": 1, "version": 1, "deployment": {}, "meta": {"rollout": {
        "id": "r-x", "until": format_time(NOW)}}}).encode()
    assert claim_of_envelope(unsigned) == RolloutClaim("r-x", NOW)  # document_mode off: the document itself
    for junk in (None, b"", b"{", b'{"payload": "!!"}', b'{"payload": "' + base64.b64encode(b"[1]") + b'"}',
                 _doc(2, None), _doc(2, {"id": "bad id", "until": "x"})):
        assert claim_of_envelope(junk) is None
