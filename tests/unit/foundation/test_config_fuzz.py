"""The config fuzzer, check side: over a thousand generated config files (tests/config_corpus.py,
deterministic by seed: EDGE_CONFIG_FUZZ_SEED, default 29) go through the real `edge-agent config
check` (its main(), in this process, each file with its own environment). None may end in a
traceback; every refusal is FILE:LINE: KEY: ... naming the key the case is about; every file that
passes stays inside its temp dir and on loopback (so the run side may start it).

The run side (the real agent reaching READY on the files that pass, and stopping cleanly) is
tests/integration/foundation/test_config_fuzz_run.py.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from tests.config_corpus import (
    SEED,
    Case,
    Outcome,
    base_doc,
    config_check,
    corpus,
    environment,
    make_tls_files,
    named_cases,
    touches_only,
)

FUZZ_SEED = int(os.environ.get("EDGE_CONFIG_FUZZ_SEED", SEED))


PROBLEM = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>[^:]*): (?P<message>.+)$")


def problems(outcome: Outcome) -> list[re.Match[str]]:
    lines = [line.removeprefix("warning: ") for line in outcome.err.splitlines()]
    matches = [PROBLEM.match(line) for line in lines]
    bad = [line for line, m in zip(lines, matches, strict=True) if m is None]
    assert not bad, f"{outcome.case.name}: not FILE:LINE: KEY: lines: {bad}"
    return [m for m in matches if m is not None]


def assert_outcome(outcome: Outcome, base: Path) -> None:
    case, name = outcome.case, outcome.case.name
    assert "Traceback" not in outcome.err + outcome.out, f"{name}: traceback\n{outcome.err}"
    assert outcome.code in (0, 2), f"{name}: exit {outcome.code}\n{outcome.err}"
    found = problems(outcome)
    for match in found:
        assert match["file"] == str(outcome.path), f"{name}: {match.group(0)}"
    if outcome.code == 2:
        assert found, f"{name}: refused without a problem line"
        assert all(m["key"] for m in found), f"{name}: a refusal without its key: {outcome.err}"
    if case.expect == "refused":
        assert outcome.code == 2, f"{name}: expected a refusal, got exit {outcome.code}\n{case.text!r}"
    if case.expect in ("passes", "warns"):
        assert outcome.code == 0, f"{name}: expected to pass\n{outcome.err}"
        assert (case.expect == "warns") == bool(found), f"{name}: warnings {outcome.err!r}"
    if case.key is not None and case.expect in ("refused", "warns"):
        keys = [m["key"] for m in found]
        assert case.key in keys, f"{name}: expected a line for {case.key}, got {keys}"
    if outcome.code == 0:
        with environment({"CREDENTIALS_DIRECTORY": None, **case.env}):
            config = parse_config(outcome.path.read_text(), str(outcome.path), base_dir=outcome.path.parent)
        reason = touches_only(config, base)
        assert reason is None, f"{name}: passes check but a run would leave the test's dir: {reason}"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # Short: Unix socket paths under it must fit 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="cf"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_fuzzed_config_files_never_crash_and_name_file_line_key(base: Path) -> None:
    tls = make_tls_files(base / "tls")
    cases = corpus(base, broker_port=1883, tls=tls, seed=FUZZ_SEED)
    assert len(cases) >= 1000
    (base / "cases").mkdir()
    counts = {"passes": 0, "warns": 0, "refused": 0}
    for number, case in enumerate(cases):
        outcome = config_check(case, base / "cases" / f"{number:04d}.toml")
        assert_outcome(outcome, base)
        if outcome.code == 2:
            counts["refused"] += 1
        else:
            counts["warns" if outcome.err else "passes"] += 1
    print(f"\nconfig fuzzer (seed {FUZZ_SEED}): {len(cases)} files; {counts['passes']} pass, "
          f"{counts['warns']} pass with a warning, {counts['refused']} refused; no traceback")
    # Both outcomes in number: a corpus that only fails (or only passes) tests nothing.
    assert counts["refused"] >= 500 and counts["passes"] + counts["warns"] >= 100, counts


@pytest.fixture(scope="module")
def named(base: Path) -> dict[str, Case]:
    numbers = iter(range(100_000, 200_000))
    cases = named_cases(base, 1883, make_tls_files(base / "tls-named"), lambda: base_doc(base, next(numbers), 1883))
    return {c.name: c for c in cases}


# What a technician reads for each case found against main (issue 29): the key, and why.
NAMED_MESSAGES = {
    "nesting 496 deep (997 bytes)": "nested 496 deep; expected at most 32",
    "state.dir /proc": "cannot create a file in /proc",
    "state.dir /sys/kernel": "cannot create a file in /sys/kernel",
    "state.dir dangling symlink": "which does not exist; expected a directory",
    "state.dir symlink loop": "is a symlink loop",
    "telemetry.runtime_dir regular file": "exists and is not a directory",
    'logging.format = "journal" without journald': "the agent logs text to stderr instead",
    'mqtt.password = "env:UNSET"': "environment variable EDGE_FUZZ_UNSET is not set",
    "credential without CREDENTIALS_DIRECTORY": "CREDENTIALS_DIRECTORY is not set",
    "garbage ca_file": "not a usable PEM CA file",
    "cert_file without key_file": "expected key_file, or the key in the same PEM file",
    'mqtt.host = "[::1]"': "",
    "port = true": "got True; expected TCP port",
    'port = "34003"': "got '34003'; expected TCP port",
    "tls = 1": "got 1; expected true or false",
    'local_deploy = "yes"': "got 'yes'; expected true or false",
    "min_free_mb = 1.0": "got 1.0; expected free megabytes",
    "stop_grace_s = true": "got True; expected seconds",
    'endpoint "h:\u0663" (Arabic-Indic digit)': "is not a number 1-65535",
    'endpoint "h:1883 "': "contains white space",
    'podman.socket = "tcp://127.0.0.1:0"': "port 0 is not 1-65535",
    "backoff_initial_s = 5e-324": "got 5e-324; expected first restart delay in seconds, 0.1-3600",
}


def test_named_cases_are_all_in_the_corpus(named: dict[str, Case]) -> None:
    assert list(named) == list(NAMED_MESSAGES)


@pytest.mark.parametrize("name", list(NAMED_MESSAGES))
def test_named_case(name: str, named: dict[str, Case], base: Path) -> None:
    case = named[name]
    outcome = config_check(case, base / f"named-{list(NAMED_MESSAGES).index(name)}.toml")
    assert_outcome(outcome, base)
    assert NAMED_MESSAGES[name] in outcome.err, outcome.err
    if name == 'mqtt.host = "[::1]"':
        config = parse_config(case.text if isinstance(case.text, str) else "", "x")
        assert config.mqtt.host == "::1"
        assert [str(e) for e in config.mqtt.broker_endpoints()] == ["[::1]:1883"]
