"""Platform names and the choice of a manifest from a multi-arch index (pure functions)."""

from __future__ import annotations

import json
import platform as py_platform
from pathlib import Path

import pytest

from edge_agent.checks import check_platform
from edge_agent.config import AgentConfig, ConfigError, parse_config
from edge_agent.trust.factory import device_platform
from edge_shared.trust.cosign import FormatError
from edge_shared.trust.platforms import (
    DOCKER_LIST,
    OCI_INDEX,
    IndexEntry,
    Platform,
    compatible,
    describe,
    host_platform,
    is_index,
    parse_index,
    parse_platform,
    pick,
)

D = {name: "sha256:" + c * 64 for name, c in [("amd64", "a"), ("arm64", "b"), ("armv7", "c"), ("armv6", "d"),
                                                ("att", "e"), ("arm64b", "f"), ("amd64v3", "1")]}


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "linux/amd64"),
        ("AMD64", "linux/amd64"),
        ("aarch64", "linux/arm64/v8"),
        ("arm64", "linux/arm64/v8"),
        ("armv7l", "linux/arm/v7"),
        ("armv8l", "linux/arm/v7"),
        ("armv6l", "linux/arm/v6"),
        ("i686", "linux/386"),
        ("riscv64", "linux/riscv64"),
        ("mips64", "linux/mips64"),  # unknown machines keep their name (and match nothing else)
    ],
)
def test_host_platform_maps_kernel_names_to_oci(machine: str, expected: str) -> None:
    assert str(host_platform(machine, "Linux")) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/arm64", "linux/arm64/v8"),  # arm64 without a variant is v8
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
    ],
)
def test_parse_platform(text: str, expected: str) -> None:
    assert str(parse_platform(text)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("arm64", "os/architecture"),
        ("linux/arm64/v8/x", "os/architecture"),
        ("Linux/ARM64", "lower case"),
        ("linux/aarch64", "the OCI name is arm64"),
        ("linux/x86_64", "the OCI name is amd64"),
        ("linux//v8", "os/architecture"),
        ("", "os/architecture"),
    ],
)
def test_parse_platform_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_platform(text)


def index(*entries: dict[str, object], media_type: str | None = OCI_INDEX) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "manifests": list(entries)}
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def entry(digest: str, os: str = "linux", arch: str | None = None, variant: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 500}
    if arch is not None:
        out["platform"] = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return out


PODMAN_STYLE = index(entry(D["amd64"], arch="amd64"), entry(D["arm64"], arch="arm64", variant="v8"))


def test_parse_index_reads_platforms() -> None:
    entries = parse_index(PODMAN_STYLE)
    assert [e.platform for e in entries] == [Platform("linux", "amd64"), Platform("linux", "arm64", "v8")]
    assert entries[1].digest == D["arm64"] and entries[1].size == 500


@pytest.mark.parametrize(
    ("device", "chosen"),
    [
        ("linux/amd64", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("linux/arm/v7", "armv7"),
        ("linux/arm/v6", "armv6"),
        ("linux/386", None),
        ("windows/amd64", None),
    ],
)
def test_pick_by_platform(device: str, chosen: str | None) -> None:
    entries = parse_index(
        index(
            entry(D["att"]),  # an attestation manifest: no platform, never picked
            entry(D["amd64v3"], arch="amd64", variant="v3"),  # not for a plain amd64 device
            entry(D["amd64"], arch="amd64"),
            entry(D["arm64"], arch="arm64"),  # no variant: the same as v8
            entry(D["arm64b"], arch="arm64", variant="v8"),  # a second arm64 entry: the first one wins
            entry(D["armv6"], arch="arm", variant="v6"),
            entry(D["armv7"], arch="arm", variant="v7"),
        )
    )
    picked = pick(entries, parse_platform(device))
    assert (picked.digest if picked else None) == (D[chosen] if chosen else None)


def test_arm_v7_device_falls_back_to_v6_but_not_the_other_way() -> None:
    only_v6 = parse_index(index(entry(D["armv6"], arch="arm", variant="v6")))
    only_v7 = parse_index(index(entry(D["armv7"], arch="arm", variant="v7")))
    v7, v6 = parse_platform("linux/arm/v7"), parse_platform("linux/arm/v6")
    assert pick(only_v6, v7) is not None and pick(only_v6, v7).digest == D["armv6"]  # type: ignore[union-attr]
    assert pick(only_v7, v6) is None
    assert compatible(parse_platform("linux/arm64")) == [Platform("linux", "arm64", "v8")]


def test_is_index_by_media_type_or_shape() -> None:
    assert is_index(OCI_INDEX, PODMAN_STYLE)
    assert is_index(DOCKER_LIST, index(entry(D["amd64"], arch="amd64"), media_type=DOCKER_LIST))
    assert is_index("", index(entry(D["amd64"], arch="amd64"), media_type=None))  # mediaType is optional in OCI
    image = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    assert not is_index("application/vnd.oci.image.manifest.v1+json", image)
    assert not is_index("", b"not json")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[]", "manifests list"),
        (index({"mediaType": 1, "digest": D["amd64"], "size": 1}), r"manifests\[0\].mediaType"),
        (index({"mediaType": "x", "digest": "sha256:12", "size": 1}), r"manifests\[0\].digest"),
        (index({"mediaType": "x", "digest": D["amd64"], "size": -1}), r"manifests\[0\].size"),
        (index({"mediaType": "x", "digest": D["amd64"], "size": 1, "platform": "linux"}), "platform"),
        (index({"mediaType": "x", "digest": D["amd64"], "size": 1, "platform": {"os": "linux"}}), "architecture"),
        (index(entry(D["amd64"]), {"mediaType": "x", "digest": D["arm64"], "size": 1,
                                   "platform": {"os": "linux", "architecture": "arm64", "variant": 8}}),
         r"manifests\[1\].platform.variant"),
    ],
)
def test_malformed_index_names_the_field(body: bytes, says: str) -> None:
    with pytest.raises(FormatError, match=says):
        parse_index(body)


def test_describe_lists_platforms() -> None:
    entries = [IndexEntry("x", D["amd64"], 1, Platform("linux", "amd64")), IndexEntry("x", D["att"], 1, None)]
    assert describe(entries) == "linux/amd64"
    assert describe([]) == "no platforms"


def device_config(tmp_path: Path, device: str) -> AgentConfig:
    return parse_config(f'[state]\ndir = "{tmp_path / "state"}"\n[device]\n{device}', "config.toml", base_dir=tmp_path)


def test_device_platform_setting_and_check(tmp_path: Path) -> None:
    host = host_platform(py_platform.machine(), py_platform.system())
    default = device_config(tmp_path, "")
    assert device_platform(default) == host
    shown = check_platform(default)
    assert (shown.outcome, shown.detail) == ("pass", f"{host} (this machine's)")

    other = "linux/arm64" if host.architecture != "arm64" else "linux/amd64"
    configured = device_config(tmp_path, f'platform = "{other}"')
    assert device_platform(configured) == parse_platform(other)
    assert configured.device.platform == str(parse_platform(other))  # stored normalised
    shown = check_platform(configured)
    assert shown.outcome == "warn" and f"this machine is {host.normalized()}" in shown.detail
    assert "emulation" in shown.hint

    same = check_platform(device_config(tmp_path, f'platform = "{host}"'))
    assert same.outcome == "pass" and "[device] platform" in same.detail


@pytest.mark.parametrize(("value", "says"), [('"arm64"', "os/architecture"), ('"linux/aarch64"', "arm64"),
                                             ("64", "string")])
def test_bad_device_platform_names_the_field(tmp_path: Path, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        device_config(tmp_path, f"platform = {value}")
    assert "device.platform" in str(info.value) and says in str(info.value), str(info.value)
