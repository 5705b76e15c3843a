"""The files the agent shares with the update guard (systemd/edge-agent-update-guard), under
$state_dir/agent. The guard owns the pointer and the trial; the agent writes a request, confirms a
trial, and reads how the last update ended. Both sides take $state_dir/agent/lock (flock) for
every change, so a confirmation and a deadline roll-back never cross."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION_PATTERN = re.compile(r"^[0-9A-Za-z+_-][0-9A-Za-z.+_-]{0,63}$")
RELEASE_MARKER = ".edge-agent-release"


@dataclass(frozen=True)
class Trial:
    version: str
    previous: str
    starts: int
    started: float
    rolling_back: str = ""  # the guard began to switch back (a power cut interrupted it): why


def sync_dir(path: Path) -> None:
    """fsync a directory: a name created, renamed or removed in it survives a power cut only then."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)


class UpdateFiles:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "agent"
        self.releases = self.dir / "releases"
        self.pointer = self.dir / "current"
        self.request_file = self.dir / "request"
        self.trial_file = self.dir / "trial"
        self.watch_file = self.dir / "watch"
        self.note_file = self.dir / "trial-note"
        self.outcome_file = self.dir / "outcome.json"
        self.bad_dir = self.dir / "bad"
        # Written before a release image is pulled, removed once what the install left in podman is
        # collected: only an agent that finds it at start (a kill or power cut came between) collects
        # at start, so agents that share one podman store never collect each other's install under way.
        self.fetching_file = self.dir / "fetching"

    def fetching(self) -> str | None:
        """The release image an install was fetching when it was cut short (or is fetching now)."""
        try:
            return self.fetching_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def start_fetching(self, image: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.fetching_file, image + "\n")

    def done_fetching(self) -> None:
        try:
            self.fetching_file.unlink()
        except FileNotFoundError:
            return
        sync_dir(self.dir)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def release_dir(self, version: str) -> Path:
        if not VERSION_PATTERN.match(version):
            raise ValueError(f"agent version {version!r}: expected letters, digits, '.', '+', '_', '-' (at most 64)")
        return self.releases / version

    def installed(self, version: str) -> bool:
        release = self.release_dir(version)
        try:
            marker = (release / RELEASE_MARKER).read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        return bool(marker) and marker[0] == version and os.access(release / "bin" / "edge-agent", os.X_OK)

    def trial(self) -> Trial | None:
        try:
            text = self.trial_file.read_text(encoding="utf-8")
        except OSError:
            return None
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return Trial(
                fields["version"],
                fields.get("previous", ""),
                int(fields.get("starts", "0")),
                float(fields.get("started", "0")),
                fields.get("rollback", ""),
            )
        except (KeyError, ValueError):
            return None

    def pending_request(self) -> str | None:
        try:
            return self.request_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def request(self, version: str) -> None:
        """Ask the guard to start `version` at the next start of the unit (it must be installed)."""
        if not self.installed(version):
            raise FileNotFoundError(f"agent release {version} is not installed in {self.releases}")
        with self.locked():
            write_atomic(self.request_file, version + "\n")

    def confirm(self, version: str, previous_version: str) -> bool:
        """The release on trial proved itself: end the trial. False when there was none for it (the
        guard rolled it back meanwhile)."""
        with self.locked():
            trial = self.trial()
            if trial is None or trial.version != version or trial.rolling_back:
                return False
            outcome = {
                "result": "succeeded",
                "version": version,
                "previous": previous_version,
                "reason": f"confirmed after {trial.starts} start(s)",
                "at": int(time.time()),
            }
            write_atomic(self.outcome_file, json.dumps(outcome) + "\n")
            # Still watched for a while: the guard switches back a release that then crashes or is
            # killed again and again. The guard stamps the watch's device time (its next check, within
            # 15 s): the agent cannot read the clock it uses (/proc/uptime is hidden by ProcSubset=pid).
            write_atomic(
                self.watch_file, f"version={version}\nprevious={trial.previous}\nstarts=0\nstarted={int(time.time())}\n"
            )
            self.trial_file.unlink(missing_ok=True)
            self.note_file.unlink(missing_ok=True)
            sync_dir(self.dir)
            return True

    def note(self, text: str) -> None:
        """Why the release on trial cannot confirm; the guard puts it in its roll-back reason."""
        with self.locked():
            write_atomic(self.note_file, " ".join(text.split())[:300] + "\n")

    def outcome(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.outcome_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def bad_versions(self) -> dict[str, str]:
        try:
            entries = list(self.bad_dir.iterdir())
        except OSError:
            return {}
        bad = {}
        for entry in entries:
            if entry.is_file() and not entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    bad[entry.name] = entry.read_text(encoding="utf-8").strip()
        return bad

    def previous_version(self, trial: Trial) -> str:
        try:
            return (Path(trial.previous) / RELEASE_MARKER).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            return "factory"
