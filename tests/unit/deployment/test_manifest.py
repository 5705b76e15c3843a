"""Deployment validation: one clear line per problem, naming module and field."""

from __future__ import annotations

from typing import Any

import pytest

from edge_shared.document import DesiredRejected
from edge_shared.spec import validate_deployment

IMG = "registry.example.com/edge/pilot:1.2"


def mod(**spec: Any) -> dict[str, Any]:
    return {"modules": {"pilot": {"image": IMG, **spec}}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (mod(restartPolicy="sometimes"),
         "module 'pilot': restartPolicy: got 'sometimes'; expected one of never, on-failure, on-unhealthy, always"),
        ({"modules": {"pilot": {"image": "busybox"}}}, "module 'pilot': image: got 'busybox'; expected registry/"),
        ({"modules": {"pilot": {"image": "reg.io/x"}}}, "expected a tag or a digest (no implicit :latest)"),
        ({"modules": {"Pilot!": {"image": IMG}}}, "module 'Pilot!': module name: expected lower-case letters"),
        (mod(status="paused"), "module 'pilot': status: got 'paused'; expected one of running, stopped"),
        (mod(startupOrder=-1), "module 'pilot': startupOrder: got -1; expected greater than or equal to 0"),
        (mod(env={"1X": "a"}), "module 'pilot': env: 1X is not a valid variable name"),
        (mod(devices=["/etc/shadow"]), "module 'pilot': devices: /etc/shadow is not a device path under /dev/"),
        (mod(resources={"memory": "1k"}), "module 'pilot': resources.memory: got '1k'; expected at least 4m"),
        (mod(resources={"pids": 1}), "module 'pilot': resources.pids: got 1; expected greater than or equal to 8"),
        (mod(healthcheck={"command": []}), "module 'pilot': healthcheck.command:"),
        (mod(healthcheck={"command": ["x"], "interval": "soon"}), "healthcheck.interval: got 'soon'; expected seconds"),
        (mod(capabilities={"add": ["SYS_ADMIN"]}), "capabilities.add: SYS_ADMIN is never granted to modules"),
        (mod(network="overlay"), "module 'pilot': network: got 'overlay'; expected one of bridge, none, host"),
        (mod(labels={"edge-agent.module": "x"}), "labels starting with edge-agent. are reserved"),
        (mod(privileged=True), "module 'pilot': privileged: unknown field"),
        (mod(mounts=[{"source": "../x", "target": "/data"}]), "mounts.0.source: got '../x'; expected an absolute path"),
        ({"modules": []}, "modules: expected a valid dictionary"),
        ([], "deployment: expected an object"),
    ],
)
def test_invalid_deployments_are_rejected_with_a_clear_line(raw: Any, message: str) -> None:
    with pytest.raises(DesiredRejected) as err:
        validate_deployment(raw)
    assert err.value.code == "invalid_deployment"
    assert message in err.value.description


def test_bind_mounts_only_from_allowed_roots() -> None:
    ok = mod(mounts=[{"source": "/srv/edge-data/models", "target": "/models"}])
    assert validate_deployment(ok, allowed_mount_roots=["/srv/edge-data"]).modules["pilot"].mounts[0].read_only
    with pytest.raises(DesiredRejected, match=r"mounts.0.source: got '/etc'; expected a path under: /srv/edge-data"):
        validate_deployment(mod(mounts=[{"source": "/etc", "target": "/x"}]), allowed_mount_roots=["/srv/edge-data"])
    with pytest.raises(DesiredRejected, match="none configured"):
        validate_deployment(ok, allowed_mount_roots=[])


def test_every_problem_is_listed() -> None:
    with pytest.raises(DesiredRejected) as err:
        validate_deployment({"modules": {"a": {"image": IMG, "status": "x"}, "b": {"image": IMG, "user": "a b"}}})
    assert "module 'a': status" in err.value.description and "module 'b': user" in err.value.description


def test_defaults_are_least_privilege_and_spec_hash_tracks_changes() -> None:
    spec = validate_deployment(mod()).modules["pilot"]
    assert spec.read_only_rootfs and spec.capabilities.add == [] and spec.devices == []
    assert spec.network == "bridge" and spec.resources.pids == 256 and spec.restart_policy == "always"
    other = validate_deployment(mod(env={"A": "1"})).modules["pilot"]
    pinned = "registry.example.com/edge/pilot@sha256:" + "a" * 64
    assert spec.spec_hash(pinned) != other.spec_hash(pinned)
    assert spec.spec_hash(pinned) != spec.spec_hash(pinned.replace("a" * 64, "b" * 64))
    assert spec.spec_hash(pinned) == validate_deployment(mod()).modules["pilot"].spec_hash(pinned)
