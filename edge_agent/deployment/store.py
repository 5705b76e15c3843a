"""The reconciler's own bookkeeping in state.db: restart counters of the current deployment's
modules, and the images the agent pulled (what image GC may remove). The deployment slots,
versions and the accepted document belong to the desired-state owner (desired/store.py), which
also clears the restart counters in the transaction that changes `current`.

    deployment_restarts       module -> restart counters of the current deployment
    deployment_pulled_images  repository@digest the agent pulled

The tables are created and migrated by state_schema.py; read and written with sqlite-utils.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from edge_agent.deployment.restart_policy import RestartState
from edge_agent.store import tables

if TYPE_CHECKING:  # at run time sqlite-utils is imported once, by state_schema.py (without numpy)
    from sqlite_utils.db import Table


class ReconcilerStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        t = tables(db)
        self._restarts: Table = t.table("deployment_restarts")
        self._pulled: Table = t.table("deployment_pulled_images")

    def restarts(self) -> dict[str, RestartState]:
        return {
            str(r["module"]): RestartState(int(r["count"]), r["last_restart_at"], int(r["total"]))
            for r in self._restarts.rows
        }

    def set_restart(self, module: str, state: RestartState) -> None:
        self._restarts.upsert(
            {"module": module, "count": state.count, "last_restart_at": state.last_restart_at, "total": state.total},
            pk="module",
        )

    def note_pulled(self, image: str, at: float) -> None:
        self._pulled.insert({"image": image, "pulled_at": at}, pk="image", ignore=True)

    def pulled_images(self) -> set[str]:
        return {str(r["image"]) for r in self._pulled.rows}

    def forget_pulled(self, image: str) -> None:
        self._pulled.delete_where("image = ?", [image])
