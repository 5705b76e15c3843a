"""`edgectl rollout`: the command line of staged rollouts (parsing, starting, resuming, status).

    edgectl rollout MANIFEST --selector site=turin --key fleet.key [--batches 1,10%,50%,100%] ...
    edgectl rollout --resume ID [--key fleet.key]
    edgectl rollout status [ID] [--json]

The decisions are fleet/edgectl/rollout_policy.py, the publishing shell rollout.py, the state
file rollout_store.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgectl import rollout_policy as rp

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNFINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_BATCHES = "1,10%,50%,100%"

DESCRIPTION = """\
Roll a signed deployment out to the devices a label selector picks, batch by batch.

Each batch is published (at most --max-parallel devices updating at once) and gated: every
device must reach the --until state (default good: ran through its stabilisation window)
within --timeout seconds of its publish, and at least --success-threshold of the batch must
get there. The device's own report decides (the state machine of docs/protocol.md, read as
`edgectl deploy --wait` reads it). When a gate fails the rollout halts: no further batch is
touched, and (unless --on-failure halt) every device of the failed batch is returned to the
deployment it ran before, as a NEW signed version (versions only go up), with the reason per
device. Earlier batches, which passed, keep the new deployment.

The rollout's state lives in a SQLite file (--state); every step is stored before it is
taken, so after Ctrl-C, a crash or SIGKILL `edgectl rollout --resume ID` continues where it
stopped (a document already made is published again byte for byte, never as a second version).

  edgectl rollout pilot-1.3.json --selector fleet=turin --key fleet.key --batches 1,10%,50%,100%
  edgectl rollout status              every rollout in the state file
  edgectl rollout status ID           batch by batch, device by device, with the devices' reasons
  edgectl rollout --resume ID         continue an interrupted rollout

Exit status: 0 the rollout completed; 1 it halted (a gate failed), or an error (unknown id,
unreachable broker, no device selected); 2 a malformed flag (selector, batches, threshold);
130 interrupted (resume it). `rollout status ID`: 0 completed, 1 halted, 3 not finished.
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rollout", parents=[common], help="staged rollout to the devices a label selector picks, with health gates",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs="*", metavar="MANIFEST | status [ID]",
                   help="the deployment (JSON or TOML, as for deploy) to roll out; or 'status' and an optional "
                   "rollout id (a manifest file called status: write ./status)")
    p.add_argument("--selector", "-l", metavar="SELECTOR",
                   help="the devices, by their reported labels: key=value, key!=value, key, !key, comma-separated, "
                   "all must hold (edgectl devices --selector shows what it picks); required to start")
    p.add_argument("--key", type=Path, help="sign the documents with this cosign private key (passphrase from "
                   "$EDGECTL_KEY_PASSWORD or $COSIGN_PASSWORD, else prompted); required to start; on --resume the "
                   "key the rollout started with, unless given")
    p.add_argument("--properties", type=Path, help="JSON/TOML file with per-module desired properties")
    default_batches = DEFAULT_BATCHES.replace("%", "%%")
    p.add_argument("--batches", default=None, metavar="SPEC",
                   help=f"cumulative stages: a device count or a percentage of the selected devices, each reaching "
                   f"at least as far as the one before (default {default_batches}); devices beyond the last "
                   "stage form a final batch; devices are taken in device id order")
    p.add_argument("--until", choices=("admitted", "accepted", "running", "good"), default=None,
                   help="the state each device must report to pass its batch's gate: admitted, accepted, running, "
                   "or good (ran through the stabilisation window; the default)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds a device has from its publish to reach the --until state (default 300); a device "
                   "silent for longer counts as failed (also a device returned to its previous deployment)")
    p.add_argument("--success-threshold", default=None, metavar="PERCENT",
                   help="share of a batch that must reach the --until state (default 100%%); the gate fails as "
                   "soon as more devices failed than this allows")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="devices of a batch updating (published, not yet settled) at once (default 10)")
    p.add_argument("--on-failure", choices=("rollback", "halt"), default=None,
                   help="when a gate fails: rollback (the default) returns the failed batch's devices to the "
                   "deployment each ran before, as a new signed version; halt leaves them as they are")
    p.add_argument("--expires-in", default=None, metavar="DURATION",
                   help="signed documents expire after this long (e.g. 12h, 30d; 'never'); default 30d")
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="the rollout state file (default ~/.local/state/edgectl/rollouts.db, or under $XDG_STATE_HOME)")
    p.add_argument("--resume", metavar="ID", help="continue this interrupted rollout (its settings are stored)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the selected devices and the batches, publish nothing, store nothing")
    p.add_argument("--json", action="store_true", help="rollout status: print the stored state as JSON")


START_ONLY = ("selector", "properties", "batches", "until", "timeout", "success_threshold", "max_parallel",
              "on_failure", "expires_in")


def _usage(text: str) -> int:
    print(f"edgectl rollout: {text}", file=sys.stderr)
    return EXIT_USAGE


def _out(line: str) -> None:
    print(f"{datetime.now().strftime('%H:%M:%S')} {line}", flush=True)


def run(args: argparse.Namespace) -> int:
    from edgectl.rollout_store import RolloutStore, StoreError, default_state_path

    words = list(args.words)
    state_path = args.state or default_state_path()
    if words[:1] == ["status"]:
        if len(words) > 2:
            return _usage("status takes at most one rollout id")
        try:
            store = RolloutStore(state_path)
        except StoreError as exc:
            print(f"edgectl: {exc}", file=sys.stderr)
            return EXIT_FAILED
        try:
            return cmd_status(store, words[1] if len(words) == 2 else None, as_json=args.json)
        except StoreError as exc:
            print(f"edgectl: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            store.close()
    if args.resume:
        if words:
            return _usage("--resume ID continues a stored rollout: give no MANIFEST")
        given = [f"--{k.replace('_', '-')}" for k in START_ONLY if getattr(args, k) is not None]
        if given:
            return _usage(f"{', '.join(given)}: a resumed rollout keeps the settings it started with")
    elif len(words) != 1:
        return _usage("give one MANIFEST (or 'status [ID]', or --resume ID)")
    try:
        plan = None if args.resume else _start_plan(args)
    except (rp.SpecError, ValueError) as exc:
        return _usage(str(exc))
    try:
        return asyncio.run(_run(args, state_path, plan))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _start_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a start needs that can be checked before any network: usage errors raise."""
    from edge_shared.labels import LabelError, parse_selector
    from edgectl.document_input import load_document
    from edgectl.trust_cmds import parse_duration

    if args.selector is None:
        raise ValueError("--selector is required: which devices (e.g. --selector site=turin)")
    try:
        selector = parse_selector(args.selector)
    except LabelError as exc:
        raise ValueError(f"--selector: {exc}") from None
    if args.key is None:
        raise ValueError("--key is required: a rollout publishes signed documents only")
    steps = rp.parse_batches(args.batches or DEFAULT_BATCHES)
    threshold = rp.parse_percent(args.success_threshold or "100%", "--success-threshold")
    max_parallel = 10 if args.max_parallel is None else args.max_parallel
    if max_parallel < 1:
        raise ValueError(f"--max-parallel {max_parallel}: expected 1 or more")
    timeout = 300.0 if args.timeout is None else args.timeout
    if not timeout > 0:
        raise ValueError(f"--timeout {args.timeout:g}: expected more than 0 seconds")
    expires_in = args.expires_in or "30d"
    try:
        parse_duration(expires_in)
    except SystemExit as exc:
        raise ValueError(str(exc).removeprefix("edgectl: ")) from None
    manifest_path = Path(args.words[0])
    try:
        manifest = load_document(manifest_path)
        properties = load_document(args.properties) if args.properties else None
    except SystemExit as exc:
        raise ValueError(str(exc).removeprefix("edgectl: ")) from None
    if not isinstance(manifest.get("modules"), dict):
        raise ValueError(f"{manifest_path}: modules: expected a table/object of module specs")
    policy = rp.Policy(target=args.until or "good", timeout_s=timeout, threshold=threshold,
                       max_parallel=max_parallel, on_failure=args.on_failure or "rollback")
    return {"selector": selector, "steps": steps, "policy": policy, "manifest": manifest, "properties": properties,
            "manifest_path": manifest_path, "expires_in": expires_in, "key_path": str(Path(args.key).resolve())}


async def _run(args: argparse.Namespace, state_path: Path, plan: dict[str, Any] | None) -> int:
    from edge_shared.labels import reported_labels
    from edgectl.client import FleetError
    from edgectl.connect import fleet_client
    from edgectl.rollout import RolloutRunner
    from edgectl.rollout_store import RolloutMeta, RolloutStore, StoreError

    try:
        store = RolloutStore(state_path)
    except StoreError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    rollout_id = args.resume
    try:
        if rollout_id is not None:
            rollout, meta = store.load(rollout_id)
            if rollout.status in rp.FINISHED:
                print(f"rollout {rollout_id} is already {rollout.status}; nothing to resume")
                print(render_status(store, rollout_id, time.time()))
                return EXIT_OK if rollout.status == rp.Status.COMPLETED else EXIT_FAILED
            key = args.key or (Path(meta.key_path) if meta.key_path else None)
            if key is None:
                raise StoreError(f"rollout {rollout_id} stored no signing key path: give --key")
            signing = _signing(key, meta.expires_in)
        else:
            assert plan is not None
            signing = _signing(args.key, plan["expires_in"])
        async with fleet_client(args) as fleet:
            if rollout_id is None:
                assert plan is not None
                await fleet.watch(None)
                known = fleet.cached_devices()
                chosen = [d for d in known
                          if plan["selector"].matches(reported_labels((fleet.cached_view(d).reported or {})
                                                                      .get("device")))]
                if not chosen:
                    print(f"edgectl: the selector {plan['selector']} picks no device ({len(known)} devices under "
                          f"the prefix {fleet.prefix!r})", file=sys.stderr)
                    return EXIT_FAILED
                batches = rp.plan_batches(chosen, plan["steps"])
                if args.dry_run:
                    print(_plan_text("(dry run)", chosen, batches, plan["policy"]))
                    for i, batch in enumerate(batches):
                        print(f"batch {i + 1}: {' '.join(batch)}")
                    return EXIT_OK
                rollout_id = secrets.token_hex(4)
                rollout = rp.new_rollout(rollout_id, batches, plan["policy"])
                now = time.time()
                store.create(rollout, RolloutMeta(
                    created=now, updated=now, prefix=fleet.prefix, selector=str(plan["selector"]),
                    batches_spec=",".join(str(s) for s in plan["steps"]),
                    manifest_path=str(plan["manifest_path"]), manifest=plan["manifest"],
                    properties=plan["properties"], key_path=plan["key_path"],
                    expires_in=plan["expires_in"],
                ))
                _out(_plan_text(rollout_id, chosen, batches, plan["policy"]))
                _out(f"state in {state_path}; after an interruption: edgectl rollout --resume {rollout_id}")
                _out(RolloutRunner.batch_start_line(rollout))
            else:
                _out(f"resuming rollout {rollout_id} (batch {rollout.batch + 1}/{rollout.batches}, {rollout.status})")
            runner = RolloutRunner(fleet, store, rollout_id, signing, _out)
            try:
                final = await runner.run()
            except asyncio.CancelledError:
                _out(f"interrupted; continue with: edgectl rollout --resume {rollout_id}")
                raise
        print(render_status(store, rollout_id, time.time()))
        return EXIT_OK if final.status == rp.Status.COMPLETED else EXIT_FAILED
    except (StoreError, FleetError) as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()


def _plan_text(rollout_id: str, chosen: list[str], batches: list[list[str]], policy: rp.Policy) -> str:
    sizes = "+".join(str(len(b)) for b in batches)
    return (f"rollout {rollout_id}: {len(chosen)} devices in {len(batches)} batches ({sizes}); each device "
            f"{policy.target} within {policy.timeout_s:g} s, success threshold {policy.threshold:g}%, "
            f"at most {policy.max_parallel} at once, on failure {policy.on_failure}")


def _signing(key: Path, expires_in: str) -> Any:
    from edgectl.document_input import document_signer
    from edgectl.rollout import Signing

    sign, public = document_signer(key, expires_in)
    return Signing(sign, public)


# --------------------------------------------------------------------------- status


def cmd_status(store: Any, rollout_id: str | None, *, as_json: bool) -> int:
    now = time.time()
    if rollout_id is None:
        rows = store.list()
        if as_json:
            print(json.dumps([dict(zip(("id", "status", "batch", "batches", "created", "updated", "manifest",
                                        "devices"), r, strict=True)) for r in rows], indent=2))
            return EXIT_OK
        print(render_list(rows, now, store.path))
        return EXIT_OK
    rollout, _ = store.load(rollout_id)
    if as_json:
        print(json.dumps(status_json(store, rollout_id), indent=2))
    else:
        print(render_status(store, rollout_id, now))
    if rollout.status == rp.Status.COMPLETED:
        return EXIT_OK
    return EXIT_FAILED if rollout.status == rp.Status.HALTED else EXIT_UNFINISHED


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "never"


def render_list(rows: list[tuple[Any, ...]], now: float, path: Path) -> str:
    if not rows:
        return f"no rollouts in {path}"
    lines = [f"{'ID':<10} {'STATUS':<10} {'BATCH':<7} {'DEVICES':<8} {'STARTED':<24} MANIFEST"]
    for rid, status, batch, batches, created, _updated, manifest, devices in rows:
        lines.append(f"{rid:<10} {status:<10} {f'{batch + 1}/{batches}':<7} {devices:<8} {_when(created):<24} "
                     f"{manifest}")
    return "\n".join(lines)


def _interrupted(meta: Any, rollout: rp.Rollout, now: float) -> bool:
    from edgectl.rollout_store import LEASE_S, owner_alive

    if rollout.status in rp.FINISHED:
        return False
    return not meta.owner or meta.heartbeat is None or now - meta.heartbeat > LEASE_S or not owner_alive(meta.owner)


def render_status(store: Any, rollout_id: str, now: float) -> str:
    rollout, meta = store.load(rollout_id)
    policy = rollout.policy
    head = f"rollout {rollout.id}: {str(rollout.status).upper()}"
    if rollout.status == rp.Status.HALTED:
        head += f" at batch {rollout.batch + 1} of {rollout.batches}"
    elif rollout.status != rp.Status.COMPLETED:
        head += f", batch {rollout.batch + 1} of {rollout.batches}"
        if _interrupted(meta, rollout, now):
            head += f" (INTERRUPTED: no edgectl runs it; continue with: edgectl rollout --resume {rollout.id})"
    lines = [head]
    if rollout.reason:
        lines.append(f"  {rollout.reason}")
    sizes = "+".join(str(len(rollout.in_batch(i))) for i in range(rollout.batches))
    lines.append(f"  {meta.manifest_path} to {len(rollout.devices)} devices picked by {meta.selector}; "
                 f"batches {meta.batches_spec} -> {sizes}")
    lines.append(f"  each device {policy.target} within {policy.timeout_s:g} s; success threshold "
                 f"{policy.threshold:g}%; at most {policy.max_parallel} at once; on failure {policy.on_failure}")
    lines.append(f"  started {_when(meta.created)}, last update {_when(meta.updated)}")
    width = max((len(r.device) for r in rollout.devices), default=6)
    for batch in range(rollout.batches):
        records = rollout.in_batch(batch)
        lines.append(f"batch {batch + 1} ({len(records)} device{'s' if len(records) != 1 else ''}): "
                     f"{rp.batch_summary(rollout, batch)}")
        for r in records:
            text = f"  {r.device:<{width}}  {r.phase!s:<17}"
            if r.phase != rp.Phase.WAITING:
                text += f" {r.reason}"
            if r.failed_reason and r.phase in (rp.Phase.REVERT_PUBLISHING, rp.Phase.REVERTING, rp.Phase.REVERTED,
                                               rp.Phase.REVERT_FAILED, rp.Phase.NO_PREVIOUS):
                text += f"  [in the rollout: {r.failed_reason}]"
            lines.append(text.rstrip())
    return "\n".join(lines)


def status_json(store: Any, rollout_id: str) -> dict[str, Any]:
    rollout, meta = store.load(rollout_id)
    return {
        "id": rollout.id,
        "status": str(rollout.status),
        "batch": rollout.batch + 1,
        "batches": rollout.batches,
        "reason": rollout.reason,
        "selector": meta.selector,
        "batchesSpec": meta.batches_spec,
        "manifest": meta.manifest_path,
        "policy": {"until": rollout.policy.target, "timeoutS": rollout.policy.timeout_s,
                   "successThreshold": rollout.policy.threshold, "maxParallel": rollout.policy.max_parallel,
                   "onFailure": rollout.policy.on_failure},
        "created": meta.created,
        "updated": meta.updated,
        "devices": [
            {"device": r.device, "batch": r.batch + 1, "phase": str(r.phase), "reason": r.reason,
             "version": r.version, "digest": r.digest, "previous": r.previous, "revertVersion": r.revert_version,
             "failedReason": r.failed_reason or None}
            for r in rollout.devices
        ],
        "events": [{"at": at, "text": text} for at, text in store.events(rollout_id)],
    }
