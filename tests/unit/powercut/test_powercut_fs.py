"""The power-cut filesystem itself (devinfra/powercut_fs.py): a real FUSE mount, checked against
a small in-memory model of what fsync and directory fsync make durable."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devinfra.powercut_fs import PowerCutFS

DIRS = ("", "sub")  # both exist and are durable before each sequence
NAMES = ("a", "b", "c")


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerCutFS]:
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    with PowerCutFS(backing, mountpoint) as mounted:
        yield mounted


def sync(*paths: Path) -> None:
    subprocess.run(["sync", *map(str, paths)], check=True)


def test_unsynced_data_is_lost_and_synced_data_kept(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    (m / "kept").write_text("kept")
    (m / "lost").write_text("lost")
    sync(m / "kept", m)  # the data of kept, both names
    (m / "kept").write_text("changed later")
    fs.cut()
    assert (m / "kept").read_text() == "kept"
    assert (m / "lost").read_text() == ""  # its name was synced with the directory, its data never


def test_a_new_name_needs_the_directory_synced(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    (m / "f").write_text("data")
    sync(m / "f")
    fs.cut()
    assert not (m / "f").exists()
    (m / "f").write_text("data")
    sync(m / "f")
    fs.cut(keep_names=True)  # the other possible outcome: the name made it, and so did the data
    assert (m / "f").read_text() == "data"


def test_an_unsynced_rename_over_a_file_brings_the_old_file_back(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    (m / "target").write_text("old")
    sync(m / "target", m)
    (m / "target.tmp").write_text("new")
    os.replace(m / "target.tmp", m / "target")
    fs.cut()
    assert (m / "target").read_text() == "old" and not (m / "target.tmp").exists()
    # The same rename with names kept but data not synced: the review's empty file.
    (m / "target.tmp").write_text("new")
    os.replace(m / "target.tmp", m / "target")
    fs.cut(keep_names=True)
    assert (m / "target").read_text() == ""
    # Written, synced, renamed, directory synced: the new file, whatever the cut.
    (m / "target.tmp").write_text("new")
    sync(m / "target.tmp")
    os.replace(m / "target.tmp", m / "target")
    sync(m)
    fs.cut()
    assert (m / "target").read_text() == "new"


def test_an_unsynced_unlink_and_rmdir_come_back(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    (m / "d").mkdir()
    (m / "d" / "f").write_text("x")
    sync(m / "d" / "f", m / "d", m)
    (m / "d" / "f").unlink()
    (m / "d").rmdir()
    fs.cut()
    assert (m / "d" / "f").read_text() == "x"


def test_a_symlink_switch_needs_the_directory_synced(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    os.symlink("/one", m / "current")
    sync(m)
    subprocess.run(["ln", "-sfn", "/two", str(m / "current.tmp")], check=True)
    subprocess.run(["mv", "-Tf", str(m / "current.tmp"), str(m / "current")], check=True)
    assert os.readlink(m / "current") == "/two"
    fs.cut()
    assert os.readlink(m / "current") == "/one" and not (m / "current.tmp").is_symlink()
    subprocess.run(["ln", "-sfn", "/two", str(m / "current.tmp")], check=True)
    subprocess.run(["mv", "-Tf", str(m / "current.tmp"), str(m / "current")], check=True)
    sync(m)
    fs.cut()
    assert os.readlink(m / "current") == "/two"


def test_a_new_folder_needs_its_parent_synced(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    (m / "d").mkdir()
    (m / "d" / "f").write_text("x")
    sync(m / "d" / "f", m / "d")
    fs.cut()
    assert not (m / "d").exists()


def test_power_off_stops_every_change_after_the_cut_point(fs: PowerCutFS) -> None:
    m = fs.mountpoint
    (m / "one").write_text("1")
    sync(m / "one", m)
    assert fs.changes() == 4  # create, write, fsync, fsyncdir
    assert fs.log() == ["create /one", "write /one 1@0", "fsync /one", "fsyncdir /"]
    fs.power_off_at(5)
    (m / "two").touch()  # the 5th change
    with pytest.raises(OSError) as failed:
        (m / "two").write_text("2")
    assert failed.value.errno == errno.EIO
    assert fs.changes() == 5
    fs.cut()
    assert sorted(os.listdir(m)) == ["one"] and (m / "one").read_text() == "1"
    assert fs.changes() == 0  # counted from the new mount


def test_sqlite_in_wal_mode_keeps_its_commits_and_its_integrity(fs: PowerCutFS) -> None:
    db = fs.mountpoint / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (v INTEGER)")
    conn.commit()
    sync(fs.mountpoint)  # the new database's name and its WAL's
    for v in range(5):
        conn.execute("INSERT INTO t VALUES (?)", (v,))
        conn.commit()
    conn.close()
    fs.cut()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [0, 1, 2, 3, 4]
    conn.close()


# ---------------------------------------------------------------------------------------------------
# Random operation sequences against the model.


@dataclass
class Model:
    """Files by inode; per directory the live and the durable names; per file live and durable data."""

    live: dict[str, dict[str, int]] = field(default_factory=dict)
    durable: dict[str, dict[str, int]] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    synced: dict[int, bytes] = field(default_factory=dict)
    next_ino: int = 0

    @classmethod
    def of(cls, tree: dict[str, dict[str, bytes]]) -> Model:
        model = cls()
        for d, files in tree.items():
            model.live[d], model.durable[d] = {}, {}
            for name, content in files.items():
                ino = model.new(content)
                model.synced[ino] = content
                model.live[d][name] = model.durable[d][name] = ino
        return model

    def new(self, content: bytes) -> int:
        self.next_ino += 1
        self.data[self.next_ino] = content
        self.synced[self.next_ino] = b""
        return self.next_ino

    def after_cut(self, keep_names: bool) -> dict[str, dict[str, bytes]]:
        names = self.live if keep_names else self.durable
        return {d: {n: self.synced[ino] for n, ino in files.items()} for d, files in names.items()}


def read_tree(root: Path) -> dict[str, dict[str, bytes]]:
    return {d: {p.name: p.read_bytes() for p in (root / d).iterdir() if p.is_file()} for d in DIRS}


ops = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(DIRS), st.sampled_from(NAMES), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("append"), st.sampled_from(DIRS), st.sampled_from(NAMES), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("fsync"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("fsyncdir"), st.sampled_from(DIRS)),
    st.tuples(st.just("unlink"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(DIRS), st.sampled_from(NAMES), st.sampled_from(NAMES)),
)


def apply(op: tuple[object, ...], root: Path, model: Model) -> None:
    kind, d = op[0], str(op[1])
    live = model.live[d]
    if kind in ("write", "append"):
        name, content = str(op[2]), bytes(op[3])  # type: ignore[call-overload]
        with open(root / d / name, "ab" if kind == "append" else "wb") as f:
            f.write(content)
        if name not in live:
            live[name] = model.new(b"")
        ino = live[name]
        model.data[ino] = (model.data[ino] if kind == "append" else b"") + content
    elif kind == "fsync":
        name = str(op[2])
        if name in live:
            fd = os.open(root / d / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            model.synced[live[name]] = model.data[live[name]]
    elif kind == "fsyncdir":
        sync(root / d)
        model.durable[d] = dict(live)
    elif kind == "unlink":
        name = str(op[2])
        if name in live:
            (root / d / name).unlink()
            del live[name]
    elif kind == "rename":
        old, new = str(op[2]), str(op[3])
        if old in live and old != new:
            os.replace(root / d / old, root / d / new)
            live[new] = live.pop(old)


@pytest.fixture(scope="module")
def shared_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerCutFS]:
    tmp = tmp_path_factory.mktemp("powercut-random")
    (tmp / "backing" / "sub").mkdir(parents=True)
    (tmp / "mnt").mkdir()
    with PowerCutFS(tmp / "backing", tmp / "mnt") as mounted:
        yield mounted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(ops, max_size=16), keep_names=st.booleans())
def test_random_sequences_match_the_model(shared_fs: PowerCutFS, sequence: list[tuple[object, ...]],
                                          keep_names: bool) -> None:
    root = shared_fs.mountpoint
    model = Model.of(read_tree(root))  # whatever the previous example left: all durable after its cut
    for op in sequence:
        apply(op, root, model)
    assert read_tree(root) == {d: {n: model.data[i] for n, i in files.items()} for d, files in model.live.items()}
    shared_fs.cut(keep_names=keep_names)
    assert read_tree(root) == model.after_cut(keep_names), f"after {sequence} and cut(keep_names={keep_names})"
