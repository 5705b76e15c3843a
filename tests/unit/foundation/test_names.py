"""One module-name rule (and one device-id and stream rule) for every place that checks a name:
the agent's config, the deployment document, telemetry ingest and edgectl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.config import TelemetrySection
from edge_agent.telemetry.ingest import ingest_mount_dir
from edge_shared.names import is_device_id, is_module_name, is_stream_name
from edge_shared.spec import Deployment

MODULE_NAMES = {
    "pilot": True,
    "a": True,
    "cam_0": True,
    "cam-0": True,
    "x" * 63: True,
    "x" * 64: False,  # one DNS label at most
    "cam.0": False,  # no dots: the name is part of a host name
    "Pilot": False,
    "-pilot": False,
    "_pilot": False,
    "": False,
    "pilot\n": False,  # `$` must not let a trailing newline through
    "pi lot": False,
}


def deployment(name: str) -> dict[str, Any]:
    return {"modules": {name: {"image": "localhost/pilot@sha256:" + "1" * 64}}}


@pytest.mark.parametrize(("name", "valid"), sorted(MODULE_NAMES.items()))
def test_every_module_name_check_agrees(name: str, valid: bool) -> None:
    assert is_module_name(name) is valid

    try:
        Deployment.model_validate(deployment(name))
        in_manifest = True
    except ValidationError:
        in_manifest = False
    assert in_manifest is valid, "deployment document"

    try:
        TelemetrySection.model_validate({"modules": [name]})
        in_config = True
    except ValidationError:
        in_config = False
    assert in_config is valid, "[telemetry] modules"

    try:
        ingest_mount_dir(Path("/run/edge-agent"), name)
        at_ingest = True
    except ValueError:
        at_ingest = False
    assert at_ingest is valid, "telemetry ingest"


@pytest.mark.parametrize(
    ("text", "device", "stream"),
    [
        ("pi-042", True, True),
        ("Pi.042", True, False),
        ("a" * 64, True, True),
        ("a" * 65, False, False),
        ("-x", False, False),
        ("x\n", False, False),
        ("", False, False),
    ],
)
def test_device_ids_and_streams(text: str, device: bool, stream: bool) -> None:
    assert is_device_id(text) is device
    assert is_stream_name(text) is stream
