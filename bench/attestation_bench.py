"""Attestation latency on a swtpm started here: one command, prints a table.

Baseline: a bare PCR read over the same TCTI, measured in the same run; the other rows are
shown as ratios to it. Run: python bench/attestation_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.attestation.ima import make_entry, parse_ima_list
from edge_agent.attestation.quote import DEFAULT_PCRS
from edge_agent.attestation.tpm import PytssTpm
from edge_agent.attestation.verify import Evidence, Expectations, verify_quote
from tests.infra.swtpm import Swtpm


def timed(fn: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--ima-entries", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        swtpm = Swtpm(Path(tmp)).start()
        try:
            tpm = PytssTpm(swtpm.tcti)
            ak = tpm.ak_public()
            entries = [make_entry(f"/usr/lib/f{i}", hashlib.sha256(str(i).encode()).digest(), i + 1)
                       for i in range(args.ima_entries)]
            for e in entries[:200]:
                tpm.pcr_extend(10, e.extend_value())
            ima_text = "".join(e.to_line() + "\n" for e in entries[:200])
            big_ima = "".join(e.to_line() + "\n" for e in entries)
            nonce = b"\x01" * 32
            raw = tpm.quote(DEFAULT_PCRS, nonce)
            expect = Expectations(nonce, DEFAULT_PCRS, ak)
            rows = [
                ("pcr_read 10 PCRs (baseline)", timed(lambda: tpm.pcr_read(DEFAULT_PCRS), args.rounds)),
                ("AK re-create (primary)", timed(tpm.ak_public, args.rounds)),
                ("quote 10 PCRs (incl. AK, reads)", timed(lambda: tpm.quote(DEFAULT_PCRS, nonce), args.rounds)),
                ("image extend (PCR 23)", timed(lambda: tpm.pcr_extend(23, b"\x02" * 32), args.rounds)),
                ("verify quote, 200 IMA entries", timed(lambda: verify_quote(
                    Evidence(raw.attest, raw.signature, raw.pcrs, ima_text, []), expect), args.rounds)),
                (f"parse {args.ima_entries} IMA entries", timed(lambda: parse_ima_list(big_ima), 5)),
            ]
            tpm.close()
        finally:
            swtpm.stop()
    base = rows[0][1]
    print(f"{'operation':40} {'median ms':>10} {'x baseline':>11}")
    for name, ms in rows:
        print(f"{name:40} {ms:10.2f} {ms / base:11.1f}")
    print("(swtpm on this machine; a hardware TPM is slower per command, not measured here)")


if __name__ == "__main__":
    main()
