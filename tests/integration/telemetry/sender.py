"""A module that sends sequence-numbered records forever (reconnecting when the agent dies) and
appends every acknowledged one to a file as "<id> <stream> <k>". Unacknowledged ones are not
retried: they may or may not arrive, which the test allows."""

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
k = 0
while running:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
    except OSError:
        time.sleep(0.02)
        continue
    buf = b""
    try:
        while running:
            batch = []
            for _ in range(20):
                stream = "fast" if k % 4 else "slow"
                batch.append((stream, k))
                k += 1
            sock.sendall(b"".join(json.dumps({"stream": s, "payload": {"k": n, "pad": "z" * 64}}).encode() + b"\n"
                                  for s, n in batch))
            for stream, n in batch:
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                line, _, buf = buf.partition(b"\n")
                answer = json.loads(line)
                if answer.get("ok"):
                    out.write(f"{answer['id']} {stream} {n}\n")
            time.sleep(0.005)
    except (OSError, ValueError):
        pass
    finally:
        sock.close()
out.close()
