"""What each dashboard page shows, as pure functions of the data edgectl reads (device views from
the broker, rollout records, telemetry samples). No I/O; the templates only lay these out.

Device-reported strings are passed through as they are (the templates escape them); nothing
here builds markup except the charts (charts.py, which escapes).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from edge_shared.labels import Selector, reported_labels
from edgectl import rollout_policy as rp
from edgectl.client import DeviceView
from edgectl.dashboard import charts
from edgectl.dashboard.telemetry_buffer import Sample
from edgectl.rollout_store import LEASE_S, not_running  # a rollout nobody updated for longer is not being run
from edgectl.show import FAILED_STATES, HEALTHY, deployment_state

SORT_KEYS = ("device", "presence", "last_report", "version", "state", "agent", "queue", "cert")
CERT_WARN_S = 30 * 86400  # a certificate expiring within 30 days is flagged


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{duration(now - ts)} ago"


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "never"


def certificate_expiry(reported: Mapping[str, Any]) -> float | None:
    """The device certificate's notAfter, once the agent reports it (`identity.notAfter`, unix
    seconds or RFC 3339); None before."""
    value = _map(reported.get("identity")).get("notAfter")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return _num(value)


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class FleetRow:
    device: str
    presence: str
    last_report: float | None
    last_report_ago: str
    labels: dict[str, str]
    agent_version: str
    agent_update: str  # "" when idle and nothing else is wanted
    version: int | None
    state: str  # deployment_state(): the device's own word
    health: str  # ok | warn | bad | unknown: the row's colour
    queue: int | None
    cert_expiry: float | None
    cert_text: str
    problems: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Changes when anything but the age of the last report does: the page's live update
        replaces a row whose key changed and only refreshes the age text of the others."""
        import dataclasses

        return hashlib.sha256(repr(dataclasses.replace(self, last_report_ago="")).encode()).hexdigest()[:16]


def _health(section: Any, modules: Mapping[str, Any], presence: str) -> tuple[str, list[str]]:
    problems: list[str] = []
    sec = _map(section)
    if sec.get("error"):
        problems.append(f"runtime error: {sec['error']}")
    versions = _map(sec.get("versions"))
    newest = sec.get("highestVersion")
    newest_state = _map(versions.get(str(newest))).get("state") if newest is not None else None
    if newest_state in FAILED_STATES and newest != sec.get("current"):
        entry = _map(versions.get(str(newest)))
        problems.append(f"version {newest} {newest_state}: {entry.get('code', '')} {entry.get('description', '')}")
    for name, state in sorted(modules.items()):
        status = _map(state).get("runtimeStatus")
        if status is not None and status not in HEALTHY and status not in ("pending", "starting"):
            problems.append(f"module {name} {status}")
    if presence != "online":
        return ("bad" if problems else "unknown"), problems
    current_state = _map(versions.get(str(sec.get("current")))).get("state")
    if problems:
        return "bad", problems
    if current_state in (None, "good"):
        return "ok", problems
    return "warn", problems


def fleet_row(view: DeviceView, now: float) -> FleetRow:
    reported = view.reported or {}
    agent = _map(reported.get("agent"))
    update = _map(reported.get("agentUpdate"))
    section = reported.get("deployment")
    modules = _map(reported.get("modules"))
    telemetry = _map(reported.get("telemetry"))
    queue = telemetry.get("depth")
    cert = certificate_expiry(reported)
    running, wanted = agent.get("version"), update.get("wanted")
    agent_update = ""
    if update.get("state") not in (None, "idle") or (wanted and wanted != running):
        agent_update = f"{update.get('state', '?')}" + (f" to {wanted}" if wanted and wanted != running else "")
    health, problems = _health(section, modules, view.presence)
    if cert is not None and cert - now < CERT_WARN_S:
        problems.append("certificate EXPIRED" if cert < now else f"certificate expires in {duration(cert - now)}")
        health = "bad" if cert < now else ("warn" if health in ("ok", "unknown") else health)
    last_report = _num(reported.get("ts"))
    current = _map(section).get("current")
    return FleetRow(
        device=view.device,
        presence=view.presence,
        last_report=last_report,
        last_report_ago=ago(last_report, now),
        labels=reported_labels(reported.get("device")) or {},
        agent_version=str(running) if running is not None else "",
        agent_update=agent_update,
        version=current if isinstance(current, int) and not isinstance(current, bool) else None,
        state=deployment_state(section) if view.reported is not None else "nothing reported",
        health=health,
        queue=queue if isinstance(queue, int) and not isinstance(queue, bool) else None,
        cert_expiry=cert,
        cert_text="not reported" if cert is None else (
            f"EXPIRED {when(cert)[:10]}" if cert < now else f"{when(cert)[:10]} ({duration(cert - now)} left)"
        ),
        problems=tuple(problems),
    )


@dataclass(frozen=True)
class FleetPage:
    rows: list[FleetRow]
    total: int
    online: int
    counts: dict[str, int]  # health -> rows (of the matching ones)
    selector: str
    search: str
    sort: str
    descending: bool
    error: str = ""
    attention: bool = False
    versions: list[tuple[str, int]] = field(default_factory=list)  # deployment version -> devices shown


def _sort_key(key: str) -> Callable[[FleetRow], Any]:
    keys: dict[str, Callable[[FleetRow], Any]] = {
        "device": lambda r: r.device,
        "presence": lambda r: (r.presence != "online", r.device),
        "last_report": lambda r: (r.last_report or 0.0, r.device),
        "version": lambda r: (r.version if r.version is not None else -1, r.device),
        "state": lambda r: ({"bad": 0, "warn": 1, "unknown": 2, "ok": 3}[r.health], r.state, r.device),
        "agent": lambda r: (r.agent_version, r.device),
        "queue": lambda r: (r.queue if r.queue is not None else -1, r.device),
        "cert": lambda r: (r.cert_expiry if r.cert_expiry is not None else float("inf"), r.device),
    }
    return keys.get(key, keys["device"])


def fleet_page(
    views: Iterable[DeviceView], now: float, *, selector: Selector | None = None, selector_text: str = "",
    search: str = "", sort: str = "device", descending: bool = False, error: str = "", attention: bool = False,
) -> FleetPage:
    """The fleet table: every device under the prefix, those the label selector picks, whose
    id, labels, version, state or agent version contain `search` (case-insensitive); with
    `attention`, only those that need it (a failure, settling, offline or unknown)."""
    all_rows = [fleet_row(v, now) for v in views]
    rows = [r for r in all_rows if (selector is None or selector.matches(r.labels or None))
            and (not attention or r.health != "ok")]
    needle = search.strip().lower()
    if needle:
        rows = [r for r in rows if needle in " ".join(
            [r.device, r.state, r.agent_version, str(r.version), *(f"{k}={v}" for k, v in r.labels.items())]
        ).lower()]
    rows.sort(key=_sort_key(sort if sort in SORT_KEYS else "device"), reverse=descending)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.health] = counts.get(r.health, 0) + 1
    by_version: dict[int | None, int] = {}
    for r in rows:
        by_version[r.version] = by_version.get(r.version, 0) + 1
    versions = [("none" if v is None else str(v), n)
                for v, n in sorted(by_version.items(), key=lambda item: -1 if item[0] is None else item[0])]
    return FleetPage(rows, len(all_rows), sum(r.presence == "online" for r in all_rows), counts, selector_text,
                     search, sort if sort in SORT_KEYS else "device", descending, error, attention, versions)


# --------------------------------------------------------------------------- one device


@dataclass(frozen=True)
class VersionLine:
    version: str
    state: str
    failed: bool
    code: str
    module: str
    description: str
    since: str
    on_broker: bool  # the document retained on the broker is this version's


@dataclass(frozen=True)
class ArtifactLine:
    path: str
    ref: str
    pinned: str
    placed: str
    module_says: str
    reason: str
    attention: bool


@dataclass(frozen=True)
class ModuleLine:
    name: str
    desired_image: str
    image: str
    digest: str
    status: str
    description: str
    restarts: Any
    healthy: bool
    artifacts: list[ArtifactLine]
    model_confirmed: str  # the digests the module says it drives with


@dataclass(frozen=True)
class DevicePage:
    row: FleetRow
    found: bool
    presence_since: str
    agent: Mapping[str, Any]
    agent_update: Mapping[str, Any]
    desired_version: Any
    desired_meta: Mapping[str, Any]
    desired_error: str
    current: Any
    last_known_good: Any
    versions: list[VersionLine]
    last_refused: Mapping[str, Any] | None
    last_refused_on_broker: bool
    runtime_error: str
    modules: list[ModuleLine]
    attestation: Mapping[str, Any]
    enrollment: Mapping[str, Any] | None
    telemetry: Mapping[str, Any]
    config: Mapping[str, Any]
    charts: list[Markup] = field(default_factory=list)
    track: Markup | None = None
    last_sample: Sample | None = None


def _short(digest: Any, n: int = 19) -> str:
    return str(digest)[:n] if digest else "none"


def _artifacts(state: Mapping[str, Any]) -> tuple[list[ArtifactLine], str]:
    report = _map(state.get("moduleReport"))
    using = report.get("using")
    confirmed = ", ".join(_short(d) for d in using) if isinstance(using, list) and using else "nothing reported"
    out = []
    for path, a in sorted(_map(state.get("artifacts")).items()):
        if not isinstance(a, Mapping):
            continue
        said = str(a.get("module", ""))
        out.append(ArtifactLine(
            path=str(path), ref=str(a.get("ref", "")), pinned=_short(a.get("digest")), placed=_short(a.get("placed")),
            module_says=said, reason=str(a.get("refusedReason") or ""),
            attention=a.get("placed") != a.get("digest") or said in ("refused", "waiting"),
        ))
    return out, confirmed


def device_page(
    view: DeviceView, now: float, samples: Sequence[Sample] = (), path: Sequence[tuple[float, float]] = (),
    enrollment: Mapping[str, Any] | None = None,
) -> DevicePage:
    reported = view.reported or {}
    desired = view.desired or {}
    section = _map(reported.get("deployment"))
    retained = hashlib.sha256(view.desired_raw).hexdigest() if view.desired_raw else None
    versions = []
    raw_versions = _map(section.get("versions"))
    for key in sorted(raw_versions, key=lambda k: int(k) if str(k).isdigit() else -1, reverse=True):
        entry = _map(raw_versions[key])
        state = str(entry.get("state", "?"))
        versions.append(VersionLine(
            version=str(key), state=state, failed=state in FAILED_STATES, code=str(entry.get("code") or ""),
            module=str(entry.get("module") or ""), description=str(entry.get("description") or ""),
            since=str(entry.get("since") or ""), on_broker=bool(retained) and entry.get("digest") == retained,
        ))
    refused = section.get("lastRefused")
    d_modules = _map(_map(desired.get("deployment")).get("modules"))
    r_modules = _map(reported.get("modules"))
    modules = []
    for name in sorted(set(d_modules) | set(r_modules)):
        spec, module_state = _map(d_modules.get(name)), _map(r_modules.get(name))
        arts, confirmed = _artifacts(module_state)
        status = str(module_state.get("runtimeStatus", "missing" if name in d_modules else "?"))
        modules.append(ModuleLine(
            name=str(name), desired_image=str(spec.get("image", "(not desired)")),
            image=str(module_state.get("image", "")), digest=_short(module_state.get("digest"), 23), status=status,
            description=str(module_state.get("statusDescription") or ""),
            restarts=module_state.get("restartCount", ""),
            healthy=status in HEALTHY, artifacts=arts,
            model_confirmed=confirmed if arts or module_state.get("moduleReport") else "",
        ))
    page_charts: list[Markup] = []
    track = None
    last = samples[-1] if samples else None
    if samples or path:
        page_charts = pilot_charts(samples, now)
        track = charts.path_chart(path)
    meta = _map(desired.get("meta"))
    return DevicePage(
        row=fleet_row(view, now),
        found=view.reported is not None or view.desired is not None or view.presence != "unknown",
        presence_since=ago(view.presence_ts, now) if view.presence_ts else "",
        agent=_map(reported.get("agent")),
        agent_update=_map(reported.get("agentUpdate")),
        desired_version=desired.get("version"),
        # Only these meta keys: a desired document's deployment holds env values and properties,
        # which may be secrets; the page never shows them.
        desired_meta={k: meta[k] for k in ("deployedAt", "by", "rollout", "returnTo") if k in meta},
        desired_error=view.desired_error or "",
        current=section.get("current"),
        last_known_good=section.get("lastKnownGood"),
        versions=versions,
        last_refused=refused if isinstance(refused, Mapping) else None,
        last_refused_on_broker=isinstance(refused, Mapping) and bool(retained) and refused.get("digest") == retained,
        runtime_error=str(section.get("error") or ""),
        modules=modules,
        attestation=_map(reported.get("attestation")),
        enrollment=enrollment,
        telemetry=_map(reported.get("telemetry")),
        config=_map(reported.get("config")),
        charts=page_charts,
        track=track,
        last_sample=last,
    )


def pilot_charts(samples: Sequence[Sample], now: float) -> list[Markup]:
    """fps, capture-to-actuate latency (p50 and p99) and cross-track error over the last minutes,
    x in seconds relative to now."""

    def series(name: str, read: Callable[[Sample], float | None], colour: str, dashed: bool = False) -> charts.Series:
        points = [(s.ts - now, v) for s in samples if (v := read(s)) is not None]
        return charts.Series(name, points, colour, dashed)

    x_label = "time (s, 0 = now)"
    return [
        charts.line_chart("Frames per second", [series("fps", lambda s: s.fps, charts.PALETTE[0])],
                          x_label=x_label, y_label="fps"),
        charts.line_chart(
            "Capture-to-actuate latency",
            [series("p50", lambda s: s.c2a_p50, charts.PALETTE[0]),
             series("p99", lambda s: s.c2a_p99, charts.PALETTE[1], dashed=True)],
            x_label=x_label, y_label="latency (ms)",
        ),
        charts.line_chart("Cross-track error", [series("cte", lambda s: s.cte, charts.PALETTE[2])],
                          x_label=x_label, y_label="cross-track error (m)"),
    ]


# --------------------------------------------------------------------------- rollouts


@dataclass(frozen=True)
class RolloutDevice:
    device: str
    phase: str
    reason: str
    failed_reason: str
    version: int | None
    revert_version: int | None
    bad: bool


@dataclass(frozen=True)
class RolloutBatch:
    number: int
    summary: str
    size: int
    settled: int
    reached: int
    failed: bool
    devices: list[RolloutDevice]


@dataclass(frozen=True)
class RolloutPage:
    id: str
    status: str
    halted: bool
    reverted: bool
    interrupted: bool
    reason: str
    batch: int
    batches: int
    selector: str
    batches_spec: str
    manifest_path: str
    policy: rp.Policy
    created: str
    updated: str
    rows: list[RolloutBatch]
    events: list[tuple[str, str]]


SETTLED = {rp.Phase.REACHED, rp.Phase.FAILED, rp.Phase.SKIPPED, rp.Phase.REVERTED, rp.Phase.REVERT_FAILED,
           rp.Phase.NO_PREVIOUS}
BAD = {rp.Phase.FAILED, rp.Phase.REVERT_FAILED, rp.Phase.NO_PREVIOUS, rp.Phase.REVERTED, rp.Phase.REVERTING,
       rp.Phase.REVERT_PUBLISHING}


def rollout_page(rollout: rp.Rollout, meta: Any, events: Sequence[tuple[float, str]], now: float,
                 owner_alive: bool = True) -> RolloutPage:
    """`owner_alive`: whether the edgectl that last claimed the rollout still runs (as far as this
    host can tell: edgectl.rollout_store.owner_alive); a dead owner means interrupted at once."""
    batches = []
    for b in range(rollout.batches):
        records = rollout.in_batch(b)
        summary = rp.batch_summary(rollout, b)
        batches.append(RolloutBatch(
            number=b + 1, summary=summary, size=len(records),
            settled=sum(r.phase in SETTLED for r in records),
            reached=sum(r.phase == rp.Phase.REACHED for r in records),
            failed=summary.startswith("failed"),
            devices=[RolloutDevice(r.device, str(r.phase), r.reason, r.failed_reason, r.version, r.revert_version,
                                   r.phase in BAD) for r in records],
        ))
    finished = rollout.status in rp.FINISHED
    stale = meta.heartbeat is None or now - meta.heartbeat > LEASE_S
    return RolloutPage(
        id=rollout.id, status=str(rollout.status), halted=rollout.status == rp.Status.HALTED,
        reverted=any(r.phase in (rp.Phase.REVERTED, rp.Phase.REVERTING, rp.Phase.REVERT_PUBLISHING,
                                 rp.Phase.REVERT_FAILED) for r in rollout.devices),
        interrupted=not finished and (not meta.owner or stale or not owner_alive),
        reason=rollout.reason, batch=rollout.batch + 1, batches=rollout.batches, selector=meta.selector,
        batches_spec=meta.batches_spec, manifest_path=meta.manifest_path, policy=rollout.policy,
        created=when(meta.created), updated=when(meta.updated), rows=batches,
        events=[(when(at)[11:19], text) for at, text in events][-200:],
    )


@dataclass(frozen=True)
class RolloutSummary:
    id: str
    status: str
    batch: int
    batches: int
    devices: int
    created: str
    manifest: str


def rollout_list(rows: Sequence[tuple[str, str, int, int, float, float, str, int, str | None, float | None]],
                 at: float | None = None) -> list[RolloutSummary]:
    """The rollout store's list; a rollout no edgectl runs any more (SIGKILL, crash) is shown as
    interrupted, as `edgectl rollout status` shows it."""
    at = now() if at is None else at
    return [RolloutSummary(rid, status if status in rp.FINISHED or not not_running(owner, beat, at)
                           else "interrupted", batch + 1, batches, devices, when(created), manifest)
            for rid, status, batch, batches, created, _updated, manifest, devices, owner, beat in rows]


def now() -> float:
    return time.time()
