"""Wake the model watcher when its models folder changes (inotify), instead of waiting for its poll.

Two watches: the folder's parent, for the folder's own name appearing or being replaced (the agent
switches ``/models/current`` by renaming a new symlink over it), and the folder itself (or what its
symlink points at now), for files written into it (``close_write``) or renamed into it. inotify
works through a bind mount: the events belong to the directory, whichever mount changed it.

The watcher still polls at its interval: an event only makes it look sooner, so a filesystem
without inotify events (some network or FUSE ones) or a full watch table costs latency, never a
missed model."""

from __future__ import annotations

import os
import select
from pathlib import Path

from .logs import fields, get_logger

log = get_logger(__name__)

try:
    from inotify_simple import INotify
    from inotify_simple import flags as _flags
except ImportError:  # pragma: no cover - the image and the dev venv both have it
    INotify = None  # type: ignore[assignment,misc]


def _entry_mask() -> int:
    return int(_flags.CREATE | _flags.MOVED_TO | _flags.DELETE | _flags.MOVED_FROM)


def _content_mask() -> int:
    return int(_flags.CLOSE_WRITE | _flags.MOVED_TO | _flags.CREATE | _flags.DELETE | _flags.ATTRIB)


class FolderEvents:
    """``wait(timeout)``: True when something changed in or around the folder (or ``wake()`` was
    called), False on timeout. Falls back to plain waiting when inotify is unavailable."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._inotify: INotify | None = None
        self._wake_r, self._wake_w = os.pipe()
        if INotify is None:
            return
        try:
            self._inotify = INotify()
            self._inotify.add_watch(str(self.folder.parent), _entry_mask())
        except OSError as e:
            log.warning("cannot watch %s for changes (%s): looking for new models at the poll interval only",
                        self.folder.parent, e, extra=fields("model_watch_unavailable", reason=str(e)))
            self._close_inotify()
            return
        self._watch_folder()

    @property
    def active(self) -> bool:
        return self._inotify is not None

    def _watch_folder(self) -> None:
        """(Re-)watch the folder: after a switch its name points at another directory."""
        if self._inotify is None:
            return
        try:
            self._inotify.add_watch(str(self.folder), _content_mask())
        except OSError:
            pass  # not there yet: the parent's watch sees it appear

    def wait(self, timeout: float) -> bool:
        fds = [self._wake_r] + ([self._inotify.fileno()] if self._inotify is not None else [])
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return False
        changed = False
        if self._inotify is not None and self._inotify.fileno() in ready:
            try:
                changed = bool(self._inotify.read(timeout=0))
            except OSError:
                changed = True
            self._watch_folder()
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 64)
            except OSError:
                pass
            changed = True
        return changed

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            try:
                self._inotify.close()
            except OSError:
                pass
            self._inotify = None

    def close(self) -> None:
        self._close_inotify()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
