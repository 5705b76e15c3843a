"""The deterministic explorer (sim.py) in the test suite.

EXPLORER_SCHEDULES (default 2000) schedules with crash points run in CI; EXPLORER_SEED=N replays
one schedule exactly (the seed a failure prints), as does `python -m tests.explorer --seed N`.
The named seeds below are regressions: each is a schedule that reaches the situation named (the
test checks it still does) and keeps every invariant."""

from __future__ import annotations

import os

import pytest

from tests.explorer.run import DEFAULT_SCHEDULES, explore, summary

# seed -> what its schedule goes through (a feature counted by sim.py)
REGRESSION_SEEDS = {
    # A pass judged a version failed while a newer one was committed (with a last-known-good
    # version to return to): the verdict about the replaced version must not roll `current` back
    # over the newer one (issue 24's first race). With the blind rollback write planted back, this
    # seed breaks current-moves-back-only-by-rollback ("current went 5 -> 1; version 5 is
    # activating, lkg 1").
    "rollback_during_newer_commit": (328, "verdict_about_a_replaced_version"),
    # Power cut while a version is on probation: after the restart it must still end good or
    # rolled back, never stay "probation" with nothing left to do.
    "stuck_probation": (4, "restart_during_probation"),
    # 429/5xx/truncated manifests while verifying: retried, and the version is committed without
    # a new version from the fleet.
    "transient_rejection": (0, "transient_failure_then_committed"),
}


def test_explorer_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    seed = os.environ.get("EXPLORER_SEED")
    seeds = [int(seed)] if seed else range(int(os.environ.get("EXPLORER_SCHEDULES", DEFAULT_SCHEDULES)))
    stats, wall, cpu = explore(seeds)
    with capsys.disabled():
        print("\n" + summary(stats, wall, cpu))
    assert stats.schedules == len(seeds) and stats.crashes > 0 and stats.checks > stats.steps


@pytest.mark.parametrize("name", sorted(REGRESSION_SEEDS))
def test_regression_seed(name: str) -> None:
    seed, feature = REGRESSION_SEEDS[name]
    stats, _, _ = explore([seed])
    assert stats.features.get(feature, 0) > 0, f"seed {seed} no longer reaches {feature}: pick a new one"
