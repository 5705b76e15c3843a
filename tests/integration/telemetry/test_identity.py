"""Identity is the socket: a client on module A's socket produces records attributed to A only,
whatever it writes in its requests; malformed requests get clear answers and lose nothing."""

from __future__ import annotations

import stat
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.telemetry import BROKER_CONF, Follower, IngestClient, agent_config


def test_a_module_cannot_send_as_another(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=BROKER_CONF).start()
    follower = Follower(tmp_path / "fleet", broker.port).start()
    agent = AgentProcess(tmp_path / "agent", agent_config(broker.port, tmp_path / "run", ["alpha", "beta"])).start()
    try:
        ingest = tmp_path / "run/ingest"
        alpha_sock, beta_sock = ingest / "alpha/telemetry.sock", ingest / "beta/telemetry.sock"
        with IngestClient(alpha_sock) as alpha, IngestClient(beta_sock) as beta:
            spoof = alpha.send("shared", {"n": 1}, module="beta")
            assert spoof == {
                "ok": False,
                "code": "invalid",
                "error": "unknown field 'module'; expected stream, priority, payload, ts, key; "
                "the module is known from the socket",
            }
            # Everything else a client controls (stream names, payload content) cannot name a module.
            a1 = alpha.send("shared", {"module": "beta", "n": 2})
            a2 = alpha.send("beta", {"n": 3})
            b1 = beta.send("shared", {"n": 4})
            assert a1["ok"] and a2["ok"] and b1["ok"]
            # Bad requests: one clear answer each, in order, and the connection keeps working.
            alpha.send_raw(b'not json\n{"stream": "BAD"}\n{"stream": "s", "priority": 12, "payload": 1}\n'
                           b'{"stream": "s"}\n' + b'{"stream": "s", "payload": "' + b"x" * 300_000 + b'"}\n')
            answers = [alpha.read_answer() for _ in range(5)]
            assert [a["code"] for a in answers] == ["invalid", "invalid", "invalid", "invalid", "too_large"]
            assert "stream" in answers[1]["error"] and "priority" in answers[2]["error"]
            assert "payload" in answers[3]["error"]
            assert alpha.send("s", {"still": "works"})["ok"]
        follower.wait_for_ids({a1["id"], a2["id"], b1["id"]}, 20)
        by_id = {r["id"]: r for r in follower.records()}
        assert by_id[a1["id"]]["module"] == "alpha" and by_id[a1["id"]]["payload"] == {"module": "beta", "n": 2}
        assert by_id[a2["id"]]["module"] == "alpha"
        assert by_id[b1["id"]]["module"] == "beta"
        assert all(r["payload"] != {"n": 1} for r in follower.records()), "the spoofed record was not stored"
        # Host users cannot reach the sockets; a container sees only its own (bind-mounted) socket.
        assert stat.S_IMODE(ingest.stat().st_mode) == 0o700
        assert sorted(p.name for p in ingest.iterdir()) == ["alpha", "beta"]
        assert [p.name for p in (ingest / "alpha").iterdir()] == ["telemetry.sock"]
    finally:
        agent.stop()
        follower.stop()
        broker.stop()
