"""Run in a fresh interpreter: start the agent's AttestationService on a TPM, use it the way the
fleet and the lifecycle do (enroll, activate a credential, measure an image, attest), then print
one JSON object: which heavy modules the process loaded, its RSS, the worker's RSS.

    python devinfra/attestation_probe.py --tree ROOT --tcti TCTI --state DIR
        [--challenge FILE] [--in-process]

`--tree` is the source tree whose edge_agent is used (so the bench can compare another checkout);
`--in-process` opens the TPM in this process with tpm2-pytss, as the agent did before the worker.
This file imports nothing from the tree itself before --tree is on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

WATCHED = ("tpm2_pytss", "cryptography")


def rss_kb(pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    from edge_agent.attestation.service import AttestationService
    from edge_agent.config import parse_config
    from edge_agent.reported import ReportedState

    state = Path(args.state)
    config = parse_config(f'[state]\ndir = "{state}"\n[attestation]\ntcti = "{args.tcti}"\n'
                          f'ima_log = "{state}/no-ima"\nboot_log = "{state}/no-boot-log"\n')
    kwargs: dict[str, Any] = {}
    if args.in_process:
        from edge_agent.attestation.tpm import open_tpm

        kwargs["tpm_factory"] = lambda s: open_tpm(s.tcti, s.ek_type, s.ak_handle)
    service = AttestationService(config, ReportedState(), **kwargs)
    await service.start()
    out: dict[str, Any] = {"unavailable": service.unavailable, "rss_after_start_kb": rss_kb()}
    if service.unavailable is None:
        out["identity"] = await service.handle_enroll({})
        if args.challenge:
            challenge = json.loads(Path(args.challenge).read_text())
            out["activated"] = (await service.handle_activate(challenge))["secret"]
        await service.before_start("probe", "localhost/probe@sha256:" + hashlib.sha256(b"probe").hexdigest(), 1)
        answer = await service.handle_attest({"nonce": "ab" * 20, "pcrs": [0, 23]})
        out["quoted_pcrs"] = sorted(answer["quote"]["pcrs"])
        out["image_events"] = len(answer["image_log"])
        pid = getattr(service.tpm, "worker_pid", None)
        out["worker_rss_kb"] = rss_kb(pid) if pid else None
    out["rss_kb"] = rss_kb()
    out["loaded"] = [m for m in WATCHED if m in sys.modules]
    service.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", required=True)
    parser.add_argument("--tcti", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--challenge")
    parser.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.tree)
    if (Path(args.tree) / "shared" / "edge_shared").is_dir():  # the tree's own shared leaf
        sys.path.insert(0, str(Path(args.tree) / "shared"))
    result = asyncio.run(probe(args))
    result["edge_agent"] = str(Path(sys.modules["edge_agent"].__file__ or "").parent)
    print(json.dumps(result, default=lambda b: base64.b64encode(b).decode()))


if __name__ == "__main__":
    main()
