"""A real software TPM 2.0 (swtpm) on free loopback ports, with its own state directory.

`swtpm socket --tpm2 --flags not-need-init,startup-clear` starts a TPM that is already
initialised and started, so clients (tpm2-pytss, tpm2-tools) use it right away. There is no
resource manager in front of it: callers flush their transient objects.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from devinfra.procs import ManagedProcess, free_port, port_open, require_binary


def free_port_pair() -> int:
    """A free loopback port whose successor is free too (swtpm's server and control channels)."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and not port_open(port + 1) and _bindable(port + 1):
            return port
    raise RuntimeError("no pair of free consecutive TCP ports for swtpm")


def manufacture(workdir: Path, state_dir: Path, manufacturer: str) -> list[Path]:
    """Provision a TPM state like a vendor does, with swtpm_setup: RSA and ECC EKs and their
    certificates in NV (RSA 2048 at 0x01c00002), signed by a local CA kept in `workdir` (not the
    machine-wide /var/lib/swtpm-localca). Returns the CA certificates."""
    setup = require_binary("swtpm_setup")
    localca = require_binary("swtpm_localca")
    ca_dir = workdir / "localca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_conf = workdir / "swtpm-localca.conf"
    ca_conf.write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\n"
        f"issuercert = {ca_dir}/issuercert.pem\ncertserial = {ca_dir}/certserial\n"
    )
    ca_opts = workdir / "swtpm-localca.options"
    ca_opts.write_text(f"--platform-manufacturer {manufacturer}\n--platform-version 1\n--platform-model swtpm\n")
    setup_conf = workdir / "swtpm_setup.conf"
    setup_conf.write_text(
        f"create_certs_tool = {localca}\ncreate_certs_tool_config = {ca_conf}\n"
        f"create_certs_tool_options = {ca_opts}\nactive_pcr_banks = sha256\n"
    )
    result = subprocess.run(
        [setup, "--tpm2", "--tpmstate", str(state_dir), "--config", str(setup_conf),
         "--create-ek-cert", "--overwrite", "--pcr-banks", "sha256"],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"swtpm_setup failed:\n{result.stdout}\n{result.stderr}")
    return [ca_dir / "issuercert.pem", ca_dir / "swtpm-localca-rootca-cert.pem"]


def swtpm_argv(state_dir: Path, port: int) -> list[str]:
    """swtpm on 127.0.0.1:port (control channel port+1), already initialised and started."""
    return [
        require_binary("swtpm"), "socket", "--tpm2",
        "--tpmstate", f"dir={state_dir}",
        "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
        "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
        "--flags", "not-need-init,startup-clear",
    ]


def swtpm_tcti(port: int) -> str:
    """TCTI string for tpm2-pytss, tpm2-tools and the agent's attestation.tcti."""
    return f"swtpm:host=127.0.0.1,port={port}"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Swtpm:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "tpmstate"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The swtpm TCTI talks to the control channel on port+1, so both must be free.
        self.port = free_port_pair()
        self.ctrl_port = self.port + 1
        self.proc: ManagedProcess | None = None
        self.ca_certs: list[Path] = []

    @property
    def tcti(self) -> str:
        """TCTI string for tpm2-pytss and for the agent's attestation.tcti."""
        return swtpm_tcti(self.port)

    def tools_env(self) -> dict[str, str]:
        """Environment for tpm2-tools commands against this TPM."""
        return {**os.environ, "TPM2TOOLS_TCTI": self.tcti}

    def manufacture(self) -> Swtpm:
        """Before start(): provision the TPM like a vendor does, with swtpm_setup: RSA and ECC EKs
        and their certificates in NV (RSA 2048 at 0x01c00002), signed by a local CA kept in this
        TPM's work dir (not the machine-wide /var/lib/swtpm-localca)."""
        self.ca_certs = manufacture(self.workdir, self.state_dir, "edge-agent-tests")
        return self

    def start(self) -> Swtpm:
        argv = swtpm_argv(self.state_dir, self.port)
        self.proc = ManagedProcess("swtpm", argv, self.workdir / "swtpm.log")
        self.proc.start()
        self.proc.wait_ready(lambda: port_open(self.port) and port_open(self.ctrl_port))
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def restart(self) -> None:
        """Stop and start on the same state: like a reboot (PCRs reset, reset counter up)."""
        self.stop()
        self.start()
