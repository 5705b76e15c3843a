"""Run a blocking call (urllib: the trust passthrough) off the event loop in a daemon thread.

Not `run_in_executor`: executor threads are joined when the interpreter exits, so one blocking
call still in flight (a pull can take minutes) would hold up the agent's stop past systemd's
TimeoutStopSec. A daemon thread is simply abandoned; its result is dropped if nobody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_blocking(fn: Callable[[], T], name: str = "blocking-call") -> T:
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
            value = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(deliver_error, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver_result, value)

    threading.Thread(target=runner, name=name, daemon=True).start()
    return await future
