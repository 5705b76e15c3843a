"""Model hot-swap: verify a delivered model, load it beside the running one, test it, swap between frames.

Delivery is a mounted models folder holding ``model.onnx``, ``model.onnx.sha256`` and
``model.onnx.sig`` (cosign sign-blob format). A watcher thread looks at the folder when inotify
says it changed (edge_pilot.folder_events), and at its poll interval in any case. A changed
model is first admitted by size against the module's memory (edge_pilot.memory; refused before
anything is read when it cannot fit), then checked in a separate process under a memory budget
(edge_pilot.model_check: signature, load, reference self-test; a process started ahead, its
imports done, when ``CheckSettings.standby``), then loaded and warmed up in
this process (the check process self-tested these very bytes), and only then offered to the
loop, which swaps it in at the start of its next tick. Meanwhile the loop keeps driving the old
model. A bad model is refused (logged, and reported to the agent with the reason) and the old
one keeps driving; the same bad file set is not retried until one of its files changes."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from .folder_events import FolderEvents
from .logs import fields, get_logger
from .memory import MB, Admit, MemoryState, admit, read_state
from .model import ModelError, OrtOptions, PilotModel
from .model_check import CheckResult, StandbyCheck, check_in_subprocess
from .selftest import Verdict
from .signing import SignatureError, parse_sha256_file, verify_model_bytes

log = get_logger(__name__)
MODEL_FILE = "model.onnx"


class ModelSlot:
    """The running model and at most one verified model waiting to be swapped in."""

    def __init__(self, model: PilotModel | None = None):
        self.current = model
        self._pending: PilotModel | None = None
        self._lock = threading.Lock()
        self.swaps = 0
        # The last model file refused (sha256 hex of its bytes, reason): reported to the agent.
        self.refused: tuple[str, str] | None = None

    def offer(self, model: PilotModel) -> None:
        with self._lock:
            self._pending = model

    def swap_if_pending(self) -> PilotModel | None:
        """Called by the drive loop between frames; returns the model to use for this frame."""
        if self._pending is not None:
            with self._lock:
                new, self._pending = self._pending, None
            if new is not None:
                old = self.current
                self.current = new
                self.swaps += 1
                log.info("model swapped in: %s (was %s)", new.sha256[:12], old.sha256[:12] if old else "none",
                         extra=fields("model_swapped", sha256=new.sha256))
        return self.current


@dataclass
class Refusal:
    fingerprint: tuple[tuple[str, int, int], ...]
    reason: str


def load_verified(folder: Path, key: ec.EllipticCurvePublicKey | None,
                  opts: OrtOptions | None) -> tuple[PilotModel, Verdict]:
    """Read, verify (when a key is given), load and self-test the model in ``folder``."""
    model = read_verified(folder, key, opts)
    return model, model.self_test()


def read_verified(folder: Path, key: ec.EllipticCurvePublicKey | None, opts: OrtOptions | None) -> PilotModel:
    """Read, verify (when a key is given) and load the model in ``folder``."""
    path = folder / MODEL_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from e
    if key is None:
        # Unsigned delivery (the agent verified the signed artifact): the sidecar it wrote from the
        # signed layer digest proves these are the bytes that were verified. Without it nothing
        # does, so a missing sidecar is a refusal, never a skipped check.
        try:
            sha_text = (folder / (MODEL_FILE + ".sha256")).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"{path}.sha256: missing or unreadable ({e.strerror}): an unsigned delivery must name "
                             "the digest of the bytes the agent verified") from e
        try:
            want = parse_sha256_file(sha_text, str(path) + ".sha256")
        except SignatureError as e:
            raise ModelError(str(e)) from e
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise ModelError(f"{path}: sha256 mismatch (file {got[:12]}..., expected {want[:12]}...)")
    else:
        try:
            sha_text = (folder / (MODEL_FILE + ".sha256")).read_text(encoding="utf-8")
            sig_text = (folder / (MODEL_FILE + ".sig")).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"{path}: signature sidecar missing ({e.filename}: {e.strerror})") from e
        try:
            verify_model_bytes(data, sha_text, sig_text, key, str(path))
        except SignatureError as e:
            raise ModelError(str(e)) from e
    model = PilotModel(data, str(path), opts)
    del data  # the session holds the weights now
    return model


@dataclass(frozen=True)
class CheckSettings:
    max_model_bytes: int = 64 * MB
    timeout_s: float = 120.0
    check_threads: int = 1
    nice: int = 10  # of the check process (0 at start: nothing drives yet)
    memory: Callable[[], MemoryState] = read_state
    # keep the next check process started, its imports done (an idle Python with numpy, OpenCV and
    # ONNX Runtime loaded): a delivered model is checked without paying for them first
    standby: bool = True


def model_digest(folder: Path, max_model_bytes: int) -> str:
    """sha256 hex of the model's bytes, hashed in chunks; for a file over ``max_model_bytes`` (refused
    unread) the digest its sidecar declares, which the agent wrote from the artifact's layer."""
    path = folder / MODEL_FILE
    if path.stat().st_size > max_model_bytes:
        try:
            return parse_sha256_file((folder / (MODEL_FILE + ".sha256")).read_text(encoding="utf-8"), "sidecar")
        except (OSError, SignatureError):
            pass
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_and_load(folder: Path, key: ec.EllipticCurvePublicKey | None, opts: OrtOptions | None,
                   checks: CheckSettings, standby: StandbyCheck | None = None) -> PilotModel:
    """Admit by size, check in a separate process under a memory budget (``standby`` when it is
    given and alive), then load here."""
    path = folder / MODEL_FILE
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from e
    decision = admit(str(path), size, checks.max_model_bytes, checks.memory())
    if not isinstance(decision, Admit):
        raise ModelError(decision.reason)
    log.info("checking delivered model %s (%d bytes)", path, size, extra=fields("model_checking"))
    result: CheckResult = check_in_subprocess(folder, key, decision.check_budget, checks.timeout_s, checks.check_threads,
                                              checks.nice, standby)
    if not result.ok:
        raise ModelError(result.reason)
    model = read_verified(folder, key, opts)
    if model.sha256 != result.sha256:
        raise ModelError(f"{path}: changed while it was checked")
    model.warm_up()  # the check process self-tested these very bytes; here the first inferences are paid
    mae = result.mae or {}
    log.info("model passed its checks: %s, reference MAE steering %s throttle %s", model.sha256[:12],
             mae.get("angle"), mae.get("throttle"), extra=fields("model_checked", sha256=model.sha256))
    return model


class ModelWatcher:
    def __init__(self, folder: Path, slot: ModelSlot, key: ec.EllipticCurvePublicKey | None, opts: OrtOptions | None = None,
                 poll_s: float = 1.0, checks: CheckSettings | None = None):
        self.folder = Path(folder)
        self.slot, self.key, self.opts, self.poll_s = slot, key, opts, poll_s
        self.checks = checks or CheckSettings()
        self.checking = threading.Event()  # set while a delivered model is being checked and loaded
        self.last_fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self.refusals: list[Refusal] = []
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: FolderEvents | None = None
        self._standby: StandbyCheck | None = None

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for name in (MODEL_FILE, MODEL_FILE + ".sha256", MODEL_FILE + ".sig"):
            try:
                st = (self.folder / name).stat()
                out.append((name, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((name, -1, -1))
        return tuple(out)

    def check_once(self) -> bool:
        """Look at the folder; returns True when a new model was offered."""
        fp = self.fingerprint()
        if fp == self.last_fingerprint or fp[0][1] < 0:
            return False
        self.last_fingerprint = fp
        current = self.slot.current
        try:
            data_sha = model_digest(self.folder, self.checks.max_model_bytes)
        except OSError:
            return False
        if current is not None and current.sha256 == data_sha:
            return False
        self.checking.set()
        standby, self._standby = self._standby, None
        try:
            model = check_and_load(self.folder, self.key, self.opts, self.checks, standby)
        except ModelError as e:
            self.refusals.append(Refusal(fp, str(e)))
            self.slot.refused = (data_sha, str(e))
            log.error("model refused, keeping %s: %s", current.sha256[:12] if current else "none (stopped)", e,
                      extra=fields("model_refused", reason=str(e)))
            return False
        finally:
            self.checking.clear()
            if standby is not None:
                standby.close()
        self.accepted.append(model.sha256)
        log.info("model verified and loaded beside the running one: %s", model.sha256[:12],
                 extra=fields("model_ready", sha256=model.sha256))
        self.slot.offer(model)
        return True

    def start(self) -> None:
        self._events = FolderEvents(self.folder)
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def _prepare_standby(self) -> None:
        if not self.checks.standby or self._stop.is_set():
            return
        if self._standby is not None:
            if self._standby.usable():
                return
            # it died waiting (killed for memory, or cannot start): fresh checks from now on, not a
            # process started every poll
            code = self._standby.proc.returncode
            self._standby.close()
            self._standby = None
            self.checks = replace(self.checks, standby=False)
            log.warning("the standby model check exited (%s) before a model came: checking each model in a fresh "
                        "process", code, extra=fields("model_standby_failed", reason=f"exit {code}"))
            return
        try:
            self._standby = StandbyCheck(self.checks.check_threads, self.checks.nice)
        except OSError as e:  # a fresh process is started for the next model instead
            self._standby = None
            log.warning("cannot start a standby model check: %s", e, extra=fields("model_standby_failed", reason=str(e)))

    def _run(self) -> None:
        # Not niced, unlike the check process: a niced thread that holds the GIL on a busy CPU would
        # hold up the drive loop (priority inversion); what it does here is short and mostly in C++.
        assert self._events is not None
        while not self._stop.is_set():
            self._prepare_standby()
            self._events.wait(self.poll_s)  # a change wakes it at once; the poll is the fallback
            if self._stop.is_set():
                break
            try:
                self.check_once()
            except Exception as e:  # never let the watcher die silently
                log.exception("model watcher error: %s", e, extra=fields("model_watcher_error"))

    def close(self) -> None:
        self._stop.set()
        if self._events is not None:
            self._events.wake()
        if self._thread:
            self._thread.join(timeout=2)
        if self._events is not None:
            self._events.close()
        if self._standby is not None:
            self._standby.close()
            self._standby = None
