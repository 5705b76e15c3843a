"""A module that sends numbered records with idempotency keys ("r-<k>"), pipelined 20 at a time,
and, after losing the connection (the agent was killed), sends every record that got no answer
again, with the same key and payload, before any new one. Each answer is appended to a file as
"<id> <k> <duplicate 0|1> <resent 0|1>". On SIGTERM it stops making new records but keeps
re-sending until every record it made has an answer, then exits."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

path, out_path = sys.argv[1], sys.argv[2]
running = True


def stop(*_: object) -> None:
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
out = open(out_path, "a", buffering=1)  # noqa: SIM115
unanswered: list[int] = []  # in send order
resent: set[int] = set()
k = 0


def line(n: int) -> bytes:
    return json.dumps({"stream": "keyed", "key": f"r-{n}", "payload": {"k": n, "pad": "z" * 64}}).encode() + b"\n"


while running or unanswered:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
    except OSError:
        time.sleep(0.02)
        continue
    buf = b""
    try:
        while running or unanswered:
            if unanswered:
                batch = list(unanswered)  # what the previous connection left without an answer
                resent.update(batch)
            else:
                batch = list(range(k, k + 20))
                k += 20
                unanswered.extend(batch)
            sock.sendall(b"".join(line(n) for n in batch))
            for n in batch:
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                answer_line, _, buf = buf.partition(b"\n")
                answer = json.loads(answer_line)
                if not answer.get("ok"):
                    raise ConnectionError(f"refused: {answer}")  # unavailable while stopping: send again
                out.write(f"{answer['id']} {n} {int(bool(answer.get('duplicate')))} {int(n in resent)}\n")
                unanswered.remove(n)
            time.sleep(0.005)
    except (OSError, ValueError):
        pass
    finally:
        sock.close()
out.close()
