"""The desired-state pipeline: one room owns a desired document from the bytes the broker
delivered to the pinned deployment the reconciler runs, and reports one status per version.

    admission.py  pure: bytes -> Admitted | Duplicate | Refused (limits, parse, signature, expiry,
                  replay, validation); the one place a desired document is checked
    status.py     pure: the per-version state machine and what `edgectl deploy --wait` reads of it
    store.py      state.db: per-version status, the accepted document, rotated document keys;
                  the one commit transaction
    manager.py    DesiredStateManager: the asyncio shell (newest wins, image pinning, commit,
                  hand-over to the reconciler, the reported `deployment` section)
"""
