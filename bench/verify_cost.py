"""Verification cost per image beside the pull time, against a real local registry and podman.

    python bench/verify_cost.py [--reps 5]

For a small (~1 MB) and a larger (~16 MB) image, each signed in the legacy format and as a v3
bundle, prints the median of:
  pull        `podman pull repo@digest` after removing the local copy (the baseline)
  verify cold CosignVerifier.verify with an empty cache (manifest + signature from the registry)
  verify warm the same with the verdict cached in state.db (only the manifest is fetched)
and the ratio of each verification to the pull measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devinfra.podman import ensure_busybox_image, podman, use_dev_containers_conf
from devinfra.registry import Registry
from edge_agent.store import open_state_db
from edge_agent.trust.cache import VerifyCache
from edge_shared.trust import keys
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edge_shared.trust.verify import CosignVerifier
from edgectl.signing import sign_image_bundle, sign_image_legacy


def timed(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trust-bench-"))
    if "CONTAINERS_CONF" not in os.environ:
        use_dev_containers_conf(work)
    base = ensure_busybox_image()
    registry = Registry(work / "registry").start()
    try:
        sources = {}
        for size_mb in (1, 16):
            # a layer of random bytes of its own, so every pull really downloads it
            ctx = work / f"img{size_mb}"
            ctx.mkdir()
            (ctx / "blob").write_bytes(os.urandom(size_mb * 1024 * 1024))
            (ctx / "Containerfile").write_text(f"FROM {base}\nCOPY blob /blob\n")
            tag = f"localhost/trust-test-bench-{size_mb}mb:1"
            podman("build", "--pull=never", "-q", "-t", tag, str(ctx))
            sources[f"busybox+{size_mb} MB"] = tag
        priv = keys.generate_private_key()
        trusted = keys.parse_public_key(keys.public_key_pem(priv.public_key()), "bench")
        settings = RegistrySettings(insecure_registries=frozenset({registry.host}))
        client = RegistryClient(settings)
        rows = []
        pushed = []
        for label, source in sources.items():
            for fmt in ("legacy", "bundle"):
                name = f"{registry.host}/trust-test/bench-{fmt}-{label.split('+')[1].replace(' ', '').lower()}:1"
                podman("tag", source, name)
                podman("push", "--tls-verify=false", "-q", name)
                podman("rmi", name)
                pushed.append((label, fmt, name))
            podman("rmi", "-f", source)  # only the registry has the random layer now
        for label, fmt, name in pushed:
            ref = parse_reference(name)
            (sign_image_legacy if fmt == "legacy" else sign_image_bundle)(client, ref, priv)
            digest = client.get_manifest(ref).digest
            pinned = f"{ref.repository}@{digest}"

            def pull(pinned: str = pinned) -> None:
                podman("rmi", "-f", pinned, check=False)
                podman("pull", "--tls-verify=false", "-q", pinned)

            policy = [ScopePolicy(registry.host, "enforce", (trusted,))]

            fresh = [VerifyCache(open_state_db(Path(tempfile.mkdtemp(dir=work)))) for _ in range(args.reps)]

            def cold(name: str = name, policy: list[ScopePolicy] = policy, fresh: list[VerifyCache] = fresh) -> None:
                asyncio.run(CosignVerifier(policy, RegistryClient(settings), fresh.pop()).verify(name))

            warm_verifier = CosignVerifier(policy, RegistryClient(settings), VerifyCache(open_state_db(work / "warm")))
            asyncio.run(warm_verifier.verify(name))

            def warm(name: str = name, verifier: CosignVerifier = warm_verifier) -> None:
                asyncio.run(verifier.verify(name))

            t_pull, t_cold, t_warm = timed(pull, args.reps), timed(cold, args.reps), timed(warm, args.reps)
            rows.append((label, fmt, t_pull, t_cold, t_warm))
            podman("rmi", "-f", pinned, check=False)
        print(f"median of {args.reps} runs; ratios relative to the pull of the same image in this run")
        print(
            f"{'image':<15} {'format':<7} {'pull ms':>9} {'cold ms':>9} {'warm ms':>9} "
            f"{'cold/pull':>10} {'warm/pull':>10}"
        )
        for label, fmt, t_pull, t_cold, t_warm in rows:
            print(
                f"{label:<15} {fmt:<7} {t_pull * 1000:9.1f} {t_cold * 1000:9.1f} {t_warm * 1000:9.1f} "
                f"{t_cold / t_pull:10.3f} {t_warm / t_pull:10.3f}"
            )
    finally:
        registry.stop()
        for size_mb in (1, 16):
            podman("rmi", "-f", f"localhost/trust-test-bench-{size_mb}mb:1", check=False)


if __name__ == "__main__":
    main()
