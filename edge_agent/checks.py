"""`edge-agent check`: one line per check with pass/warn/fail and a hint, like `iotedge check`.

Each check is a plain function taking the loaded config and returning a CheckResult; later
subsystems (trust, TPM, ...) add theirs to CHECKS. Checks never print secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import ssl
import tempfile
import time
from pathlib import Path

from edge_agent.api_url import podman_ping, transport_reason
from edge_agent.check_result import CheckFn, CheckResult, Outcome
from edge_agent.config import AgentConfig
from edge_agent.control import CONTROL_SOCKET_NAME, AgentNotRunning, CommandError, call
from edge_shared.mqtt_params import broker_params

# Earliest plausible wall-clock time: a device whose clock is before this has no RTC sync yet.
CLOCK_FLOOR = time.mktime((2025, 1, 1, 0, 0, 0, 0, 0, -1))


def check_state_dir(config: AgentConfig) -> CheckResult:
    state_dir = config.state.dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".check-"):
            pass
    except OSError as exc:
        return CheckResult(
            "state dir writable",
            "fail",
            f"{state_dir}: {exc.strerror}",
            "create it or fix ownership; under systemd StateDirectory= does this",
        )
    return CheckResult("state dir writable", "pass", str(state_dir))


def check_state_schema(config: AgentConfig) -> CheckResult:
    """Read-only: whether this release can open state.db (edge_agent/state_schema.py)."""
    import sqlite3

    from edge_agent.state_schema import SCHEMA_VERSION, schema_version
    from edge_agent.store import STATE_DB_NAME

    path = config.state.dir / STATE_DB_NAME
    if not path.exists():
        return CheckResult("state db schema", "pass", f"no {STATE_DB_NAME} yet: created at version {SCHEMA_VERSION}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)) as db:
            found = schema_version(db)
    except sqlite3.Error as exc:
        return CheckResult("state db schema", "fail", f"{path}: {exc}", "restore it from a backup or move it away")
    if found > SCHEMA_VERSION:
        return CheckResult(
            "state db schema", "fail",
            f"{path}: version {found}, written by a newer release; this one knows up to {SCHEMA_VERSION}",
            "run the newer release, or move state.db (and -wal/-shm) away to start with empty state",
        )
    if found < SCHEMA_VERSION:
        detail = f"version {found}: migrated to {SCHEMA_VERSION} when the agent starts"
        return CheckResult("state db schema", "pass", detail)
    return CheckResult("state db schema", "pass", f"version {found}")


def check_disk_space(config: AgentConfig) -> CheckResult:
    target = config.state.dir if config.state.dir.exists() else config.state.dir.parent
    try:
        usage = shutil.disk_usage(target)
    except OSError as exc:
        return CheckResult("disk space", "fail", f"{target}: {exc.strerror}")
    free_mb = usage.free // (1024 * 1024)
    need = config.state.min_free_mb
    if free_mb < need:
        return CheckResult(
            "disk space",
            "fail",
            f"{free_mb} MB free on {target}, below state.min_free_mb={need}",
            "free space: old images (podman image prune), journal (journalctl --vacuum-size)",
        )
    outcome: Outcome = "warn" if free_mb < 4 * need else "pass"
    return CheckResult("disk space", outcome, f"{free_mb} MB free on {target} (minimum {need} MB)")


def check_clock(config: AgentConfig) -> CheckResult:
    now = time.time()
    if now < CLOCK_FLOOR:
        return CheckResult(
            "clock sane",
            "fail",
            f"system time {time.ctime(now)} is in the past",
            "TLS certificates and signature expiry need a correct clock: enable NTP (timedatectl)",
        )
    synced = Path("/run/systemd/timesync/synchronized").exists()
    return CheckResult(
        "clock sane",
        "pass",
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)) + (" (NTP synchronized)" if synced else ""),
    )


def check_broker(config: AgentConfig) -> CheckResult:
    """Every configured broker endpoint is tried: all reachable passes, some reachable warns (the
    agent runs, on fewer brokers than configured), none fails."""
    name = "broker reachable" + (" with TLS" if config.mqtt.tls else "")
    if config.identity.enabled:
        from edge_agent.identity.check import check_broker_tcp

        return check_broker_tcp(config)
    try:
        params = broker_params(config.mqtt, config.device.id)
    except (OSError, KeyError, ssl.SSLError) as exc:
        return CheckResult(name, "fail", f"cannot load credentials/TLS files: {exc}", "check the mqtt.* file paths")
    good: list[str] = []
    bad: list[str] = []
    for endpoint in params.all_endpoints:
        try:
            asyncio.run(asyncio.wait_for(_mqtt_connect(params.at(endpoint)), timeout=5))
            good.append(str(endpoint))
        except TimeoutError:
            bad.append(f"{endpoint}: no answer within 5 s")
        except Exception as exc:
            bad.append(f"{endpoint}: {exc}")
    if not bad:
        return CheckResult(name, "pass", ", ".join(good))
    hint = "check mqtt.host/port/endpoints, TLS files and credentials; is the broker running and the port open?"
    if good:
        return CheckResult(name, "warn", f"reachable: {', '.join(good)}; not: {'; '.join(bad)}", hint)
    return CheckResult(name, "fail", "; ".join(bad), hint)


async def _mqtt_connect(params: object) -> None:
    import aiomqtt

    from edge_shared.mqtt_params import BrokerParams

    assert isinstance(params, BrokerParams)
    async with aiomqtt.Client(
        params.host,
        params.port,
        identifier=f"{params.client_id}-check",
        username=params.username,
        password=params.password,
        tls_context=params.tls_context,
        timeout=5,
    ):
        pass


def check_podman(config: AgentConfig) -> CheckResult:
    url = config.podman.socket
    try:
        body = podman_ping(url)
    except (OSError, ValueError) as exc:
        problem = transport_reason(exc) if isinstance(exc, OSError) else str(exc)
        return CheckResult("podman reachable", "fail", f"{url}: {problem}",
                           "systemctl enable --now podman.socket (or set podman.socket)")
    return CheckResult("podman reachable", "pass", f"{url} ({body})")


def check_agent_running(config: AgentConfig) -> CheckResult:
    try:
        call(config.state.dir / CONTROL_SOCKET_NAME, "ping", timeout=3)
    except AgentNotRunning as exc:
        return CheckResult("agent running", "warn", str(exc), "systemctl start edge-agent")
    except CommandError as exc:
        return CheckResult("agent running", "fail", str(exc))
    return CheckResult("agent running", "pass", f"answers on {config.state.dir / CONTROL_SOCKET_NAME}")


def check_secrets_private(config: AgentConfig) -> CheckResult:
    loose = [str(p) for p in (config.mqtt.key_file,) if p is not None and p.exists() and p.stat().st_mode & 0o077]
    if config.mqtt.password is not None and config.mqtt.password.scheme == "file":
        p = Path(config.mqtt.password.target)
        if p.exists() and p.stat().st_mode & 0o077:
            loose.append(str(p))
    if loose:
        return CheckResult(
            "secret files private", "warn", "readable by group/others: " + ", ".join(loose), "chmod 600 these files"
        )
    return CheckResult("secret files private", "pass", "key and password files are not group/world readable")


def check_attestation(config: AgentConfig) -> CheckResult:
    name = "TPM attestation"
    if not config.attestation.enabled:
        return CheckResult(name, "warn", "attestation is unavailable: disabled (attestation.enabled = false)")
    # A running agent holds the TPM connection (swtpm and /dev/tpm0 serve one client): ask it.
    try:
        status = call(config.state.dir / CONTROL_SOCKET_NAME, "attestation", timeout=5)
    except (AgentNotRunning, CommandError):
        status = None
    if isinstance(status, dict):
        if status.get("available"):
            return CheckResult(name, "pass", f"{status.get('tpm')}, AK {str(status.get('ak_name'))[:16]}... "
                               "(from the running agent)")
        return CheckResult(name, "warn", f"attestation is unavailable: {status.get('reason')}", _TPM_HINT)
    try:
        detail = _probe_tpm(config)
    except Exception as exc:
        return CheckResult(name, "warn", f"attestation is unavailable: {exc}", _TPM_HINT)
    return CheckResult(name, "pass", detail)


_TPM_HINT = ("the agent runs without it; enable the TPM (Raspberry Pi: dtoverlay=tpm-slb9670), "
             "set attestation.tcti, install edge-agent[tpm]")


def _probe_tpm(config: AgentConfig) -> str:
    import threading

    from edge_agent.attestation.tpm import open_tpm
    from edge_shared.attestation import ak_name

    result: list[str] = []
    error: list[BaseException] = []

    def probe() -> None:
        try:
            tpm = open_tpm(config.attestation.tcti, config.attestation.ek_type, config.attestation.ak_handle)
            try:
                result.append(f"{tpm.describe()}, AK {ak_name(tpm.ak_public()).hex()[:16]}...")
            finally:
                tpm.close()
        except BaseException as exc:
            error.append(exc)

    # A TPM held by another client never answers; do not hang the check.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(10)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError(f"no answer from the TPM at {config.attestation.tcti} within 10 s (busy?)")
    return result[0]

def check_trust(config: AgentConfig) -> CheckResult:
    """Shows the image trust policy per scope and the keys it trusts. Warns when every image or
    every desired document would be refused (secure default of an unprovisioned device); fails
    only when a key file cannot be used."""
    from edge_agent.trust.factory import scope_policies
    from edge_shared.trust.keys import KeyFileError, load_public_key

    trust = config.trust
    try:
        policies = scope_policies(trust)
        doc_keys = [load_public_key(p) for p in trust.document_keys]
    except KeyFileError as exc:
        return CheckResult("trust policy", "fail", str(exc), "fix the key path in [trust]")
    parts = []
    for p in policies:
        keys = ", ".join(f"{k.short_id} {k.algorithm} ({k.source})" for k in p.keys)
        extra = f" requires {dict(p.required_annotations)}" if p.required_annotations else ""
        parts.append(f"{p.scope}: {p.mode}" + (f" keys [{keys}]" if keys else "") + extra)
    rotated = _rotated_document_keys(config)
    if trust.document_mode == "off":
        parts.append("desired documents: signature check off")
    elif rotated:
        parts.append(f"desired documents: enforce, rotated keys [{rotated}] (state.db)")
    else:
        shown = ", ".join(f"{k.short_id} ({k.source})" for k in doc_keys)
        parts.append(f"desired documents: enforce, keys [{shown}]")
    detail = "; ".join(parts)
    if not policies:
        return CheckResult(
            "trust policy", "warn", "no [[trust.policy]]: every image will be refused; " + detail,
            "add [[trust.policy]] with scope and keys (see docs/security.md)",
        )
    if trust.document_mode == "enforce" and not doc_keys and not rotated:
        return CheckResult(
            "trust policy", "warn", "no trust.document_keys: every desired document will be refused; " + detail,
            "list the fleet's document signing key(s) in trust.document_keys",
        )
    if trust.document_mode == "off" or any(p.mode != "enforce" for p in policies):
        return CheckResult("trust policy", "warn", detail, "warn/off scopes run unverified images")
    return CheckResult("trust policy", "pass", detail)


def check_platform(config: AgentConfig) -> CheckResult:
    """The platform picked from multi-arch images; warns when [device] platform is not what this
    machine is (its images then need emulation: qemu-user-static with binfmt_misc)."""
    import platform as py_platform

    from edge_agent.trust.factory import device_platform
    from edge_shared.trust.platforms import compatible, host_platform

    chosen = device_platform(config)
    host = host_platform(py_platform.machine(), py_platform.system()).normalized()
    if config.device.platform is None:
        return CheckResult("image platform", "pass", f"{chosen} (this machine's)")
    detail = f"{chosen} ([device] platform; this machine is {host})"
    if chosen.normalized() not in compatible(host):
        return CheckResult(
            "image platform", "warn", detail,
            "multi-arch images run their " + str(chosen) + " image here only under emulation (qemu-user-static)",
        )
    return CheckResult("image platform", "pass", detail)


def _rotated_document_keys(config: AgentConfig) -> str:
    import sqlite3

    from edge_agent.store import STATE_DB_NAME

    path = config.state.dir / STATE_DB_NAME
    if not path.exists():
        return ""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            rows = conn.execute("SELECT key_id, installed_version FROM trust_document_keys ORDER BY key_id").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return ""
    return ", ".join(f"{r[0][:16]} since v{r[1]}" for r in rows)


def check_local_deploy(config: AgentConfig) -> CheckResult:
    if config.deployment.local_deploy:
        return CheckResult("local deploy", "warn",
                           "deployment.local_deploy = true: unsigned deployments are accepted on the control socket",
                           "switch it off outside development")
    return CheckResult("local deploy", "pass", "off: deployments only come signed from the fleet")


def check_agent_updates(config: AgentConfig) -> CheckResult:
    """Whether the agent can update itself (the A/B guard is installed) and how the last update ended."""
    from edge_agent.selfupdate.files import UpdateFiles

    files = UpdateFiles(config.state.dir)
    if not files.pointer.is_symlink():
        return CheckResult("agent updates", "pass",
                           "not installed with the update guard: a deployment's agent release is refused",
                           "docs/operations.md, Agent updates, to let the fleet update this agent")
    target = files.pointer.resolve()
    detail = f"A/B guard installed; runs {target}"
    trial = files.trial()
    if trial is not None:
        detail += f"; {trial.version} on trial (start {trial.starts})"
    last = files.outcome()
    if last is not None:
        detail += f"; last update: {last.get('result')} {last.get('version')} ({last.get('reason')})"
    bad = files.bad_versions()
    if bad:
        detail += f"; not retried: {', '.join(sorted(bad))}"
    if last is not None and last.get("result") == "rolled_back":
        return CheckResult("agent updates", "warn", detail, "the release was rolled back; see its reason")
    return CheckResult("agent updates", "pass", detail)


CHECKS: list[CheckFn] = [
    check_state_dir,
    check_state_schema,
    check_disk_space,
    check_clock,
    check_secrets_private,
    check_trust,
    check_platform,
    check_local_deploy,
    check_agent_updates,
    check_broker,
    check_podman,
    check_agent_running,
    check_attestation,
]


def check_telemetry_queue(config: AgentConfig) -> CheckResult:
    """The telemetry queue file is a sound SQLite database."""
    from edge_agent.telemetry.queue import QUEUE_DB_NAME  # here: `check` without the queue's imports

    name = "telemetry queue"
    if not config.telemetry.enabled:
        return CheckResult(name, "pass", "telemetry disabled")
    path = config.state.dir / QUEUE_DB_NAME
    if not path.exists():
        return CheckResult(name, "pass", f"{path} not created yet (made on first start)")
    try:
        # The running agent holds the file locked for good (the WAL index is kept in its memory, to
        # spare the SD card): then the agent's own figures are the ones to read.
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            depth = db.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) != 5:  # SQLITE_BUSY: locked by the running agent
            return CheckResult(name, "fail", f"{path}: {exc}", "the agent moves a damaged queue aside on start")
        return CheckResult(name, "pass", f"{path}: in use by the running agent (opened exclusively); "
                           "`edge-agent status` shows its figures, this check reads the file when the agent is stopped")
    except sqlite3.Error as exc:
        return CheckResult(name, "fail", f"{path}: {exc}", "the agent moves a damaged queue aside on start")
    if verdict != "ok":
        return CheckResult(name, "fail", f"{path}: {verdict}", "the agent moves a damaged queue aside on start")
    return CheckResult(name, "pass", f"{path}: ok, {depth} records queued")


def run_checks(config: AgentConfig) -> list[CheckResult]:
    from edge_agent.identity.check import check_identity

    if check_telemetry_queue not in CHECKS:
        CHECKS.insert(CHECKS.index(check_agent_running), check_telemetry_queue)
    if check_identity not in CHECKS:
        CHECKS.insert(CHECKS.index(check_broker), check_identity)
    results = []
    for fn in CHECKS:
        try:
            results.append(fn(config))
        except Exception as exc:  # a broken check is a failed check, not a crash
            results.append(CheckResult(fn.__name__.removeprefix("check_"), "fail", f"check crashed: {exc!r}"))
    return results
