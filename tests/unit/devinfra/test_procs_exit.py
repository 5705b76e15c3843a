"""Which exit signals devinfra's process helpers take over to stop their children (procs.py)."""

from __future__ import annotations

import signal

from devinfra.procs import EXIT_SIGNALS, signals_to_take_over


def custom(signum: int, frame: object) -> None:
    """Someone else's handler."""


def test_default_handlers_are_taken_over() -> None:
    handlers = {s: signal.SIG_DFL for s in EXIT_SIGNALS}
    assert signals_to_take_over(handlers, main_thread=True) == [signal.SIGTERM, signal.SIGHUP]


def test_a_handler_already_installed_is_left_alone() -> None:
    handlers = {signal.SIGTERM: custom, signal.SIGHUP: signal.SIG_DFL}
    assert signals_to_take_over(handlers, main_thread=True) == [signal.SIGHUP]


def test_an_ignored_signal_stays_ignored() -> None:
    handlers = {signal.SIGTERM: signal.SIG_DFL, signal.SIGHUP: signal.SIG_IGN}  # e.g. under nohup
    assert signals_to_take_over(handlers, main_thread=True) == [signal.SIGTERM]


def test_nothing_outside_the_main_thread() -> None:
    handlers = {s: signal.SIG_DFL for s in EXIT_SIGNALS}
    assert signals_to_take_over(handlers, main_thread=False) == []
