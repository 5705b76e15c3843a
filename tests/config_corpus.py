"""Generated agent config files for the config fuzzer (tests/unit/foundation/test_config_fuzz.py and
tests/integration/foundation/test_config_fuzz_run.py): deterministic by seed.

Families: the cases found against main by name (issue 29), wrong TOML types and out-of-range
numbers for every scalar key of the schema, unicode in every name-like string, nesting from 1 to
1000 levels, paths (/proc, /sys/kernel, symlinks, files, long, relative), secrets (file:,
credential:, env: present, missing, empty, a plain password), TLS files (real, garbage, missing
key, mismatched, encrypted), and random mutations of plausible files.

Every file keeps what it touches inside `base`: state.dir, telemetry.runtime_dir and the podman
socket are written first and never mutated, every accepted broker is on loopback, and
attestation stays off (its TPM connection is not what is tested). `touches_only(config, base)`
states that invariant for the tests to assert.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent import cli
from edge_agent.config import AgentConfig

Expect = Literal["refused", "passes", "warns", "any"]
SEED = 29
MUTATIONS = 400  # random mutations of plausible files, after the systematic families


@dataclass(frozen=True)
class Case:
    name: str
    text: str | bytes
    expect: Expect = "any"
    key: str | None = None  # the key a refusal or warning must name
    env: dict[str, str | None] = field(default_factory=dict)  # environment for this file (None: unset)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    bundle: Path  # cert and key in one PEM
    other_key: Path  # a key that does not match cert
    enc_key: Path  # key encrypted with ENC_KEY_PASSWORD (file below)
    enc_key_password: Path
    garbage: Path
    empty: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a client certificate it signed and its keys, written as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("fuzz-ca")).issuer_name(name("fuzz-ca"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("fuzz-device")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(k: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    files = TlsFiles(*(directory / n for n in (
        "ca.pem", "device.pem", "device.key", "bundle.pem", "other.key", "enc.key", "enc.pass", "garbage.pem",
        "empty.pem")))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem(key))
    files.bundle.write_bytes(cert_pem + key_pem(key))
    files.other_key.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    files.enc_key.write_bytes(key_pem(key, b"fuzz-key-pass"))
    files.enc_key_password.write_text("fuzz-key-pass\n")
    files.garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    files.empty.write_text("")
    for path in (files.key, files.other_key, files.enc_key, files.enc_key_password):
        path.chmod(0o600)
    return files


# --------------------------------------------------------------------------- rendering

Doc = dict[str, dict[str, str]]  # section -> key -> TOML value text (dotted keys allowed)
ANCHORS = (("state", "dir"), ("telemetry", "runtime_dir"), ("podman", "socket"), ("attestation", "enabled"))
ORDER = ("state", "telemetry", "podman", "attestation", "device", "mqtt", "logging", "twin", "deployment", "trust")


def q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def base_doc(base: Path, number: int, broker_port: int) -> Doc:
    own = base / f"c{number}"
    return {
        "state": {"dir": q(str(own / "state"))},
        "telemetry": {"runtime_dir": q(str(own / "run"))},
        "podman": {"socket": q(f"unix://{base}/podman.sock")},
        "attestation": {"enabled": "false"},
        "device": {"id": q(f"fuzz-{number}")},
        "mqtt": {"host": q("127.0.0.1"), "port": str(broker_port)},
        "logging": {"format": q("text")},
    }


def render(doc: Doc) -> str:
    out: list[str] = []
    for section in sorted(doc, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s)):
        keys = doc[section]
        anchors = [k for s, k in ANCHORS if s == section and k in keys]
        out.append(f"[{section}]")
        out += [f"{k} = {keys[k]}" for k in anchors]
        out += [f"{k} = {v}" for k, v in keys.items() if k not in anchors]
    return "\n".join(out) + "\n"


def anchor_lines(text: str) -> int:
    """How many lines at the top of a rendered file hold the anchors (never mutated)."""
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines)
               if line.startswith(("dir = ", "runtime_dir = ", "socket = ", "enabled = ")))
    return last + 1


def with_value(doc: Doc, section: str, key: str, value: str) -> Doc:
    out = {s: dict(k) for s, k in doc.items()}
    out.setdefault(section, {})[key] = value
    return out


# --------------------------------------------------------------------------- the schema's scalar keys

FIXED = {("attestation", "enabled"), ("attestation", "tcti")}  # only wrong types: see the module doc


@dataclass(frozen=True)
class Scalar:
    section: str
    key: str
    kind: str  # int, float, bool, str, path, literal, secret, list
    low: float | None = None
    high: float | None = None
    exclusive_low: bool = False


def schema_scalars() -> list[Scalar]:
    """Every top-level key of every section, with its kind and numeric bounds, read from the model."""
    out = []
    for section, info in AgentConfig.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        for key, f in model.model_fields.items():
            ann = str(f.annotation)
            low = high = None
            exclusive = False
            for meta in f.metadata:
                low = getattr(meta, "ge", low)
                if getattr(meta, "gt", None) is not None:
                    low, exclusive = meta.gt, True
                high = getattr(meta, "le", high)
            if "SecretRef" in ann:
                kind = "secret"
            elif ann.startswith("list") or ann.startswith("dict"):
                kind = "list" if ann.startswith("list") else "table"
            elif "Literal" in ann:
                kind = "literal"
            elif "Path" in ann:
                kind = "path"
            elif "bool" in ann:
                kind = "bool"
            elif "float" in ann:
                kind = "float"
            elif "int" in ann:
                kind = "int"
            else:
                kind = "str"
            out.append(Scalar(section, key, kind, low, high, exclusive))
    return out


WRONG_TYPES = {
    "true": {"bool"},
    "1": {"int", "float"},
    "1.5": {"float"},
    "0.0": {"float"},
    '"1"': {"str", "path", "secret"},
    '"true"': {"str", "path", "secret"},
    '"yes"': {"str", "path", "secret"},
    "[1]": {"list"},
    '["a"]': {"list"},
    "{a = 1}": {"table"},
    "1979-05-27T07:32:00Z": set(),
    "07:32:00": set(),
}


def type_cases(doc: Doc) -> Iterator[tuple[str, Doc, str]]:
    for s in schema_scalars():
        for value, fits in WRONG_TYPES.items():
            if s.kind in fits or (s.kind == "literal" and value.startswith('"')):
                continue
            if (s.kind == "table" and value.startswith("{")) or (s.kind == "list" and value.startswith("[")):
                continue
            key = f"{s.section}.{s.key}"
            yield f"type {key} = {value}", with_value(doc, s.section, s.key, value), key


def bound_cases(doc: Doc) -> Iterator[tuple[str, Doc, str, Expect]]:
    for s in schema_scalars():
        if s.kind not in ("int", "float") or (s.section, s.key) in FIXED or s.low is None or s.high is None:
            continue
        if s.kind == "int":
            low, high = int(s.low), int(s.high)
            values: list[tuple[str, Expect]] = [
                (str(low), "any"), (str(high), "any"), (str(low - 1), "refused"), (str(high + 1), "refused"),
                ("9223372036854775807", "refused" if high < 2**63 - 1 else "any"), ("-9223372036854775808", "refused"),
                ("0x10", "any"), ("1_000", "any"),
            ]
        else:
            values = [
                (repr(float(s.low)), "refused" if s.exclusive_low else "any"), (repr(float(s.high)), "any"),
                (repr(float(s.high) * 1.000001 + 1e-9), "refused"), ("5e-324", "any"), ("-0.0", "any"),
                ("inf", "refused"), ("-inf", "refused"), ("nan", "refused"), ("1e309", "refused"),
            ]
        for value, expect in values:
            yield f"bound {s.section}.{s.key} = {value}", with_value(doc, s.section, s.key, value), \
                f"{s.section}.{s.key}", expect


UNICODE = [
    "h\u200bost",  # zero-width space
    "\uff48\uff4f\uff53\uff54",  # fullwidth "host"
    "host\u202e",  # right-to-left override
    "\u00dcn\u00efc\u00f6d\u00e9",
    "\u0661\u0662\u0663",  # Arabic-Indic digits
    "e\u0301",  # combining accent
    "\ufeffbom",
    "\U0001f680",
    "\u0130stanbul",  # dotted capital I (changes length when lower-cased)
    "a\u00a0b",  # no-break space
    "ascii-ok",  # the control (for broker hosts: localhost, so nothing leaves this machine)
]
NAME_KEYS = [("device", "id"), ("mqtt", "host"), ("mqtt", "topic_prefix"), ("mqtt", "username"),
             ("mqtt", "client_id"), ("deployment", "container_prefix"), ("device", "platform")]


def unicode_cases(doc: Doc, base: Path, number: int) -> Iterator[tuple[str, Doc, str]]:
    def for_host(text: str) -> str:
        return "localhost" if text == "ascii-ok" else text

    for section, key in NAME_KEYS:
        for text in UNICODE:
            if (section, key) == ("mqtt", "host"):
                text = for_host(text)
            yield f"unicode {section}.{key} = {text!r}", with_value(doc, section, key, q(text)), f"{section}.{key}"
    for text in UNICODE:
        yield f"unicode label {text!r}", with_value(doc, "device", "labels", f"{{ {q(text)} = {q(text)} }}"), \
            "device.labels"
        yield f"unicode endpoint {text!r}", with_value(doc, "mqtt", "endpoints", f"[{q(for_host(text) + ':1883')}]"), \
            "mqtt.endpoints"
        yield f"unicode module {text!r}", with_value(doc, "telemetry", "modules", f"[{q(text)}]"), "telemetry.modules"
        # Unicode in a path under base is a fine directory name.
        yield f"unicode state.dir {text!r}", with_value(doc, "state", "dir", q(str(base / f"c{number}" / text))), \
            "state.dir"


def nesting_cases(doc: Doc) -> Iterator[tuple[str, Doc, str]]:
    for depth in (1, 2, 3, 4, 8, 16, 31, 32, 33, 64, 100, 200, 495, 496, 497, 1000):
        array = "[" * depth + "1" + "]" * depth
        table = "{ a = " * depth + "1" + " }" * depth
        mixed = "".join("[" if i % 2 else "{ a = " for i in range(depth)) + "1" + "".join(
            "]" if i % 2 else " }" for i in reversed(range(depth)))
        yield f"nesting {depth} array in mqtt.endpoints", with_value(doc, "mqtt", "endpoints", array), "mqtt.endpoints"
        yield f"nesting {depth} table in device.labels", with_value(doc, "device", "labels", table), "device.labels"
        yield f"nesting {depth} mixed in an unknown key", with_value(doc, "twin", "extra", mixed), "twin.extra"


# --------------------------------------------------------------------------- the corpus


def corpus(base: Path, broker_port: int, tls: TlsFiles, seed: int = SEED) -> list[Case]:
    """Every generated file, deterministic for a given seed (and base, port and TLS file paths)."""
    rng = random.Random(seed)
    cases: list[Case] = []
    counter = iter(range(1_000_000))

    def doc() -> Doc:
        return base_doc(base, next(counter), broker_port)

    cases += named_cases(base, broker_port, tls, doc)
    for name, d, key in type_cases(doc()):
        cases.append(Case(name, render(d), "refused", key))
    for name, d, key, expect in bound_cases(doc()):
        cases.append(Case(name, render(d), expect, key if expect == "refused" else None))
    for name, d, key in unicode_cases(doc(), base, next(counter)):
        cases.append(Case(name, render(d), "any", key))
    for name, d, key in nesting_cases(doc()):
        cases.append(Case(name, render(d), "any", key))
    cases += path_cases(base, doc)
    cases += secret_cases(base, doc)
    cases += tls_cases(tls, doc)
    cases += mutation_cases(rng, base, broker_port, tls, doc, count=MUTATIONS)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names are unique"
    return cases


def named_cases(base: Path, port: int, tls: TlsFiles, doc: Any) -> list[Case]:
    """What the fuzzer found against main (issue 29), by name."""
    (base / "named").mkdir(parents=True, exist_ok=True)
    dangling = base / "named" / "dangling"
    loop = base / "named" / "loop"
    regular = base / "named" / "regular-file"
    for link, target in ((dangling, base / "named" / "nowhere"), (loop, loop)):
        if not link.is_symlink():
            link.symlink_to(target)
    regular.write_text("not a directory\n")
    deep = "x = " + "[" * 496 + "]" * 496 + "\n"
    assert len(deep.encode()) == 997, "a 997-byte file, as found"

    def case(name: str, section: str, key: str, value: str, expect: Expect = "refused",
             env: dict[str, str | None] | None = None) -> Case:
        return Case(name, render(with_value(doc(), section, key, value)), expect, f"{section}.{key}", env or {})

    return [
        Case("nesting 496 deep (997 bytes)", deep, "refused", "x"),
        case("state.dir /proc", "state", "dir", q("/proc")),
        case("state.dir /sys/kernel", "state", "dir", q("/sys/kernel")),
        case("state.dir dangling symlink", "state", "dir", q(str(dangling))),
        case("state.dir symlink loop", "state", "dir", q(str(loop))),
        case("telemetry.runtime_dir regular file", "telemetry", "runtime_dir", q(str(regular))),
        case('logging.format = "journal" without journald', "logging", "format", q("journal"), "warns"),
        case('mqtt.password = "env:UNSET"', "mqtt", "password", q("env:EDGE_FUZZ_UNSET"),
             env={"EDGE_FUZZ_UNSET": None}),
        case("credential without CREDENTIALS_DIRECTORY", "mqtt", "password", q("credential:mqtt-password"),
             env={"CREDENTIALS_DIRECTORY": None}),
        Case("garbage ca_file", render(with_value(with_value(doc(), "mqtt", "tls", "true"), "mqtt", "ca_file",
                                                  q(str(tls.garbage)))), "refused", "mqtt.ca_file"),
        Case("cert_file without key_file", render(with_value(with_value(doc(), "mqtt", "tls", "true"), "mqtt",
                                                             "cert_file", q(str(tls.cert)))),
             "refused", "mqtt.cert_file"),
        case('mqtt.host = "[::1]"', "mqtt", "host", q("[::1]"), "passes"),
        case("port = true", "mqtt", "port", "true"),
        case('port = "34003"', "mqtt", "port", q("34003")),
        case("tls = 1", "mqtt", "tls", "1"),
        case('local_deploy = "yes"', "deployment", "local_deploy", q("yes")),
        case("min_free_mb = 1.0", "state", "min_free_mb", "1.0"),
        case("stop_grace_s = true", "podman", "stop_grace_s", "true"),
        case('endpoint "h:\u0663" (Arabic-Indic digit)', "mqtt", "endpoints", f"[{q('h:' + chr(0x663))}]"),
        case('endpoint "h:1883 "', "mqtt", "endpoints", f"[{q('h:1883 ')}]"),
        case('podman.socket = "tcp://127.0.0.1:0"', "podman", "socket", q("tcp://127.0.0.1:0")),
        case("backoff_initial_s = 5e-324", "deployment", "backoff_initial_s", "5e-324"),
    ]


def path_cases(base: Path, doc: Any) -> list[Case]:
    paths = base / "paths"
    paths.mkdir(parents=True, exist_ok=True)
    regular = paths / "file"
    regular.write_text("x\n")
    to_file = paths / "link-to-file"
    if not to_file.is_symlink():
        to_file.symlink_to(regular)
    chain = paths / "chain-a"
    if not chain.is_symlink():
        (paths / "chain-b").symlink_to(paths / "chain-a")
        chain.symlink_to(paths / "chain-b")
    to_dir = paths / "link-to-dir"
    if not to_dir.is_symlink():
        (paths / "real-dir").mkdir(exist_ok=True)
        to_dir.symlink_to(paths / "real-dir")
    values: list[tuple[str, Expect]] = [
        ("/proc", "refused"), ("/proc/self", "refused"), ("/proc/edge-fuzz/x", "refused"), ("/sys", "refused"),
        ("/sys/kernel", "refused"), ("/sys/kernel/edge-fuzz", "refused"), ("/dev/null", "refused"),
        (str(regular), "refused"), (str(regular / "sub"), "refused"), (str(to_file), "refused"),
        (str(chain), "refused"), (str(to_dir), "passes"), ("relative-dir", "passes"), ("./a/b/../c", "passes"),
        ("", "refused"), ("/" + "d" * 300, "refused"), (str(paths / ("p" * 200)), "refused"),
        (str(paths / "nul\u0000x"), "refused"), (str(paths / "new line\nx"), "refused"),
        (str(paths / "sp ace"), "passes"), (str(paths / "~"), "passes"),
    ]
    out = []
    for section, key in (("state", "dir"), ("telemetry", "runtime_dir")):
        for value, expect in values:
            out.append(Case(f"path {section}.{key} = {value!r}", render(with_value(doc(), section, key, q(value))),
                            expect, f"{section}.{key}" if expect == "refused" else None))
    return out


def secret_cases(base: Path, doc: Any) -> list[Case]:
    secrets_dir = base / "secrets"
    creds = base / "credentials"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    creds.mkdir(parents=True, exist_ok=True)
    (secrets_dir / "good").write_text("s3cret\n")
    (secrets_dir / "empty").write_text("")
    (secrets_dir / "latin1").write_bytes(b"caf\xe9\n")
    (secrets_dir / "dir").mkdir(exist_ok=True)
    (creds / "mqtt-password").write_text("s3cret\n")
    (creds / "empty").write_text("")
    with_creds: dict[str, str | None] = {"CREDENTIALS_DIRECTORY": str(creds)}
    no_creds: dict[str, str | None] = {"CREDENTIALS_DIRECTORY": None}
    values: list[tuple[str, str, Expect, dict[str, str | None]]] = [
        ("file ok", f"file:{secrets_dir / 'good'}", "passes", {}),
        ("file missing", f"file:{secrets_dir / 'missing'}", "refused", {}),
        ("file empty", f"file:{secrets_dir / 'empty'}", "refused", {}),
        ("file not UTF-8", f"file:{secrets_dir / 'latin1'}", "refused", {}),
        ("file is a directory", f"file:{secrets_dir / 'dir'}", "refused", {}),
        ("credential ok", "credential:mqtt-password", "passes", with_creds),
        ("credential missing", "credential:nope", "refused", with_creds),
        ("credential empty", "credential:empty", "refused", with_creds),
        ("credential without CREDENTIALS_DIRECTORY", "credential:mqtt-password", "refused", no_creds),
        ("credential path escape", "credential:../secrets/good", "refused", with_creds),
        ("credential dot-dot", "credential:..", "refused", with_creds),
        ("env bad name", "env:A-B", "refused", {}),
        ("env set", "env:EDGE_FUZZ_SECRET", "passes", {"EDGE_FUZZ_SECRET": "s3cret"}),
        ("env unset", "env:EDGE_FUZZ_SECRET", "refused", {"EDGE_FUZZ_SECRET": None}),
        ("env empty", "env:EDGE_FUZZ_SECRET", "refused", {"EDGE_FUZZ_SECRET": ""}),
        ("plain password", "hunter2", "refused", {}),
        ("unknown scheme", "vault:x", "refused", {}),
        ("no target", "env:", "refused", {}),
    ]
    out = []
    for label, ref, expect, env in values:
        mqtt = with_value(with_value(doc(), "mqtt", "username", q("fuzz")), "mqtt", "password", q(ref))
        out.append(Case(f"secret mqtt.password {label}", render(mqtt), expect,
                        "mqtt.password" if expect == "refused" else None, env))
        registry = render(doc()) + (
            f'[[trust.registry_auth]]\nregistry = "127.0.0.1:5000"\nusername = "fuzz"\npassword = {q(ref)}\n')
        out.append(Case(f"secret trust.registry_auth password {label}", registry, expect,
                        "trust.registry_auth.0.password" if expect == "refused" else None, env))
    return out


def tls_cases(tls: TlsFiles, doc: Any) -> list[Case]:
    missing = tls.ca.parent / "missing.pem"
    combos: list[tuple[str, dict[str, str], Expect, str | None]] = [
        ("ca only", {"ca_file": str(tls.ca)}, "passes", None),
        ("system CAs", {}, "passes", None),
        ("mutual", {"ca_file": str(tls.ca), "cert_file": str(tls.cert), "key_file": str(tls.key)}, "passes", None),
        ("bundle", {"cert_file": str(tls.bundle)}, "passes", None),
        ("garbage ca", {"ca_file": str(tls.garbage)}, "refused", "mqtt.ca_file"),
        ("empty ca", {"ca_file": str(tls.empty)}, "refused", "mqtt.ca_file"),
        ("key as ca", {"ca_file": str(tls.key)}, "refused", "mqtt.ca_file"),
        ("missing ca", {"ca_file": str(missing)}, "refused", "mqtt.ca_file"),
        ("cert without key", {"cert_file": str(tls.cert)}, "refused", "mqtt.cert_file"),
        ("key without cert", {"key_file": str(tls.key)}, "refused", "mqtt.key_file"),
        ("mismatched key", {"cert_file": str(tls.cert), "key_file": str(tls.other_key)}, "refused", "mqtt.key_file"),
        ("garbage cert", {"cert_file": str(tls.garbage), "key_file": str(tls.key)}, "refused", "mqtt.cert_file"),
        ("garbage key", {"cert_file": str(tls.cert), "key_file": str(tls.garbage)}, "refused", "mqtt.key_file"),
        ("encrypted key, password", {"cert_file": str(tls.cert), "key_file": str(tls.enc_key),
                                     "key_password": f"file:{tls.enc_key_password}"}, "passes", None),
        ("encrypted key, wrong password", {"cert_file": str(tls.cert), "key_file": str(tls.enc_key),
                                           "key_password": f"file:{tls.ca}"}, "refused", "mqtt.key_file"),
        ("encrypted key, no password", {"cert_file": str(tls.cert), "key_file": str(tls.enc_key),
                                        "key_password": "env:EDGE_FUZZ_UNSET"}, "refused", "mqtt.key_password"),
    ]
    out = []
    for label, files, expect, key in combos:
        for tls_on in ("true", "false"):
            d = with_value(doc(), "mqtt", "tls", tls_on)
            for k, v in files.items():
                d = with_value(d, "mqtt", k, q(v))
            if tls_on == "false" and files:
                expect_now: Expect = "refused"
                key_now = None  # the first file key given with tls = false (or a missing file)
            else:
                expect_now, key_now = expect, key
            out.append(Case(f"tls={tls_on} {label}", render(d), expect_now, key_now, {"EDGE_FUZZ_UNSET": None}))
    return out


# --------------------------------------------------------------------------- random mutations

PLAUSIBLE: list[tuple[str, str, list[str]]] = [
    ("mqtt", "keepalive_s", ["5", "30", "3600"]),
    ("mqtt", "topic_prefix", ['"edge"', '"acme/edge"']),
    ("mqtt", "endpoints", ['["127.0.0.1:1"]', '["[::1]:2", "localhost"]', '["::1"]']),
    ("mqtt", "session_expiry_s", ["0", "60"]),
    ("mqtt", "reconnect_max_delay_s", ["1", "2.5"]),
    ("logging", "level", ['"debug"', '"warning"']),
    ("device", "labels", ['{ site = "a", line = "2" }']),
    ("twin", "report_min_interval_s", ["0.05", "1"]),
    ("deployment", "backoff_initial_s", ["0.1", "2"]),
    ("deployment", "local_deploy", ["true", "false"]),
    ("telemetry", "modules", ['["pilot"]', '["a.b", "c-d"]']),
    ("telemetry", "cap_bytes", ["65536", "1048576"]),
    ("state", "min_free_mb", ["1", "64"]),
]
JUNK = ["\u0663", "\u200b", " ", "\t", "=", "[", "]", "{", "}", '"', "'", "#", "\\", ".", ",", "0", "-", "e", "\u00e9",
        "\U0001f680", "\x00", "\x7f", "\r"]


def mutation_cases(rng: random.Random, base: Path, port: int, tls: TlsFiles, doc: Any, count: int) -> list[Case]:
    out = []
    for number in range(count):
        d = doc()
        for section, key, values in rng.sample(PLAUSIBLE, rng.randint(0, 5)):
            d = with_value(d, section, key, rng.choice(values))
        text = render(d)
        keep = anchor_lines(text)
        lines = text.splitlines(keepends=True)
        head, tail = lines[:keep], lines[keep:]
        ops = []
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["drop", "dup", "swap", "insert", "truncate", "value", "case"])
            ops.append(op)
            if not tail:
                break
            i = rng.randrange(len(tail))
            if op in ("insert", "value") and tail[i].startswith(("host", "endpoints")):
                continue  # a broker host stays on loopback (see the module doc)
            if op == "drop":
                del tail[i]
            elif op == "dup":
                tail.insert(i, tail[i])
            elif op == "swap":
                j = rng.randrange(len(tail))
                tail[i], tail[j] = tail[j], tail[i]
            elif op == "insert":
                line = tail[i]
                at = rng.randrange(len(line) + 1)
                tail[i] = line[:at] + rng.choice(JUNK) + line[at:]
            elif op == "truncate":
                joined = "".join(tail)
                tail = [joined[: rng.randrange(len(joined) + 1)]]
            elif op == "value":
                line = tail[i]
                if " = " in line:
                    tail[i] = line.split(" = ", 1)[0] + " = " + rng.choice(
                        ["true", "0", "-1", "1.0", '""', "[]", "{}", '"127.0.0.1"', "1e400", "0o17", "0b101"]) + "\n"
            elif op == "case":
                tail[i] = tail[i].upper()
        out.append(Case(f"mutation {number} ({', '.join(ops)})", "".join(head + tail)))
    return out


# --------------------------------------------------------------------------- the invariant


def touches_only(config: AgentConfig, base: Path) -> str | None:
    """Why running `config` would reach outside `base` or off this machine (None when it stays)."""
    for path in (config.state.dir, config.telemetry.runtime_dir):
        if not path.resolve().is_relative_to(base.resolve()):
            return f"directory {path} is outside {base}"
    for endpoint in config.mqtt.broker_endpoints():
        try:
            loopback = endpoint.host == "localhost" or ipaddress.ip_address(endpoint.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return f"broker {endpoint} is not on loopback"
    if config.attestation.enabled:
        return "attestation is on"
    socket = config.podman.socket
    if not (socket.startswith(f"unix://{base}") or socket.startswith(("tcp://127.", "tcp://localhost"))):
        return f"podman socket {socket} is not under base or loopback"
    return None


# --------------------------------------------------------------------------- checking one file


@dataclass
class Outcome:
    case: Case
    path: Path
    code: int
    out: str
    err: str


@contextlib.contextmanager
def environment(env: dict[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    try:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def config_check(case: Case, path: Path) -> Outcome:
    """`edge-agent config check PATH` through the CLI's main(); an exception escaping it fails the test."""
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with environment({"CREDENTIALS_DIRECTORY": None, **case.env}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = cli.main(["config", "check", str(path)])
    return Outcome(case, path, code, out.getvalue(), err.getvalue())
