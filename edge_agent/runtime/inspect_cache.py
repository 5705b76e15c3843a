"""Which containers `PodmanRuntime.list_containers` must inspect again (pure).

libpod's container list is cheap but lacks what the agent reports (OOMKilled, exact start and
exit times, the image name as created); a full inspect per container per list costs about a
millisecond each, twice per reconcile pass. So the runtime keeps the last inspect of each
container with its key: what the list would say about the container in that state (`ListKey`).
An inspect is reused only while the list says exactly what that inspect said; any difference (a
state change, a new start, an exit, a health change, a rename) or a container the agent itself
acted on since (created, started, stopped) is inspected again.

The key, from podman 4.3's list entry (and the same fields of an inspect):
  Id, name, State ("running", "exited", ...), StartedAt and ExitedAt (unix seconds), ExitCode,
  Pid (a new one on every start), and Status, which carries the health status ("starting",
  "healthy", "unhealthy"; "" without a healthcheck). On a podman whose list does not say the
  health this way, the key of a container with a healthcheck never matches its inspect, so such
  containers are inspected on every list, as before this cache.
Times are whole seconds in the list: a container that was started and exited again, by someone
else than the agent, within the same second as its previous start and exit, with the same exit
code, between two lists, is not told from the earlier run (its state, exit code and health are
still right; its start and exit times are off by less than a second).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.runtime.api import ObservedContainer

# Id, name, state, started at (s), exited at (s), exit code, pid, health
ListKey = tuple[str, str, str, int | None, int | None, int | None, int | None, str]


@dataclass(frozen=True)
class Inspected:
    """One container's last inspect, as the agent observes it, and the key it was taken under."""

    key: ListKey
    observed: ObservedContainer


@dataclass(frozen=True)
class Refresh:
    """What one list decides: the containers whose inspect stands (by id), and those to inspect."""

    known: dict[str, Inspected]
    inspect: tuple[str, ...]


def list_key(entry: Mapping[str, Any]) -> ListKey:
    """The key of a libpod list entry (GET /containers/json)."""
    names = entry.get("Names") or []
    return (
        str(entry.get("Id", "")),
        str(names[0]) if names else "",
        str(entry.get("State", "")),
        _seconds(entry.get("StartedAt")),
        _seconds(entry.get("ExitedAt")),
        _int(entry.get("ExitCode")),
        _int(entry.get("Pid")),
        str(entry.get("Status") or ""),
    )


def inspect_key(doc: Mapping[str, Any], observed: ObservedContainer) -> ListKey:
    """The key the list shows for the container an inspect document describes (`observed`: what
    the agent made of the document, for its times)."""
    state = doc.get("State") or {}
    health = ""
    if (doc.get("Config") or {}).get("Healthcheck"):
        health = str((state.get("Health") or state.get("Healthcheck") or {}).get("Status") or "")
    return (
        str(doc.get("Id", "")),
        str(doc.get("Name", "")).lstrip("/"),
        str(state.get("Status", "")),
        None if observed.started_at is None else math.floor(observed.started_at),
        None if observed.finished_at is None else math.floor(observed.finished_at),
        _int(state.get("ExitCode")),
        _int(state.get("Pid")),
        health,
    )


def refresh(
    entries: Sequence[Mapping[str, Any]],
    cache: Mapping[str, Inspected],
    fresh: Mapping[str, Inspected],
    touched: Collection[str],
) -> Refresh:
    """Decide, for one list: `cache` holds the earlier inspects by id; `fresh` the inspects taken
    beside this list (of the containers the agent acted on), by id; `touched` the ids or names
    the agent acted on since the cache's inspects. An inspect stands when its key is the list's
    key and, for a cached one, the agent has not acted on the container since."""
    known: dict[str, Inspected] = {}
    inspect: list[str] = []
    for entry in entries:
        key = list_key(entry)
        cid = key[0]
        taken = fresh.get(cid)
        if taken is not None and taken.key == key:
            known[cid] = taken
            continue
        cached = cache.get(cid)
        acted_on = cid in touched or key[1] in touched
        if cached is not None and cached.key == key and not acted_on:
            known[cid] = cached
            continue
        inspect.append(cid)
    return Refresh(known, tuple(inspect))


def _seconds(value: Any) -> int | None:
    """A list time (unix seconds); Go's zero time (-62135596800) and absent -> None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return math.floor(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
