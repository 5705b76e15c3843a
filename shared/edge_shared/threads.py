"""The one way the agent runs blocking work off the event loop: `run_blocking`.

Blocking work is: podman-py calls (runtime/podman.py, the trust cache's local image lookup),
the OCI registry client (requests, trust/registry.py), the TPM worker's pipe (attestation/)
and fsyncs that must not stall the loop (the replay floor, desired/manager.py). Each call runs
on a daemon thread of its own (never queued behind another blocking call), whose result is
handed back to the awaiting coroutine with `call_soon_threadsafe`. A thread that finished its
call waits IDLE_S for the next one before it ends: starting a thread makes the caller wait
until the new thread runs (Thread.start), which with other threads holding the interpreter lock
took about a millisecond of the event loop per call in bench/fleet_bench.py; handing the call to
an idle thread does not wait.

Not `asyncio.to_thread` / `run_in_executor`: executor threads are joined when the loop and the
interpreter shut down (`asyncio.run` waits for the default executor, without a time limit on
Python 3.11), so one blocking call still in flight (a pull can take minutes, a TPM can hang)
would hold up the agent's stop past systemd's TimeoutStopSec. A daemon thread is simply
abandoned; its result is dropped if nobody waits any more (the awaiting task was cancelled).

Two exceptions keep one dedicated executor thread: the telemetry queue (telemetry/component.py),
whose SQLite connection lives on it so that its writes stay in order on one connection, and the
replay floor file's writer (edge_agent/desired/manager.py), which writes after every accepted
document: starting a thread makes the event loop wait until the new thread runs, which on a busy
machine delayed the next document.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
IDLE_S = 10.0  # how long a finished thread waits for another call before it ends
IDLE_NAME = "blocking-idle"

_Call = Callable[[], None]
_calls: queue.SimpleQueue[tuple[str, _Call]] = queue.SimpleQueue()
_lock = threading.Lock()
_idle = 0  # threads waiting for a call, less the calls handed to them and not yet taken


def _forget_threads() -> None:
    """A forked child has none of its parent's threads: none is idle there."""
    global _calls, _lock, _idle
    _calls, _lock, _idle = queue.SimpleQueue(), threading.Lock(), 0


os.register_at_fork(after_in_child=_forget_threads)


def _worker(name: str, call: _Call) -> None:
    """Run `call`, then the calls handed to this thread while it waits, until IDLE_S pass with none."""
    global _idle
    me = threading.current_thread()
    while True:
        me.name = name
        call()
        me.name = IDLE_NAME
        with _lock:
            _idle += 1
        try:
            name, call = _calls.get(timeout=IDLE_S)
            continue
        except queue.Empty:
            pass
        with _lock:  # a call handed over just now is taken; else this thread is no longer idle
            try:
                name, call = _calls.get_nowait()
            except queue.Empty:
                _idle -= 1
                return


def _start(name: str, call: _Call) -> None:
    """`call` on an idle thread, or on a new one when none is idle."""
    global _idle
    with _lock:
        if _idle > 0:
            _idle -= 1
            _calls.put((name, call))
            return
    threading.Thread(target=_worker, args=(name, call), name=name, daemon=True).start()


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

    _start(name, runner)
    return await future


def call_soon_from_thread(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Hand `fn(*args)` to the loop from another thread; False when the loop is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True
