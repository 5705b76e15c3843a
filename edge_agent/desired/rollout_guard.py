"""One rollout at a time on this device: the rule, as one pure function.

The device is where every operator's edgectl meets, so it is the arbiter: the document it
admitted last names the rollout holding it (edge_shared/rollout_claim.py: id and lease). Until
that lease ends, a document of another rollout, or of no rollout (a plain `edgectl deploy`), is
refused with `rollout_in_flight`, naming the holder and the end of its lease; the holder's own
documents (its return of a failed batch) pass. A document marked forced (`--force`) passes and
takes the device over. No clock and no state here: the caller passes the holder and `now`.
"""

from __future__ import annotations

from edge_shared.document import DesiredRejected
from edge_shared.rollout_claim import REFUSAL_CODE, RolloutClaim


def check(incoming: RolloutClaim | None, holder: RolloutClaim | None, now: float) -> None:
    """Raise DesiredRejected(rollout_in_flight) when `holder` (the claim of the last admitted
    document) still holds the device and `incoming` may not take it."""
    if holder is None or not holder.holds(now):
        return
    if incoming is not None and (incoming.id == holder.id or incoming.forced):
        return
    what = f"rollout {incoming.id}" if incoming is not None else "a document of no rollout"
    raise DesiredRejected(
        REFUSAL_CODE,
        f"rollout {holder.id} holds this device until {holder.until_text()}; {what} may not change it "
        "before then (wait for it to finish, or publish with --force to take the device over)",
    )
