"""Where the identity component keeps the device key: sealed to the TPM when there is one; a
TPM that is away never makes it fall back to a new key file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.attestation.tpm import TpmError
from edge_agent.config import AgentConfig
from edge_agent.identity.component import IdentityComponent, TpmAccess
from edge_agent.reported import ReportedState
from tests.fakes.tpm import FakeTpm


def component(tmp_path: Path, tpm: FakeTpm | None, storage: str = "auto") -> IdentityComponent:
    config = AgentConfig.model_validate({"state": {"dir": str(tmp_path)}, "mqtt": {"tls": True},
                                         "identity": {"enabled": True, "key_storage": storage}})

    async def op(what: str, fn: Any, *args: Any) -> Any:
        if tpm is None:
            raise TpmError("no TPM")
        return fn(tpm, *args)

    access = TpmAccess(op, lambda: tpm is not None)

    async def switch(params: Any) -> bool:
        return True

    return IdentityComponent(config, ReportedState(), access, switch)


async def test_sealed_with_a_tpm_and_refused_to_fall_back_without_it(tmp_path: Path) -> None:
    tpm = FakeTpm()
    with_tpm = component(tmp_path, tpm)
    await with_tpm.start()
    keys = await with_tpm._keystore()
    assert keys.kind == "tpm-sealed"
    key = await keys.create("device")
    assert (tmp_path / "identity" / "device.key.tpm").exists() and not (tmp_path / "identity" / "device.key").exists()
    assert (await keys.load("device")).private_numbers() == key.private_numbers()
    with pytest.raises(TpmError, match="sealed to the TPM, which is unavailable"):
        await component(tmp_path, None)._keystore()
    # Another TPM cannot open it.
    with pytest.raises(TpmError):
        await (await component(tmp_path, FakeTpm())._keystore()).load("device")


async def test_a_file_without_a_tpm_and_tpm_storage_demands_one(tmp_path: Path) -> None:
    keys = await component(tmp_path, None)._keystore()
    assert keys.kind == "file"
    with pytest.raises(TpmError, match="key_storage is tpm"):
        await component(tmp_path, None, "tpm")._keystore()
