"""The local stand-ins for the cloud side: a TLS MQTT broker, an OCI registry, a software TPM and
a podman API service, each on free loopback ports / a private socket in the run's work folder.

What each one is (its config file, command line, readiness check) is defined once, in
devinfra/, and shared with the test suite; this module only starts them under the
quickstart's own process bookkeeping (quickstart/procs.py: pid files, process groups, clean-up
after a killed run), which the tests do not need.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from devinfra.mosquitto import mosquitto_argv, mosquitto_conf
from devinfra.podman import podman_answers, podman_service_argv
from devinfra.procs import free_port, port_open, require_binary
from devinfra.registry import registry_argv, registry_config, registry_reachable
from devinfra.swtpm import free_port_pair, manufacture, swtpm_argv, swtpm_tcti
from quickstart.procs import Processes

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "Broker", "free_port", "need", "port_open", "start_podman_service", "start_registry",
           "start_swtpm"]


def need(binary: str) -> str:
    return require_binary(binary)


@dataclass
class Broker:
    port: int
    conf: Path
    started_by: Processes

    @staticmethod
    def write_conf(work: Path, certs: Path, port: int) -> Path:
        """config/mosquitto/mosquitto.conf (mutual TLS, identity = certificate CN, per-device ACL),
        with the paths of this run and a loopback listener. The ACL and the CRL are the ones the
        enrollment service writes (enrollment_conf), which reloads the broker through its pid file."""
        data = work / "broker"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "config" / "mosquitto" / "edge-agent.acl", data / "edge-agent.acl.base")
        if not (data / "edge-agent.acl").exists():
            shutil.copy(data / "edge-agent.acl.base", data / "edge-agent.acl")
        conf = data / "mosquitto.conf"
        conf.write_text(mosquitto_conf(data, port, anonymous=False, extra=(
            "autosave_interval 60\npersistent_client_expiration 14d\n"
            "max_packet_size 4194304\n"
            f"cafile {certs}/ca.crt\ncertfile {certs}/broker.crt\nkeyfile {certs}/broker.key\n"
            "tls_version tlsv1.2\nrequire_certificate true\nuse_identity_as_username true\n"
            f"acl_file {data}/edge-agent.acl\ncrlfile {data}/edge-agent.crl\npid_file {data}/mosquitto.pid"
        )))
        return conf

    @staticmethod
    def enrollment_conf(work: Path, certs: Path, port: int, tpm_makers: Path | None) -> Path:
        """The fleet's enrollment service (edgectl enroll-service) for this run: the fleet CA of
        scripts/make-certs.sh, devices approved by policy when their EK certificate comes from the
        swtpm's maker, and the broker's CRL/ACL in the broker's folder."""
        data, fleet = work / "broker", work / "fleet"
        fleet.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "config" / "mosquitto" / "edge-agent.acl", data / "edge-agent.acl.base")
        conf = fleet / "enrollment.toml"
        conf.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntopic_prefix = "edge"\ntls = true\n'
            f'ca_file = "{certs}/ca.crt"\ncert_file = "{certs}/enrollment-service.crt"\n'
            f'key_file = "{certs}/enrollment-service.key"\nclient_id = "enrollment-service"\n'
            f'[enrollment]\nca_cert = "{certs}/ca.crt"\nca_key = "{certs}/ca.key"\n'
            f'database = "{fleet}/enrollment.db"\n'
            + (f'tpm_maker_cas = "{tpm_makers}"\n' if tpm_makers else "")
            + f'crl_file = "{data}/edge-agent.crl"\nacl_base = "{data}/edge-agent.acl.base"\n'
            f'acl_file = "{data}/edge-agent.acl"\nbroker_pid_file = "{data}/mosquitto.pid"\n'
        )
        return conf

    def start(self) -> None:
        self.started_by.start("mosquitto", mosquitto_argv(self.conf))
        self.started_by.wait_ready("mosquitto", lambda: port_open(self.port), 15)

    def stop(self) -> None:
        self.started_by.stop("mosquitto")


def start_registry(procs: Processes, work: Path) -> int:
    port = free_port()
    data = work / "registry"
    data.mkdir(parents=True, exist_ok=True)
    procs.start("registry", registry_argv(registry_config(data, port)))
    procs.wait_ready("registry", lambda: registry_reachable(f"http://127.0.0.1:{port}"), 20)
    return port


def start_swtpm(procs: Processes, work: Path) -> str | None:
    """A manufactured software TPM (EK certificates like a vendor's) -> its TCTI, or None when
    swtpm is not installed (the story then skips attestation and says so)."""
    if not (shutil.which("swtpm") and shutil.which("swtpm_setup") and shutil.which("swtpm_localca")):
        return None
    tpm = work / "tpm"
    state = tpm / "state"
    state.mkdir(parents=True, exist_ok=True)
    manufacture(tpm, state, "edge-agent-quickstart")
    port = free_port_pair()
    procs.start("swtpm", swtpm_argv(state, port))
    procs.wait_ready("swtpm", lambda: port_open(port) and port_open(port + 1), 15)
    return swtpm_tcti(port)


def start_podman_service(procs: Processes, work: Path) -> str:
    url = f"unix://{work / 'podman.sock'}"
    procs.start("podman-service", podman_service_argv(url))
    procs.wait_ready("podman-service", lambda: podman_answers(url), 60)
    return url
