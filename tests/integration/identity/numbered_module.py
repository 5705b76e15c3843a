"""A module streaming numbered telemetry: one record every INTERVAL seconds on stream "count"
(payload {"n": N}), through its telemetry socket; every acknowledged N is appended to OUT as
"<id> <n>". It never restarts; a lost socket is counted in OUT as a line "reconnect".

    python numbered_module.py SOCKET OUT INTERVAL
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

path, out_path, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
running = True


def stop(*_: object) -> None:
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
out = open(out_path, "a", buffering=1)  # noqa: SIM115
n = 0
connected_once = False
while running:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(path)
    except OSError:
        time.sleep(0.05)
        continue
    if connected_once:
        out.write("reconnect\n")
    connected_once = True
    buf = b""
    try:
        while running:
            sock.sendall(json.dumps({"stream": "count", "payload": {"n": n}}).encode() + b"\n")
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            answer = json.loads(line)
            if answer.get("ok"):
                out.write(f"{answer['id']} {n}\n")
                n += 1
            time.sleep(interval)
    except (OSError, ValueError):
        pass
    finally:
        sock.close()
out.close()
