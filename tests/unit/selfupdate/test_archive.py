"""Release archives are unpacked only as plain files and folders inside the destination."""

from __future__ import annotations

import io
import tarfile

import pytest

from edge_agent.runtime.api import RuntimeFailure
from edge_agent.runtime.podman import _plain_members


def archive(*members: tarfile.TarInfo) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf)


def file(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = 1, mode
    return info


def test_files_and_folders_pass_without_setuid_bits() -> None:
    folder = tarfile.TarInfo("x86_64-cp311")
    folder.type = tarfile.DIRTYPE
    members = _plain_members(archive(folder, file("x86_64-cp311/a.whl", 0o4755)), "copy")
    assert [m.name for m in members] == ["x86_64-cp311", "x86_64-cp311/a.whl"]
    assert members[1].mode == 0o755


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_anything_else_is_refused(kind: str) -> None:
    if kind == "dotdot":
        member = file("x86_64-cp311/../../etc/passwd")
    elif kind == "absolute":
        member = file("/etc/passwd")
    else:
        member = tarfile.TarInfo("x86_64-cp311/link")
        member.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.CHRTYPE
        member.linkname = "/etc/shadow"
    with pytest.raises(RuntimeFailure, match="refusing archive member"):
        _plain_members(archive(member), "copy /wheelhouse from x")
