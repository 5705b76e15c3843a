"""The broker configuration we ship and the one the tests and benches start agree on the
per-client queue bound that lets edgectl read a whole fleet (docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path

from devinfra.mosquitto import MAX_QUEUED_MESSAGES, mosquitto_conf

REPO = Path(__file__).resolve().parents[3]


def option(conf: str, name: str) -> list[str]:
    return [line.split()[1] for line in conf.splitlines() if line.split()[:1] == [name]]


def test_the_shipped_broker_reads_ten_thousand_devices() -> None:
    shipped = option((REPO / "config" / "mosquitto" / "mosquitto.conf").read_text(), "max_queued_messages")
    assert shipped == [str(MAX_QUEUED_MESSAGES)]
    assert MAX_QUEUED_MESSAGES >= 3 * 10_000  # desired, reported and presence of each device at once


def test_test_brokers_start_with_the_shipped_bound_and_extra_lines_win(tmp_path: Path) -> None:
    conf = mosquitto_conf(tmp_path, 1883, anonymous=True, extra="max_queued_messages 0\n")
    assert option(conf, "max_queued_messages") == [str(MAX_QUEUED_MESSAGES), "0"]  # mosquitto keeps the last
