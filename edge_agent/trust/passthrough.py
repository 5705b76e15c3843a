"""ImageVerifier for trust mode "off": resolves a tag to its manifest digest in the registry and
checks nothing else (no signatures). The cosign verifier replaces it when signing is on; both
return repository@digest, and containers are only ever created from that.

Resolution is one HEAD request on the OCI distribution API (`/v2/<name>/manifests/<tag>`, the
digest is the Docker-Content-Digest header), with the anonymous bearer-token dance registries
ask for. Written on urllib because it is two requests; a registry client library would bring
far more than this needs. Plain HTTP is used only for registries that are explicitly listed as
insecure AND are on a loopback address (a test or on-device registry), never otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from edge_agent.deployment.manifest import parse_image_reference
from edge_agent.runtime.threads import run_blocking
from edge_agent.trust.api import ImageRejected, VerifiedImage

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryUnreachable(Exception):
    """The registry could not be asked (network down, timeout, 5xx): retry later, not a rejection."""


def is_loopback_registry(host: str) -> bool:
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0] if ":" in host else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class PassthroughVerifier:
    def __init__(self, insecure_registries: Iterable[str] = (), timeout_s: float = 15.0) -> None:
        self.insecure = {r for r in insecure_registries if is_loopback_registry(r)}
        self.timeout_s = timeout_s

    def is_insecure(self, image: str) -> bool:
        return image.split("/", 1)[0] in self.insecure

    async def verify(self, reference: str) -> VerifiedImage:
        try:
            repository, tag, digest = parse_image_reference(reference)
        except ValueError:
            raise ImageRejected(
                reference, "bad_reference", "not a registry/repository[:tag][@digest] reference"
            ) from None
        if digest is None:
            assert tag is not None
            digest = await run_blocking(lambda: self._resolve(repository, tag), "registry-resolve")
        return VerifiedImage(reference, repository, digest, "off", None)

    def _resolve(self, repository: str, tag: str) -> str:
        host, name = repository.split("/", 1)
        scheme = "http" if host in self.insecure else "https"
        url = f"{scheme}://{host}/v2/{name}/manifests/{urllib.parse.quote(tag)}"
        headers = {"Accept": MANIFEST_TYPES}
        try:
            try:
                return self._head(url, headers, repository, tag)
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "") if exc.code == 401 else ""
                if not challenge.lower().startswith("bearer"):
                    raise
                headers["Authorization"] = f"Bearer {self._anonymous_token(challenge)}"
                return self._head(url, headers, repository, tag)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404):
                raise ImageRejected(
                    f"{repository}:{tag}", "not_found", f"registry answered HTTP {exc.code} for tag {tag}"
                ) from None
            raise RegistryUnreachable(f"{host}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnreachable(f"{host}: {getattr(exc, 'reason', exc)}") from None

    def _head(self, url: str, headers: dict[str, str], repository: str, tag: str) -> str:
        request = urllib.request.Request(url, method="HEAD", headers=headers)  # noqa: S310 - http(s) only
        with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
            digest = resp.headers.get("Docker-Content-Digest", "")
        if not _DIGEST.match(digest):
            raise ImageRejected(f"{repository}:{tag}", "no_digest", "registry did not return a sha256 digest")
        return str(digest)

    def _anonymous_token(self, challenge: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm.startswith("https://"):
            raise RegistryUnreachable(f"refusing token realm {realm!r}: not https")
        url = f"{realm}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 - https only
            doc = json.loads(resp.read())
        return str(doc.get("token") or doc.get("access_token") or "")
