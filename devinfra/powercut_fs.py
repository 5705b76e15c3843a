"""A filesystem for tests that loses, on command, what a power cut loses.

A FUSE filesystem (libfuse 3 through mfusepy) over a real directory. Every change reaches the
directory at once, so processes see a normal filesystem; beside it the server keeps what is
durable, the state a power cut would leave:
- a file's data, size, mode and owner become durable at fsync/fdatasync of that file; until then
  the durable copy is what the file held at its last sync (empty for a file created since);
- a directory's entries (create, mkdir, symlink, link, rename, unlink, rmdir in it) become durable
  at fsync of that directory; until then its durable entries are the ones of its last sync. A file
  or folder removed from the view but still durably named is kept in an attic beside the
  directory so a cut can bring it back.

`cut()` is the power cut: every process using the mount must be gone (the test killed them); the
server unmounts, rewrites the directory to its durable state and mounts again, as a reboot does.
Two cuts are possible, both outcomes a real power cut can have:
- `cut()` drops every unsynced change, data and names;
- `cut(keep_names=True)` keeps every name change and drops only unsynced data (what a journalling
  filesystem that commits metadata ahead of delayed data leaves: a renamed-in file can be empty).

Cut points: each change (write, truncate, create, mkdir, symlink, link, rename, unlink, rmdir, chmod,
chown, fsync, directory fsync) counts one. `power_off_at(n)` lets the first n changes since the
mount happen and fails everything after them with EIO, so a scenario can be stopped after any one
of its steps; `changes()` counts them. `syncfs`/`sync -f` never reach a FUSE filesystem (the kernel
does not forward them), so here only fsync of a file or a directory makes anything durable.

The server is a separate process (`python powercut_fs.py BACKING MOUNTPOINT`, this file) driven by
JSON lines on its stdin: a test process must never serve a mount it also uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@dataclass
class FileCopy:
    """The durable data and attributes of a file whose live state has changed since its last sync."""

    data: bytes
    mode: int
    uid: int
    gid: int


@dataclass
class Durable:
    """What survives a cut: per inode number of the backing directory (held while durably named)."""

    root: int
    kinds: dict[int, str] = field(default_factory=dict)  # "d", "f", "l"
    entries: dict[int, dict[str, int]] = field(default_factory=dict)  # directory -> name -> inode
    attrs: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # directories, symlinks: mode, uid, gid
    targets: dict[int, str] = field(default_factory=dict)  # symlinks
    unsynced: dict[int, FileCopy] = field(default_factory=dict)  # files changed since their last sync

    def named(self, ino: int) -> bool:
        return any(ino in names.values() for names in self.entries.values())


def scan(backing: Path) -> Durable:
    """After a mount, everything on the backing directory is durable."""
    model = Durable(root=backing.lstat().st_ino)
    model.kinds[model.root] = "d"
    model.entries[model.root] = {}
    for dirpath, dirnames, filenames in os.walk(backing):
        here = os.lstat(dirpath).st_ino
        names = model.entries.setdefault(here, {})
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            names[name] = st.st_ino
            _learn(model, path, st)
    return model


def _learn(model: Durable, path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        model.kinds[st.st_ino] = "d"
        model.entries.setdefault(st.st_ino, {})
        model.attrs[st.st_ino] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    elif stat.S_ISLNK(st.st_mode):
        model.kinds[st.st_ino] = "l"
        model.targets[st.st_ino] = os.readlink(path)
        model.attrs[st.st_ino] = (0o777, st.st_uid, st.st_gid)
    else:
        model.kinds[st.st_ino] = "f"


def drop_unsynced(backing: Path, attic: Path, model: Durable, keep_names: bool) -> dict[str, int]:
    """Rewrite `backing` (not mounted) to what the cut leaves; returns what it dropped."""
    where: dict[int, str] = {}
    for top in (backing, attic):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                where.setdefault(os.lstat(path).st_ino, path)
    # File data first: the inode keeps its number, so the names below find the reverted data.
    for ino, copy in model.unsynced.items():
        path = where.get(ino)
        if path is None:
            continue  # gone from view and from every durable name: nothing to revert
        with open(path, "wb") as f:
            f.write(copy.data)
        os.chown(path, copy.uid, copy.gid)
        os.chmod(path, copy.mode)
    dropped = {"files_reverted": len(model.unsynced), "names_dropped": 0}
    if not keep_names:
        staging = backing.parent / f".{backing.name}.cut"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _build(model, model.root, staging, where)
        live = set(os.listdir(backing))
        durable = set(model.entries[model.root])
        dropped["names_dropped"] = len(live ^ durable)
        for name in os.listdir(backing):
            path = backing / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        for name in os.listdir(staging):
            os.rename(staging / name, backing / name)
        staging.rmdir()
    shutil.rmtree(attic, ignore_errors=True)
    return dropped


def _build(model: Durable, directory: int, into: Path, where: dict[int, str]) -> None:
    for name, ino in model.entries.get(directory, {}).items():
        path = into / name
        kind = model.kinds[ino]
        if kind == "d":
            path.mkdir()
            mode, uid, gid = model.attrs[ino]
            os.chown(path, uid, gid)
            os.chmod(path, mode)
            _build(model, ino, path, where)
        elif kind == "l":
            os.symlink(model.targets[ino], path)
            _, uid, gid = model.attrs[ino]
            os.lchown(path, uid, gid)
        else:
            if ino not in where:
                raise RuntimeError(f"power-cut fs: durable file {path} (inode {ino}) is nowhere on the backing dir")
            os.link(where[ino], path, follow_symlinks=False)


# ---------------------------------------------------------------------------------------------------
# The server (runs in its own process; imports mfusepy only there).


def _serve(backing: Path, mountpoint: Path) -> None:
    import mfusepy  # type: ignore[import-untyped]

    attic = backing.parent / f".{backing.name}.attic"
    lock = threading.RLock()

    class State:
        model = scan(backing)
        changes = 0
        limit: int | None = None
        dead = False  # a change past the limit was refused: the power is off
        log: list[str] = []

    def fail(code: int) -> OSError:
        return mfusepy.FuseOSError(code)

    def change(what: str) -> None:
        """Count one cut point; once the power is off, nothing happens any more."""
        if State.dead or (State.limit is not None and State.changes >= State.limit):
            State.dead = True
            raise fail(errno.EIO)
        State.changes += 1
        State.log.append(what)

    def alive() -> None:
        if State.dead:
            raise fail(errno.EIO)

    def full(path: str) -> str:
        return str(backing) + path

    def caller() -> tuple[int, int]:
        uid, gid, _pid = mfusepy.fuse_get_context()
        return uid, gid

    def keep_copy(ino: int, opener: str) -> None:
        """The durable copy of a file, taken before its first change since the last sync."""
        if ino in State.model.unsynced:
            return
        with open(opener, "rb") as f:
            data = f.read()
            st = os.fstat(f.fileno())
        State.model.unsynced[ino] = FileCopy(data, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def to_attic(path: str, st: os.stat_result) -> None:
        """Keep an inode that leaves the view while a durable entry still names it."""
        if not State.model.named(st.st_ino):
            return
        attic.mkdir(exist_ok=True)
        keep = attic / str(st.st_ino)
        if os.path.lexists(keep):
            return
        if stat.S_ISDIR(st.st_mode):
            os.rename(path, keep)  # an empty directory (rmdir, rename over it)
        else:
            os.link(path, keep, follow_symlinks=False)

    class Ops(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            with lock:
                alive()
                st = os.fstat(fh) if fh is not None else os.lstat(full(path))
                keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
                        "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
                attrs = {k.removesuffix("_ns"): getattr(st, k) for k in keys}
                return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            with lock:
                alive()
                return [".", "..", *os.listdir(full(path))]

        def readlink(self, path: str) -> str:
            with lock:
                alive()
                return os.readlink(full(path))

        def access(self, path: str, amode: int) -> int:
            with lock:
                alive()
                if not os.access(full(path), amode, follow_symlinks=False):
                    raise fail(errno.EACCES)
                return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(full(path))
            return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                 "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def open(self, path: str, flags: int) -> int:
            with lock:
                alive()
                if flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                    change(f"truncate {path} 0")
                    keep_copy(os.lstat(full(path)).st_ino, full(path))
                return os.open(full(path), flags & ~os.O_CREAT)

        def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
            with lock:
                change(f"create {path}")
                fd = os.open(full(path), flags | os.O_CREAT, mode)
                uid, gid = caller()
                os.fchown(fd, uid, gid)
                st = os.fstat(fd)
                State.model.kinds[st.st_ino] = "f"
                # Created since the last sync: durably it is empty (if its name survives at all).
                State.model.unsynced[st.st_ino] = FileCopy(b"", stat.S_IMODE(st.st_mode), uid, gid)
                return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with lock:
                alive()
                return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with lock:
                change(f"write {path} {len(data)}@{offset}")
                keep_copy(os.fstat(fh).st_ino, f"/proc/self/fd/{fh}")
                return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with lock:
                change(f"truncate {path} {length}")
                if fh is not None:
                    keep_copy(os.fstat(fh).st_ino, f"/proc/self/fd/{fh}")
                    os.ftruncate(fh, length)
                else:
                    keep_copy(os.lstat(full(path)).st_ino, full(path))
                    os.truncate(full(path), length)
                return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            with lock:
                change(f"fsync {path}")
                State.model.unsynced.pop(os.fstat(fh).st_ino, None)
                return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            with lock:
                change(f"fsyncdir {path}")
                here = full(path)
                names = {}
                for name in os.listdir(here):
                    st = os.lstat(os.path.join(here, name))
                    names[name] = st.st_ino
                    if st.st_ino not in State.model.kinds:
                        _learn(State.model, os.path.join(here, name), st)
                State.model.entries[os.lstat(here).st_ino] = names
                return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def opendir(self, path: str) -> int:
            with lock:
                alive()
                return 0

        def releasedir(self, path: str, fh: int) -> int:
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            with lock:
                change(f"mkdir {path}")
                os.mkdir(full(path), mode)
                uid, gid = caller()
                os.chown(full(path), uid, gid)
                _learn(State.model, full(path), os.lstat(full(path)))
                State.model.entries[os.lstat(full(path)).st_ino] = {}
                return 0

        def rmdir(self, path: str) -> int:
            with lock:
                change(f"rmdir {path}")
                st = os.lstat(full(path))
                if os.listdir(full(path)):
                    raise fail(errno.ENOTEMPTY)
                to_attic(full(path), st)
                if os.path.lexists(full(path)):
                    os.rmdir(full(path))
                return 0

        def unlink(self, path: str) -> int:
            with lock:
                change(f"unlink {path}")
                to_attic(full(path), os.lstat(full(path)))
                os.unlink(full(path))
                return 0

        def symlink(self, target: str, source: str) -> int:
            # mfusepy: symlink(new name, what it points to)
            with lock:
                change(f"symlink {target} -> {source}")
                os.symlink(source, full(target))
                uid, gid = caller()
                os.lchown(full(target), uid, gid)
                _learn(State.model, full(target), os.lstat(full(target)))
                return 0

        def link(self, target: str, source: str) -> int:
            # mfusepy: link(new name, existing file)
            with lock:
                change(f"link {target} = {source}")
                os.link(full(source), full(target), follow_symlinks=False)
                return 0

        def rename(self, old: str, new: str, flags: int = 0) -> int:
            with lock:
                change(f"rename {old} -> {new}")
                if flags & RENAME_EXCHANGE:
                    raise fail(errno.EINVAL)
                if os.path.lexists(full(new)):
                    if flags & RENAME_NOREPLACE:
                        raise fail(errno.EEXIST)
                    old_st, new_st = os.lstat(full(old)), os.lstat(full(new))
                    if old_st.st_ino != new_st.st_ino:
                        if stat.S_ISDIR(new_st.st_mode) and os.listdir(full(new)):
                            raise fail(errno.ENOTEMPTY)
                        to_attic(full(new), new_st)
                os.rename(full(old), full(new))
                return 0

        def chmod(self, path: str, mode: int) -> int:
            with lock:
                change(f"chmod {path} {mode:o}")
                st = os.lstat(full(path))
                if stat.S_ISREG(st.st_mode):
                    keep_copy(st.st_ino, full(path))
                os.chmod(full(path), mode)
                if stat.S_ISDIR(st.st_mode):
                    _learn(State.model, full(path), os.lstat(full(path)))
                return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            with lock:
                change(f"chown {path} {uid}:{gid}")
                st = os.lstat(full(path))
                if stat.S_ISREG(st.st_mode):
                    keep_copy(st.st_ino, full(path))
                os.lchown(full(path), uid, gid)
                if not stat.S_ISREG(st.st_mode):
                    _learn(State.model, full(path), os.lstat(full(path)))
                return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            with lock:
                alive()  # times are not part of what a cut is checked for
                os.utime(full(path), ns=times, follow_symlinks=False)
                return 0

    class Fuse(mfusepy.FUSE):  # type: ignore[misc]
        # mfusepy drops rename's flags under libfuse 3; mv and others rely on RENAME_NOREPLACE.
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return int(self.operations.rename(old.decode(), new.decode(), flags))

    mounts: list[bool] = []
    unmounted = threading.Event()
    go = threading.Condition()

    def reply(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    def unmount() -> str | None:
        deadline = time.monotonic() + 20
        while True:
            proc = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
            if proc.returncode == 0:
                return None
            if time.monotonic() > deadline:
                return proc.stderr.strip()
            time.sleep(0.05)  # a killed process may still be releasing its files

    def control() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            name = cmd["cmd"]
            if name == "mount":
                with lock:
                    State.model = scan(backing)
                    State.changes, State.limit, State.dead, State.log = 0, None, False, []
                unmounted.clear()
                with go:
                    mounts.append(True)
                    go.notify()
                deadline = time.monotonic() + 20
                while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
                    time.sleep(0.01)
                reply({"ok": os.path.ismount(mountpoint)})
            elif name == "changes":
                with lock:
                    reply({"changes": State.changes, "log": list(State.log)})
            elif name == "powered_off":
                with lock:
                    reply({"off": State.dead})
            elif name == "power_off_at":
                with lock:
                    State.limit = int(cmd["n"])
                reply({"ok": True})
            elif name in ("cut", "unmount"):
                with lock:
                    State.dead = True  # nothing more happens
                error = unmount()
                if error is not None:
                    with lock:
                        State.dead = False
                    reply({"ok": False, "error": error})
                    continue
                unmounted.wait()
                dropped: dict[str, int] = {}
                if name == "cut":
                    dropped = drop_unsynced(backing, attic, State.model, bool(cmd.get("keep_names")))
                else:
                    shutil.rmtree(attic, ignore_errors=True)
                reply({"ok": True, "dropped": dropped})
            elif name == "quit":
                break
        if os.path.ismount(mountpoint):  # the test process went away without unmounting
            with lock:
                State.dead = True
            if unmount() is not None:
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
            unmounted.wait(20)
        with go:
            mounts.append(False)
            go.notify()

    threading.Thread(target=control, daemon=True).start()
    while True:
        with go:
            go.wait_for(lambda: bool(mounts))
            again = mounts.pop(0)
        if not again:
            return
        Fuse(Ops(), str(mountpoint), foreground=True, nothreads=True, hard_remove=True, fsname="powercut")
        unmounted.set()


# ---------------------------------------------------------------------------------------------------
# The test side.


class PowerCutFS:
    """`with PowerCutFS(backing, mountpoint) as fs:` serves `backing` at `mountpoint` (both exist)."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing.resolve()
        self.mountpoint = mountpoint.resolve()
        self.proc: subprocess.Popen[str] | None = None
        self.cuts = 0

    def __enter__(self) -> PowerCutFS:
        if shutil.which("fusermount3") is None:
            raise RuntimeError("fusermount3 is not installed: run scripts/install-deps.sh (Debian package fuse3)")
        # This file itself (self-contained: the standard library and mfusepy), wherever it lives.
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.backing), str(self.mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self._mount()
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if os.path.ismount(self.mountpoint):
                self._ask({"cmd": "unmount"})
            self._send({"cmd": "quit"})
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            self.proc = None

    def _send(self, cmd: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._send(cmd)
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"power-cut fs server for {self.backing} exited ({self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("ok") is False:
            raise RuntimeError(f"power-cut fs: {cmd['cmd']} failed: {answer.get('error', '')}")
        return answer

    def _mount(self) -> None:
        self._ask({"cmd": "mount"})

    def changes(self) -> int:
        """Cut points so far since the last mount."""
        return int(self._ask({"cmd": "changes"})["changes"])

    def log(self) -> list[str]:
        """The changes since the last mount, one line each (for failure messages)."""
        return list(self._ask({"cmd": "changes"})["log"])

    def power_off_at(self, n: int) -> None:
        """Let n changes since the mount happen; the next one fails with EIO, and so does every
        operation after it."""
        self._ask({"cmd": "power_off_at", "n": n})

    def powered_off(self) -> bool:
        """A change past the power_off_at limit was refused."""
        return bool(self._ask({"cmd": "powered_off"})["off"])

    def cut(self, keep_names: bool = False) -> dict[str, int]:
        """The power cut and the reboot: drop what was not durable, then mount again. Processes
        using the mount must be gone."""
        dropped: dict[str, int] = self._ask({"cmd": "cut", "keep_names": keep_names})["dropped"]
        self.cuts += 1
        self._mount()
        return dropped

    @contextlib.contextmanager
    def unmounted(self) -> Iterator[None]:
        """A clean shutdown (everything kept) while the block runs, then mounted again."""
        self._ask({"cmd": "unmount"})
        try:
            yield
        finally:
            self._mount()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
