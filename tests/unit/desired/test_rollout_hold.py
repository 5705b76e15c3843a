"""The device holds itself to the rollout of the document it admitted last: while that document
verifies, once it is accepted, and after a restart (the claim is read back from the accepted bytes
in state.db). The refusal is reported upstream as lastRefused, naming the holder."""

from __future__ import annotations

import asyncio
import time

from edge_agent.config import AgentConfig
from edge_agent.desired.admission import Admitted, Refused
from edge_agent.store import open_state_db
from edge_shared.rollout_claim import format_time
from tests.unit.desired.test_manager import Rig, accept, config, signed

__all__ = ["config"]  # the fixture, shared with test_manager.py


def claim(rollout: str, lease_s: float = 600, forced: bool = False) -> dict[str, object]:
    return {"rollout": {"id": rollout, "until": format_time(time.time() + lease_s), "forced": forced}}


async def test_the_holder_survives_verification_acceptance_and_a_restart(config: AgentConfig) -> None:
    first = await Rig(config, open_state_db(config.state.dir)).start()
    try:
        first.verifier.gates["reg.local/slow:1"] = asyncio.Event()
        assert isinstance(first.manager.submit(signed(1, "reg.local/slow:1", meta=claim("r-one"))), Admitted)
        await first.until(lambda: "reg.local/slow:1" in first.verifier.calls, "v1 verifying")
        # while v1 verifies, another rollout's document is refused, the holder's own next one is not
        other = first.manager.submit(signed(2, meta=claim("r-two")))
        assert isinstance(other, Refused) and other.code == "rollout_in_flight"
        refusal = first.section()["lastRefused"]
        assert refusal["code"] == "rollout_in_flight" and refusal["version"] == 2
        assert refusal["description"].startswith("rollout r-one holds this device until ")
        first.verifier.gates["reg.local/slow:1"].set()
        await first.until_state(1, "activating")
        await accept(first, signed(3, meta=claim("r-one")), 3)
    finally:
        await first.stop()

    second = await Rig(config, open_state_db(config.state.dir)).start()  # the same state.db, reopened
    try:
        again = second.manager.submit(signed(4, meta=claim("r-two")))
        assert isinstance(again, Refused) and again.code == "rollout_in_flight"
        plain = second.manager.submit(signed(4))
        assert isinstance(plain, Refused) and "a document of no rollout may not change it" in plain.description
        # --force takes the device over; its claim (lease already over) then holds nothing
        await accept(second, signed(4, meta=claim("deploy-1", lease_s=-1, forced=True)), 4)
        await accept(second, signed(5, meta=claim("r-two")), 5)
    finally:
        await second.stop()


async def test_a_lapsed_lease_holds_nothing(config: AgentConfig) -> None:
    rig = await Rig(config, open_state_db(config.state.dir)).start()
    try:
        await accept(rig, signed(1, meta=claim("r-dead", lease_s=-5)), 1)
        await accept(rig, signed(2, meta=claim("r-next")), 2)
    finally:
        await rig.stop()
