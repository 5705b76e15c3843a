"""config/mosquitto/ as shipped (only paths and the port swapped) runs on mosquitto 2.0 and
does what docs/protocol.md says: mutual TLS required, device confined by the ACL."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiomqtt
import pytest

from devinfra.pki import REPO, Pki, unique
from devinfra.procs import ManagedProcess, free_port, port_open, require_binary
from edge_shared.mqtt_client import make_client
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import BrokerParams, broker_params
from edgectl.client import FleetClient


async def test_example_mosquitto_config(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    ops = pki.client("fleet-ops")
    device = unique("dev")
    dev_cert = pki.client(device)
    conf = (REPO / "config" / "mosquitto" / "mosquitto.conf").read_text()
    conf = (
        conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
        .replace("listener 8883", f"listener {port} 127.0.0.1")
        .replace("/etc/mosquitto/certs/ca.crt", str(pki.ca))
        .replace("/etc/mosquitto/certs/broker.crt", str(pki.server_cert))
        .replace("/etc/mosquitto/certs/broker.key", str(pki.server_key))
        .replace("/etc/mosquitto/edge-agent.acl", str(REPO / "config" / "mosquitto" / "edge-agent.acl"))
    )
    conf_path = tmp_path / "mosquitto.conf"
    conf_path.write_text("user root\n" + conf)  # tests run as root in 0700 temp dirs
    proc = ManagedProcess("mosquitto", [require_binary("mosquitto"), "-c", str(conf_path)], tmp_path / "log")
    proc.start()
    try:
        proc.wait_ready(lambda: port_open(port))

        def section(cert: Path | None, key: Path | None) -> MqttSection:
            return MqttSection(host="127.0.0.1", port=port, tls=True, ca_file=pki.ca, cert_file=cert, key_file=key)

        # Without a client certificate: refused in the TLS handshake.
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(broker_params(section(None, None), unique("nocert")), timeout=2):
                pass
        # A certificate from another CA: refused too.
        other = Pki(tmp_path / "other-ca")
        stranger = other.client(device)
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(stranger.cert), str(stranger.key))
        params = BrokerParams("127.0.0.1", port, unique("stranger"), None, None, ctx, 30)
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(params, timeout=2):
                pass

        # (TLS 1.3 lets the client finish its side of the handshake before the broker's alert,
        # so the client sees a timeout; the broker's log says why it refused.)
        broker_log = (tmp_path / "log").read_text()
        assert "peer did not return a certificate" in broker_log
        assert "certificate verify failed" in broker_log
        # The operator (CN fleet-ops) deploys under the default prefix "edge"; the device reads
        # its own desired document and may not read another's.
        fleet_params = broker_params(section(ops.cert, ops.key), unique("ops"))
        async with FleetClient(fleet_params, "edge") as fleet:
            await fleet.deploy(device, {"modules": {"m": {"image": "registry.local/i:1"}}})
            await fleet.deploy("someone-else", {"modules": {"x": {"image": "secret"}}})
            async with make_client(broker_params(section(dev_cert.cert, dev_cert.key), device)) as client:
                # Both sides of the agent's and edgectl's connections send each packet at once
                # (no Nagle; the broker's side is `set_tcp_nodelay true` above, which it accepted).
                for sock in (client._client.socket(), fleet.client._client.socket()):
                    assert isinstance(sock, socket.socket)
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                await client.subscribe("edge/+/desired", qos=1)
                async with asyncio.timeout(10):
                    async for message in client.messages:
                        assert str(message.topic) == f"edge/{device}/desired"
                        break
                await client.publish(f"edge/{device}/reported", b'{"schema":1}', qos=1, retain=True)
            view = await fleet.view(device)
            assert view.reported == {"schema": 1}
            assert (await fleet.view("someone-else")).reported is None
    finally:
        proc.stop()
