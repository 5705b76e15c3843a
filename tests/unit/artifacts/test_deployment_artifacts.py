"""The deployment document's artifacts, the container identity, and what a module's report means."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from edge_agent.artifacts.confirm import (
    Confirmed,
    ModuleRefused,
    ReportError,
    Waiting,
    confirmation,
    parse_report,
)
from edge_shared.document import DesiredRejected
from edge_shared.spec import CONTAINER_SPEC_VERSION, ModuleSpec, validate_deployment

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _doc(**module: Any) -> dict[str, Any]:
    return {"modules": {"pilot": {"image": "r.local/pilot:1", **module}}}


def test_artifacts_are_validated_naming_module_and_field() -> None:
    ok = validate_deployment(_doc(artifacts=[{"ref": "r.local/models/pilot:v2", "path": "/models", "confirm": True}]))
    assert ok.modules["pilot"].artifacts[0].confirm
    cases = [
        ([{"ref": "pilot:v2", "path": "/models"}], "module 'pilot': artifacts.0.ref: "),
        ([{"ref": "r.local/models/pilot", "path": "/models"}], "no implicit :latest"),
        ([{"ref": "r.local/m:1", "path": "models"}], "artifacts.0.path: "),
        ([{"ref": "r.local/m:1", "path": "/a/../run"}], "/run: /run is not a place"),  # normalised first
        ([{"ref": "r.local/m:1", "path": "/"}], "artifacts.0.path: "),
        ([{"ref": "r.local/m:1", "path": "/m"}, {"ref": "r.local/n:1", "path": "/m"}], "map to the same directory"),
        ([{"ref": "r.local/m:1", "path": "/a-b"}, {"ref": "r.local/n:1", "path": "/a/b"}], "(a-b)"),
        ([{"ref": "r.local/m:1", "path": "/run/edge-agent"}], "/run/edge-agent: /run is not a place for artifacts"),
        ([{"ref": "r.local/m:1", "path": "/proc/x"}], "/proc is not a place"),
        ([{"ref": "r.local/m:1", "path": "/m", "mode": "rw"}], "artifacts.0.mode: "),
    ]
    with pytest.raises(DesiredRejected) as clash:
        validate_deployment(
            _doc(
                mounts=[{"source": "/srv/x", "target": "/models"}],
                artifacts=[{"ref": "r.local/m:1", "path": "/models"}],
            )
        )
    assert "module 'pilot': " in clash.value.description
    assert "/models: overlaps the mount target /models" in clash.value.description
    for artifacts, message in cases:
        with pytest.raises(DesiredRejected) as err:
            validate_deployment(_doc(artifacts=artifacts))
        assert message in err.value.description, (artifacts, err.value.description)


def test_a_new_artifact_version_is_the_same_container() -> None:
    def spec(ref: str, path: str = "/models") -> ModuleSpec:
        return ModuleSpec.model_validate({"image": "r.local/pilot:1", "artifacts": [{"ref": ref, "path": path}]})

    pinned = "r.local/pilot@" + D1
    assert spec("r.local/m:v1@" + D1).spec_hash(pinned) == spec("r.local/m:v2@" + D2).spec_hash(pinned)
    assert spec("r.local/m:v1").spec_hash(pinned) != spec("r.local/m:v1", "/other").spec_hash(pinned)
    # a module without artifacts keeps the identity it had before artifacts existed
    plain = ModuleSpec.model_validate({"image": "r.local/pilot:1"})
    before = plain.model_dump(mode="json", by_alias=True)
    before.pop("artifacts")
    before.update(image=pinned, _v=CONTAINER_SPEC_VERSION)
    text = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert plain.spec_hash(pinned) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert plain.spec_hash(pinned) != spec("r.local/m:v1").spec_hash(pinned)


def test_reports_are_parsed_strictly() -> None:
    report = parse_report(
        json.dumps({"using": [D1], "refused": [{"digest": D2, "reason": "input shape"}]}).encode(), 5.0
    )
    assert report.using == {D1} and report.refused == {D2: "input shape"} and report.at == 5.0
    for bad in (
        b"[]",
        b"{",
        json.dumps({"using": ["abc"]}).encode(),
        json.dumps({"refused": [{"digest": "x"}]}).encode(),
        json.dumps({"refused": {}}).encode(),
    ):
        with pytest.raises(ReportError):
            parse_report(bad, 0.0)


def test_confirmation_refusal_wins_then_use_then_waiting() -> None:
    both = parse_report(json.dumps({"using": [D1], "refused": [{"digest": D2, "reason": "bad"}]}).encode(), 0)
    assert confirmation("m", frozenset({D1}), both) == Confirmed(D1)
    assert confirmation("m", frozenset({D2}), both) == ModuleRefused(D2, "bad")
    assert isinstance(confirmation("m", frozenset({D1}), None), Waiting)
    other = parse_report(json.dumps({"using": [D2]}).encode(), 0)
    waiting = confirmation("m", frozenset({D1}), other)
    assert isinstance(waiting, Waiting) and "still uses sha256:2222" in waiting.reason
    assert isinstance(confirmation("m", frozenset(), both), Waiting)


def test_status_lines_show_placed_and_driving_digests_and_flag_refusals() -> None:
    from edge_shared.artifacts.view import artifact_lines

    state = {
        "artifacts": {
            "/models": {
                "ref": "r.local/m:v2@" + D2,
                "digest": D2,
                "placed": D1,
                "previous": None,
                "module": "refused",
                "refusedReason": "input.shape",
            }
        },
        "moduleReport": {"using": [D1], "refused": [{"digest": D2, "reason": "input.shape"}]},
    }
    lines = artifact_lines("pilot", state)
    assert lines[0][0] is True and "placed sha256:1111" in lines[0][1] and "[refused]: input.shape" in lines[0][1]
    assert "module drives with sha256:1111" in lines[0][1]
    ok = {
        "artifacts": {"/models": {"ref": "r", "digest": D1, "placed": D1, "module": "confirmed"}},
        "moduleReport": {"using": [D1], "refused": []},
    }
    assert artifact_lines("pilot", ok) == [
        (
            False,
            "pilot artifact /models: r placed sha256:111111111111; module drives with sha256:111111111111 [confirmed]",
        )
    ]
    assert artifact_lines("pilot", {}) == []
