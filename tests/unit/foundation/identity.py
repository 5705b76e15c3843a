"""Config fragments for tests that load a whole file: load_config requires the device's identity
(device.id and mqtt.host, config.REQUIRED_KEYS), so a fragment gets it appended at its end, which
keeps the fragment's own line numbers."""

from __future__ import annotations

import re

DEVICE_ID = "test-device"
BROKER = "broker.example"


def with_identity(text: str) -> str:
    tables = re.findall(r"^\s*\[([^\]]+)\]", text, re.M)
    extra = ""
    if "mqtt" not in tables and not re.search(r"^\s*mqtt\s*=", text, re.M):
        extra += f'\n[mqtt]\nhost = "{BROKER}"\n'
    elif tables and tables[-1] == "mqtt" and not re.search(r"^\s*host\s*=", text, re.M):
        extra = f'host = "{BROKER}"\n' + extra
    if "device" not in tables:
        extra += f'\n[device]\nid = "{DEVICE_ID}"\n'
    if text and not text.endswith("\n"):
        text += "\n"
    return text + extra
