"""Broker endpoints: parsing, the config field, and the choice of the next broker (pure), walked
through the outages a fleet sees: first broker gone, both gone, first back."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ConfigError, parse_config
from edge_shared.broker_endpoints import MAX_ENDPOINTS, Choice, Endpoint, choose_endpoint, endpoint_list, parse_endpoint
from edge_shared.mqtt_params import broker_params
from edge_shared.retry import Failure, Retries
from edge_shared.status_view import render_status

# ----------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt-a.example:8883", Endpoint("mqtt-a.example", 8883)),
        ("mqtt-a.example", Endpoint("mqtt-a.example", 1883)),
        ("10.0.0.7:1", Endpoint("10.0.0.7", 1)),
        ("[::1]:8883", Endpoint("::1", 8883)),
        ("[fe80::1]", Endpoint("fe80::1", 1883)),
        ("::1", Endpoint("::1", 1883)),
        ("h:65535", Endpoint("h", 65535)),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text, 1883) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty endpoint"),
        ("h:", "no port after ':'"),
        (":8883", "no host"),
        ("h:0", "not a number 1-65535"),
        ("h:65536", "not a number 1-65535"),
        ("h:88x", "not a number 1-65535"),
        ("[::1", "'[' without ']'"),
        ("[::1]8883", "expected [IPv6 address]:port"),
        ("[]:1", "no host"),
        (" 10.0.0.7:1", "contains white space"),
        ("h:1883 ", "contains white space"),
        ("h:\u0663", "not a number 1-65535"),  # an Arabic-Indic digit three: no silent conversion
        ("h:\uff11883", "not a number 1-65535"),  # a fullwidth digit one
    ],
)
def test_parse_endpoint_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_endpoint(text, 1883)


def test_str_round_trips() -> None:
    for endpoint in (Endpoint("a.example", 1), Endpoint("::1", 8883), Endpoint("10.1.2.3", 65535)):
        assert parse_endpoint(str(endpoint), 1) == endpoint
    assert str(Endpoint("::1", 8883)) == "[::1]:8883"


def test_endpoint_list_puts_host_first_and_keeps_one_of_each() -> None:
    a, b, c = Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 3)
    assert endpoint_list(a, []) == (a,)
    assert endpoint_list(a, [a, b]) == (a, b)  # host:port written again in endpoints
    assert endpoint_list(a, [b, a, c, b]) == (a, b, c)


# ----------------------------------------------------------------- the config field


def _config(mqtt: str) -> str:
    return f'[device]\nid = "d1"\n[mqtt]\nhost = "mqtt-a"\nport = 8883\n{mqtt}'


def test_config_endpoints_default_port_and_order() -> None:
    config = parse_config(_config('endpoints = ["mqtt-a:8883", "mqtt-b", "[::1]:9000"]\n'))
    assert config.mqtt.broker_endpoints() == (Endpoint("mqtt-a", 8883), Endpoint("mqtt-b", 8883), Endpoint("::1", 9000))
    assert broker_params(config.mqtt, "d1").all_endpoints == config.mqtt.broker_endpoints()
    # Without endpoints: the one broker of host/port, as before.
    single = parse_config(_config(""))
    assert broker_params(single.mqtt, "d1").all_endpoints == (Endpoint("mqtt-a", 8883),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["mqtt-b:0"]', "(entry 1: 'mqtt-b:0': port '0' is not a number 1-65535)"),
        ('["ok:1", "bad_host:1"]', "(entry 2 ('bad_host:1'): 'bad_host' is not a host name"),
        ('["ok:1", ""]', "(entry 2: empty endpoint; expected host:port)"),
        ('"mqtt-b:1"', "mqtt.endpoints"),
        ("[1883]", "mqtt.endpoints"),
        ("[" + ", ".join(f'"h{i}:1"' for i in range(MAX_ENDPOINTS + 1)) + "]", "mqtt.endpoints"),
    ],
)
def test_config_endpoints_errors_name_the_field(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(f"endpoints = {value}\n"), "config.toml")
    assert message in str(info.value), str(info.value)
    # One line, naming the file, line and field, and what is expected.
    assert str(info.value).startswith("config.toml:6: mqtt.endpoints"), str(info.value)
    assert "expected more brokers to move to" in str(info.value) and "\n" not in str(info.value)


def test_config_example_documents_endpoints(repo_root: Path) -> None:
    text = (repo_root / "config/config.toml").read_text()
    assert "# endpoints = [" in text


# ----------------------------------------------------------------- choosing the next broker


def _failed(previous: Failure | None, now: float, initial: float = 1.0, cap: float = 60.0) -> Failure:
    from edge_shared.retry import next_failure

    return next_failure(previous, "refused", now, initial, cap)


def test_no_failures_means_the_first() -> None:
    assert choose_endpoint(1, {}, 0.0) == Choice(0, 0.0)
    assert choose_endpoint(3, {}, 100.0) == Choice(0, 0.0)


def test_no_endpoints_is_an_error() -> None:
    with pytest.raises(ValueError):
        choose_endpoint(0, {}, 0.0)


def test_first_gone_moves_to_the_second_at_once() -> None:
    failures = {0: _failed(None, 10.0)}
    assert choose_endpoint(2, failures, 10.0) == Choice(1, 0.0)


def test_all_failing_waits_for_the_one_due_first() -> None:
    failures = {0: _failed(_failed(None, 0.0), 1.0), 1: _failed(None, 1.5)}  # 0: next at 3.0, 1: next at 2.5
    assert choose_endpoint(2, failures, 1.5) == Choice(1, 1.0)
    # A tie goes to the first in order.
    tie = {0: Failure("x", 1, 0.0, 5.0, 5.0), 1: Failure("x", 1, 0.0, 5.0, 5.0)}
    assert choose_endpoint(2, tie, 4.0) == Choice(0, 1.0)


def test_back_to_the_first_once_its_backoff_passed() -> None:
    failures = {0: _failed(None, 0.0), 1: _failed(None, 30.0)}  # 0 failed long ago, 1 just now
    assert choose_endpoint(2, failures, 30.0) == Choice(0, 0.0)


def test_single_endpoint_waits_its_own_backoff() -> None:
    failure = _failed(_failed(_failed(None, 0.0), 1.0), 3.0)  # 1, 2, 4 s
    assert failure.delay == 4.0
    assert choose_endpoint(1, {0: failure}, 3.0) == Choice(0, 4.0)


def test_a_whole_outage_walked_through() -> None:
    """Two brokers, the first dies, then both, then the first returns: what the session does with
    retry.Retries as its failure book (the same calls as TwinSession._reconnect_forever)."""
    retries = Retries(initial_s=1.0, cap_s=8.0)
    now = 0.0

    def choose() -> Choice:
        failures = {i: f for i in range(2) if (f := retries.get(str(i))) is not None}
        return choose_endpoint(2, failures, now)

    assert choose() == Choice(0, 0.0)  # connected to A
    retries.failed("0", "lost", now)  # A is gone
    assert choose() == Choice(1, 0.0)  # to B at once
    retries.succeeded("1")  # connected to B; A stays in its backoff
    now = 100.0
    retries.failed("1", "lost", now)  # B is gone too; A's backoff passed long ago
    assert choose() == Choice(0, 0.0)
    retries.failed("0", "refused", now)  # A still down (its 2nd failure: 2 s)
    choice = choose()
    assert choice.index == 1 and choice.wait_s == pytest.approx(1.0)  # B, 1 s after its loss
    tried = []
    start = now
    for _ in range(10):  # both refuse: each one's backoff grows up to the cap, and both are tried
        now += choice.wait_s
        tried.append(choice.index)
        retries.failed(str(choice.index), "refused", now)
        choice = choose()
        assert 0 <= choice.wait_s <= 8.0
    assert set(tried) == {0, 1}
    assert [retries.get(i).delay for i in ("0", "1")] == [8.0, 8.0]  # type: ignore[union-attr]
    assert now - start > 10 * 1.0  # slower than retrying at the initial delay
    retries.succeeded(str(choice.index))  # one returns: its failures are forgotten
    assert retries.get(str(choice.index)) is None


@given(
    st.lists(st.one_of(st.none(), st.tuples(st.floats(0, 100), st.floats(0, 60))), min_size=1, max_size=MAX_ENDPOINTS),
    st.floats(0, 200),
)
def test_choice_properties(spec: list[tuple[float, float] | None], now: float) -> None:
    failures = {i: Failure("e", 1, s[0], s[0] + s[1], s[1]) for i, s in enumerate(spec) if s is not None}
    choice = choose_endpoint(len(spec), failures, now)
    assert 0 <= choice.index < len(spec)
    due = [i for i in range(len(spec)) if i not in failures or failures[i].next_at <= now]
    if due:  # never wait while some endpoint is due, and prefer the configured order
        assert choice == Choice(min(due), 0.0)
    else:  # otherwise the soonest, and exactly until then
        soonest = min(f.next_at for f in failures.values())
        assert failures[choice.index].next_at == soonest and choice.wait_s == pytest.approx(soonest - now)
        assert all(failures[i].next_at > soonest for i in range(choice.index))


# ----------------------------------------------------------------- status


def test_status_shows_the_connected_endpoint() -> None:
    broker = {"endpoint": "b:8883", "connected": True, "index": 2, "endpoints": ["a:8883", "b:8883"]}
    text = render_status({"reported": {"broker": broker}})
    assert "broker      connected to b:8883 (endpoint 2 of 2)" in text
    down = render_status({"reported": {"broker": {**broker, "connected": False}}})
    assert "broker      NOT CONNECTED (last b:8883 (endpoint 2 of 2)); trying a:8883, b:8883" in down
    single = render_status(
        {"reported": {"broker": {"endpoint": "a:1", "connected": True, "index": 1, "endpoints": ["a:1"]}}}
    )
    assert "broker      connected to a:1\n" in single + "\n"


# ----------------------------------------------------------------- edgectl


def test_edgectl_endpoint_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgectl.cli import build_parser, main
    from edgectl.config import load_fleet_config

    monkeypatch.setenv("EDGECTL_CONFIG", str(tmp_path / "none.toml"))  # no operator file is read
    args = build_parser().parse_args(["devices", "--broker", "a", "--endpoint", "b:2", "--endpoint", "[::1]:3"])
    config = load_fleet_config(None, {"host": args.broker, "endpoints": args.endpoints})
    assert config.mqtt.broker_endpoints() == (Endpoint("a", 1883), Endpoint("b", 2), Endpoint("::1", 3))
    assert main(["telemetry", "dev1", "--endpoint", "b:0"]) == 2
    assert "--endpoint 'b:0': port '0' is not a number 1-65535" in capsys.readouterr().err
