"""The OCI registry client against real registries: TLS with a custom CA, Basic auth (htpasswd),
bearer tokens from a WWW-Authenticate challenge, plain HTTP only when listed, digest checks."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devinfra.fault_proxy import FaultProxy
from devinfra.procs import ManagedProcess, free_port, port_open, require_binary
from devinfra.registry import Registry
from edge_shared.trust import cosign
from edge_shared.trust.registry import RegistryClient, RegistryError, RegistrySettings, parse_reference


def make_ca_and_cert(workdir: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trust-test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """docker-registry with TLS (own CA) and htpasswd Basic auth (user trust / pw s3cret)."""
    ca, cert, key = make_ca_and_cert(tmp_path)
    (tmp_path / "htpasswd").write_bytes(b"trust:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)) + b"\n")
    port = free_port()
    conf = tmp_path / "config.yml"
    conf.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
        f"auth:\n  htpasswd:\n    realm: trust-test\n    path: {tmp_path}/htpasswd\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
    )
    proc = ManagedProcess(
        "registry-tls", [require_binary("docker-registry"), "serve", str(conf)], tmp_path / "registry.log"
    )
    proc.start()
    try:
        proc.wait_ready(lambda: port_open(port))
        yield f"127.0.0.1:{port}", ca
    finally:
        proc.stop()


def push_tiny_image(client: RegistryClient, reference: str) -> str:
    ref = parse_reference(reference)
    layer = b"not really a tarball, the registry does not care"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    client.push_blob(ref, layer)
    client.push_blob(ref, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": cosign.OCI_MANIFEST,
            "config": {"mediaType": cosign.OCI_CONFIG, "digest": cosign.sha256_digest(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": cosign.sha256_digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return client.put_manifest(ref, ref.reference, manifest, cosign.OCI_MANIFEST)


def test_tls_with_custom_ca_and_basic_auth(tls_registry: tuple[str, Path]) -> None:
    host, ca = tls_registry
    reference = f"{host}/trust-test/tls:1"
    good = RegistryClient(RegistrySettings(ca_file=ca, credentials={host: ("trust", "s3cret")}))
    digest = push_tiny_image(good, reference)
    assert good.get_manifest(parse_reference(reference)).digest == digest

    with pytest.raises(RegistryError) as info:  # no CA: the certificate is not trusted
        RegistryClient(RegistrySettings(credentials={host: ("trust", "s3cret")})).get_manifest(
            parse_reference(reference)
        )
    assert info.value.code == "unreachable" and "TLS" in info.value.message
    for creds in ({}, {host: ("trust", "wrong")}):
        with pytest.raises(RegistryError) as info:
            RegistryClient(RegistrySettings(ca_file=ca, credentials=creds)).get_manifest(parse_reference(reference))
        assert info.value.code == "unauthorized"
        assert "s3cret" not in info.value.message and "wrong" not in info.value.message


class BearerGate:
    """A token service and an auth front in front of the real registry, like Docker Hub / Harbor:
    401 + `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; tokens for Basic credentials."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.tokens_issued = 0
        self.scopes: list[str] = []
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                if self.path.startswith("/token"):
                    expected = "Basic " + base64.b64encode(b"robot:tok3n-pw").decode()
                    if self.headers.get("Authorization") != expected:
                        return self._send(401, b"{}", {})
                    gate.tokens_issued += 1
                    gate.scopes.append(self.path)
                    return self._send(200, json.dumps({"token": "good-token"}).encode(), {})
                if self.headers.get("Authorization") != "Bearer good-token":
                    challenge = (
                        f'Bearer realm="http://127.0.0.1:{gate.port}/token",service="trust-test",'
                        f'scope="repository:trust-test/bearer:pull"'
                    )
                    return self._send(401, b'{"errors":[]}', {"WWW-Authenticate": challenge})
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
                resp = requests.request(self.command, f"http://{gate.upstream}{self.path}", data=body,
                                        headers=headers, timeout=10, allow_redirects=False)
                self._send(
                    resp.status_code,
                    resp.content,
                    {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "transfer-encoding")},
                )
                return None

            do_GET = do_HEAD = do_PUT = do_POST = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_bearer_token_challenge(registry: Registry) -> None:
    direct = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host})))
    digest = push_tiny_image(direct, f"{registry.host}/trust-test/bearer:1")
    gate = BearerGate(registry.host)
    try:
        reference = parse_reference(f"{gate.host}/trust-test/bearer:1")
        client = RegistryClient(
            RegistrySettings(insecure_registries=frozenset({gate.host}), credentials={gate.host: ("robot", "tok3n-pw")})
        )
        assert client.get_manifest(reference).digest == digest
        assert client.get_manifest(reference).digest == digest
        assert gate.tokens_issued == 1  # the token is reused
        assert (
            "service=trust-test" in gate.scopes[0] and "scope=repository%3Atrust-test%2Fbearer%3Apull" in gate.scopes[0]
        )
        anonymous = RegistryClient(RegistrySettings(insecure_registries=frozenset({gate.host})))
        with pytest.raises(RegistryError) as info:
            anonymous.get_manifest(reference)
        assert info.value.code == "unauthorized"
    finally:
        gate.close()


def test_anonymous_plain_http_only_when_listed(registry: Registry) -> None:
    ref = parse_reference(f"{registry.host}/trust-test/anon:1")
    digest = push_tiny_image(RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host}))), str(ref))
    assert (
        RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host}))).get_manifest(ref).digest
        == digest
    )
    with pytest.raises(RegistryError) as info:  # not listed: HTTPS is spoken, the plain registry fails it
        RegistryClient().get_manifest(ref)
    assert info.value.code == "unreachable"
    with pytest.raises(ValueError, match="loopback"):
        RegistrySettings(insecure_registries=frozenset({"registry.example.com:5000"}))


def test_blob_with_wrong_bytes_is_refused(registry: Registry) -> None:
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host})))
    ref = parse_reference(f"{registry.host}/trust-test/flip:1")
    push_tiny_image(client, str(ref))
    config, layers, _ = cosign.parse_manifest_layers(client.get_manifest(ref).body, "m")
    assert config is not None

    def flip(path: str, body: bytes) -> bytes:
        return body[:-1] + bytes([body[-1] ^ 1]) if "/blobs/" in path else body

    with FaultProxy(registry.host, mutate=flip) as proxy:
        proxied = RegistryClient(RegistrySettings(insecure_registries=frozenset({proxy.host})))
        with pytest.raises(RegistryError) as info:
            proxied.get_blob(parse_reference(f"{proxy.host}/trust-test/flip:1"), config.digest)
        assert info.value.code == "digest_mismatch"
        with pytest.raises(RegistryError) as info:
            proxied.get_blob(parse_reference(f"{proxy.host}/trust-test/flip:1"), layers[0].digest, max_bytes=8)
        assert info.value.code == "too_large"
