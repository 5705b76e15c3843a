"""A model placed by the agent (unsigned folder, sha256 sidecar from the signed artifact's layer
digest): the sidecar is checked, and a refusal is kept for the report to the agent."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_pilot.hotswap import MODEL_FILE, ModelSlot, ModelWatcher

from .conftest import SHIPPED_MODEL


def _place(folder: Path, data: bytes, sidecar: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if sidecar is not None:
        (folder / (MODEL_FILE + ".sha256")).write_text(sidecar)
    (folder / MODEL_FILE).write_bytes(data)


def test_unsigned_folder_checks_the_sidecar_and_reports_refusals(tmp_path: Path) -> None:
    data = SHIPPED_MODEL.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    slot = ModelSlot()
    good, bad = tmp_path / "good", tmp_path / "bad"
    _place(bad, data, "0" * 64 + "  model.onnx\n")
    watcher = ModelWatcher(bad, slot, None, poll_s=60)
    assert not watcher.check_once()
    assert slot.refused is not None and slot.refused[0] == sha and "sha256 mismatch" in slot.refused[1]

    _place(good, data, f"{sha}  model.onnx\n")
    watcher = ModelWatcher(good, slot, None, poll_s=60)
    assert watcher.check_once()
    assert slot.swap_if_pending() is not None and slot.current is not None and slot.current.sha256 == sha

    truncated = tmp_path / "truncated"
    _place(truncated, b"not onnx", hashlib.sha256(b"not onnx").hexdigest() + "\n")  # right digest, not a model
    assert not ModelWatcher(truncated, slot, None, poll_s=60).check_once()
    assert slot.refused is not None and slot.refused[0] == hashlib.sha256(b"not onnx").hexdigest()
    assert "not a loadable ONNX model" in slot.refused[1]

    bare = tmp_path / "bare"
    _place(bare, data, None)  # a good model, but nothing says these are the bytes the agent verified
    bare_slot = ModelSlot()
    assert not ModelWatcher(bare, bare_slot, None, poll_s=60).check_once()
    assert bare_slot.refused is not None and bare_slot.refused[0] == sha
    assert "model.onnx.sha256: missing or unreadable" in bare_slot.refused[1]
