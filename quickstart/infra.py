"""The local stand-ins for the cloud side: a TLS MQTT broker, an OCI registry, a software TPM and
a podman API service, each on free loopback ports / a private socket in the run's work folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from quickstart.procs import Processes

REPO = Path(__file__).resolve().parents[1]


def free_port(pair: bool = False) -> int:
    """A free loopback TCP port (with pair=True: port and port+1 are both free, for swtpm)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: scripts/install-deps.sh installs it")
    return path


def make_certs(certs: Path, device_id: str, fleet_user: str) -> None:
    """CA, broker, device and fleet-operator certificates with scripts/make-certs.sh."""
    tool = str(REPO / "scripts" / "make-certs.sh")
    for args in (["ca"], ["server", "broker"], ["client", device_id], ["client", fleet_user]):
        subprocess.run([tool, str(certs), *args], check=True, capture_output=True, text=True)


@dataclass
class Broker:
    port: int
    conf: Path
    started_by: Processes

    @staticmethod
    def write_conf(work: Path, certs: Path, port: int) -> Path:
        """config/mosquitto/mosquitto.conf (mutual TLS, identity = certificate CN, per-device ACL),
        with the paths of this run and a loopback listener."""
        data = work / "broker"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "config" / "mosquitto" / "edge-agent.acl", data / "edge-agent.acl")
        # Started as root mosquitto would switch to the mosquitto user and then fail to read the
        # keys in this 0700 work folder; stay root for this local, loopback-only broker.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf = data / "mosquitto.conf"
        conf.write_text(
            f"per_listener_settings false\n{user}"
            f"persistence true\npersistence_location {data}/\nautosave_interval 60\n"
            "persistent_client_expiration 14d\nmax_queued_messages 1000\nmax_packet_size 4194304\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            "allow_anonymous false\n"
            f"listener {port} 127.0.0.1\n"
            f"cafile {certs}/ca.crt\ncertfile {certs}/broker.crt\nkeyfile {certs}/broker.key\n"
            "tls_version tlsv1.2\nrequire_certificate true\nuse_identity_as_username true\n"
            f"acl_file {data}/edge-agent.acl\n"
        )
        return conf

    def start(self) -> None:
        self.started_by.start("mosquitto", [need("mosquitto"), "-c", str(self.conf)])
        self.started_by.wait_ready("mosquitto", lambda: port_open(self.port), 15)

    def stop(self) -> None:
        self.started_by.stop("mosquitto")


def start_registry(procs: Processes, work: Path) -> int:
    port = free_port()
    data = work / "registry"
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "config.yml"
    conf.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n"
        f"  filesystem:\n    rootdirectory: {data}/data\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    procs.start("registry", [need("docker-registry"), "serve", str(conf)])
    procs.wait_ready("registry", up, 20)
    return port


def start_swtpm(procs: Processes, work: Path) -> str | None:
    """A manufactured software TPM (EK certificates like a vendor's) -> its TCTI, or None when
    swtpm is not installed (the story then skips attestation and says so)."""
    if not (shutil.which("swtpm") and shutil.which("swtpm_setup") and shutil.which("swtpm_localca")):
        return None
    tpm = work / "tpm"
    state = tpm / "state"
    ca_dir = tpm / "localca"
    state.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    (tpm / "localca.conf").write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\n"
        f"issuercert = {ca_dir}/issuercert.pem\ncertserial = {ca_dir}/certserial\n"
    )
    (tpm / "localca.options").write_text(
        "--platform-manufacturer edge-agent-quickstart\n--platform-version 1\n--platform-model swtpm\n"
    )
    (tpm / "swtpm_setup.conf").write_text(
        f"create_certs_tool = {need('swtpm_localca')}\ncreate_certs_tool_config = {tpm}/localca.conf\n"
        f"create_certs_tool_options = {tpm}/localca.options\nactive_pcr_banks = sha256\n"
    )
    subprocess.run(
        [need("swtpm_setup"), "--tpm2", "--tpmstate", str(state), "--config", str(tpm / "swtpm_setup.conf"),
         "--create-ek-cert", "--overwrite", "--pcr-banks", "sha256"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    port = free_port(pair=True)
    procs.start("swtpm", [
        need("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}",
        "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
        "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
        "--flags", "not-need-init,startup-clear",
    ])
    procs.wait_ready("swtpm", lambda: port_open(port) and port_open(port + 1), 15)
    return f"swtpm:host=127.0.0.1,port={port}"


def _podman_ping(sock: Path) -> bool:
    from edge_agent.unix_http import UnixHTTPConnection

    if not sock.exists():
        return False
    try:
        conn = UnixHTTPConnection(str(sock), timeout=2)
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False


def start_podman_service(procs: Processes, work: Path) -> str:
    sock = work / "podman.sock"
    url = f"unix://{sock}"
    procs.start("podman-service", [need("podman"), "system", "service", "--time=0", url])
    procs.wait_ready("podman-service", lambda: _podman_ping(sock), 60)
    return url
