"""Where the device's TLS private key lives.

- With a TPM (`TpmSealedKeys`): the key is made on the device and its 32-byte P-256 scalar is
  sealed to the TPM (edge_agent.attestation.tpm: a data object under the TPM's storage key);
  only the sealed blob is on disk, useless on another device or if the SD card is copied. At
  start the agent unseals it into memory and hands it to OpenSSL through an anonymous memory
  file (memfd), so the clear key never touches a disk. (A TPM-resident key would be stronger:
  Python's ssl module cannot use one without an OpenSSL TPM provider, which the agent does not
  depend on.)
- Without a TPM (`FileKeys`): a PEM file, mode 0600, readable by the agent's user only.

Keys are named: "device" (the one in use) and "next" (a renewal until its certificate has
connected; then it becomes "device").
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_shared.atomic_file import atomic_rename, atomic_write, remove


class KeyStore(Protocol):
    kind: str

    def exists(self, name: str) -> bool: ...

    async def create(self, name: str) -> ec.EllipticCurvePrivateKey: ...

    async def load(self, name: str) -> ec.EllipticCurvePrivateKey: ...

    def promote(self, name: str, to: str) -> None: ...

    def remove(self, name: str) -> None: ...


def _scalar(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


class FileKeys:
    kind = "file"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    async def create(self, name: str) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        atomic_write(self.path(name), pem, 0o600)
        return key

    async def load(self, name: str) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.path(name).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.path(name)}: not an EC private key")
        return key

    def promote(self, name: str, to: str) -> None:
        atomic_rename(self.path(name), self.path(to))

    def remove(self, name: str) -> None:
        remove(self.path(name))


class TpmSealedKeys:
    kind = "tpm-sealed"

    def __init__(self, folder: Path, seal: Callable[[bytes], Awaitable[bytes]],
                 unseal: Callable[[bytes], Awaitable[bytes]]) -> None:
        self.folder = folder
        self._seal = seal
        self._unseal = unseal

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.key.tpm"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    async def create(self, name: str) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(self.path(name), await self._seal(_scalar(key)), 0o600)
        return key

    async def load(self, name: str) -> ec.EllipticCurvePrivateKey:
        scalar = await self._unseal(self.path(name).read_bytes())
        return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())

    def promote(self, name: str, to: str) -> None:
        atomic_rename(self.path(name), self.path(to))

    def remove(self, name: str) -> None:
        remove(self.path(name))


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    """A path to `data` held in an anonymous memory file (never on a disk)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not named by Python's ssl module).
VERIFY_NO_CHECK_TIME = 0x200000


def client_tls_context(ca_file: Path | None, cert_pem: bytes, key: ec.EllipticCurvePrivateKey, *,
                       check_time: bool = True) -> ssl.SSLContext:
    """A client TLS context for the broker, the key loaded from memory. `check_time=False` (a
    clock known to be wrong): the broker's certificate chain and name are still verified, its
    validity dates are not, since this clock cannot judge them."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not check_time:
        ctx.verify_flags = ssl.VerifyFlags(int(ctx.verify_flags) | VERIFY_NO_CHECK_TIME)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with _memory_file("device-cert", cert_pem) as cert_path, _memory_file("device-key", key_pem) as key_path:
        ctx.load_cert_chain(cert_path, key_path)
    return ctx
