from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_agent.attestation.service import AttestationService
from edge_agent.attestation.tpm import TpmError
from edge_agent.config import ConfigError, parse_config
from edge_agent.reported import ReportedState
from edge_shared.attestation import decode_evidence
from edge_shared.protocol import CommandFailed
from edgectl.attestation.verify import Expectations, verify_quote
from tests.fakes.tpm import FakeTpm


def config(tmp_path: Path, extra: str = "") -> object:
    return parse_config(f'[state]\ndir = "{tmp_path}/state"\n[attestation]\nima_log = "{tmp_path}/ima"\n{extra}')


async def test_attest_answer_verifies_and_carries_the_logs(tmp_path: Path) -> None:
    tpm = FakeTpm()
    (tmp_path / "ima").write_text("")
    service = AttestationService(config(tmp_path), ReportedState(), tpm_factory=lambda section: tpm)
    await service.start()
    assert service.unavailable is None and service.reported.get("attestation")["available"] is True
    await service.measurer.extend("sha256:" + hashlib.sha256(b"img").hexdigest(), "pilot", "1")
    nonce = b"\x07" * 32
    answer = await service.handle_attest({"nonce": nonce.hex(), "pcrs": [0, 10, 23]})
    assert answer["ima_log"] == "" and answer["boot_log"] is None and len(answer["image_log"]) == 1
    result = verify_quote(decode_evidence(answer), Expectations(nonce, (0, 10, 23), tpm.ak_public()))
    assert result.passed, result.as_dict()
    with pytest.raises(CommandFailed, match="nonce"):
        await service.handle_attest({"nonce": "00"})


async def test_disabled_or_broken_tpm_makes_attestation_unavailable(tmp_path: Path) -> None:
    off = AttestationService(config(tmp_path, "enabled = false\n"), ReportedState())
    await off.start()
    with pytest.raises(CommandFailed) as info:
        await off.handle_enroll({})
    assert info.value.code == "attestation_unavailable" and "disabled" in info.value.description

    def broken(section: object) -> FakeTpm:
        raise TpmError("cannot open TPM through TCTI 'device:/dev/tpmrm0': No such file")

    gone = AttestationService(config(tmp_path), ReportedState(), tpm_factory=broken)
    await gone.start()
    assert gone.reported.get("attestation") == {
        "available": False,
        "reason": "no usable TPM at device:/dev/tpmrm0: cannot open TPM through TCTI 'device:/dev/tpmrm0': "
        "No such file",
    }


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("image_pcr = 10", "attestation.image_pcr"),
        ('tcti = "/dev/tpm0"', "attestation.tcti"),
        ("ak_handle = 0x80000001", "attestation.ak_handle"),
        ('ek_type = "dsa"', "attestation.ek_type"),
        ("enable = true", "attestation.enable"),
    ],
)
def test_bad_attestation_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[attestation]\n{text}\n", "c.toml")
    assert f"c.toml:2: {key}:" in str(info.value)


async def test_a_hanging_tpm_call_is_reported_as_stalled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading

    from edge_agent.attestation import service as service_module

    tpm = FakeTpm()
    service = AttestationService(config(tmp_path), ReportedState(), tpm_factory=lambda section: tpm)
    await service.start()
    release = threading.Event()
    original = tpm.quote

    def hanging_quote(*args: object) -> object:
        release.wait(10)
        return original(*args)  # type: ignore[arg-type]

    tpm.quote = hanging_quote  # type: ignore[method-assign]
    monkeypatch.setattr(service_module, "TPM_STALL_S", 0.05)
    task = asyncio.create_task(service.handle_attest({"nonce": "11" * 32}))
    async with asyncio.timeout(30):
        while service.stalled() is None:
            await asyncio.sleep(0.01)
    assert "TPM operation 'quote' running for" in (service.stalled() or "")
    release.set()
    await task
    assert service.stalled() is None
