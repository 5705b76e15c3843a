"""The image verifier the deployment executor calls before every create/start.

verify(reference):
  1. find the trust policy for the repository (none -> refused: "off" must be written explicitly);
  2. fetch the manifest (tag or digest); when it is a multi-arch index (OCI image index, Docker
     manifest list), pick the entry for the device's platform ([device] platform, else this
     machine's) and fetch that manifest by digest: its digest is what will run;
  3. enforce/warn: a cached verdict for (repository, digest, policy) is reused; otherwise every
     legacy ``.sig`` layer and every v3 bundle referrer is checked until one passes: first those
     of the platform manifest, then (multi-arch) those of the index it was picked from, whose
     digest binds the platform digest (docs/security.md, "Multi-arch images");
  4. the local image (if already pulled) must be the one the verified manifest names;
  5. return VerifiedImage(digest) or raise ImageRejected(code, description).
Mode "off" with a digest in the reference returns it without asking the registry (this is the
one implementation of trust mode "off"; trust/passthrough.py is it with a single `*` scope).
Offline (registry unreachable) only a cached verdict whose image is present locally, with the
bound image id, is accepted.
"""

from __future__ import annotations

import logging
import platform as py_platform
from collections.abc import Sequence
from typing import Protocol

from edge_shared.threads import run_blocking
from edge_shared.trust.api import ImageRejected, VerifiedImage
from edge_shared.trust.cosign import (
    BUNDLE_MEDIA_TYPE,
    FormatError,
    legacy_signature_tag,
    parse_legacy_signature_manifest,
    parse_manifest_layers,
    parse_referrers_index,
    referrers_fallback_tag,
)
from edge_shared.trust.platforms import Platform, describe, host_platform, is_index, parse_index, pick
from edge_shared.trust.policy import (
    Accepted,
    Refused,
    ScopePolicy,
    best_refusal,
    check_bundle,
    check_simplesigning,
    select_policy,
)
from edge_shared.trust.registry import ImageRef, Manifest, RegistryClient, RegistryError, parse_reference

log = logging.getLogger(__name__)

MAX_SIGNATURES = 16  # per format per image; more is an attack on the device's CPU
MAX_INDEX_CHILDREN = 32

_REGISTRY_CODES = {
    "not_found": "image_not_found",
    "too_large": "manifest_too_large",
    "truncated": "manifest_truncated",
    "digest_mismatch": "digest_mismatch",
    "unauthorized": "registry_unauthorized",
    "insecure": "registry_insecure",
    "protocol": "registry_error",
    "unreachable": "registry_unreachable",
}


def via_index(fingerprint: str, index_digest: str) -> str:
    """The cache's policy key of a verdict reached through a signature on `index_digest`."""
    return f"{fingerprint} via {index_digest}"


class CachedVerdict(Protocol):
    """A verdict remembered for (repository, digest, policy)."""

    @property
    def signer(self) -> str | None: ...
    @property
    def image_ids(self) -> frozenset[str]: ...


class VerifyCache(Protocol):
    """Verdicts and tag resolutions the verifier remembers (the device's is in its state database,
    edge_agent/trust/cache.py); the fleet's verify-image keeps none."""

    def lookup(self, repository: str, digest: str, policy: str) -> CachedVerdict | None: ...
    def store(self, repository: str, digest: str, policy: str, signer: str | None, image_ids: frozenset[str]) -> None:
        ...
    def forget(self, repository: str, digest: str) -> None: ...
    def remember_resolution(self, reference: str, digest: str) -> None: ...
    def resolution(self, reference: str) -> str | None: ...


class ImageOrigin(Protocol):
    @property
    def index_digest(self) -> str: ...
    @property
    def platform(self) -> str: ...


class ImageOrigins(Protocol):
    """Which multi-arch index each platform image was picked from (edge_agent/trust/origins.py)."""

    def record(self, image: str, index_digest: str, platform: str) -> None: ...
    def lookup(self, image: str) -> ImageOrigin | None: ...


class LocalImages(Protocol):
    async def image_id(self, repository: str, digest: str) -> str | None:
        """The local image id (64 hex) stored for repository@digest, or None if not pulled."""
        ...


class CosignVerifier:
    """ImageVerifier (edge_shared.trust.api) backed by cosign signatures in the registry."""

    def __init__(
        self,
        policies: Sequence[ScopePolicy],
        registry: RegistryClient,
        cache: VerifyCache | None = None,
        local_images: LocalImages | None = None,
        platform: Platform | None = None,
        origins: ImageOrigins | None = None,
    ) -> None:
        self.policies = tuple(policies)
        self.registry = registry
        self.cache = cache
        self.local_images = local_images
        # The platform picked from a multi-arch index: the device's own unless configured.
        self.platform = platform or host_platform(py_platform.machine(), py_platform.system())
        self.origins = origins

    async def verify(self, reference: str) -> VerifiedImage:
        try:
            ref = parse_reference(reference)
        except ValueError as exc:
            raise ImageRejected(reference, "invalid_reference", str(exc)) from None
        policy = select_policy(self.policies, ref.repository)
        if policy is None:
            raise ImageRejected(
                reference,
                "no_trust_policy",
                f'no [[trust.policy]] scope covers {ref.repository}; add one (mode = "off" must be written out)',
            )
        if policy.mode == "off" and ref.digest is not None:
            # Trust mode "off" checks nothing: a digest written in the reference is what will run.
            return VerifiedImage(reference, ref.repository, ref.digest, "off", None)
        try:
            top = await run_blocking(self.registry.get_manifest, ref)
            manifest, index = await run_blocking(self._platform_manifest, reference, ref, top)
        except RegistryError as exc:
            if exc.code == "unreachable":
                return await self._offline(reference, ref, policy, exc)
            raise ImageRejected(reference, _REGISTRY_CODES.get(exc.code, "registry_error"), exc.message) from None
        digest = manifest.digest
        index_digest = index.digest if index is not None else None
        platform = str(self.platform) if index is not None else None
        if self.cache is not None:
            self.cache.remember_resolution(str(ref), digest)
        if index_digest is not None and self.origins is not None:
            self.origins.record(f"{ref.repository}@{digest}", index_digest, str(self.platform))
        if policy.mode == "off":
            return VerifiedImage(reference, ref.repository, digest, "off", None, index_digest, platform)

        fingerprint = policy.fingerprint()
        cached = self._cached(ref.repository, digest, fingerprint, index_digest)
        if cached is not None:
            await self._check_local(reference, ref, cached.image_ids, digest)
            return VerifiedImage(reference, ref.repository, digest, policy.mode, cached.signer, index_digest, platform)

        outcome = await run_blocking(self._verify_signatures, ref.with_digest(digest), policy)
        signed = digest
        if isinstance(outcome, Refused) and index_digest is not None:
            # The platform manifest is not signed itself: a signature on the index that lists
            # it covers it (the index digest binds the bytes of the index, which name this
            # manifest's digest, whose bytes were checked when they were fetched).
            by_index = await run_blocking(self._verify_signatures, ref.with_digest(index_digest), policy)
            if isinstance(by_index, Accepted):
                outcome, signed = by_index, index_digest
            else:
                outcome = best_refusal([outcome, by_index])
        if isinstance(outcome, Refused):
            if policy.mode == "warn":
                log.warning(
                    "image signature not valid, running anyway (trust mode warn): %s: %s",
                    outcome.code,
                    outcome.description,
                    extra={"EVENT": "trust.warn", "IMAGE": reference, "DIGEST": digest},
                )
                return VerifiedImage(reference, ref.repository, digest, "warn", None, index_digest, platform)
            log.warning(
                "image refused: %s: %s",
                outcome.code,
                outcome.description,
                extra={"EVENT": "trust.rejected", "IMAGE": reference, "DIGEST": digest},
            )
            raise ImageRejected(reference, outcome.code, outcome.description)
        image_ids = await run_blocking(self._image_ids, ref, manifest)
        await self._check_local(reference, ref, image_ids, digest)
        if self.cache is not None:
            # A verdict reached through the index is kept for that index only: the platform
            # digest pinned alone needs its own signature, also after it ran through an index.
            key = fingerprint if signed == digest else via_index(fingerprint, signed)
            self.cache.store(ref.repository, digest, key, outcome.key.key_id, image_ids)
        log.info(
            "image verified (%s signature on %s, key %s)",
            outcome.format,
            "its index" if signed != digest else "the manifest",
            outcome.key.short_id,
            extra={"EVENT": "trust.verified", "IMAGE": reference, "DIGEST": digest, "SIGNED_DIGEST": signed},
        )
        return VerifiedImage(
            reference, ref.repository, digest, policy.mode, outcome.key.key_id, index_digest, platform
        )

    def _platform_manifest(self, reference: str, ref: ImageRef, top: Manifest) -> tuple[Manifest, Manifest | None]:
        """(the manifest that runs, the index it was picked from or None). An index is resolved to
        the entry for this device's platform, fetched by digest (its bytes checked against it)."""
        if not is_index(top.media_type, top.body):
            return top, None
        try:
            entries = parse_index(top.body)
        except FormatError as exc:
            raise ImageRejected(reference, "malformed_index", f"{ref.repository}@{top.digest}: {exc}") from None
        entry = pick(entries, self.platform)
        if entry is None:
            raise ImageRejected(
                reference,
                "platform_not_found",
                f"{ref.repository}@{top.digest} has no image for this device's platform {self.platform} "
                f"(it has {describe(entries)})",
            )
        child = self.registry.get_manifest(ref, entry.digest)
        if is_index(child.media_type, child.body):
            raise ImageRejected(
                reference, "malformed_index", f"{ref.repository}@{top.digest}: the {self.platform} entry "
                f"{entry.digest} is itself an index; nested indexes are not run"
            )
        log.debug(
            "picked %s from index %s", entry.platform, top.digest,
            extra={"EVENT": "trust.platform_picked", "IMAGE": reference, "DIGEST": child.digest},
        )
        return child, top

    # ---- offline

    async def _offline(self, reference: str, ref: ImageRef, policy: ScopePolicy, exc: RegistryError) -> VerifiedImage:
        # The remembered resolution first: a pinned index digest resolved to a platform digest.
        digest = (self.cache.resolution(str(ref)) if self.cache else None) or ref.digest
        reason = f"{exc.message}; no verified local copy to fall back on"
        if digest is None or self.cache is None or self.local_images is None:
            raise ImageRejected(reference, "registry_unreachable", reason)
        local = await self._local_id(ref, digest)
        if local is None:
            raise ImageRejected(reference, "registry_unreachable", reason)
        # A reference that named the platform digest itself had no index; a tag or a pinned index
        # digest resolved through one (the one recorded when it was last resolved).
        origin = self.origins.lookup(f"{ref.repository}@{digest}") if self.origins and ref.digest != digest else None
        index_digest, platform = (origin.index_digest, origin.platform) if origin else (None, None)
        if policy.mode == "off":
            return VerifiedImage(reference, ref.repository, digest, "off", None, index_digest, platform)
        cached = self._cached(ref.repository, digest, policy.fingerprint(), index_digest)
        if cached is None:
            if policy.mode == "warn":
                return VerifiedImage(reference, ref.repository, digest, "warn", None, index_digest, platform)
            raise ImageRejected(reference, "registry_unreachable", f"{exc.message}; {digest} was never verified here")
        await self._check_local(reference, ref, cached.image_ids, digest)
        log.info(
            "image verified from cache while the registry is unreachable",
            extra={"EVENT": "trust.verified_offline", "IMAGE": reference, "DIGEST": digest},
        )
        return VerifiedImage(reference, ref.repository, digest, policy.mode, cached.signer, index_digest, platform)

    def _cached(self, repository: str, digest: str, fingerprint: str, index_digest: str | None) -> CachedVerdict | None:
        """The verdict for the digest's own signature, else (picked from an index) the index's."""
        if self.cache is None:
            return None
        own = self.cache.lookup(repository, digest, fingerprint)
        if own is not None or index_digest is None:
            return own
        return self.cache.lookup(repository, digest, via_index(fingerprint, index_digest))

    async def _check_local(self, reference: str, ref: ImageRef, image_ids: frozenset[str], digest: str) -> None:
        if self.local_images is None or not image_ids:
            return
        local = await self._local_id(ref, digest)
        if local is not None and local not in image_ids:
            if self.cache is not None:
                self.cache.forget(ref.repository, digest)
            raise ImageRejected(
                reference,
                "local_image_mismatch",
                f"local image for {ref.repository}@{digest} has id {local[:12]}, the verified manifest names "
                + ", ".join(sorted(i[:12] for i in image_ids))
                + "; remove it and pull again",
            )

    async def _local_id(self, ref: ImageRef, digest: str) -> str | None:
        """None when not present locally, or when podman cannot be asked (logged): an image that
        cannot be looked up cannot be started either, so this never loosens a check."""
        assert self.local_images is not None
        try:
            return await self.local_images.image_id(ref.repository, digest)
        except (OSError, ValueError) as exc:
            log.warning(
                "cannot look up local image %s@%s: %s",
                ref.repository,
                digest,
                exc,
                extra={"EVENT": "trust.local_lookup_failed"},
            )
            return None

    # ---- blocking parts (run in a thread)

    def _image_ids(self, ref: ImageRef, manifest: Manifest) -> frozenset[str]:
        """Config digests named by the manifest (each child's for an index): podman's image ids."""
        try:
            config, _, _ = parse_manifest_layers(manifest.body, "image manifest")
            if config is not None:
                return frozenset({config.digest.removeprefix("sha256:")})
            children = parse_referrers_index(manifest.body)[:MAX_INDEX_CHILDREN]
            ids = set()
            for child in children:
                body = self.registry.get_manifest(ref, child.digest).body
                child_config, _, _ = parse_manifest_layers(body, "platform manifest")
                if child_config is not None:
                    ids.add(child_config.digest.removeprefix("sha256:"))
            return frozenset(ids)
        except (FormatError, RegistryError) as exc:
            log.warning("cannot read image ids from manifest: %s", exc, extra={"EVENT": "trust.image_ids"})
            return frozenset()

    def _verify_signatures(self, ref: ImageRef, policy: ScopePolicy) -> Accepted | Refused:
        digest = ref.digest
        assert digest is not None
        refusals: list[Refused] = []
        for check in (self._legacy, self._bundles):
            try:
                for outcome in check(ref, digest, policy):
                    if isinstance(outcome, Accepted):
                        return outcome
                    refusals.append(outcome)
            except RegistryError as exc:
                refusals.append(Refused(_REGISTRY_CODES.get(exc.code, "registry_error"), exc.message))
        return best_refusal(refusals)

    def _legacy(self, ref: ImageRef, digest: str, policy: ScopePolicy) -> list[Accepted | Refused]:
        try:
            sig_manifest = self.registry.get_manifest(ref, legacy_signature_tag(digest))
        except RegistryError as exc:
            if exc.code == "not_found":
                return []
            raise
        try:
            entries = parse_legacy_signature_manifest(sig_manifest.body)
        except FormatError as exc:
            return [Refused("malformed_signature", f"{legacy_signature_tag(digest)}: {exc}")]
        out: list[Accepted | Refused] = []
        for entry in entries[:MAX_SIGNATURES]:
            if isinstance(entry, FormatError):
                out.append(Refused("malformed_signature", str(entry)))
                continue
            payload = self.registry.get_blob(ref, entry.payload_descriptor.digest)
            result = check_simplesigning(payload, entry.signature, policy, ref.repository, digest)
            out.append(result)
            if isinstance(result, Accepted):
                break
        return out

    def _bundles(self, ref: ImageRef, digest: str, policy: ScopePolicy) -> list[Accepted | Refused]:
        descriptors = self.registry.referrers(ref, digest, BUNDLE_MEDIA_TYPE)
        if descriptors is None:  # no referrers API: the fallback tag
            try:
                index = self.registry.get_manifest(ref, referrers_fallback_tag(digest))
            except RegistryError as exc:
                if exc.code == "not_found":
                    return []
                raise
            try:
                descriptors = [d for d in parse_referrers_index(index.body) if d.artifact_type == BUNDLE_MEDIA_TYPE]
            except FormatError as exc:
                return [Refused("malformed_signature", f"{referrers_fallback_tag(digest)}: {exc}")]
        out: list[Accepted | Refused] = []
        for desc in descriptors[:MAX_SIGNATURES]:
            artifact = self.registry.get_manifest(ref, desc.digest)
            try:
                _, layers, artifact_type = parse_manifest_layers(artifact.body, f"referrer {desc.digest}")
            except FormatError as exc:
                out.append(Refused("malformed_signature", str(exc)))
                continue
            if artifact_type != BUNDLE_MEDIA_TYPE:
                continue
            for layer in layers:
                if layer.media_type != BUNDLE_MEDIA_TYPE:
                    continue
                result = check_bundle(self.registry.get_blob(ref, layer.digest), policy, ref.repository, digest)
                out.append(result)
                if isinstance(result, Accepted):
                    return out
        return out
