"""The one way the agent runs blocking work off the event loop: `run_blocking`.

Blocking work is: podman-py calls (runtime/podman.py, the trust cache's local image lookup),
the OCI registry client (requests, trust/registry.py) and the TPM worker's pipe
(attestation/). Each call gets a daemon thread of its own, whose result is handed back to the
awaiting coroutine with `call_soon_threadsafe`.

Not `asyncio.to_thread` / `run_in_executor`: executor threads are joined when the loop and the
interpreter shut down (`asyncio.run` waits for the default executor, without a time limit on
Python 3.11), so one blocking call still in flight (a pull can take minutes, a TPM can hang)
would hold up the agent's stop past systemd's TimeoutStopSec. A daemon thread is simply
abandoned; its result is dropped if nobody waits any more (the awaiting task was cancelled).
A thread per call costs tens of microseconds, nothing next to a Unix-socket HTTP round trip.

Two exceptions keep one dedicated executor thread: the telemetry queue (telemetry/component.py),
whose SQLite connection lives on it so that its writes stay in order on one connection, and the
replay floor file's writer (edge_agent/desired/manager.py), which writes after every accepted
document: starting a thread makes the event loop wait until the new thread runs, which on a busy
machine delayed the next document.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], *args: Any, name: str = "blocking-call") -> T:
    """`fn(*args)` in a daemon thread; its result or exception, awaited."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver_result(value: T) -> None:
        if not future.done():
            future.set_result(value)

    def deliver_error(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def runner() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            call_soon_from_thread(loop, deliver_error, exc)
            return
        call_soon_from_thread(loop, deliver_result, value)

    threading.Thread(target=runner, name=name, daemon=True).start()
    return await future


def call_soon_from_thread(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Hand `fn(*args)` to the loop from another thread; False when the loop is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True
