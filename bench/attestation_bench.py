"""Attestation latency and the TPM worker's cost on a swtpm started here: one command, three tables.

1. TPM operations in process (tpm2-pytss). Baseline: a bare PCR read over the same TCTI.
2. The TPM worker (SubprocessTpm): the first call after the worker left on its idle timeout
   (spawn + TPM open + call) against a warm call. Baseline: the warm call.
3. Agent-process RSS after starting the attestation service and using it (enroll, measure,
   attest) in a fresh interpreter (devinfra/attestation_probe.py): TPM opened in process,
   as before the worker (baseline), against the worker; optionally the service of another
   checkout (--baseline-tree /path/to/main) too. The worker's own RSS is shown while it lives.

Run: python bench/attestation_bench.py [--rounds N] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devinfra.swtpm import Swtpm
from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_agent.attestation.tpm import PytssTpm
from edge_shared.attestation import DEFAULT_PCRS, Evidence
from edgectl.attestation.ima import make_entry, parse_ima_list
from edgectl.attestation.verify import Expectations, verify_quote


def timed(fn: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


REPO_ROOT = Path(__file__).resolve().parent.parent
IDLE_S = 0.3


def worker_rows(tcti: str, rounds: int) -> list[tuple[str, float]]:
    """(name, median ms): warm call first (the baseline), then the call after an idle exit."""
    tpm = SubprocessTpm(tcti, idle_timeout=IDLE_S)
    try:
        tpm.pcr_read(DEFAULT_PCRS)
        warm = timed(lambda: tpm.pcr_read(DEFAULT_PCRS), rounds)
        cold: list[float] = []
        for _ in range(max(3, rounds // 5)):
            pid = tpm.worker_pid
            while tpm.worker_pid == pid:  # wait for the idle exit
                time.sleep(IDLE_S / 3)
            cold.append(timed(lambda: tpm.pcr_read(DEFAULT_PCRS), 1))
        warm_quote = timed(lambda: tpm.quote(DEFAULT_PCRS, b"\x01" * 32), max(3, rounds // 5))
    finally:
        tpm.close()
    return [("pcr_read 10 PCRs, warm worker (baseline)", warm),
            ("pcr_read 10 PCRs, first call after idle", statistics.median(cold)),
            ("quote 10 PCRs, warm worker", warm_quote)]


def probe(tree: Path, tcti: str, state: Path, *extra: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, str(REPO_ROOT / "devinfra" / "attestation_probe.py"),
                          "--tree", str(tree), "--tcti", tcti, "--state", str(state), *extra],
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def rss_rows(tcti: str, tmp: Path, baseline_tree: Path | None) -> list[tuple[str, dict[str, object]]]:
    runs = [("this tree, TPM in process (before)", REPO_ROOT, ("--in-process",)),
            ("this tree, TPM worker (after)", REPO_ROOT, ())]
    if baseline_tree is not None:
        runs.insert(0, (f"{baseline_tree} (its default)", baseline_tree, ()))
    return [(name, probe(tree, tcti, tmp / f"probe-{i}", *extra)) for i, (name, tree, extra) in enumerate(runs)]


def print_table(title: str, rows: list[tuple[str, float]], unit: str) -> None:
    base = rows[0][1]
    print(f"\n{title}\n{'':44} {unit:>10} {'x baseline':>11}")
    for name, value in rows:
        print(f"{name:44} {value:10.2f} {value / base:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--ima-entries", type=int, default=5000)
    parser.add_argument("--baseline-tree", type=Path, help="another checkout whose service to measure too")
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
            spawn = worker_rows(swtpm.tcti, args.rounds)
            rss = rss_rows(swtpm.tcti, Path(tmp), args.baseline_tree)
        finally:
            swtpm.stop()
    print_table("TPM operations in process (tpm2-pytss)", rows, "median ms")
    print_table(f"TPM worker (SubprocessTpm, idle timeout {IDLE_S} s)", spawn, "median ms")
    mb = [(name, float(str(r["rss_kb"])) / 1024) for name, r in rss]
    print_table("agent process RSS after start + enroll + measure + attest", mb, "MB")
    for name, r in rss:
        worker = f"{float(str(r['worker_rss_kb'])) / 1024:.1f} MB" if r.get("worker_rss_kb") else "none"
        print(f"  {name}: loaded {r['loaded'] or 'neither'} of tpm2_pytss/cryptography; worker RSS {worker}")
    print("(swtpm on this machine; a hardware TPM is slower per command, not measured here)")


if __name__ == "__main__":
    main()
