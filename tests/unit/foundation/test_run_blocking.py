"""run_blocking: each call on a thread of its own, finished threads taken again, results and
errors handed back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edge_shared import threads
from edge_shared.threads import run_blocking


async def idle_thread() -> None:
    """Until a thread has finished its call and waits for the next (it says so just after it
    handed its result over)."""
    async with asyncio.timeout(10):
        while threads._idle == 0:
            await asyncio.sleep(0.001)


async def test_a_finished_thread_takes_the_next_call() -> None:
    await run_blocking(threading.get_ident, name="first")
    await idle_thread()
    before = {t.ident for t in threading.enumerate()}
    second = await run_blocking(threading.get_ident, name="second")
    assert second in before  # no thread was started for it


async def test_a_call_that_blocks_does_not_hold_up_the_next() -> None:
    release = threading.Event()
    blocked = asyncio.ensure_future(run_blocking(release.wait, 30, name="held"))
    try:
        # Returns although the first call is still running: it ran on another thread.
        other = await asyncio.wait_for(run_blocking(threading.get_ident, name="free"), 10)
        assert not blocked.done()
    finally:
        release.set()
    assert await blocked is True
    assert other != threading.get_ident()


async def test_errors_reach_the_caller_and_the_thread_serves_on() -> None:
    def fail() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        await run_blocking(fail)
    assert await run_blocking(sum, [1, 2, 3]) == 6


async def test_the_thread_carries_the_name_of_its_call() -> None:
    assert await run_blocking(lambda: threading.current_thread().name, name="trust floor write") == \
        "trust floor write"


def test_an_idle_thread_ends_after_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "IDLE_S", 0.01)
    thread = asyncio.run(run_blocking(threading.current_thread))
    thread.join(10)  # it ends by itself, after IDLE_S with no call
    assert not thread.is_alive()


def test_a_forked_child_starts_its_own_threads() -> None:
    """The parent's idle threads do not exist in a child: a call there must not wait for them."""
    import os

    asyncio.run(run_blocking(threading.get_ident))
    asyncio.run(idle_thread())  # the parent has an idle thread now
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if asyncio.run(asyncio.wait_for(run_blocking(sum, [1, 2]), 10)) == 3 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
