"""Run inside the edge-agent unit's sandbox (see test_systemd_service.py): the libraries the
agent uses must work under its hardening (MemoryDenyWriteExecute=, SystemCallFilter=,
RestrictAddressFamilies=, ProtectSystem=strict). Prints one line per check, then SANDBOX OK."""

import asyncio
import socket
import sqlite3
from pathlib import Path

import aiomqtt  # noqa: F401  (import only: pulls in paho and ssl)
import pydantic  # noqa: F401
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_agent.attestation.tpm import TpmError
from edge_agent.runtime.podman import PodmanRuntime

private = ed25519.Ed25519PrivateKey.generate()
private.public_key().verify(private.sign(b"payload"), b"payload")
print("cryptography ed25519 ok")

print("getaddrinfo ok", socket.getaddrinfo("localhost", 1883, type=socket.SOCK_STREAM)[0][4])
for family, addr in ((socket.AF_INET, ("127.0.0.1", 9)), (socket.AF_INET6, ("::1", 9))):
    with socket.socket(family) as s:
        try:
            s.connect(addr)
        except OSError as exc:  # refused/unreachable is fine; EAFNOSUPPORT/EPERM is not
            assert exc.errno not in (97, 1), f"{family.name} blocked: {exc}"
    print(f"{family.name} sockets ok")

async def podman_client_round_trip(path: Path) -> bool:
    """The agent's podman adapter (podman-py over AF_UNIX, called from a daemon thread and handed
    back to the loop) against a one-answer server."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path)
    async with server:
        runtime = PodmanRuntime(f"unix://{path}")
        exists = await runtime.image_exists("localhost/sandbox:1")
        await runtime.close()
    path.unlink()
    return exists


assert asyncio.run(podman_client_round_trip(Path("/var/lib/edge-agent/sandbox-http.sock"))) is True
print("podman-py unix-socket http from a thread ok")

db_path = Path("/var/lib/edge-agent/sandbox-check.db")
db = sqlite3.connect(db_path)
assert db.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
db.execute("create table t(x)")
db.commit()
db.close()
for suffix in ("", "-wal", "-shm"):
    Path(f"{db_path}{suffix}").unlink(missing_ok=True)
print("sqlite wal in state dir ok")

for path in ("/etc/edge-agent/x", "/opt/edge-agent/x", "/usr/x"):
    try:
        Path(path).write_text("x")
    except OSError:
        continue
    raise AssertionError(f"{path} is writable inside the sandbox")
print("read-only system ok")

# The agent runs TPM calls in a child (same interpreter): fork/exec, pipes and the worker's own
# start must work under NoNewPrivileges=, SystemCallFilter= and MemoryDenyWriteExecute=. There is
# no TPM (nor tpm2-pytss) here, so the worker's structured answer says so; every failure of the
# worker itself would name the worker.
tpm = SubprocessTpm("device:/dev/tpmrm0", call_timeout=60)
try:
    print("TPM worker ok:", tpm.describe())
except TpmError as exc:
    assert "worker" not in str(exc), f"the TPM worker cannot run in the sandbox: {exc}"
    print(f"TPM worker spawned and answered ok: {exc}")
finally:
    tpm.close()
print("SANDBOX OK")
