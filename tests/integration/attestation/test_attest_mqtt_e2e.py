"""End to end over MQTT: the real daemon with a swtpm, a real mosquitto, and the edgectl CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.swtpm import Swtpm
from edge_agent.attestation.tpm import PytssTpm
from tests.integration.attestation.conftest import synthetic_files, write_boot_log, write_ima_list


def agent_config(mosquitto: Mosquitto, device: str, tcti: str, ima_log: Path, boot_log: Path) -> str:
    return (
        f'[device]\nid = "{device}"\n'
        f'[logging]\nlevel = "info"\nformat = "text"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\ntopic_prefix = "e2e"\n'
        f'[attestation]\ntcti = "{tcti}"\nima_log = "{ima_log}"\nboot_log = "{boot_log}"\n'
        f'[trust]\ndocument_mode = "off"\n'
    )


def edgectl(mosquitto: Mosquitto, records: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edgectl.cli", *args, "--broker", "127.0.0.1",
            "--port", str(mosquitto.port), "--prefix", "e2e", "--records", str(records), "--timeout", "20"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_edgectl_enrolls_and_attests_a_running_agent(mosquitto: Mosquitto, swtpm: Swtpm, tmp_path: Path) -> None:
    # Boot: the "kernel" measures files into PCR 10 before the agent starts.
    files = synthetic_files(4)
    ima_log = tmp_path / "ascii_runtime_measurements"
    boot_log = tmp_path / "binary_bios_measurements"
    tpm = PytssTpm(swtpm.tcti)
    for pcr, digest in write_boot_log(boot_log):
        tpm.pcr_extend(pcr, digest)
    for entry in write_ima_list(ima_log, files):
        tpm.pcr_extend(10, entry.extend_value())
    tpm.close()
    allowlist = tmp_path / "allowlist.json"
    allowlist.write_text(json.dumps({"digests": {p: [d.hex()] for p, d in files}}))

    config = agent_config(mosquitto, "rover-e2e", swtpm.tcti, ima_log, boot_log)
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        agent.wait_log("EVENT=mqtt.connected", timeout=20)
        records = tmp_path / "records"
        enroll = edgectl(mosquitto, records, "enroll", "rover-e2e")
        assert enroll.returncode == 0, enroll.stderr + agent.log()[-2000:]
        assert "proven in the EK's TPM" in enroll.stdout
        assert (records / "rover-e2e.json").exists()

        attest = edgectl(mosquitto, records, "attest", "rover-e2e", "--allowlist", str(allowlist), "--require-ima",
                         "--json")
        assert attest.returncode == 0, attest.stdout + attest.stderr
        result = json.loads(attest.stdout)
        assert result["passed"] is True
        statuses = {c["name"]: c["status"] for c in result["checks"]}
        assert statuses["ak_signature"] == statuses["ima_replay"] == statuses["golden_pcrs"] == "pass"
        assert statuses["boot_log_replay"] == statuses["image_log_replay"] == "pass"

        # The device's reported state says attestation is available; `edge-agent check` asks the agent.
        status = agent.call("status")
        assert status["reported"]["attestation"]["available"] is True
        check = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check", "--config", str(agent.config_path),
                                "--state-dir", str(agent.state_dir), "--json"], capture_output=True, text=True)
        rows = {r["name"]: r for r in json.loads(check.stdout)}
        assert rows["TPM attestation"]["outcome"] == "pass", rows["TPM attestation"]

        # A tampered IMA list on the device is caught, with the reason named.
        ima_log.write_text(ima_log.read_text().replace(files[1][1].hex(), "00" * 32))
        bad = edgectl(mosquitto, records, "attest", "rover-e2e", "--allowlist", str(allowlist))
        assert bad.returncode == 1
        assert "FAILED: ima_entries, ima_replay, ima_allowlist" in bad.stdout
    finally:
        agent.stop()


def test_agent_without_tpm_runs_and_answers_attest_with_a_clear_error(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = agent_config(mosquitto, "rover-notpm", "device:/dev/no-such-tpm", tmp_path / "none", tmp_path / "none")
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        agent.wait_log("EVENT=mqtt.connected", timeout=20)
        assert agent.call("status")["reported"]["attestation"]["available"] is False
        enroll = edgectl(mosquitto, tmp_path / "records", "enroll", "rover-notpm")
        assert enroll.returncode == 1
        assert "attestation_unavailable" in enroll.stderr and "/dev/no-such-tpm" in enroll.stderr
        check = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check", "--config", str(agent.config_path),
                                "--state-dir", str(agent.state_dir), "--json"], capture_output=True, text=True)
        rows = {r["name"]: r for r in json.loads(check.stdout)}
        assert rows["TPM attestation"]["outcome"] == "warn"
        assert "attestation is unavailable" in rows["TPM attestation"]["detail"]
    finally:
        agent.stop()
