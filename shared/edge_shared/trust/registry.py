"""A small client for the OCI distribution API: read manifests, blobs and referrers; push blobs
and manifests (edgectl sign-image).

On requests, the agent's one HTTP library for everything that is not Podman: podman-py brings
it anyway (it is podman-py's transport), so it costs no memory of its own, and it does TLS with
a custom CA (`verify=`), pooled keep-alive connections and streamed bodies. What the libraries do
not do by default is done here: the digest of every byte read is checked, sizes are limited
before a body is read (Content-Length) and while it is read, plain HTTP is spoken only to
loopback registries the operator listed, redirects are followed by hand (never from HTTPS down
to HTTP; credentials are not carried to another host), the environment is ignored (no proxy
variables, no ~/.netrc credentials) and bodies are asked for uncompressed, so a limit is a limit
on the bytes the registry sends. Blocking; the verifier runs it with edge_shared.threads.

Auth: anonymous; HTTP Basic; bearer tokens from the ``WWW-Authenticate: Bearer realm=...,
service=..., scope=...`` challenge (with Basic credentials towards the token realm when given).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import requests

from edge_shared.image_ref import ImageRef, is_loopback_host, parse_reference
from edge_shared.trust.cosign import OCI_INDEX, OCI_MANIFEST, Descriptor, FormatError, parse_referrers_index

__all__ = ["ImageRef", "Manifest", "RegistryClient", "RegistryError", "RegistrySettings", "is_loopback_host",
           "parse_reference"]

MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
DEFAULT_MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the limit newer distribution releases enforce too
DEFAULT_MAX_BLOB_BYTES = 1024 * 1024  # signature payloads and bundles are a few KB
MAX_REDIRECTS = 3
ERROR_BODY_BYTES = 64 * 1024  # what a registry's error answer to a streamed download may be
READ_CHUNK = 64 * 1024


class RegistryError(Exception):
    """`code`: unreachable, not_found, unauthorized, too_large, truncated, digest_mismatch, protocol, insecure."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- client


class _HashingSink:
    """Where a streamed blob goes: a file, hashed on the way."""

    def __init__(self, dest: BinaryIO) -> None:
        self.dest = dest
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.dest.write(chunk)
        self.size += len(chunk)


@dataclass(frozen=True)
class RegistrySettings:
    insecure_registries: frozenset[str] = frozenset()  # host:port, loopback only, plain HTTP
    ca_file: Path | None = None
    credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # registry -> (user, password)
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for reg in self.insecure_registries:
            if not is_loopback_host(reg):
                raise ValueError(f"insecure registry {reg}: plain HTTP is only allowed for loopback registries")

    def __repr__(self) -> str:  # never show passwords
        return f"RegistrySettings(insecure={sorted(self.insecure_registries)}, ca_file={self.ca_file})"


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.body))


@dataclass
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class RegistryClient:
    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy variables, no ~/.netrc credentials
        self._session.verify = str(self.settings.ca_file) if self.settings.ca_file else True
        self._session.headers.update({"User-Agent": "edge-agent", "Accept-Encoding": "identity"})
        self._auth: dict[tuple[str, str], str] = {}  # (registry, scope) -> Authorization header

    # ---- public API

    def get_manifest(self, ref: ImageRef, reference: str | None = None) -> Manifest:
        """The manifest at a tag or digest, its digest checked. Raises RegistryError(not_found, ...)."""
        reference = reference or ref.reference
        resp = self._request(
            ref,
            "GET",
            f"/v2/{ref.path}/manifests/{reference}",
            scope="pull",
            headers={"Accept": MANIFEST_ACCEPT},
            max_bytes=self.settings.max_manifest_bytes,
            what="manifest",
        )
        self._expect(resp, 200, ref, f"manifest {reference}")
        digest = "sha256:" + hashlib.sha256(resp.body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                "digest_mismatch", f"{ref.repository}: manifest {reference} has content digest {digest}"
            )
        header = resp.headers.get("docker-content-digest")
        if header and header != digest:
            raise RegistryError(
                "digest_mismatch", f"{ref.repository}:{reference}: registry says {header}, content is {digest}"
            )
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        try:
            declared = json.loads(resp.body).get("mediaType")
        except (ValueError, AttributeError):
            raise RegistryError("protocol", f"{ref.repository}:{reference}: manifest is not a JSON object") from None
        return Manifest(digest, declared if isinstance(declared, str) else media_type, resp.body)

    def get_blob(self, ref: ImageRef, digest: str, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or self.settings.max_blob_bytes
        resp = self._request(
            ref, "GET", f"/v2/{ref.path}/blobs/{digest}", scope="pull", max_bytes=limit, what=f"blob {digest}"
        )
        self._expect(resp, 200, ref, f"blob {digest}")
        actual = "sha256:" + hashlib.sha256(resp.body).hexdigest()
        if actual != digest:
            raise RegistryError("digest_mismatch", f"{ref.repository}: blob {digest} has content digest {actual}")
        return resp.body

    def download_blob(self, ref: ImageRef, digest: str, dest: BinaryIO, max_bytes: int) -> int:
        """Stream a blob into `dest` (never held in memory: artifacts can be large), its digest
        checked as it arrives. Returns the bytes written; raises RegistryError (digest_mismatch,
        too_large, truncated, ...) after which `dest` holds garbage and must be discarded."""
        sink = _HashingSink(dest)
        resp = self._request(
            ref, "GET", f"/v2/{ref.path}/blobs/{digest}", scope="pull", max_bytes=max_bytes, what=f"blob {digest}",
            sink=sink,
        )
        self._expect(resp, 200, ref, f"blob {digest}")
        actual = "sha256:" + sink.hash.hexdigest()
        if actual != digest:
            raise RegistryError("digest_mismatch", f"{ref.repository}: blob {digest} has content digest {actual}")
        return sink.size

    def referrers(self, ref: ImageRef, digest: str, artifact_type: str | None = None) -> list[Descriptor] | None:
        """OCI 1.1 referrers of a digest, or None when the registry has no referrers API (404)."""
        query = f"?artifactType={urllib.parse.quote(artifact_type, safe='')}" if artifact_type else ""
        resp = self._request(
            ref,
            "GET",
            f"/v2/{ref.path}/referrers/{digest}{query}",
            scope="pull",
            headers={"Accept": OCI_INDEX},
            max_bytes=self.settings.max_manifest_bytes,
            what="referrers",
        )
        if resp.status == 404:
            return None
        self._expect(resp, 200, ref, f"referrers of {digest}")
        try:
            found = parse_referrers_index(resp.body)
        except FormatError as exc:
            raise RegistryError("protocol", f"{ref.repository}: {exc}") from None
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def has_blob(self, ref: ImageRef, digest: str) -> bool:
        head = self._request(ref, "HEAD", f"/v2/{ref.path}/blobs/{digest}", scope="pull,push", what="blob")
        return head.status == 200

    def push_blob(self, ref: ImageRef, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(ref, digest):
            return digest
        start = self._request(ref, "POST", f"/v2/{ref.path}/blobs/uploads/", scope="pull,push", what="upload")
        self._expect(start, 202, ref, "blob upload")
        location = start.headers.get("location")
        if not location:
            raise RegistryError("protocol", f"{ref.repository}: blob upload without Location")
        parsed = urllib.parse.urlsplit(location)
        sep = "&" if parsed.query else "?"
        target = (parsed.path + ("?" + parsed.query if parsed.query else "")) + f"{sep}digest={digest}"
        put = self._request(
            ref,
            "PUT",
            target,
            scope="pull,push",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            what="blob",
        )
        self._expect(put, 201, ref, f"blob {digest}")
        return digest

    def put_manifest(self, ref: ImageRef, reference: str, body: bytes, media_type: str) -> str:
        resp = self._request(
            ref,
            "PUT",
            f"/v2/{ref.path}/manifests/{reference}",
            scope="pull,push",
            body=body,
            headers={"Content-Type": media_type},
            what="manifest",
        )
        self._expect(resp, 201, ref, f"manifest {reference}")
        return "sha256:" + hashlib.sha256(body).hexdigest()

    # ---- transport

    def _expect(self, resp: _Response, status: int, ref: ImageRef, what: str) -> None:
        if resp.status == status:
            return
        if resp.status == 404:
            raise RegistryError("not_found", f"{ref.repository}: {what} not found")
        if resp.status in (401, 403):
            raise RegistryError("unauthorized", f"{ref.repository}: {what}: access denied (HTTP {resp.status})")
        if resp.status >= 500 or resp.status == 429:  # overloaded or throttled: try again later
            raise RegistryError("unreachable", f"{ref.repository}: {what}: registry error HTTP {resp.status}")
        detail = resp.body[:200].decode("utf-8", "replace")
        raise RegistryError("protocol", f"{ref.repository}: {what}: unexpected HTTP {resp.status}: {detail}")

    def _base(self, registry: str) -> tuple[str, str]:
        if registry in self.settings.insecure_registries:
            if not is_loopback_host(registry):  # also enforced in settings; belt and braces
                raise RegistryError("insecure", f"{registry}: plain HTTP refused for a non-loopback registry")
            return "http", registry
        return "https", registry

    def _request(
        self,
        ref: ImageRef,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        max_bytes: int | None = None,
        what: str,
        sink: _HashingSink | None = None,
    ) -> _Response:
        scheme, host = self._base(ref.registry)
        scope_key = f"repository:{ref.path}:{scope}"
        hdrs = dict(headers or {})
        auth = self._auth.get((ref.registry, scope_key))
        if auth:
            hdrs["Authorization"] = auth
        resp = self._send(scheme, host, method, path, hdrs, body, max_bytes, what, ref, sink)
        if resp.status == 401:
            challenge = resp.headers.get("www-authenticate", "")
            auth = self._authorize(ref, scheme, challenge, scope_key)
            hdrs["Authorization"] = auth
            resp = self._send(scheme, host, method, path, hdrs, body, max_bytes, what, ref, sink)
            if resp.status != 401:
                self._auth[(ref.registry, scope_key)] = auth
        return resp

    def _send(
        self,
        scheme: str,
        host: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        max_bytes: int | None,
        what: str,
        ref: ImageRef,
        sink: _HashingSink | None = None,
    ) -> _Response:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with self._session.request(method, f"{scheme}://{host}{path}", data=body, headers=headers,
                                           timeout=self.settings.timeout_s, allow_redirects=False,
                                           stream=True) as resp:
                    resp_headers = {k.lower(): v for k, v in resp.headers.items()}
                    if resp.is_redirect and method in ("GET", "HEAD"):
                        location = resp_headers.get("location", "")
                        target = urllib.parse.urlsplit(urllib.parse.urljoin(f"{scheme}://{host}{path}", location))
                        if target.scheme != "https" and not (target.scheme == scheme and target.netloc == host):
                            raise RegistryError("insecure", f"{ref.repository}: {what}: redirect to plain HTTP refused")
                        if target.netloc != host:
                            headers = {k: v for k, v in headers.items() if k != "Authorization"}
                        scheme, host = target.scheme, target.netloc
                        path = target.path + ("?" + target.query if target.query else "")
                        continue
                    # Only a successful body goes to the sink; an error page is read into memory.
                    to = sink if sink is not None and resp.status_code == 200 else None
                    limit = max_bytes if to is not None or sink is None else ERROR_BODY_BYTES
                    data = b"" if method == "HEAD" else self._read_limited(resp, resp_headers, limit, what, ref, to)
                    return _Response(resp.status_code, resp_headers, data)
            except requests.exceptions.SSLError as exc:
                raise RegistryError("unreachable", f"{ref.registry}: TLS error: {_innermost(exc)}") from None
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
                raise RegistryError("truncated", f"{ref.repository}: {what}: connection broke mid-body: "
                                    f"{_innermost(exc)}") from None
            except requests.RequestException as exc:
                raise RegistryError("unreachable", f"{ref.registry}: {type(exc).__name__}: {_innermost(exc)}") from None
        raise RegistryError("protocol", f"{ref.repository}: {what}: too many redirects")

    @staticmethod
    def _read_limited(
        resp: requests.Response, headers: Mapping[str, str], max_bytes: int | None, what: str, ref: ImageRef,
        sink: _HashingSink | None = None,
    ) -> bytes:
        """The body (limited), or with a sink: the body written there and b"" returned."""
        limit = max_bytes or DEFAULT_MAX_MANIFEST_BYTES
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit and resp.status_code == 200:
            raise RegistryError("too_large", f"{ref.repository}: {what} is {int(length)} bytes; limit is {limit}")
        data = bytearray()
        received = 0
        for chunk in resp.iter_content(READ_CHUNK):
            received += len(chunk)
            if received > limit:
                raise RegistryError("too_large", f"{ref.repository}: {what} is larger than the limit of {limit} bytes")
            if sink is not None:
                sink.write(chunk)
            else:
                data += chunk
        if length is not None and length.isdigit() and received < int(length):
            raise RegistryError("truncated", f"{ref.repository}: {what}: got {received} of {length} bytes")
        return bytes(data)

    def _authorize(self, ref: ImageRef, scheme: str, challenge: str, scope_key: str) -> str:
        kind, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        creds = self.settings.credentials.get(ref.registry)
        basic = None
        if creds:
            basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        if kind.lower() == "basic":
            if basic is None:
                raise RegistryError("unauthorized", f"{ref.registry}: registry wants a user name and password")
            return basic
        if kind.lower() != "bearer" or "realm" not in params:
            raise RegistryError("unauthorized", f"{ref.registry}: unsupported auth challenge {kind or '(none)'}")
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme != "https" and not (
            realm.scheme == "http" and realm.netloc in self.settings.insecure_registries
        ):
            raise RegistryError("insecure", f"{ref.registry}: token realm {params['realm']} is not HTTPS")
        query = {"scope": params.get("scope", scope_key)}
        if "service" in params:
            query["service"] = params["service"]
        path = realm.path + ("?" + realm.query + "&" if realm.query else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": basic} if basic else {}
        token_ref = ImageRef(realm.netloc, ref.path)
        resp = self._send(realm.scheme, realm.netloc, "GET", path, headers, None, 64 * 1024, "token", token_ref)
        if resp.status != 200:
            raise RegistryError("unauthorized", f"{ref.registry}: token service answered HTTP {resp.status}")
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError("unauthorized", f"{ref.registry}: token service returned no token")
        return f"Bearer {token}"


def _innermost(exc: BaseException) -> str:
    """The most specific message in requests' wrapping (MaxRetryError(reason=SSLError(...)) ...)."""
    seen: BaseException = exc
    while True:
        nested = seen.__cause__ or seen.__context__
        args = [a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(seen, "reason", None)
        nxt = nested or (args[-1] if args else None) or (reason if isinstance(reason, BaseException) else None)
        if nxt is None or nxt is seen:
            return str(seen)
        seen = nxt
