"""The A/B comparison's arithmetic (pure), its table, its picture and its command-line checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_shared.labels import parse_selector
from edgectl.compare import DEFAULT_METRICS, METRICS, Column, as_json, compare, percentile, render_table
from edgectl.compare_cmd import assign_groups, parse_groups


def rec(device: str, seq: int, version: int | None = 1, rid: str | None = None, **payload: Any) -> dict[str, Any]:
    return {
        "device": device,
        "stream": "pilot.stats",
        "id": rid or f"{device}-{seq}",
        "seq": seq,
        "deployment": version,
        "payload": payload,
    }


# ----------------------------------------------------------------- percentile


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.sampled_from([0, 1, 25, 50, 95, 99, 100]))
def test_percentile_matches_numpy(values: list[float], p: int) -> None:
    got = percentile(values, p)
    assert got == pytest.approx(float(np.percentile(values, p)), rel=1e-9, abs=1e-6)


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0


# ----------------------------------------------------------------- columns


def test_columns_per_group_and_version_in_order() -> None:
    records = [
        rec("b1", 1, 4, fps=10.0),
        rec("a1", 1, 3, fps=20.0),
        rec("a2", 1, 2, fps=19.0),  # a device of A still on an older version
        rec("a1", 2, None, fps=18.0),  # from an agent that did not know the version
        rec("x9", 1, 3, fps=99.0),  # in no group
    ]
    c = compare(records, {"a1": "A", "a2": "A", "b1": "B"}, ["fps"], groups=["A", "B"])
    assert [(col.group, col.version, col.devices, col.records) for col in c.columns] == [
        ("A", 2, ("a2",), 1),
        ("A", 3, ("a1",), 1),
        ("A", None, ("a1",), 1),
        ("B", 4, ("b1",), 1),
    ]
    assert c.rows[0].values == (19.0, 20.0, 18.0, 10.0)
    assert [col.title for col in c.columns] == ["A v2", "A v3", "A vunknown", "B v4"]


def test_a_silent_group_still_has_a_column() -> None:
    c = compare([rec("a1", 1, fps=5.0)], {"a1": "A", "b1": "B"}, ["fps", "latency"], groups=["A", "B"])
    assert c.columns[1] == Column("B", None, (), 0)
    assert all(row.values[1] is None for row in c.rows)


def test_duplicates_count_once_and_bad_payloads_are_left_out() -> None:
    records = [
        rec("a1", 1, rid="same", fps=10.0),
        rec("a1", 1, rid="same", fps=10.0),  # delivered twice (at-least-once)
        {"device": "a1", "id": "p", "seq": 2, "deployment": 1, "payload": "not an object"},
        rec("a1", 3, fps="fast"),  # not a number: no sample
        rec("a1", 4, fps=float("nan")),
        rec("a1", 5, fps=True),
        rec("a1", 6, fps=30.0),
    ]
    c = compare(records, {"a1": "A"}, ["fps"])
    assert c.columns[0].records == 5
    assert c.rows[0].values == (20.0,)


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric 'speed'; known: latency"):
        compare([], {"a": "A"}, ["speed"])


def test_version_must_be_an_integer() -> None:
    c = compare([rec("a1", 1, version="3", fps=1.0), rec("a1", 2, version=True, fps=2.0)], {"a1": "A"}, ["fps"])  # type: ignore[arg-type]
    assert [(col.version, col.records) for col in c.columns] == [(None, 2)]


# ----------------------------------------------------------------- metrics


def test_latency_pools_every_frame_of_the_column() -> None:
    a = [rec("a1", 1, total_ms=[10.0, 12.0, 14.0]), rec("a2", 1, total_ms=[40.0]), rec("a1", 2, total_ms=[])]
    b = [rec("b1", 1, total_ms=[5.0, "x", None, 7.0])]  # non-numbers are skipped
    c = compare(a + b, {"a1": "A", "a2": "A", "b1": "B"}, ["latency"])
    pooled = [10.0, 12.0, 14.0, 40.0]
    assert [r.label for r in c.rows] == ["latency p50 ms", "latency p95 ms", "latency p99 ms"]
    for row, p in zip(c.rows, (50, 95, 99), strict=True):
        assert row.values[0] == pytest.approx(np.percentile(pooled, p))
        assert row.values[1] == pytest.approx(np.percentile([5.0, 7.0], p))


def test_cross_track_error_is_absolute() -> None:
    records = [rec("a1", i, sim={"cte_m": v}) for i, v in enumerate([-0.2, 0.1, -0.4, 0.3])]
    records.append(rec("a1", 9, sim="broken"))
    records.append(rec("a1", 10))  # no sim at all
    c = compare(records, {"a1": "A"}, ["cte"])
    assert c.rows[0].values[0] == pytest.approx(0.25)
    assert c.rows[1].values[0] == pytest.approx(np.percentile([0.2, 0.1, 0.4, 0.3], 95))


def test_stops_are_episodes_per_device_in_sequence_order() -> None:
    stops = [None, "estop", "estop", None, "error", None]
    records = [rec("a1", i + 1, stopped=s) for i, s in enumerate(stops)]
    records.reverse()  # arrival order does not matter, the sequence does
    records += [rec("a2", 1, stopped="drive loop ended")]  # a device that starts stopped: one episode
    c = compare(records, {"a1": "A", "a2": "A"}, ["stops"])
    assert [(r.label, r.values[0]) for r in c.rows] == [("stops", 3.0), ("stopped records", 4.0)]


def test_late_percent_and_errors() -> None:
    records = [rec("a1", 1, late=1, frames=19, errors=0), rec("a1", 2, late=3, frames=17, errors=2)]
    c = compare(records, {"a1": "A"}, ["late", "errors"])
    assert [r.values[0] for r in c.rows] == [pytest.approx(10.0), 2.0]
    empty = compare([rec("a1", 1)], {"a1": "A"}, ["late"])
    assert empty.rows[0].values == (None,)


def test_every_metric_has_help_and_rows() -> None:
    assert set(DEFAULT_METRICS) <= set(METRICS)
    for name, (text, rows) in METRICS.items():
        assert text and rows, name
        assert all(fn([]) is None or fn([]) == 0 for _, fn in rows), name  # nothing in, nothing made up


# ----------------------------------------------------------------- table


def test_table_side_by_side() -> None:
    records = [rec("a1", 1, 3, fps=19.5, total_ms=[10.0]), rec("b1", 1, 4, fps=9.75, total_ms=[20.0])]
    c = compare(records, {"a1": "A", "b1": "B"}, ["fps", "latency"], groups=["A", "B"])
    text = render_table(c, {"A": "ring=canary", "B": "ring=stable"})
    lines = text.splitlines()
    assert lines[0].split() == ["A", "v3", "B", "v4"]
    assert lines[1].split() == ["selector", "ring=canary", "ring=stable"]
    assert lines[2].split() == ["devices", "1", "1"] and lines[3].split() == ["records", "1", "1"]
    assert lines[4].split() == ["fps", "mean", "19.5", "9.750"]
    assert lines[5].split() == ["latency", "p50", "ms", "10", "20"]
    doc = as_json(c)
    assert json.loads(json.dumps(doc))["rows"][0] == {"metric": "fps", "label": "fps mean", "values": [19.5, 9.75]}


# ----------------------------------------------------------------- the picture


def test_png_has_the_computed_size_and_a_bar_per_column(tmp_path: Path) -> None:
    import cv2

    from edgectl.compare_chart import PALETTE, chart_size, draw_chart

    records = [rec("a1", 1, 3, fps=20.0, total_ms=[10.0, 11.0]), rec("b1", 1, 4, fps=10.0, total_ms=[30.0])]
    c = compare(records, {"a1": "A", "b1": "B"}, ["fps", "latency"], groups=["A", "B"])
    out = tmp_path / "sub" / "ab.png"
    size = draw_chart(c, out, "test")
    img = cv2.imread(str(out))
    assert img is not None and (img.shape[1], img.shape[0]) == size == chart_size(c)
    for colour in PALETTE[:2]:  # each group's bars are drawn in its colour
        assert int(np.all(img == np.array(colour, np.uint8), axis=2).sum()) > 500
    assert int((img < 250).any(axis=2).sum()) > 5000  # text, axes, bars: not an empty canvas


# ----------------------------------------------------------------- command line


def test_parse_groups() -> None:
    groups = parse_groups(["A=ring=canary", "B=ring=stable,hw!=rev-a"])
    assert list(groups) == ["A", "B"]
    assert groups["A"].matches({"ring": "canary"}) and not groups["B"].matches({"ring": "stable", "hw": "rev-a"})


@pytest.mark.parametrize(
    ("specs", "problem"),
    [
        (["A=ring=canary"], "at least two --group"),
        (["ring=canary", "B=x"], None),  # NAME "ring", selector "canary": valid (key present)
        (["A", "B=x"], "--group 'A': expected NAME=SELECTOR"),
        (["A=x", "A=y"], "group A is given twice"),
        (["A=x", "B=x=="], "--group 'B=x=='"),
        (["-A=x", "B=y"], "expected NAME=SELECTOR"),
    ],
)
def test_parse_groups_errors(specs: list[str], problem: str | None) -> None:
    if problem is None:
        parse_groups(specs)
        return
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_groups(specs)


def test_groups_must_not_overlap() -> None:
    selectors = {"A": parse_selector("ring=canary"), "B": parse_selector("site=turin")}
    labels = {"d1": {"ring": "canary"}, "d2": {"site": "turin"}, "d3": None, "d4": {"ring": "stable"}}
    assert assign_groups(labels, selectors) == {"d1": "A", "d2": "B"}
    with pytest.raises(ValueError, match="device d5 matches groups A and B"):
        assign_groups({**labels, "d5": {"ring": "canary", "site": "turin"}}, selectors)


def test_compare_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from edgectl.cli import main

    assert main(["compare", "--group", "A=ring=canary"]) == 2
    assert "at least two --group" in capsys.readouterr().err
    assert main(["compare", "-g", "A=x", "-g", "B=y", "--duration", "0"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["compare", "-g", "A=x", "-g", "B=y", "--metric", "speed"])
    assert info.value.code == 2
