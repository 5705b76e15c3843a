"""The TPM behind a small Protocol: a real adapter over tpm2-pytss and a software fake for unit tests.

Only the SHA-256 PCR bank is used. The adapter talks to the TPM without a resource manager in
mind (swtpm, a bare /dev/tpm0): every transient object and session it creates is flushed before
the call returns, so nothing leaks into the TPM's few object slots.

Calls block (the TPM is a slow serial device); callers run them in a worker thread, one at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edge_shared.attestation import BANK, DIGEST_SIZE

EkType = Literal["ecc", "rsa"]

# The attestation key: a restricted ECDSA P-256 signing key made as a primary key in the
# endorsement hierarchy. A primary key comes from the hierarchy seed and the template, so the
# same template yields the same key after every restart: nothing secret is stored on disk.
AK_TEMPLATE = "ecc256:ecdsa-sha256:null"
AK_ATTRIBUTES = "userwithauth|restricted|sign|fixedtpm|fixedparent|sensitivedataorigin"
# The EK templates of the TCG EK Credential Profile (low range), so the key matches the EK
# certificate the manufacturer stored in NV.
EK_TEMPLATES: dict[str, str] = {"ecc": "EK-ECC256", "rsa": "EK-RSA2048"}
PERSISTENT_RANGE = (0x81000000, 0x81FFFFFF)


class TpmError(Exception):
    """A TPM operation failed; the message says which and why."""


@dataclass(frozen=True)
class Endorsement:
    ek_public: bytes  # marshalled TPM2B_PUBLIC
    ek_cert: bytes | None  # DER, from NV when the manufacturer stored one
    ek_type: EkType


@dataclass(frozen=True)
class RawQuote:
    attest: bytes  # TPMS_ATTEST as signed (the TPM2B_ATTEST buffer)
    signature: bytes  # marshalled TPMT_SIGNATURE
    pcrs: dict[int, bytes]  # SHA-256 bank values, read with the quote


class TpmBackend(Protocol):
    def endorsement(self) -> Endorsement: ...

    def ak_public(self) -> bytes: ...

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes: ...

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> RawQuote: ...

    def pcr_read(self, pcrs: Sequence[int]) -> dict[int, bytes]: ...

    def pcr_extend(self, pcr: int, digest: bytes) -> None: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def pcr_digest(values: dict[int, bytes], pcrs: Sequence[int]) -> bytes:
    """The digest a quote carries: SHA-256 over the selected PCR values in ascending index order."""
    return hashlib.sha256(b"".join(values[i] for i in sorted(pcrs))).digest()


def selection_string(pcrs: Sequence[int]) -> str:
    return f"{BANK}:" + ",".join(str(i) for i in sorted(set(pcrs)))


def _quiet_tss_logs() -> None:
    # The TSS logs expected failures (e.g. "no EK certificate in NV") as errors; we report
    # outcomes ourselves.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    for name in ("tcti", "esys", "fapi", "mu", "sys"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class PytssTpm:
    """The real TPM through tpm2-pytss (ESAPI). `tcti` is a TCTI string such as
    ``device:/dev/tpmrm0``, ``tabrmd`` or ``swtpm:host=127.0.0.1,port=2321``."""

    def __init__(self, tcti: str, ek_type: EkType = "ecc", ak_handle: int | None = None) -> None:
        _quiet_tss_logs()
        try:
            from tpm2_pytss import ESAPI
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TpmError(f"tpm2-pytss is not installed ({exc}); install edge-agent[tpm]") from None
        if ak_handle is not None and not PERSISTENT_RANGE[0] <= ak_handle <= PERSISTENT_RANGE[1]:
            raise TpmError(f"AK handle {ak_handle:#x} is not a persistent handle (0x81000000-0x81FFFFFF)")
        self.tcti = tcti
        self.ek_type: EkType = ek_type
        self.ak_handle = ak_handle
        self._lock = threading.Lock()
        try:
            self._esys: Any = ESAPI(tcti)
        except Exception as exc:
            raise TpmError(f"cannot open TPM through TCTI {tcti!r}: {exc}") from None

    def describe(self) -> str:
        from tpm2_pytss.constants import TPM2_CAP, TPM2_PT

        with self._lock:
            _, data = self._esys.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.MANUFACTURER, 1)
        value = int(data.data.tpmProperties[0].value)
        vendor = value.to_bytes(4, "big").decode("ascii", "replace").strip("\x00 ")
        return f"TPM 2.0 from {vendor or 'unknown vendor'} via {self.tcti}"

    def flush_leftovers(self) -> int:
        """Flush transient objects and loaded sessions left in the TPM by a client that was
        killed mid-command (the TPM worker after its deadline): without a resource manager they
        stay until the next TPM reset and fill its 3 object slots. Behind a resource manager
        (/dev/tpmrm0, tabrmd) the TPM shows only this connection's own handles: none. Returns how
        many were flushed."""
        from tpm2_pytss.constants import TPM2_CAP, TPM2_HC

        flushed = 0
        with self._lock, self._op("flush objects left in the TPM"):
            # HMAC_SESSION_FIRST lists loaded HMAC and policy sessions alike.
            for first, last in ((TPM2_HC.TRANSIENT_FIRST, TPM2_HC.TRANSIENT_LAST),
                                (TPM2_HC.HMAC_SESSION_FIRST, TPM2_HC.POLICY_SESSION_LAST)):
                _, data = self._esys.get_capability(TPM2_CAP.HANDLES, first, 64)
                for handle in data.data.handles:
                    if first <= handle <= last:
                        self._esys.flush_context(self._esys.tr_from_tpmpublic(handle))
                        flushed += 1
        return flushed

    # ----------------------------------------------------------------- keys

    def _ek_template(self) -> tuple[bytes | None, Any]:
        from tpm2_pytss.utils import NVReadEK, create_ek_template

        cert, template = create_ek_template(EK_TEMPLATES[self.ek_type], NVReadEK(self._esys))
        return (bytes(cert) if cert else None), template

    @contextmanager
    def _transient(self, handle: Any) -> Iterator[Any]:
        try:
            yield handle
        finally:
            self._esys.flush_context(handle)

    def _create_ek(self) -> tuple[Any, Any, bytes | None]:
        from tpm2_pytss.constants import ESYS_TR

        cert, template = self._ek_template()
        handle, public, *_ = self._esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        return handle, public, cert

    def _ak_template(self) -> Any:
        from tpm2_pytss.types import TPM2B_PUBLIC

        return TPM2B_PUBLIC.parse(AK_TEMPLATE, objectAttributes=AK_ATTRIBUTES)

    @contextmanager
    def _ak(self) -> Iterator[Any]:
        """The AK as an ESYS handle: the persistent one when configured (made on first use),
        else re-created from its template and flushed afterwards."""
        from tpm2_pytss.constants import ESYS_TR

        if self.ak_handle is not None:
            try:
                persistent = self._esys.tr_from_tpmpublic(self.ak_handle)
            except Exception as exc:  # not there yet (TPM_RC_HANDLE): create and persist it
                if "0x18b" not in repr(exc).lower() and "handle" not in str(exc).lower():
                    raise
                handle, *_ = self._esys.create_primary(None, self._ak_template(), ESYS_TR.ENDORSEMENT)
                try:
                    persistent = self._esys.evict_control(ESYS_TR.OWNER, handle, self.ak_handle)
                finally:
                    self._esys.flush_context(handle)
            yield persistent
            return
        handle, *_ = self._esys.create_primary(None, self._ak_template(), ESYS_TR.ENDORSEMENT)
        with self._transient(handle):
            yield handle

    def endorsement(self) -> Endorsement:
        with self._lock, self._op("read the endorsement key"):
            handle, public, cert = self._create_ek()
            self._esys.flush_context(handle)
            return Endorsement(bytes(public.marshal()), cert, self.ek_type)

    def ak_public(self) -> bytes:
        with self._lock, self._op("load the attestation key"), self._ak() as ak:
            public, _, _ = self._esys.read_public(ak)
            return bytes(public.marshal())

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and the EK: only this TPM can recover the secret,
        and only for the AK named in the blob."""
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
        from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_SYM_DEF

        blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        with self._lock, self._op("activate the credential"):
            ek, _, _ = self._create_ek()
            with self._transient(ek), self._ak() as ak:
                # The EK's policy is PolicySecret(endorsement hierarchy).
                session = self._esys.start_auth_session(
                    ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
                )
                with self._transient(session):
                    self._esys.policy_secret(ESYS_TR.ENDORSEMENT, session)
                    cert_info = self._esys.activate_credential(
                        ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                    )
                return bytes(cert_info)

    # ----------------------------------------------------------------- PCRs and quotes

    def _read(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        wanted = sorted(set(pcrs))
        values: dict[int, bytes] = {}
        # PCR_Read returns at most 8 values per call; ask again for what is missing.
        while missing := [i for i in wanted if i not in values]:
            _, selection, digests = self._esys.pcr_read(selection_string(missing))
            got = _selected_indexes(selection)
            if not got:
                raise TpmError(f"TPM returned no values for PCRs {missing} in the {BANK} bank")
            for index, digest in zip(got, digests, strict=True):
                values[index] = bytes(digest)
        return values

    def pcr_read(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        with self._lock, self._op("read PCRs"):
            return self._read(pcrs)

    def pcr_extend(self, pcr: int, digest: bytes) -> None:
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
        from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

        if len(digest) != DIGEST_SIZE:
            raise TpmError(f"PCR extend needs a {DIGEST_SIZE}-byte SHA-256 digest, got {len(digest)} bytes")
        value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        value.digest.sha256 = digest
        values = TPML_DIGEST_VALUES([value])
        with self._lock, self._op(f"extend PCR {pcr}"):
            self._esys.pcr_extend(ESYS_TR.parse(f"pcr{pcr}"), values)

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> RawQuote:
        from tpm2_pytss.types import TPMS_ATTEST

        with self._lock, self._op("quote"), self._ak() as ak:
            # The PCR values travel next to the quote; read them around it and retry when a
            # PCR moved in between (IMA extends PCR 10 at any time).
            for _ in range(5):
                before = self._read(pcrs)
                attest, signature = self._esys.quote(ak, selection_string(pcrs), nonce)
                parsed, _ = TPMS_ATTEST.unmarshal(bytes(attest))
                if bytes(parsed.attested.quote.pcrDigest) == pcr_digest(before, pcrs):
                    return RawQuote(bytes(attest), bytes(signature.marshal()), before)
            raise TpmError("PCR values kept changing while quoting; try again")

    def close(self) -> None:
        with self._lock:
            self._esys.close()

    @contextmanager
    def _op(self, what: str) -> Iterator[None]:
        try:
            yield
        except TpmError:
            raise
        except Exception as exc:
            raise TpmError(f"cannot {what}: {exc}") from None


def _selected_indexes(selection: Any) -> list[int]:
    out: list[int] = []
    for sel in selection:
        bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        out += [byte * 8 + bit for byte, bits in enumerate(bitmap) for bit in range(8) if bits & (1 << bit)]
    return out


def open_tpm(tcti: str, ek_type: EkType = "ecc", ak_handle: int | None = None) -> PytssTpm:
    return PytssTpm(tcti, ek_type, ak_handle)
