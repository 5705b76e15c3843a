"""Cut the power after every change a scenario makes, reboot, and check invariants.

A scenario is a list of steps (callables that change files on the power-cut filesystem: a guard
command, an agent write). A dry run counts its changes N; then for every k in 0..N and for both
outcomes of a cut (every unsynced change lost, or only unsynced data lost), the scenario runs again
from the same start with the power going after k changes, the filesystem drops what was not durable
and remounts, and `after_cut` (the reboot and the checks) returns the invariant violations it found.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devinfra.powercut_fs import PowerCutFS

Step = Callable[[], object]


@dataclass
class Exploration:
    changes: int = 0  # cut points of the scenario (changes of its dry run)
    cuts: int = 0  # cut points x outcomes checked
    violations: list[str] = field(default_factory=list)
    dry_run_log: list[str] = field(default_factory=list)


def reset(fs: PowerCutFS, template: Path) -> None:
    """The backing directory back to `template` (all durable: it is scanned at mount)."""
    with fs.unmounted():
        for entry in fs.backing.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(template, fs.backing, symlinks=True, dirs_exist_ok=True)


def run_steps(fs: PowerCutFS, steps: Sequence[Step]) -> None:
    for step in steps:
        if fs.powered_off():
            return  # nothing runs once the power is off
        with contextlib.suppress(Exception):  # past the cut point the steps see EIO
            step()


def explore(fs: PowerCutFS, template: Path, steps: Sequence[Step],
            after_cut: Callable[[int, bool], list[str]], dry_run_check: Callable[[], list[str]],
            kill: Callable[[], object] = lambda: None) -> Exploration:
    """`kill` ends what the steps left open on the filesystem (the processes die with the power)."""
    found = Exploration()
    reset(fs, template)
    for step in steps:
        step()  # the dry run must succeed as a whole
    found.changes = fs.changes()
    found.dry_run_log = fs.log()
    found.violations += [f"without a cut: {v}" for v in dry_run_check()]
    for k in range(found.changes + 1):
        for keep_names in (False, True):
            reset(fs, template)
            fs.power_off_at(k)
            run_steps(fs, steps)
            with contextlib.suppress(Exception):
                kill()
            fs.cut(keep_names=keep_names)
            found.cuts += 1
            where = found.dry_run_log[k - 1] if k else "before the first change"
            found.violations += [
                f"cut after change {k} ({where}), {'names kept' if keep_names else 'all unsynced lost'}: {v}"
                for v in after_cut(k, keep_names)
            ]
    return found
