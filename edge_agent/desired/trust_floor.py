"""What an agent roll-back must not undo: the replay floor and the document keys a signed rotation
installed, kept in `document-trust.json` in the state folder, beside state.db and not in it.

Why a file of its own: when a trial of a new agent release fails, the update guard restores the
state.db copied before the switch (the new release may have migrated it). Everything the trial
changed goes back, as it should, except two things that only ever move forward because a signed,
accepted document moved them:

- the replay floor (the newest version accepted, with its digest): going back would make older
  signed, unexpired documents acceptable again;
- the document keys of the newest rotation: going back would trust a key the fleet retired and
  refuse the retained document signed with the new one.

The file is written after the commit that moved them (temporary name, fsync, rename, fsync of the
folder), off the event loop by one writer that writes the newest floor (the owner's stop waits for
it), and read at start, where the owner takes the newer of it and state.db. A rotation
replaces the whole key set, so the keys installed by the higher document version win whole (a key
the newer rotation dropped stays revoked); no union is taken. An operator who edits the config's
[trust] document_keys overrules any rotation, here as in state.db (`config` fingerprint).

`merged` and `keys_to_restore` are the decisions (pure); `read`/`write` are the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_shared.atomic_file import atomic_write

FILE_NAME = "document-trust.json"


@dataclass(frozen=True)
class TrustFloor:
    version: int  # the newest document version this device accepted
    digest: str  # sha256 of its bytes: the same document delivered again is not a replay
    config: str  # fingerprint of the config's document keys when this was written
    keys_version: int | None = None  # the version whose rotation installed `keys`
    keys: tuple[str, ...] = ()  # PEM public keys of that rotation


class TrustFloorError(Exception):
    """The file exists but is not one this agent wrote."""


def merged(old: TrustFloor | None, *, version: int, digest: str, config: str,
           keys_version: int | None, keys: tuple[str, ...]) -> TrustFloor:
    """The file after an accepted document (or at start, from state.db): each part moves only forward."""
    floor_version, floor_digest = version, digest
    if old is not None and old.version > version:
        floor_version, floor_digest = old.version, old.digest
    if old is not None and old.config == config and old.keys_version is not None and (
            keys_version is None or old.keys_version > keys_version):
        keys_version, keys = old.keys_version, old.keys
    return TrustFloor(floor_version, floor_digest, config, keys_version, keys if keys_version is not None else ())


def keys_to_restore(floor: TrustFloor | None, *, config: str, db_keys_version: int | None
                    ) -> tuple[int, tuple[str, ...]] | None:
    """The rotation state.db lost (a roll-back restored an older copy), or None."""
    if floor is None or floor.keys_version is None or floor.config != config:
        return None
    if db_keys_version is not None and db_keys_version >= floor.keys_version:
        return None
    return floor.keys_version, floor.keys


def read(path: Path) -> TrustFloor | None:
    """None when there is no file; TrustFloorError when it cannot be understood."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        keys_version = data["keys_version"]
        floor = TrustFloor(
            version=int(data["version"]), digest=str(data["digest"]), config=str(data["config"]),
            keys_version=None if keys_version is None else int(keys_version),
            keys=tuple(str(k) for k in data["keys"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise TrustFloorError(f"{path}: {exc}") from None
    return floor


def write(path: Path, floor: TrustFloor) -> None:
    data = {"version": floor.version, "digest": floor.digest, "config": floor.config,
            "keys_version": floor.keys_version, "keys": list(floor.keys)}
    atomic_write(path, json.dumps(data, sort_keys=True).encode(), 0o600)
