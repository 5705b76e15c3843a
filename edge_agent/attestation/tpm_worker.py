"""The TPM worker: a child process that owns the TPM connection for the agent.

    python -m edge_agent.attestation.tpm_worker --tcti TCTI [--ek-type ecc|rsa]
        [--ak-handle 0x81...] [--idle-timeout 30]

tpm2-pytss (and the TSS libraries it links: FAPI, libcurl, gnutls...) is loaded only here, so the
agent does not carry it between the rare TPM operations, and a TPM call that hangs can be
killed with this process. It opens the TPM, flushes objects a killed predecessor left, writes
the hello line, then answers requests from stdin one at a time (edge_agent.attestation.tpm_wire).
It leaves on stdin EOF (the agent closed it or died) or after `--idle-timeout` seconds without
a request (then it writes the bye line first and reads nothing more).

stdout carries only the protocol: file descriptor 1 is pointed at stderr so that anything a C
library prints cannot corrupt it. stderr is read by the agent, which logs its tail only when
the worker fails.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import sys
import traceback

from edge_agent.attestation.tpm import PytssTpm, TpmError
from edge_agent.attestation.tpm_wire import (
    HELLO_ID,
    MAX_LINE,
    bye_line,
    error_line,
    execute,
    request_id,
    result_line,
)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(tpm: PytssTpm, in_fd: int, out_fd: int, idle_timeout: float) -> None:
    pending = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(in_fd, selectors.EVENT_READ)
        while True:
            newline = pending.find(b"\n")
            if newline >= 0:
                line = bytes(pending[:newline])
                del pending[: newline + 1]
                _write(out_fd, _answer(tpm, line))
                continue
            if len(pending) > MAX_LINE:
                _write(out_fd, error_line(None, "request", f"request longer than {MAX_LINE} bytes; leaving"))
                return
            if not selector.select(idle_timeout):
                _write(out_fd, bye_line("idle"))
                return
            chunk = os.read(in_fd, 65536)
            if not chunk:
                return  # EOF: the agent closed the pipe or is gone
            pending += chunk


def _answer(tpm: PytssTpm, line: bytes) -> bytes:
    try:
        return execute(tpm, line)
    except Exception as exc:  # a bug, not a TPM failure: answer it, trace it to stderr
        traceback.print_exc(file=sys.stderr)
        return error_line(request_id(line), "internal", f"TPM worker failed: {type(exc).__name__}: {exc}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.attestation.tpm_worker")
    parser.add_argument("--tcti", required=True)
    parser.add_argument("--ek-type", choices=("ecc", "rsa"), default="ecc")
    parser.add_argument("--ak-handle", type=lambda v: int(v, 0), default=None)
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group; the agent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        tpm = PytssTpm(args.tcti, args.ek_type, args.ak_handle)
    except TpmError as exc:
        _write(out_fd, error_line(HELLO_ID, "tpm", str(exc)))
        return 1
    try:
        try:
            flushed = tpm.flush_leftovers()
        except TpmError as exc:
            _write(out_fd, error_line(HELLO_ID, "tpm", str(exc)))
            return 1
        _write(out_fd, result_line(HELLO_ID, {"pid": os.getpid(), "flushed": flushed}))
        serve(tpm, 0, out_fd, args.idle_timeout)
    except BrokenPipeError:
        return 0  # the agent went away while we answered
    finally:
        tpm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
