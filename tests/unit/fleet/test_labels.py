"""Device labels in the agent config, and label selectors (shared/edge_shared/labels.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_shared.labels import MAX_LABELS, LabelError, check_labels, parse_selector, reported_labels
from edgectl.client import DeviceView
from edgectl.show import device_rows, render_devices


@pytest.mark.parametrize("key", ["a", "site", "hw.rev", "a_b-c.d", "x" * 63, "0"])
def test_good_keys(key: str) -> None:
    assert check_labels({key: "v"}) == {key: "v"}


@pytest.mark.parametrize("key", ["", "-a", "a-", "_a", "a b", "a=b", "a,b", "a!", "x" * 64, "é", "a/b"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(LabelError, match="label key"):
        check_labels({key: "v"})


@pytest.mark.parametrize("value", ["", "v", "rev-b", "1.2.3", "y" * 63])
def test_good_values(value: str) -> None:
    assert check_labels({"k": value}) == {"k": value}


@pytest.mark.parametrize("value", ["-v", "v-", "a b", "a=b", "a,b", "y" * 64, "\n", "ü"])
def test_bad_values(value: str) -> None:
    with pytest.raises(LabelError, match="label k: value"):
        check_labels({"k": value})


def test_non_string_value_and_too_many() -> None:
    with pytest.raises(LabelError, match="expected a string value, got int"):
        check_labels({"k": 3})
    with pytest.raises(LabelError, match=f"at most {MAX_LABELS}"):
        check_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    assert len(check_labels({f"k{i}": "v" for i in range(MAX_LABELS)})) == MAX_LABELS


def test_reported_labels_ignores_what_breaks_the_rules() -> None:
    assert reported_labels({"labels": {"site": "turin"}}) == {"site": "turin"}
    assert reported_labels(None) is None
    assert reported_labels({"labels": ["site"]}) is None
    assert reported_labels({"labels": {"bad key": "x"}}) is None


def test_selector_operators() -> None:
    labels = {"site": "turin", "hw": "rev-a", "pilot": ""}
    assert parse_selector("site=turin").matches(labels)
    assert parse_selector("site=turin,hw=rev-a").matches(labels)
    assert not parse_selector("site=turin,hw=rev-b").matches(labels)
    assert parse_selector("hw!=rev-b").matches(labels)
    assert not parse_selector("hw!=rev-a").matches(labels)
    assert parse_selector("pilot").matches(labels) and parse_selector("pilot=").matches(labels)
    assert parse_selector("!camera").matches(labels) and not parse_selector("!site").matches(labels)
    assert parse_selector(" site = turin , !camera ").matches(labels)
    assert str(parse_selector("site=turin,hw!=x,a,!b")) == "site=turin,hw!=x,a,!b"


def test_selector_on_a_device_without_labels() -> None:
    assert not parse_selector("site=turin").matches(None)
    assert parse_selector("site!=turin").matches(None)
    assert parse_selector("!site").matches({})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty selector"),
        ("  ", "empty selector"),
        ("site=turin,", "empty requirement"),
        ("a=b,,c=d", "empty requirement"),
        ("site==turin", "'==' is not a selector operator"),
        ("site=tu rin", "value"),
        ("si te=turin", "label key"),
        ("=turin", "label key"),
        ("!", "label key"),
        ("site=" + "x" * 64, "value"),
        ("site in (a,b)", "label key"),
    ],
)
def test_malformed_selectors(text: str, match: str) -> None:
    with pytest.raises(LabelError, match=match):
        parse_selector(text)


def _write(tmp_path: Path, device_table: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[device]\nid = "rover-01"\n{device_table}\n[mqtt]\nhost = "localhost"\n')
    return path


def test_config_labels(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[device.labels]\nsite = "turin"\nhw = "rev-b"'))
    assert config.device.labels == {"site": "turin", "hw": "rev-b"}
    assert load_config(_write(tmp_path, "")).device.labels == {}


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ('labels = {"bad key" = "v"}', r"config.toml:3: device.labels: .*label key 'bad key'"),
        ("labels = {hw = 3}", r"device.labels.hw: got 3"),
        ('labels = {hw = "rev b"}', r"label hw: value 'rev b'"),
        ('labels = "site=turin"', r"device.labels: got 'site=turin'"),
    ],
)
def test_config_refuses_bad_labels(tmp_path: Path, table: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, table))


def test_devices_rows_show_state_and_labels() -> None:
    good = DeviceView("a", reported={
        "ts": 100.0, "device": {"labels": {"site": "turin"}},
        "deployment": {"current": 3, "highestVersion": 4, "versions": {
            "3": {"state": "good"}, "4": {"state": "rolled_back"}}},
    }, presence="online")
    fresh = DeviceView("b", reported={"ts": 90.0, "deployment": {"current": None, "versions": {}}}, presence="offline")
    rows = device_rows([good, fresh], now=120.0)
    assert rows[0]["currentVersion"] == 3 and rows[0]["currentState"] == "good"
    assert rows[0]["deploymentState"] == "good; 4 rolled_back" and rows[0]["labels"] == {"site": "turin"}
    assert rows[1]["deploymentState"] == "none" and rows[1]["labels"] is None
    text = render_devices([good, fresh], now=120.0)
    assert "good; 4 rolled_back" in text and "site=turin" in text
    assert render_devices([], now=1.0, selector="site=x") == "no device matches site=x"
