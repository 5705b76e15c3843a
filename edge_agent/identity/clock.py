"""Is the wall clock right? A Raspberry Pi has no real-time clock: it boots with the time saved
at shutdown (or 1970) until NTP answers. Certificate validity is judged only on a synchronised
clock; an unsynchronised one never makes the device discard its identity.

`clock_state` is the decision (pure); `ClockWatch` reads the facts: systemd-timesyncd's flag
file, this agent's build date, and the last time this agent saved (state dir, once a minute).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from edge_shared.atomic_file import atomic_write

TIMESYNC_DIR = Path("/run/systemd/timesync")
CLOCK_FILE = "clock-last-seen"  # in the state folder: the last time seen on a synchronised clock
# The agent's source can not have been built before this day: a clock before it is certainly wrong.
BUILD_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SAVED_TOLERANCE = dt.timedelta(minutes=5)  # the saved time may be ahead by the save interval


@dataclass(frozen=True)
class ClockState:
    synchronised: bool
    reason: str  # why not, or what says it is


def clock_state(now: dt.datetime, *, build_date: dt.datetime, last_saved: dt.datetime | None,
                timesyncd: bool | None) -> ClockState:
    """`timesyncd`: True when systemd-timesyncd says it synchronised, False when it runs and has
    not yet, None when it is not in use (then only the build date and the saved time count)."""
    if now < build_date:
        return ClockState(False, f"the clock ({now:%Y-%m-%d}) is before this agent was built ({build_date:%Y-%m-%d})")
    if last_saved is not None and now < last_saved - SAVED_TOLERANCE:
        return ClockState(False, f"the clock ({now:%Y-%m-%dT%H:%M}Z) is behind the last time the agent saw "
                                 f"({last_saved:%Y-%m-%dT%H:%M}Z)")
    if timesyncd is False:
        return ClockState(False, "systemd-timesyncd has not synchronised the clock yet")
    return ClockState(True, "synchronised by systemd-timesyncd" if timesyncd else "no sign of a wrong clock")


def expiry_reference(state: ClockState, now: dt.datetime, last_saved: dt.datetime | None) -> dt.datetime | None:
    """The time a signed document's expiry is judged against. A synchronised clock: now. One that
    is not: the last time this agent saw on a synchronised clock, a time certainly past (a
    document that expired before it has expired), or None when there is none (expiry cannot be
    judged; the replay floor still refuses every older version)."""
    return now if state.synchronised else last_saved


class ClockWatch:
    """The facts for clock_state. The saved time only moves forward, and only from a
    synchronised clock, so a wrong clock never poisons it."""

    def __init__(self, state_file: Path, timesync_dir: Path = TIMESYNC_DIR, build_date: dt.datetime = BUILD_DATE
                 ) -> None:
        self.state_file = state_file
        self.timesync_dir = timesync_dir
        self.build_date = build_date

    def timesyncd(self) -> bool | None:
        if (self.timesync_dir / "synchronized").exists():
            return True
        return False if self.timesync_dir.is_dir() else None

    def last_saved(self) -> dt.datetime | None:
        try:
            return dt.datetime.fromisoformat(self.state_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def state(self, now: dt.datetime | None = None) -> ClockState:
        now = now or dt.datetime.now(dt.UTC)
        return clock_state(now, build_date=self.build_date, last_saved=self.last_saved(), timesyncd=self.timesyncd())

    def expiry_reference(self, now: dt.datetime | None = None) -> tuple[ClockState, dt.datetime | None]:
        now = now or dt.datetime.now(dt.UTC)
        last = self.last_saved()
        state = clock_state(now, build_date=self.build_date, last_saved=last, timesyncd=self.timesyncd())
        return state, expiry_reference(state, now, last)

    def save(self, now: dt.datetime | None = None) -> None:
        now = now or dt.datetime.now(dt.UTC)
        last = self.last_saved()
        if self.state(now).synchronised and (last is None or now > last):
            atomic_write(self.state_file, now.isoformat().encode(), 0o644)


def env_build_date() -> dt.datetime:
    """BUILD_DATE, or SOURCE_DATE_EPOCH when the packager set it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return max(BUILD_DATE, dt.datetime.fromtimestamp(int(epoch), dt.UTC))
    return BUILD_DATE
