"""A module that sends numbered records forever over its telemetry socket, pipelined 20 at a
time, reconnecting when the agent dies, and appends every answer to a file.

    python sender.py SOCKET OUT            streams "fast"/"slow" (every 4th record is "slow");
                                           each acknowledged record as "<id> <stream> <k>".
                                           Unacknowledged ones are not retried: they may or may
                                           not arrive, which the test allows. Stops on SIGTERM.
    python sender.py SOCKET OUT --keyed    stream "keyed" with idempotency keys ("r-<k>"); after
                                           losing the connection it sends every record that got
                                           no answer again, with the same key and payload, before
                                           any new one; each answer as "<id> <k> <duplicate 0|1>
                                           <resent 0|1>". On SIGTERM it stops making new records
                                           but keeps re-sending until every record it made has an
                                           answer, then exits.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from typing import Any

path, out_path = sys.argv[1], sys.argv[2]
keyed = "--keyed" in sys.argv[3:]
running = True


def stop(*_: object) -> None:
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
out = open(out_path, "a", buffering=1)  # noqa: SIM115
unanswered: list[int] = []  # keyed: in send order
resent: set[int] = set()
k = 0


def stream_of(n: int) -> str:
    return "keyed" if keyed else ("fast" if n % 4 else "slow")


def line(n: int) -> bytes:
    record: dict[str, Any] = {"stream": stream_of(n), "payload": {"k": n, "pad": "z" * 64}}
    if keyed:
        record["key"] = f"r-{n}"
    return json.dumps(record).encode() + b"\n"


def more_to_send() -> bool:
    return running or bool(unanswered)


def next_batch() -> list[int]:
    global k
    if unanswered:
        batch = list(unanswered)  # what the previous connection left without an answer
        resent.update(batch)
        return batch
    batch = list(range(k, k + 20))
    k += 20
    if keyed:
        unanswered.extend(batch)
    return batch


def answered(n: int, answer: dict[str, Any]) -> None:
    if not keyed:
        if answer.get("ok"):
            out.write(f"{answer['id']} {stream_of(n)} {n}\n")
        return
    if not answer.get("ok"):
        raise ConnectionError(f"refused: {answer}")  # unavailable while stopping: send again
    out.write(f"{answer['id']} {n} {int(bool(answer.get('duplicate')))} {int(n in resent)}\n")
    unanswered.remove(n)


while more_to_send():
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
    except OSError:
        time.sleep(0.02)
        continue
    buf = b""
    try:
        while more_to_send():
            batch = next_batch()
            sock.sendall(b"".join(line(n) for n in batch))
            for n in batch:
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                answer_line, _, buf = buf.partition(b"\n")
                answered(n, json.loads(answer_line))
            time.sleep(0.005)
    except (OSError, ValueError):
        pass
    finally:
        sock.close()
out.close()
