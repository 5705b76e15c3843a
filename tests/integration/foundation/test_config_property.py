"""Property: a config that `edge-agent config check` accepts never crashes `edge-agent run`.

Hypothesis generates config files from hostile and plausible values (control characters, huge
strings, odd paths and names, IPv6 literals, wrong types); each is loaded the way `config check`
loads it. Refused files must be refused with one line per problem naming the file. Accepted files
are run: the real agent (all components, in this process) must reach READY, then stop cleanly
when asked, with no error logged. Everything it touches is under a fresh temp dir; the broker and
podman addresses are loopback ones where nothing listens (tests only talk to 127.0.0.1/::1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devinfra.procs import free_port
from edge_agent.config import ConfigError, load_config
from edge_agent.daemon import Agent
from edge_shared.names import DEVICE_ID_PATTERN, MODULE_NAME_PATTERN, STREAM_NAME_PATTERN

# Text that includes what breaks things: NUL and control characters, non-ASCII, long runs.
hostile_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
long_text = st.integers(100, 80_000).map(lambda n: "a" * n)
names = st.one_of(hostile_text, long_text)


def path_name(valid: bool) -> st.SearchStrategy[str]:
    """One path component (never '/', '.' or '..': the run must stay inside its temp dir)."""
    if valid:
        return st.from_regex(r"^[a-z0-9_-]{1,12}$", fullmatch=True)
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1,
                   max_size=300).filter(lambda s: s not in (".", ".."))


FIELDS = ("device.id", "mqtt.host", "mqtt.port", "mqtt.topic_prefix", "mqtt.username", "mqtt.keepalive_s",
          "state.dir", "telemetry.runtime_dir", "telemetry.modules", "telemetry.streams", "podman.socket",
          "logging.level")


@st.composite
def configs(draw: st.DrawFn, base: str, broker_port: int) -> dict[str, dict[str, Any]]:
    """Plausible values, except (in most examples) one field, which gets hostile ones. Hostile values
    may still be valid; whatever `config check` accepts is run."""
    hostile = draw(st.sampled_from((*FIELDS, None)))

    def value(field: str, valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad if field == hostile else valid)

    loopback = st.sampled_from(["127.0.0.1", "::1", "localhost", "[::1]", "127.0.0.2"])
    not_a_dns_name = names.filter(lambda s: not s or any(not (c.isascii() and (c.isalnum() or c in ".-")) for c in s))
    device = {"id": value("device.id", st.from_regex(DEVICE_ID_PATTERN, fullmatch=True), names)}
    mqtt: dict[str, Any] = {
        "host": value("mqtt.host", loopback, not_a_dns_name),
        "port": value("mqtt.port", st.just(broker_port), st.one_of(st.integers(-5, 70_000), hostile_text)),
        "topic_prefix": value("mqtt.topic_prefix", st.from_regex(r"^[A-Za-z0-9_.-]{1,20}(/[A-Za-z0-9_.-]{1,20}){0,3}$",
                                                                 fullmatch=True), names),
        "keepalive_s": value("mqtt.keepalive_s", st.integers(5, 3600), st.one_of(st.integers(-10, 5000), hostile_text)),
    }
    if hostile == "mqtt.username" or draw(st.booleans()):
        mqtt["username"] = value("mqtt.username", st.from_regex(r"^[a-z0-9-]{1,20}$", fullmatch=True), names)
    state = {"dir": f"{base}/s/{value('state.dir', path_name(True), path_name(False))}"}
    telemetry: dict[str, Any] = {
        "runtime_dir": f"{base}/r/{value('telemetry.runtime_dir', path_name(True), path_name(False))}",
        "modules": value("telemetry.modules", st.lists(st.from_regex(r"^[a-z0-9][a-z0-9_.-]{0,15}$", fullmatch=True),
                                                       max_size=3),
                         st.lists(st.one_of(st.from_regex(MODULE_NAME_PATTERN, fullmatch=True), hostile_text),
                                  min_size=1, max_size=3)),
    }
    stream = value("telemetry.streams", st.from_regex(STREAM_NAME_PATTERN, fullmatch=True), hostile_text)
    telemetry["streams"] = {stream: {"priority": value("telemetry.streams", st.integers(0, 9), st.integers(-1, 10))}}
    podman = {"socket": value(
        "podman.socket",
        st.one_of(st.builds(lambda n: f"unix://{base}/p/{n}.sock", path_name(True)),
                  st.just(f"tcp://127.0.0.1:{broker_port}")),
        st.one_of(st.builds(lambda n: f"unix://{base}/p/{n}.sock", path_name(False)), names),
    )}
    logging_ = {"level": value("logging.level", st.sampled_from(["debug", "info", "warning", "error"]),
                               st.one_of(hostile_text, st.just("verbose"))), "format": "text"}
    return {"device": device, "mqtt": mqtt, "state": state, "telemetry": telemetry, "podman": podman,
            "logging": logging_, "attestation": {"enabled": False}}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def toml_text(doc: dict[str, dict[str, Any]]) -> str:
    out = []
    for table, keys in doc.items():
        out.append(f"[{table}]")
        subtables = {k: v for k, v in keys.items() if isinstance(v, dict)}
        out += [f"{k} = {toml_value(v)}" for k, v in keys.items() if not isinstance(v, dict)]
        for name, sub in subtables.items():
            for sub_name, fields in sub.items():
                out.append(f"[{table}.{name}.{json.dumps(sub_name, ensure_ascii=False)}]")
                out += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    return "\n".join(out) + "\n"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run_until_ready_then_stop(agent: Agent, timeout: float = 20) -> int:
    runner = asyncio.ensure_future(agent.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not agent._ready:
        if runner.done():
            return await runner  # it stopped (or raised) before READY: the assertion below shows why
        if loop.time() > deadline:
            runner.cancel()
            raise AssertionError("the agent did not become ready")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # let every component run a moment
    agent._request_stop(signal.SIGTERM)
    return await asyncio.wait_for(runner, timeout)


outcomes: dict[str, float] = {"refused": 0, "ran": 0, "seconds": 0.0}


def check_then_run(text: str, base: Path) -> None:
    path = base / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        outcomes["refused"] += 1
        assert exc.problems
        for problem in exc.problems:
            assert "\n" not in str(problem) and str(problem).startswith(f"{path}:"), str(problem)
        return
    outcomes["ran"] += 1
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    collect = Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    try:
        started = time.monotonic()
        code = asyncio.run(run_until_ready_then_stop(Agent(config, path)))
        outcomes["seconds"] += time.monotonic() - started
    finally:
        root.setLevel(level)
        root.removeHandler(collect)
        for sig, handler in saved.items():  # Agent.run ignores SIGINT/SIGTERM once stopping
            signal.signal(sig, handler)
    errors = [f"{r.getMessage()} {getattr(r, 'EVENT', '')}" for r in collect.records if r.levelno >= logging.ERROR]
    assert code == 0 and not errors, f"config check passed but run failed (rc {code}): {errors}\n{text[:2000]}"
    assert any(getattr(r, "EVENT", None) == "agent.stopped" for r in collect.records)


def test_config_check_passes_implies_run_starts_and_stops_cleanly() -> None:
    broker_port = free_port()  # nothing listens there: the twin keeps retrying, as offline

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory(prefix="cfg") as tmp:
            doc = data.draw(configs(tmp, broker_port))
            check_then_run(toml_text(doc), Path(tmp))

    prop()
    print(f"\n{outcomes['ran']:.0f} accepted configs ran and stopped cleanly ({outcomes['seconds']:.1f} s in run()); "
          f"{outcomes['refused']:.0f} refused")
    assert outcomes["ran"] >= 5, f"too few generated configs passed the check to test run(): {outcomes}"
    assert outcomes["refused"] >= 5, f"too few hostile configs: {outcomes}"
