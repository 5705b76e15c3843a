"""The deployment component against real podman and a real registry (in-process agent)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from edge_agent.desired.admission import Admitted, Duplicate
from edge_agent.runtime.podman import parse_time

from .conftest import RunImages, owned

SLEEP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def module(image: str, **spec: Any) -> dict[str, Any]:
    return {"image": image, "command": SLEEP[:2], "args": SLEEP[2:], **spec}


def by_module(run_id: str) -> dict[str, dict[str, Any]]:
    return {c["Config"]["Labels"]["edge-agent.module"]: c for c in owned(run_id)}


async def test_deploy_in_order_change_one_remove_one(harness_factory: Any, images: RunImages, run_id: str) -> None:
    h = await harness_factory()
    img = images.image("mod", "v1")
    three = {"c": module(img, startupOrder=3), "a": module(img, startupOrder=1), "b": module(img, startupOrder=2)}
    await h.deploy(1, {"modules": three})
    await h.wait_running(["a", "b", "c"])
    first = by_module(run_id)
    starts = {m: parse_time(c["State"]["StartedAt"]) for m, c in first.items()}
    assert starts["a"] < starts["b"] < starts["c"], starts
    # Created from the pinned digest that the registry resolved the tag to.
    digest = h.modules()["a"]["digest"]
    assert first["a"]["ImageName"] == f"{img.rsplit(':', 1)[0]}@{digest}"
    assert h.modules()["a"]["image"] == img

    # Change one module: only it is recreated.
    changed = {**three, "b": module(img, startupOrder=2, env={"MODE": "fast"})}
    await h.deploy(2, {"modules": changed})
    await h.wait_for(
        # Between the old container's removal and the new one's creation there is no "b" at all.
        lambda: by_module(run_id).get("b", {}).get("Id") not in (None, first["b"]["Id"])
        and h.modules().get("b", {}).get("runtimeStatus") == "running",
        30,
        "b recreated",
    )
    second = by_module(run_id)
    for m in ("a", "c"):
        assert second[m]["Id"] == first[m]["Id"]
        assert second[m]["State"]["StartedAt"] == first[m]["State"]["StartedAt"]
    assert "MODE=fast" in second["b"]["Config"]["Env"]

    # Remove one module: its container is stopped and removed, the others stay.
    del changed["c"]
    await h.deploy(3, {"modules": changed})
    await h.wait_for(lambda: set(by_module(run_id)) == {"a", "b"}, 30, "c removed")
    await h.wait_running(["a", "b"])
    assert by_module(run_id)["a"]["Id"] == first["a"]["Id"]


async def test_least_privilege_defaults_and_explicit_grants(
    harness_factory: Any, images: RunImages, run_id: str
) -> None:
    h = await harness_factory()
    img = images.image("mod", "v1")
    await h.deploy(
            1,
            {
                "modules": {
                    "plain": module(img),
                    "granted": module(
                        img,
                        user="65534:65534",
                        devices=["/dev/null"],
                        network="none",
                        capabilities={"add": ["NET_BIND_SERVICE"]},
                        resources={"memory": "64m", "pids": 64},
                    ),
                }
            },
    )
    await h.wait_running(["plain", "granted"])
    c = by_module(run_id)
    for name in ("plain", "granted"):
        hc = c[name]["HostConfig"]
        assert hc["Privileged"] is False
        assert hc["ReadonlyRootfs"] is True
        assert "no-new-privileges" in hc["SecurityOpt"]
        assert hc["RestartPolicy"]["Name"] in ("", "no")
    plain, granted = c["plain"]["HostConfig"], c["granted"]["HostConfig"]
    assert plain["PidsLimit"] == 256 and not plain.get("Devices")
    assert plain["NetworkMode"] == "bridge"
    assert granted["PidsLimit"] == 64 and granted["Memory"] == 64 * 1024 * 1024
    # Podman lists dropped capabilities: all of them, except the one granted.
    assert "CAP_NET_BIND_SERVICE" in plain["CapDrop"] and "CAP_CHOWN" in plain["CapDrop"]
    assert "CAP_NET_BIND_SERVICE" not in granted["CapDrop"] and "CAP_CHOWN" in granted["CapDrop"]
    assert [d["PathOnHost"] for d in granted["Devices"]] == ["/dev/null"]
    assert granted["NetworkMode"] == "none"
    assert c["granted"]["Config"]["User"] == "65534:65534"
    # What the process really has: no capabilities at all, or exactly the one granted.
    from devinfra.podman import podman

    def status(name: str) -> str:
        return podman("exec", c[name]["Id"], "cat", "/proc/1/status").stdout

    assert "CapEff:\t0000000000000000" in status("plain")
    assert "CapEff:\t0000000000000400" in status("granted")  # bit 10 = CAP_NET_BIND_SERVICE
    assert "NoNewPrivs:\t1" in status("plain")
    # The root filesystem is read-only; /tmp is a writable tmpfs.
    assert podman("exec", c["plain"]["Id"], "touch", "/x", check=False).returncode != 0
    assert podman("exec", c["plain"]["Id"], "touch", "/tmp/x", check=False).returncode == 0


async def test_crash_loop_backs_off_growing_to_the_cap(harness_factory: Any, images: RunImages, run_id: str) -> None:
    h = await harness_factory(backoff_initial_s=1, backoff_max_s=4)
    img = images.image("mod", "v1")
    await h.deploy(
            1, {"modules": {"crashy": {"image": img, "command": ["sh", "-c", "exit 3"], "restartPolicy": "on-failure"}}}
    )
    starts: list[float] = []
    deadline = time.monotonic() + 60
    while len(starts) < 6 and time.monotonic() < deadline:
        containers = owned(run_id)
        if containers:
            started = parse_time(containers[0]["State"]["StartedAt"])
            if started is not None and (not starts or started > starts[-1]):
                starts.append(started)
        await asyncio.sleep(0.05)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 5, f"only {len(starts)} starts seen"
    # 1, 2, 4, 4, 4 s (plus the container's run and the agent's create/start/observe, which a loaded
    # machine stretches): never shorter than the delay, doubling, then capped (a capped gap stays
    # below the 8 s a further doubling would give), never giving up.
    assert gaps[0] > 0.95 and gaps[1] > 1.95 and all(g > 3.95 for g in gaps[2:]), gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert all(g < 8 for g in gaps[3:]), gaps
    await h.wait_for(lambda: h.modules()["crashy"]["restartCount"] >= 5, 10, "restart count reported")
    m = h.modules()["crashy"]
    assert m["exitCode"] == 3 and m["lastExitTime"]


async def test_unhealthy_module_is_restarted_under_on_unhealthy(
    harness_factory: Any, images: RunImages, run_id: str
) -> None:
    h = await harness_factory()
    img = images.image("mod", "v1")
    # Healthy for ~2 s after each start, then the health file disappears.
    script = "touch /tmp/healthy; sleep 2; rm /tmp/healthy; while true; do sleep 1; done"
    await h.deploy(
            1,
            {
                "modules": {
                    "sick": {
                        "image": img,
                        "command": ["sh", "-c", script],
                        "restartPolicy": "on-unhealthy",
                        "healthcheck": {"command": ["test", "-f", "/tmp/healthy"], "interval": "500ms", "retries": 2},
                    }
                }
            },
    )
    await h.wait_for(lambda: h.modules().get("sick", {}).get("health") == "healthy", 30, "healthy first")
    first_start = h.modules()["sick"]["startTime"]
    await h.wait_for(
        lambda: h.modules()["sick"]["restartCount"] >= 1 and h.modules()["sick"]["startTime"] != first_start,
        30,
        "restarted when unhealthy",
    )
    c = owned(run_id)
    assert len(c) == 1 and c[0]["Config"]["Healthcheck"]["Test"] == ["CMD", "test", "-f", "/tmp/healthy"]


async def test_bad_deployment_is_rolled_back_to_the_last_good_one(
    harness_factory: Any, images: RunImages, run_id: str
) -> None:
    h = await harness_factory(stabilisation_window_s=8)
    good_img, bad_img = images.image("mod", "v1"), images.image("mod", "v2")
    good = {"modules": {"app": module(good_img), "side": module(good_img, startupOrder=200)}}
    await h.deploy(1, good)
    await h.wait_running(["app", "side"])
    await h.wait_for(lambda: h.deployment().get("lastKnownGood") == 1, 30, "v1 good")
    good_ids = {m: c["Id"] for m, c in by_module(run_id).items()}

    # v2: the app now exits with code 4 after 5 s (inside the stabilisation window).
    bad = {
        "modules": {
            "app": {"image": bad_img, "command": ["sh", "-c", "sleep 5; exit 4"]},
            "side": good["modules"]["side"],
        }
    }
    await h.deploy(2, bad)
    await h.wait_for(lambda: h.deployment().get("current") == 2, 30, "v2 activated")
    await h.wait_for(lambda: h.state(2) == "rolled_back", 40, "rolled back")
    dep = h.deployment()
    assert dep["current"] == 1 and dep["lastKnownGood"] == 1
    v2 = dep["versions"]["2"]
    assert v2["module"] == "app" and v2["code"] == "module_failed"
    assert "exited with code 4" in v2["description"] and "version 1 runs again" in v2["description"]
    # The modules report follows with the next pass, which runs version 1 again.
    await h.wait_for(lambda: h.modules().get("app", {}).get("image") == good_img, 30, "version 1's app reported")
    await h.wait_running(["app", "side"])
    now = by_module(run_id)
    assert now["side"]["Id"] == good_ids["side"]  # untouched throughout
    assert now["app"]["ImageName"].endswith(h.modules()["app"]["digest"])
    assert h.modules()["app"]["image"] == good_img

    # The bad version is not retried (the same document again is a duplicate); a newer one is taken.
    assert isinstance(await h.deploy(2, bad), Duplicate) and h.state(2) == "rolled_back"
    assert isinstance(await h.deploy(3, good), Admitted)
    await h.wait_for(lambda: h.deployment().get("current") == 3, 30, "v3 activated")


async def test_images_of_old_deployments_are_garbage_collected(
    harness_factory: Any, images: RunImages, run_id: str
) -> None:
    from devinfra.podman import podman

    def present(ref: str) -> bool:
        return podman("image", "exists", ref, check=False).returncode == 0

    h = await harness_factory(stabilisation_window_s=1)
    refs = [images.image("gc", f"v{i}") for i in (1, 2, 3)]
    pinned = []
    for version, ref in enumerate(refs, start=1):
        await h.deploy(version, {"modules": {"app": module(ref)}})
        await h.wait_for(lambda v=version: h.deployment().get("lastKnownGood") == v, 30, f"v{version} good")
        pinned.append(f"{ref.rsplit(':', 1)[0]}@{h.modules()['app']['digest']}")
        assert present(pinned[-1]), "the agent pulled the image by digest"

    # v3 is current and last-known-good: v1's and v2's images go, v3's stays.
    await h.wait_for(lambda: not present(pinned[0]) and not present(pinned[1]), 20, "old images removed")
    assert present(pinned[2])
