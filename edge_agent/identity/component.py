"""The device's broker identity for its whole life (the `identity` component).

- First start: only a claim certificate (shared by a batch) and, where present, the TPM. The
  agent makes its own key (edge_agent/identity/keystore.py), sends a CSR with TPM evidence
  (edge_agent/identity/evidence.py) over a claim-certificate connection and waits until the
  fleet's enrollment service issues a certificate (by policy, or after an operator approved).
  The certificate must be for this device id and key and signed by a fleet CA; it is installed
  atomically and the twin session connects with it.
- Renewal: when `identity.renew_at` of the lifetime has passed (clock synchronised), a new key
  and CSR, proven by the current key over an mTLS connection as the device. The twin session
  switches to the new certificate (modules keep running; telemetry waits in its SQLite queue);
  the old key and certificate stay until the new ones have connected, and come back otherwise.
- Expired (the device was off): re-enrollment with the claim certificate; the TPM evidence
  matches the enrollment record, so the service approves it by policy.
- Clock not synchronised: nothing is discarded, no renewal is tried; the broker judges.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.attestation.tpm import TpmBackend, TpmError
from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.identity import evidence
from edge_agent.identity.certs import CertFacts, Decision, decide, issued_problem
from edge_agent.identity.client import EnrollmentRefused, exchange
from edge_agent.identity.clock import CLOCK_FILE, ClockState, ClockWatch, env_build_date
from edge_agent.identity.keystore import FileKeys, KeyStore, TpmSealedKeys, client_tls_context
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_shared import enrollment as wire
from edge_shared.atomic_file import atomic_rename, atomic_write, remove
from edge_shared.attestation import unb64
from edge_shared.mqtt_client import PublishRefused, make_client
from edge_shared.mqtt_params import BrokerParams, broker_params

log = get_logger(__name__)
TpmOp = Callable[..., Awaitable[Any]]  # AttestationService.tpm_op(what, fn, *args)
CLOCK_RECHECK_S = 30.0
ERROR_BACKOFF_S = (1.0, 60.0)


class TpmAccess:
    """The attestation component's TPM, for sealing and evidence; None-safe."""

    def __init__(self, op: TpmOp, available: Callable[[], bool]) -> None:
        self.op = op
        self.available = available


class IdentityComponent(BaseComponent):
    name = "identity"

    def __init__(self, config: AgentConfig, reported: ReportedState, tpm: TpmAccess | None,
                 switch: Callable[[BrokerParams], Awaitable[bool]],
                 connected: Callable[[], bool] = lambda: True, refusals: Callable[[], int] = lambda: 0) -> None:
        self.config = config
        self.connected = connected  # is the twin session connected now?
        self.refusals = refusals  # how many of its publishes the broker refused so far
        self._refusals_seen = 0
        self._offline_checks = 0
        self.section = config.identity
        self.reported = reported
        self.tpm = tpm
        self.switch = switch  # hands params to the twin session; True once they connected
        self.folder = self.section.dir or config.state.dir / "identity"
        self.cert_path = self.folder / "device.crt"
        self.next_cert_path = self.folder / "next.crt"
        self.clock = ClockWatch(config.state.dir / CLOCK_FILE, build_date=env_build_date())
        self.keys: KeyStore | None = None
        self.state = "starting"
        self.detail = ""
        self.renewals = 0
        self.last_renewal: str | None = None
        self.facts: CertFacts | None = None
        self._params: asyncio.Future[BrokerParams] | None = None
        self._clock_ahead: str | None = None
        self.clock_status = ClockState(True, "not checked yet")
        self._handed_check_time: bool | None = None

    # ----------------------------------------------------------------- for the twin

    async def broker_params(self) -> BrokerParams:
        """The first connection's parameters, once there is a usable certificate."""
        if self._params is None:
            self._params = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._params)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.facts = self._read_facts()
        self._report()

    async def run(self) -> None:
        if self._params is None:
            self._params = asyncio.get_running_loop().create_future()
        failures = 0
        while True:
            try:
                if self.keys is None:
                    self.keys = await self._keystore()
                await self._step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except (OSError, aiomqtt.MqttError, TpmError, ValueError, PublishRefused) as exc:
                failures += 1
                delay = min(ERROR_BACKOFF_S[0] * 2 ** min(failures, 8), ERROR_BACKOFF_S[1], self.section.retry_s * 4)
                self._set("error", f"{exc}; trying again in {delay:.0f} s")
                log.warning("identity: %s; trying again in %.0f s", exc, delay, extra={"EVENT": "identity.retry"})
                await asyncio.sleep(delay)
            except EnrollmentRefused as exc:
                self._set("refused", str(exc))
                log.error("enrollment refused by the fleet: %s", exc, extra={"EVENT": "identity.refused"})
                await asyncio.sleep(max(self.section.retry_s, 60.0))

    async def apply_config(self, config: AgentConfig) -> None:
        if config.identity != self.config.identity:
            log.warning("identity settings changed: they take effect after a restart",
                        extra={"EVENT": "config.restart_needed"})

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._section()

    # ----------------------------------------------------------------- one decision

    def _clock_now(self, now: dt.datetime) -> ClockState:
        """The clock's state: the watch's signals (build date, last saved time, timesyncd), and
        whether the broker contradicted this clock (accepted a certificate it calls expired)."""
        clock = self.clock.state(now)
        if self.facts is not None and now < self.facts.not_after:
            self._clock_ahead = None  # the certificate is valid by this clock again
        if self._clock_ahead is not None and clock.synchronised:
            clock = ClockState(False, self._clock_ahead)
        if clock.synchronised and (self.facts is None or now < self.facts.not_after):
            # Never from a clock that may be wrong (one that calls the certificate expired may be
            # ahead): a saved time from the future would make the right time look "behind".
            self.clock.save(now)
        self.clock_status = clock
        return clock

    async def _step(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.facts = self._read_facts()
        clock = self._clock_now(now)
        decision = decide(self.facts, now, clock, self.section.renew_at)
        if decision.action == "reenroll" and await self._broker_accepts_current():
            # Expired by this clock, not by the broker's: the clock is ahead. Keep the identity.
            self._clock_ahead = (f"the certificate looks expired by this clock ({now:%Y-%m-%dT%H:%M}Z), "
                                 "yet the broker accepts it: the clock is ahead")
            log.warning("clock not synchronised: %s", self._clock_ahead, extra={"EVENT": "identity.clock_ahead"})
            return
        if decision.action in ("enroll", "reenroll"):
            await self._enroll(decision)
            return
        if self._params is not None and not self._params.done():
            self._params.set_result(await self._params_for("device"))
        elif self._handed_check_time is not None and self._handed_check_time != clock.synchronised:
            # The clock became right (or wrong): the broker's certificate dates are checked again
            # (or no longer). Same certificate and key.
            await self.switch(await self._params_for("device"))
        if decision.action == "renew":
            await self._renew()
            return
        if await self._refused_by_broker():
            await self._enroll(Decision("reenroll", "the broker refuses the device certificate (revoked, or its "
                                                    "CA no longer trusted)"))
            return
        self._set("valid" if clock.synchronised else "clock-unsynchronised", decision.why)
        wait = min(CLOCK_RECHECK_S, max(2.0, 5 * self.section.retry_s))
        if clock.synchronised and decision.next_check is not None:
            wait = max(0.5, min(wait, (decision.next_check - now).total_seconds()))
        await asyncio.sleep(wait)

    async def _refused_by_broker(self) -> bool:
        """The twin session has stayed down over two checks, or the broker refused one of its
        publishes, and the broker, reachable, refuses a fresh connection with the certificate: it
        will not take it again (revoked, or a CA rotation left it behind), so the device asks to
        enroll again (an operator decides for a revoked one)."""
        refusals = self.refusals()
        refused, self._refusals_seen = refusals > self._refusals_seen, refusals
        if self.connected() and not refused:
            self._offline_checks = 0
            return False
        self._offline_checks += 1
        if self._offline_checks < 2 and not refused:
            return False
        self._offline_checks = 0
        if await self._broker_accepts_current():
            return False
        log.warning("the broker refuses the device certificate; enrolling again",
                    extra={"EVENT": "identity.refused_by_broker"})
        return True

    async def _broker_accepts_current(self) -> bool:
        """Does the broker take the current certificate (a fresh connection)? False when it
        refuses it; OSError when the broker cannot be reached (nothing can be decided then)."""
        assert self.keys is not None
        if not self.keys.exists("device"):
            return False
        ctx = client_tls_context(self.config.mqtt.ca_file, self.cert_path.read_bytes(),
                                 await self.keys.load("device"), check_time=False)
        params = BrokerParams(self.config.mqtt.host, self.config.mqtt.port, wire.new_client_id(), None, None, ctx,
                              self.config.mqtt.keepalive_s)
        try:
            async with make_client(params, timeout=10):
                return True
        except aiomqtt.MqttError:
            pass
        try:  # reachable, and it refused the certificate?
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.config.mqtt.host, self.config.mqtt.port),
                                               10)
            writer.close()
        except (OSError, TimeoutError) as exc:
            raise OSError(f"the broker is unreachable ({exc}): cannot tell whether the certificate expired") from None
        return False

    # ----------------------------------------------------------------- enrollment

    async def _enroll(self, decision: Decision) -> None:
        section = self.section
        assert self.keys is not None
        if section.claim_cert is None or section.claim_key is None:
            raise ValueError(f"{decision.why}, and identity.claim_cert/claim_key are not set: cannot enroll")
        self._set("enrolling", decision.why)
        log.info("enrolling: %s", decision.why, extra={"EVENT": "identity.enrolling"})
        # The same key across restarts while waiting: the service sees the same request.
        key = await (self.keys.load("next") if self.keys.exists("next") else self.keys.create("next"))
        request = await self._request("enroll", key)
        claim = client_tls_context(self.config.mqtt.ca_file, section.claim_cert.read_bytes(),
                                   _load_key(section.claim_key), check_time=self.clock_status.synchronised)
        answer = await exchange(self.config.mqtt.host, self.config.mqtt.port, claim, self.config.mqtt.topic_prefix,
                                request, retry_s=section.retry_s, on_pending=self._pending)
        cert_pem = await self._open(answer)
        self._install(cert_pem, key, "next")
        self.keys.promote("next", "device")
        atomic_rename(self.next_cert_path, self.cert_path)
        self.facts = self._read_facts()
        log.info("enrolled as %s until %s", self.facts.subject if self.facts else "?",
                 self.facts.not_after if self.facts else "?", extra={"EVENT": "identity.enrolled"})
        params = await self._params_for("device")
        if self._params is not None and not self._params.done():
            self._params.set_result(params)
        else:
            await self.switch(params)
        self._set("valid", "enrolled")

    def _pending(self, reason: str) -> None:
        if self.state != "pending":
            log.info("enrollment waits for approval: %s", reason, extra={"EVENT": "identity.pending"})
        self._set("pending", reason)

    # ----------------------------------------------------------------- renewal

    async def _renew(self) -> None:
        assert self.keys is not None
        self._set("renewing", "renewal due")
        current_key = await self.keys.load("device")
        current_pem = self.cert_path.read_bytes()
        key = await (self.keys.load("next") if self.keys.exists("next") else self.keys.create("next"))
        request = await self._request("renew", key, proof=(current_key, current_pem))
        tls = client_tls_context(self.config.mqtt.ca_file, current_pem, current_key, check_time=True)
        answer = await exchange(self.config.mqtt.host, self.config.mqtt.port, tls, self.config.mqtt.topic_prefix,
                                request, retry_s=self.section.retry_s, on_pending=self._pending)
        cert_pem = await self._open(answer)
        self._install(cert_pem, key, "next")
        # The old certificate stays in place until the new one has connected.
        new_params = await self._params_for("next")
        if not await asyncio.wait_for(self.switch(new_params), self.section.switch_timeout_s + 5):
            await self.switch(await self._params_for("device"))
            remove(self.next_cert_path)
            raise OSError("the renewed certificate did not connect to the broker; keeping the current one")
        self.keys.promote("next", "device")
        atomic_rename(self.next_cert_path, self.cert_path)
        self.renewals += 1
        self.last_renewal = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.facts = self._read_facts()
        log.info("certificate renewed (renewal %d), valid until %s", self.renewals,
                 self.facts.not_after if self.facts else "?", extra={"EVENT": "identity.renewed"})
        self._set("valid", "renewed")

    # ----------------------------------------------------------------- pieces

    async def _keystore(self) -> KeyStore:
        wanted = self.section.key_storage
        tpm = self.tpm if self.tpm is not None and self.tpm.available() else None
        if wanted == "tpm" and tpm is None:
            raise TpmError("identity.key_storage is tpm, but attestation has no TPM")
        sealed = [p.name for p in self.folder.glob("*.key.tpm")]
        if tpm is None and sealed and wanted != "file":
            # Never fall back to a new key file while the sealed key waits for its TPM: a TPM that
            # is away for a moment must not cost the device its identity.
            raise TpmError(f"the device key ({', '.join(sealed)}) is sealed to the TPM, which is unavailable")
        if tpm is not None and wanted != "file":
            op = tpm.op

            async def seal(data: bytes) -> bytes:
                sealed: bytes = await op("seal the device key", _call("seal"), data)
                return sealed

            async def unseal(data: bytes) -> bytes:
                secret: bytes = await op("unseal the device key", _call("unseal"), data)
                return secret

            return TpmSealedKeys(self.folder, seal, unseal)
        return FileKeys(self.folder)

    async def _request(self, kind: str, key: ec.EllipticCurvePrivateKey,
                       proof: tuple[ec.EllipticCurvePrivateKey, bytes] | None = None) -> wire.EnrollRequest:
        device_id = self.config.device.id
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        csr_der = csr.public_bytes(serialization.Encoding.DER)
        tpm_evidence = None
        if self.tpm is not None and self.tpm.available():
            endorsement = await self.tpm.op("read the endorsement key", _call("endorsement"))
            ak_public = await self.tpm.op("read the attestation key", _call("ak_public"))
            quote = await self.tpm.op("quote the CSR", _call("quote"), list(evidence.QUOTE_PCRS),
                                      wire.csr_digest(csr_der))
            tpm_evidence = evidence.tpm_evidence(endorsement, ak_public, quote)
        renew = evidence.renew_proof(proof[0], proof[1], csr_der) if proof else None
        return wire.EnrollRequest(kind=kind, device_id=device_id,  # type: ignore[arg-type]
                                  csr=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                                  tpm=tpm_evidence, proof=renew)

    async def _open(self, answer: wire.EnrollAnswer) -> bytes:
        if answer.sealed is not None:
            if self.tpm is None or not self.tpm.available():
                raise ValueError("the certificate came sealed to a TPM, and this device has none")
            secret = await self.tpm.op("activate the enrollment credential", _call("activate_credential"),
                                       unb64(answer.sealed.credential_blob, "credential_blob"),
                                       unb64(answer.sealed.secret, "secret"))
            return evidence.open_sealed(answer.sealed, secret)
        if answer.certificate is None:
            raise ValueError("the enrollment answer carries no certificate")
        return answer.certificate.encode()

    def _install(self, cert_pem: bytes, key: ec.EllipticCurvePrivateKey, name: str) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        if problem := issued_problem(cert, self.config.device.id, key.public_key(), self._fleet_cas()):
            raise ValueError(f"refusing the issued certificate: {problem}")
        atomic_write(self.next_cert_path if name == "next" else self.cert_path, cert_pem, 0o644)

    def _fleet_cas(self) -> list[x509.Certificate]:
        bundle = self.section.fleet_ca or self.config.mqtt.ca_file
        if bundle is None:
            raise ValueError("identity.fleet_ca (or mqtt.ca_file) is needed to check issued certificates")
        return x509.load_pem_x509_certificates(bundle.read_bytes())

    async def _params_for(self, name: str) -> BrokerParams:
        assert self.keys is not None
        path = self.next_cert_path if name == "next" else self.cert_path
        key = await self.keys.load(name)
        check_time = self.clock_status.synchronised
        ctx = client_tls_context(self.config.mqtt.ca_file, path.read_bytes(), key, check_time=check_time)
        self._handed_check_time = check_time
        base = broker_params(self.config.mqtt.model_copy(update={"cert_file": None, "key_file": None}),
                             self.config.device.id)
        return replace(base, tls_context=ctx)

    def _read_facts(self) -> CertFacts | None:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError):
            return None
        if self.keys is not None and not self.keys.exists("device"):
            return None
        return CertFacts.of(cert)

    # ----------------------------------------------------------------- reporting

    def _set(self, state: str, detail: str) -> None:
        self.state, self.detail = state, detail
        self._report()

    def _section(self) -> dict[str, Any]:
        facts = self.facts
        out: dict[str, Any] = {
            "state": self.state,
            "detail": self.detail,
            "keyStorage": self.keys.kind if self.keys is not None else None,
            "renewals": self.renewals,
            "lastRenewal": self.last_renewal,
        }
        clock = self.clock_status
        out["clock"] = "synchronised" if clock.synchronised else f"clock not synchronised: {clock.reason}"
        if facts is not None:
            out.update(subject=facts.subject, serial=f"{facts.serial:x}",
                       notAfter=facts.not_after.isoformat(),
                       renewAt=facts.renew_time(self.section.renew_at).isoformat())
        return out

    def _report(self) -> None:
        self.reported.set("identity", self._section())


def _call(method: str) -> Callable[..., Any]:
    """`tpm.<method>(*args)` as a function of (tpm, *args), for AttestationService.tpm_op."""

    def call(tpm: TpmBackend, *args: Any) -> Any:
        return getattr(tpm, method)(*args)

    return call


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


