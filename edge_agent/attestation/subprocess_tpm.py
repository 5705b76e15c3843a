"""`SubprocessTpm`: the agent's TpmBackend, which runs every TPM call in a child process
(``python -m edge_agent.attestation.tpm_worker``, same interpreter) instead of in the agent.

Why: tpm2-pytss and the TSS libraries it links cost ~9 MB of RSS for the agent's whole life,
while the TPM is used a few times per boot; and a TPM call that hangs can be ended only by
killing the process it runs in.

- The worker is started on demand and leaves by itself after `idle_timeout` seconds without a
  request; the next call starts a new one (a fresh TPM connection, ~0.1-1 s).
- Every call has a deadline (`call_timeout`, spawn included). Past it the worker is killed and
  TpmError("TPM operation X did not finish within N s; worker killed") is raised; the next call
  starts a new worker, which first flushes whatever the killed one left loaded in the TPM.
- A worker that died between calls (idle timeout, crash, SIGKILL) is replaced transparently. A
  request is sent a second time only when the worker provably never read it (the write failed,
  or the worker said "bye" before it): a PCR extend must not run twice.
- The worker's stderr is kept as a bounded tail and logged on one line only when it fails.

Calls block; the attestation service runs them in a thread. One call at a time (a lock).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from edge_agent.attestation.tpm import EkType, Endorsement, RawQuote, TpmError
from edge_agent.attestation.tpm_wire import (
    BYE,
    HELLO_ID,
    MAX_LINE,
    Answer,
    WireError,
    args_for,
    parse_answer,
    request_line,
    result_from_wire,
)
from edge_agent.logs import get_logger

log = get_logger(__name__)
WORKER_MODULE = "edge_agent.attestation.tpm_worker"
STDERR_TAIL = 4096  # bytes of the worker's stderr kept for the failure log line
LOGGED_TAIL = 1000  # characters of it in that line
REASON_TAIL = 300  # characters of it in the exception (it ends up in reported state)
CLOSE_GRACE_S = 5.0
# Meant for the agent alone (sd_notify, watchdog, socket activation): the worker must not act on them.
SYSTEMD_ONLY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                              "LISTEN_FDNAMES"})


class _NotTaken(Exception):
    """The worker left before reading the request: safe to send it to a new worker."""


class SubprocessTpm:
    """A TpmBackend whose calls run in a TPM worker process (see the module docstring)."""

    def __init__(self, tcti: str, ek_type: EkType = "ecc", ak_handle: int | None = None, *,
                 call_timeout: float = 120.0, idle_timeout: float = 30.0, python: str | None = None) -> None:
        self.tcti = tcti
        self.ek_type: EkType = ek_type
        self.ak_handle = ak_handle
        self.call_timeout = call_timeout
        self.idle_timeout = idle_timeout
        self.python = python or sys.executable
        self.spawns = 0  # workers started so far (tests, bench)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = bytearray()
        self._err = bytearray()
        self._next_id = HELLO_ID + 1
        self._closed = False

    # ----------------------------------------------------------------- TpmBackend

    def describe(self) -> str:
        result: str = self._call("describe")
        return result

    def endorsement(self) -> Endorsement:
        result: Endorsement = self._call("endorsement")
        return result

    def ak_public(self) -> bytes:
        result: bytes = self._call("ak_public")
        return result

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        result: bytes = self._call("activate_credential", credential_blob, encrypted_secret)
        return result

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> RawQuote:
        result: RawQuote = self._call("quote", list(pcrs), nonce)
        return result

    def pcr_read(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        result: dict[int, bytes] = self._call("pcr_read", list(pcrs))
        return result

    def pcr_extend(self, pcr: int, digest: bytes) -> None:
        self._call("pcr_extend", pcr, digest)

    def seal(self, secret: bytes) -> bytes:
        result: bytes = self._call("seal", secret)
        return result

    def unseal(self, sealed: bytes) -> bytes:
        result: bytes = self._call("unseal", sealed)
        return result

    def close(self) -> None:
        """Stop the worker (stdin EOF lets it close the TPM cleanly). Idempotent. A call still
        running in another thread is cut short: its worker is killed."""
        self._closed = True
        if not self._lock.acquire(timeout=1.0):
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
            return
        try:
            if self._proc is not None:
                self._stop_worker(self._proc)
        finally:
            self._lock.release()

    # ----------------------------------------------------------------- for tests and the bench

    @property
    def worker_pid(self) -> int | None:
        """The pid of the running worker, None when there is none."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ----------------------------------------------------------------- the call

    def _call(self, op: str, *params: Any) -> Any:
        args = args_for(op, *params)
        with self._lock:
            if self._closed:
                raise TpmError(f"cannot {op}: the TPM connection is closed")
            deadline = time.monotonic() + self.call_timeout
            for attempt in (1, 2):
                proc = self._worker(op, deadline)
                call_id = self._next_id
                self._next_id += 1
                try:
                    self._send(proc, request_line(call_id, op, args))
                    answer = self._receive(proc, op, call_id, deadline)
                except _NotTaken as exc:
                    self._replace(proc, str(exc))
                    if attempt == 2:
                        raise TpmError(f"TPM operation {op} failed: {exc}, twice in a row") from None
                    continue
                if not answer.ok:
                    raise TpmError(answer.error_message)
                try:
                    return result_from_wire(op, answer.result)
                except WireError as exc:
                    self._fail(proc, f"TPM worker sent a malformed answer to {op}: {exc}")
            raise AssertionError("unreachable")  # pragma: no cover

    def _worker(self, op: str, deadline: float) -> subprocess.Popen[bytes]:
        """The live worker, started (and its hello read) when there is none."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                return proc
            self._replace(proc, f"found gone before {op}")
        return self._spawn(op, deadline)

    def _spawn(self, op: str, deadline: float) -> subprocess.Popen[bytes]:
        argv = [self.python, "-P", "-m", WORKER_MODULE, "--tcti", self.tcti, "--ek-type", self.ek_type,
                "--idle-timeout", repr(self.idle_timeout)]
        if self.ak_handle is not None:
            argv += ["--ak-handle", hex(self.ak_handle)]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    bufsize=0, close_fds=True, env=_worker_env())
        except OSError as exc:
            raise TpmError(f"cannot start the TPM worker ({self.python}): {exc}") from None
        self._proc, self._out, self._err = proc, bytearray(), bytearray()
        self.spawns += 1
        threading.Thread(target=_reap_when_exited, args=(proc,), name=f"tpm-worker-reaper-{proc.pid}",
                         daemon=True).start()
        try:
            hello = self._receive(proc, op, HELLO_ID, deadline, starting=True)
        except _NotTaken:  # a worker says bye only after its hello
            self._fail(proc, "the TPM worker left right after starting")
        if not hello.ok:
            # The TPM could not be opened: an answer, not a crash; the message says why.
            self._discard(proc)
            raise TpmError(hello.error_message)
        flushed = hello.result.get("flushed", 0) if isinstance(hello.result, dict) else 0
        if flushed:
            log.warning("flushed %d objects/sessions left in the TPM by a killed TPM worker", flushed,
                        extra={"EVENT": "attestation.tpm_leftovers_flushed"})
        log.debug("TPM worker %d started for %s", proc.pid, op, extra={"EVENT": "attestation.worker_started"})
        return proc

    def _send(self, proc: subprocess.Popen[bytes], line: bytes) -> None:
        assert proc.stdin is not None
        view = memoryview(line)
        try:
            while view:  # unbuffered; a request is far below the pipe's capacity
                view = view[proc.stdin.write(view) or 0:]
        except (BrokenPipeError, ValueError) as exc:
            raise _NotTaken(f"worker gone before the request was written ({type(exc).__name__})") from None

    def _receive(self, proc: subprocess.Popen[bytes], op: str, call_id: int, deadline: float,
                 starting: bool = False) -> Answer:
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(out_fd, selectors.EVENT_READ)
            selector.register(err_fd, selectors.EVENT_READ)
            while True:
                newline = self._out.find(b"\n")
                if newline >= 0:
                    line = bytes(self._out[:newline])
                    del self._out[: newline + 1]
                    return self._answer(proc, op, call_id, line)
                if len(self._out) > MAX_LINE:
                    self._fail(proc, f"TPM worker sent a line longer than {MAX_LINE} bytes during {op}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = "get a started TPM worker" if starting else "finish"
                    self._fail(proc, f"TPM operation {op} did not {what} within {self.call_timeout:g} s; "
                               "worker killed", event="attestation.worker_killed")
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if key.fd == err_fd:
                        if not chunk:
                            selector.unregister(err_fd)
                        self._keep_stderr(chunk)
                        continue
                    if not chunk:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            proc.wait(timeout=1.0)  # stdout closes as it exits; let the status be known
                        status = _exit_status(proc)
                        if starting:
                            self._fail(proc, f"the TPM worker did not start: {status}")
                        self._fail(proc, f"TPM worker {status} during {op}")
                    self._out += chunk

    def _answer(self, proc: subprocess.Popen[bytes], op: str, call_id: int, line: bytes) -> Answer:
        try:
            answer = parse_answer(line)
        except WireError as exc:
            self._fail(proc, f"TPM worker sent a malformed line during {op}: {exc}")
        if answer is BYE:
            raise _NotTaken("worker left after its idle timeout")
        assert isinstance(answer, Answer)
        if answer.id not in (call_id, None):
            self._fail(proc, f"TPM worker answered request {answer.id}, expected {call_id}")
        return answer

    # ----------------------------------------------------------------- ending workers

    def _fail(self, proc: subprocess.Popen[bytes], message: str, event: str = "attestation.worker_failed") -> NoReturn:
        """Kill the worker, log one line (with its stderr tail), raise TpmError(message)."""
        self._discard(proc, kill=True)
        tail = self._stderr_tail()
        log.error("%s%s", message, f"; worker stderr: {tail[-LOGGED_TAIL:]}" if tail else "",
                  extra={"EVENT": event})
        raise TpmError(message + (f" (stderr: {tail[-REASON_TAIL:]})" if tail else ""))

    def _replace(self, proc: subprocess.Popen[bytes], why: str) -> None:
        """Forget a worker that left between calls; only an unexpected exit is worth a warning."""
        self._discard(proc)
        if proc.returncode == 0:
            log.debug("TPM worker %d left (%s)", proc.pid, why, extra={"EVENT": "attestation.worker_exited"})
            return
        tail = self._stderr_tail()
        log.warning("TPM worker %d %s (%s); a new one is started%s", proc.pid, _exit_status(proc), why,
                    f"; worker stderr: {tail[-LOGGED_TAIL:]}" if tail else "",
                    extra={"EVENT": "attestation.worker_exited"})

    def _discard(self, proc: subprocess.Popen[bytes], kill: bool = False) -> None:
        """Reap a worker (killed first when asked), keep the rest of its stderr, close its pipes."""
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._drain_stderr(proc)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin of a dead worker: nothing to flush
                    pipe.close()
        if self._proc is proc:
            self._proc = None

    def _stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # EOF: the worker closes the TPM and exits
            try:
                proc.wait(timeout=CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("TPM worker %d did not exit within %g s of stdin EOF; killed", proc.pid,
                            CLOSE_GRACE_S, extra={"EVENT": "attestation.worker_killed"})
                proc.kill()
        self._replace(proc, "closed")

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr is None or proc.stderr.closed:
            return
        fd = proc.stderr.fileno()
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                self._keep_stderr(chunk)
        except BlockingIOError:
            pass  # a grandchild still holds the pipe; what we have is enough

    def _keep_stderr(self, chunk: bytes) -> None:
        self._err += chunk
        del self._err[:-STDERR_TAIL]

    def _stderr_tail(self) -> str:
        text = self._err.decode("utf-8", "replace")
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def _reap_when_exited(proc: subprocess.Popen[bytes]) -> None:
    """A worker leaves on its own after its idle timeout, and a quiet device may not call the TPM
    again for hours: reap it when it exits so it does not linger as a zombie. waitid(WNOWAIT)
    blocks without reaping (so no lock of Popen is held while waiting); poll() then reaps and
    records the status. If a call already reaped it, waitid fails with ECHILD: nothing to do."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        proc.poll()


def _exit_status(proc: subprocess.Popen[bytes]) -> str:
    code = proc.poll()
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _worker_env() -> dict[str, str]:
    """The worker imports this same edge_agent (a source tree is put first on its path; an
    installed package is found by the interpreter anyway). It runs with -P, so the agent's working
    directory (its state directory under systemd) is not on the worker's import path."""
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY_ENV}
    root = Path(__file__).resolve().parents[2]
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env
