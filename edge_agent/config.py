"""Agent configuration: one TOML file that field technicians edit by hand.

Parsing is strict. Every problem becomes one line of the form

    /etc/edge-agent/config.toml:12: mqtt.port: got 70000; expected TCP port of the broker, 1-65535

and unknown keys get the nearest valid key suggested. Field descriptions double as the
"expected ..." text, so each field documents itself in errors too.

TOML line numbers: tomllib does not report where a key sits, so `toml_locate` scans the text
for table headers and key assignments. It handles what people write by hand (tables, arrays of
tables, dotted and quoted keys); for anything it cannot place it reports the table's line.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge_shared.mqtt_config import FsPath, MqttSection, SecretRef, Section, _existing_file, _parse_secret
from edge_shared.names import DEVICE_ID_PATTERN, MODULE_NAME_PATTERN, STREAM_NAME_PATTERN
from edge_shared.validation import message as validation_message

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/config.toml")

# Limits every value of the file obeys (checked in one place, `value_problems`, before the model):
MAX_STRING = 4096  # characters of any string
MAX_LIST = 256  # items of any list, entries of any table
MAX_PATH_BYTES = 4095  # PATH_MAX minus the NUL
MAX_NAME_BYTES = 255  # NAME_MAX: one path component
UNIX_SOCKET_MAX = 107  # bytes of an AF_UNIX path (sun_path is 108 with the NUL)
# Arrays and inline tables nested deeper than this are refused before parsing: the TOML parser
# recurses once per level, and ~500 levels exhaust Python's stack. No key here needs more than 4.
MAX_NESTING = 32
# Keys the device cannot run safely without: a file that does not write them (empty, truncated,
# the wrong file) is refused instead of running as the host name against localhost.
REQUIRED_KEYS = (("device", "id"), ("mqtt", "host"))


# --------------------------------------------------------------------------- secrets


# --------------------------------------------------------------------------- models


def default_device_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-.") or "device"
    return name


class DeviceSection(Section):
    id: Annotated[
        str,
        Field(
            pattern=DEVICE_ID_PATTERN,
            description="device id: letters, digits, '_', '.', '-', at most 64, starting with a letter or digit",
        ),
    ] = Field(default_factory=default_device_id)

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # <prefix>/fleet/ holds the fleet's response topics (docs/protocol.md).
        if value == "fleet":
            raise PydanticCustomError("reserved", "device id fleet is reserved for fleet-side topics")
        return value

    labels: dict[str, str] = Field(
        default_factory=dict,
        description="a table of labels, key = \"value\" (at most 64)",
    )
    platform: str | None = Field(
        default=None,
        description="the OCI platform picked from multi-arch images, os/architecture[/variant] "
        "(e.g. linux/arm64); default: this machine's",
    )

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from edge_shared.trust.platforms import parse_platform

        try:
            return str(parse_platform(value))
        except ValueError as exc:
            raise PydanticCustomError("platform", "{problem}", {"problem": str(exc)}) from None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        from edge_shared.labels import LabelError, check_labels

        try:
            return check_labels(value)
        except LabelError as exc:
            raise PydanticCustomError("label", "{problem}", {"problem": str(exc)}) from None


def _socket_fits(directory: Path, rest: str) -> None:
    """A Unix socket the agent creates under `directory` must fit AF_UNIX's path limit."""
    size = len(os.fsencode(str(directory / rest)))
    if size > UNIX_SOCKET_MAX:
        raise PydanticCustomError(
            "too_long",
            "the socket path .../{rest} would be {size} bytes, longer than the {n} bytes a Unix socket path may have",
            {"rest": rest, "size": size, "n": UNIX_SOCKET_MAX},
        )


class StateSection(Section):
    dir: FsPath = Field(Path("/var/lib/edge-agent"), description="a directory path for the agent's database and caches")
    min_free_mb: int = Field(
        64, ge=1, le=1_000_000, description="free megabytes to keep on the state filesystem, 1-1000000"
    )

    @field_validator("dir")
    @classmethod
    def _not_a_file(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise PydanticCustomError("not_dir", "{path} exists and is not a directory", {"path": str(value)})
        _socket_fits(value, "control.sock")
        return value


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="one of debug, info, warning, error"
    )
    format: Literal["auto", "text", "json", "journal"] = Field(
        "auto", description="one of auto (journal under systemd, text on a terminal), text, json, journal"
    )


class TwinSection(Section):
    report_min_interval_s: float = Field(
        1.0, ge=0.05, le=3600, description="seconds between two reported-state publishes, 0.05-3600"
    )
    report_stats_interval_s: float = Field(
        60.0, ge=1, le=86400, description="seconds between refreshes of uptime, disk and memory, 1-86400"
    )
    max_desired_bytes: int = Field(
        1048576, ge=1024, le=64 * 1048576, description="largest desired document in bytes, 1024-67108864"
    )
    max_desired_depth: int = Field(32, ge=4, le=256, description="deepest JSON nesting of a desired document, 4-256")
    max_document_signatures: int = Field(
        8, ge=1, le=64, description="most signatures one desired document envelope may carry, 1-64 (checked "
        "before any signature is verified)"
    )


class PodmanSection(Section):
    socket: str = Field(
        "unix:///run/podman/podman.sock",
        pattern=r"^(unix|tcp)://.+",
        description="podman API URL like unix:///run/podman/podman.sock",
    )

    pull_timeout_s: float = Field(600.0, ge=5, le=86400, description="seconds one image pull may take, 5-86400")
    pull_retries: int = Field(3, ge=0, le=100, description="extra attempts after a failed pull, 0-100")
    stop_grace_s: float = Field(
        10.0, ge=0, le=600, description="seconds between SIGTERM and SIGKILL when stopping a module, 0-600"
    )
    retry_max_s: float = Field(
        60.0, ge=2, le=3600,
        description="most seconds between attempts while podman fails (2 s, doubling up to this), 2-3600",
    )

    @field_validator("socket")
    @classmethod
    def _api_url(cls, value: str) -> str:
        from edge_agent.api_url import parse_api_url

        try:
            address = parse_api_url(value)
        except ValueError as exc:
            raise PydanticCustomError("api_url", "{problem}", {"problem": str(exc)}) from None
        if address.port is not None and not 1 <= address.port <= 65535:
            raise PydanticCustomError("api_url", "port {port} is not 1-65535", {"port": address.port})
        if address.unix_path is not None and len(os.fsencode(address.unix_path)) > UNIX_SOCKET_MAX:
            raise PydanticCustomError(
                "too_long", "socket path is longer than {n} bytes (AF_UNIX limit)", {"n": UNIX_SOCKET_MAX}
            )
        return value


class DeploymentSection(Section):
    local_deploy: bool = Field(
        False, description="true or false (accept unsigned deployments on the local control socket)"
    )
    allowed_mount_roots: list[FsPath] = Field(
        default_factory=list,
        description="absolute host directories modules may bind-mount from, like /srv/edge-data",
    )
    stabilisation_window_s: float = Field(
        30.0, ge=0, le=86400, description="seconds a new deployment must stay running and healthy, 0-86400"
    )
    apply_timeout_s: float = Field(
        900.0, ge=10, le=86400, description="seconds a new deployment may take to become good, 10-86400"
    )
    # Lower bounds keep a crashing module from being restarted in a tight loop (5e-324 s is > 0).
    backoff_initial_s: float = Field(1.0, ge=0.1, le=3600, description="first restart delay in seconds, 0.1-3600")
    backoff_max_s: float = Field(
        300.0, ge=0.1, le=86400, description="restart delay cap in seconds, 0.1-86400, at least backoff_initial_s"
    )
    backoff_reset_s: float = Field(
        600.0, ge=1, le=86400, description="seconds up after which a module's restart backoff resets, 1-86400"
    )
    image_gc: bool = Field(True, description="true or false: remove images no deployment uses any more")
    container_prefix: str = Field(
        "edge-", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}$", description="prefix of module container names"
    )
    poll_interval_s: float = Field(
        30.0, ge=1, le=3600, description="seconds between full re-checks besides live podman events, 1-3600"
    )

    @field_validator("backoff_max_s")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial_s")
        if isinstance(initial, float | int) and value < initial:
            raise PydanticCustomError(
                "backoff", "below backoff_initial_s ({initial}); expected at least the first delay",
                {"initial": initial},
            )
        return value

    @field_validator("allowed_mount_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        for root in value:
            if not root.is_absolute() or ".." in root.parts:
                raise PydanticCustomError("path", "{root} is not an absolute path", {"root": str(root)})
        return value


class AttestationSection(Section):
    enabled: bool = Field(True, description="true or false")
    tcti: str = Field(
        "device:/dev/tpmrm0",
        pattern=r"^(device|tabrmd|swtpm|mssim)(:.*)?$",
        description="TPM connection (TCTI) like device:/dev/tpmrm0, tabrmd or swtpm:host=127.0.0.1,port=2321",
    )
    ek_type: Literal["ecc", "rsa"] = Field("ecc", description="endorsement key type: ecc (P-256) or rsa (2048)")
    ak_handle: int | None = Field(
        None,
        ge=0x81000000,
        le=0x81FFFFFF,
        description="persistent handle for the attestation key, 0x81000000-0x81FFFFFF (default: re-created)",
    )
    image_pcr: int = Field(
        23, ge=16, le=23, description="PCR that module image digests are extended into, 16-23"
    )
    tpm_timeout_s: float = Field(
        120.0, ge=1, le=3600, description="seconds one TPM operation may take before its worker is killed, 1-3600"
    )
    worker_idle_s: float = Field(
        30.0, ge=1, le=3600, description="seconds the TPM worker process stays after its last operation, 1-3600"
    )
    ima_log: FsPath = Field(
        Path("/sys/kernel/security/ima/ascii_runtime_measurements"),
        description="path of the kernel's IMA ASCII measurement list",
    )
    boot_log: FsPath = Field(
        Path("/sys/kernel/security/tpm0/binary_bios_measurements"),
        description="path of the firmware's TPM boot event log",
    )


class IdentitySection(Section):
    """The device's broker identity made and renewed by the agent (edge_agent/identity/)."""

    enabled: bool = Field(False, description="true or false (false: mqtt.cert_file/key_file are used as they are)")
    dir: FsPath | None = Field(
        None, description="folder of the device's key and certificate (default: STATE_DIR/identity)"
    )
    claim_cert: FsPath | None = Field(None, description="an existing PEM claim certificate shared by a device batch")
    claim_key: FsPath | None = Field(None, description="an existing PEM private key for claim_cert")
    fleet_ca: FsPath | None = Field(
        None, description="an existing PEM bundle of the fleet CAs signing device certificates (default: mqtt.ca_file)"
    )
    key_storage: Literal["auto", "tpm", "file"] = Field(
        "auto", description="one of auto (sealed to the TPM when there is one, else a 0600 file), tpm, file"
    )
    renew_at: float = Field(
        2 / 3, ge=0.1, le=0.95, description="renew when this fraction of the certificate's lifetime passed, 0.1-0.95"
    )
    retry_s: float = Field(
        30.0, ge=0.5, le=3600, description="seconds between enrollment requests while waiting, 0.5-3600"
    )
    switch_timeout_s: float = Field(
        30.0, ge=1, le=600, description="seconds a renewed certificate has to connect before the old one is used again"
    )

    _files = field_validator("claim_cert", "claim_key", "fleet_ca")(_existing_file)


TRUST_SCOPE_PATTERN = r"^(\*|[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?)$"


def _public_key_file(value: Path) -> Path:
    from edge_shared.trust.keys import KeyFileError, load_public_key

    if not value.is_file():
        raise PydanticCustomError("file_missing", "file {path} does not exist", {"path": str(value)})
    try:
        load_public_key(value)
    except KeyFileError as exc:
        raise PydanticCustomError("bad_key", "{problem}", {"problem": str(exc)}) from None
    return value


class TrustScopeSection(Section):
    scope: str = Field(
        pattern=TRUST_SCOPE_PATTERN,
        description="a registry (host[:port]), a repository prefix (host[:port]/path) or * for every image",
    )
    mode: Literal["enforce", "warn", "off"] = Field(
        "enforce",
        description="enforce (refuse unverified images), warn (run them, log a warning) or off (written out)",
    )
    keys: list[FsPath] = Field(
        default_factory=list, description="a list of cosign.pub files (PEM public keys) trusted for this scope"
    )
    required_annotations: dict[str, str] = Field(
        default_factory=dict, description="annotations every signature must carry, e.g. {env = \"prod\"}"
    )
    allow_unnamed_bundles: bool = Field(
        False, description="true or false: accept cosign v3 bundles whose statement names no repository"
    )

    @field_validator("keys")
    @classmethod
    def _key_files(cls, value: list[Path]) -> list[Path]:
        return [_public_key_file(p) for p in value]

    @model_validator(mode="after")
    def _keys_for_verification(self) -> TrustScopeSection:
        if self.mode != "off" and not self.keys:
            raise PydanticCustomError(
                "no_keys",
                "scope {scope} has mode {mode} but no keys; list cosign.pub files in keys, or write mode = \"off\"",
                {"scope": self.scope, "mode": self.mode},
            )
        return self


class RegistryAuthSection(Section):
    registry: str = Field(pattern=r"^[A-Za-z0-9.-]+(:[0-9]+)?$", description="registry host[:port]")
    username: str = Field(min_length=1, description="registry user name")
    password: SecretRef = Field(description="file:/path, credential:NAME or env:NAME")

    @field_validator("password", mode="plain")
    @classmethod
    def _secret(cls, value: object) -> SecretRef:
        return _parse_secret(value)


class TrustSection(Section):
    policy: list[TrustScopeSection] = Field(
        default_factory=list, description="a list of [[trust.policy]] tables (scope, mode, keys)"
    )
    insecure_registries: list[str] = Field(
        default_factory=list, description="loopback registries (127.0.0.1:5000, localhost:5000) reached over plain HTTP"
    )
    ca_file: FsPath | None = Field(None, description="an existing PEM file with the CA(s) that signed the registries")
    registry_auth: list[RegistryAuthSection] = Field(
        default_factory=list, description="a list of [[trust.registry_auth]] tables (registry, username, password)"
    )
    max_manifest_kb: int = Field(4096, ge=4, le=65536, description="largest manifest accepted, in KiB, 4-65536")
    max_signature_kb: int = Field(1024, ge=1, le=65536, description="largest signature blob accepted, in KiB, 1-65536")
    document_mode: Literal["enforce", "off"] = Field(
        "enforce", description="enforce (only signed desired documents) or off (written out)"
    )
    document_keys: list[FsPath] = Field(
        default_factory=list, description="a list of PEM public keys trusted to sign desired documents"
    )
    require_document_expiry: bool = Field(False, description="true or false")

    _ca = field_validator("ca_file")(_existing_file)

    @field_validator("document_keys")
    @classmethod
    def _doc_keys(cls, value: list[Path]) -> list[Path]:
        return [_public_key_file(p) for p in value]

    @field_validator("insecure_registries")
    @classmethod
    def _loopback_only(cls, value: list[str]) -> list[str]:
        from edge_shared.trust.registry import is_loopback_host

        for reg in value:
            if not is_loopback_host(reg):
                raise PydanticCustomError(
                    "not_loopback", "{reg} is not a loopback address; plain HTTP is only allowed on loopback",
                    {"reg": reg},
                )
        return value


AtCapPolicy = Literal["drop-oldest", "refuse-new"]


class TelemetryStreamSection(Section):
    """Overrides for one stream: [telemetry.streams."pilot.alerts"]."""

    priority: int | None = Field(
        None, ge=0, le=9, description="priority 0 (most urgent) to 9 (bulk); overrides what modules send"
    )
    policy: AtCapPolicy | None = Field(None, description="drop-oldest or refuse-new (what to do at the byte cap)")
    ttl_s: int | None = Field(None, ge=0, le=10 * 365 * 86400, description="seconds to keep a record, 0 = no expiry")


class TelemetrySection(Section):
    enabled: bool = Field(True, description="true or false")
    cap_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        le=1 << 40,
        description="bytes of queued records to keep at most, 65536 or more",
    )
    default_ttl_s: int = Field(
        7 * 86400, ge=0, le=10 * 365 * 86400, description="seconds to keep a record, 0 = no expiry"
    )
    default_policy: AtCapPolicy = Field("drop-oldest", description="drop-oldest or refuse-new")
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full (an acknowledged record survives a power cut) or normal (it survives a crash)"
    )
    runtime_dir: FsPath = Field(
        Path("/run/edge-agent"),
        description="a directory for the per-module ingest sockets (ingest/<module>/telemetry.sock)",
    )
    modules: list[Annotated[str, Field(pattern=MODULE_NAME_PATTERN)]] = Field(
        default_factory=list,
        description="module names whose ingest sockets are always served (besides deployed modules)",
    )
    batch_max_records: int = Field(500, ge=1, le=100_000, description="records per uploaded MQTT message, 1-100000")
    batch_max_bytes: int = Field(
        256 * 1024, ge=1024, le=64 * 1024 * 1024, description="payload bytes per uploaded MQTT message"
    )
    inflight_batches: int = Field(4, ge=1, le=64, description="uploaded messages awaiting PUBACK at once, 1-64")
    compression: Literal["none", "zlib"] = Field("zlib", description="none or zlib (batches of 1 KiB or more)")
    streams: dict[Annotated[str, Field(pattern=STREAM_NAME_PATTERN)], TelemetryStreamSection] = Field(
        default_factory=dict, description="per-stream overrides keyed by stream name"
    )
    idempotency_window_s: int = Field(
        3600, ge=60, le=7 * 86400, description="seconds a module's idempotency key is remembered, 60-604800"
    )
    idempotency_max_keys: int = Field(
        100_000, ge=1000, le=10_000_000, description="idempotency keys remembered at most (the newest), 1000-10000000"
    )

    @field_validator("runtime_dir")
    @classmethod
    def _room_for_sockets(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise PydanticCustomError("path", "{path} is not an absolute path", {"path": str(value)})
        # ingest/<module>/telemetry.sock must fit for module names of at least 8 characters.
        _socket_fits(value, "ingest/" + "m" * 8 + "/telemetry.sock")
        return value

    @field_validator("modules")
    @classmethod
    def _listed_modules_fit(cls, value: list[str], info: ValidationInfo) -> list[str]:
        runtime_dir = info.data.get("runtime_dir")
        if isinstance(runtime_dir, Path):
            for module in value:
                _socket_fits(runtime_dir, f"ingest/{module}/telemetry.sock")
        return value


class DiagnosticsSection(Section):
    remote_logs: bool = Field(
        True, description="true: answer `edgectl logs` (the agent's journal, module output) over the broker"
    )
    remote_bundle: bool = Field(
        True, description="true: answer `edgectl support-bundle` (a redacted support bundle) over the broker"
    )


class AgentConfig(Section):
    """The whole file. Each section is a table in config/config.toml, where every key is explained."""

    device: DeviceSection = DeviceSection()
    state: StateSection = StateSection()
    logging: LoggingSection = LoggingSection()
    mqtt: MqttSection = MqttSection()
    twin: TwinSection = TwinSection()
    podman: PodmanSection = PodmanSection()
    deployment: DeploymentSection = DeploymentSection()
    attestation: AttestationSection = AttestationSection()
    identity: IdentitySection = IdentitySection()
    trust: TrustSection = TrustSection()
    telemetry: TelemetrySection = TelemetrySection()
    diagnostics: DiagnosticsSection = DiagnosticsSection()

    @model_validator(mode="after")
    def _identity_needs_tls(self) -> AgentConfig:
        if self.identity.enabled and (not self.mqtt.tls or self.mqtt.cert_file or self.mqtt.key_file):
            raise PydanticCustomError(
                "identity", "identity.enabled = true needs mqtt.tls = true and no mqtt.cert_file/key_file "
                "(the agent makes and renews the device certificate itself)")
        return self


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        # One line, always: control characters from the file (in a key, a value) are shown escaped.
        return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class ConfigError(Exception):
    """One or more problems with a config file; str() is one line per problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --------------------------------------------------------------------------- loading


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read, parse and validate a config file. Raises ConfigError with one line per problem.

    The file is opened by its name each time (a symlink is followed anew: config management tools
    deploy by swapping a symlink), and it must write the device's identity (REQUIRED_KEYS).
    What `run` then does with the values (directories, secrets, TLS files) is checked by
    edge_agent.config_check."""
    path = Path(path)
    return parse_config(read_config_text(path), str(path), base_dir=path.parent, require=REQUIRED_KEYS)


def read_config_text(path: Path) -> str:
    """The file's text; ConfigError saying why it cannot be read or is not UTF-8."""
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(shown, None, "", "cannot read config: file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigProblem(shown, None, "", "cannot read config: is a directory")]) from None
    except PermissionError:
        raise ConfigError([ConfigProblem(shown, None, "", "cannot read config: permission denied")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(shown, None, "", f"cannot read config: {exc.strerror or exc}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        line_text = raw.split(b"\n")[line - 1].decode("utf-8", "backslashreplace")
        key = _key_at(raw.decode("utf-8", "backslashreplace").splitlines(), line, line_text)
        bad = raw[exc.start : exc.end].hex(" ")
        raise ConfigError(
            [ConfigProblem(shown, line, key, f"byte {bad} is not valid UTF-8; expected a UTF-8 TOML file")]
        ) from None


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def parse_config(
    text: str,
    file: str = "<config>",
    base_dir: Path | None = None,
    require: Iterable[tuple[str, str]] = (),
) -> AgentConfig:
    """Validate config text. `require` lists (table, key) pairs the text must write itself
    (load_config requires REQUIRED_KEYS; code building a config from a fragment need not)."""
    depth, deepest_line = nesting_depth(text)
    if depth > MAX_NESTING:
        raise ConfigError([_nesting_problem(file, text, depth, deepest_line)])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(file, text, str(exc))]) from None
    except RecursionError:  # not reached below MAX_NESTING; a clear refusal all the same
        raise ConfigError([_nesting_problem(file, text, depth, deepest_line)]) from None
    locator = toml_locate(text)
    problems = value_problems(file, locator, data)
    if problems:  # nothing past this point sees a value that breaks the common rules
        raise ConfigError(problems)
    missing = _missing_required(file, text, locator, data, require)
    if base_dir is not None:
        data = _resolve_relative_paths(data, base_dir)
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(file, locator, err, data) for err in exc.errors()]
        raise ConfigError(sorted(missing + problems, key=lambda p: p.line or 0)) from None
    if missing:
        raise ConfigError(missing)
    return config


def nesting_depth(text: str) -> tuple[int, int]:
    """How deep arrays and inline tables nest in TOML text, and the line where it is deepest.
    A small scanner (strings and comments skipped, table headers count as a level) that never
    recurses, so it answers for any input, valid TOML or not."""
    depth = deepest = 0
    deepest_line = line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                if text[i] == "\n":
                    line += 1
                    if len(quote) == 1:  # a one-line string ends at the line's end (a syntax error)
                        break
                if c == '"' and text[i] == "\\":
                    i += 1
                    if i < n and text[i] == "\n":
                        line += 1
                i += 1
            if i < n and text[i] == "\n":
                continue
            i += len(quote)
            continue
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest, deepest_line


def _nesting_problem(file: str, text: str, depth: int, line: int) -> ConfigProblem:
    lines = text.splitlines()
    key = _key_at(lines, line, lines[line - 1] if 0 < line <= len(lines) else "")
    return ConfigProblem(
        file, line, key,
        f"arrays/tables nested {depth} deep; expected at most {MAX_NESTING} levels (no setting needs more than 4)",
    )


def _syntax_problem(file: str, text: str, message: str) -> ConfigProblem:
    lines = text.splitlines()
    match = _TOML_POS.search(message)
    if match:
        line = int(match.group(1))
        detail = _TOML_POS.sub("", message)
        where = f" at column {match.group(2)}"
    else:
        line = max(1, len(lines))
        detail = _TOML_END.sub("", message)
        where = " at the end of the file (truncated?)" if _TOML_END.search(message) else ""
    line_text = lines[line - 1] if 0 < line <= len(lines) else ""
    key = _key_at(lines, line, line_text)
    return ConfigProblem(file, line, key, f"TOML syntax error{where}: {detail}; expected valid TOML")


def _key_at(lines: list[str], line: int, line_text: str) -> str:
    """The dotted key a (possibly broken) line assigns or declares; for a line inside a multi-line
    value, the key of the nearest assignment above it."""
    table: list[str] = []
    key: list[str] | None = None
    for number, text in enumerate(lines[:line], start=1):
        text = line_text if number == line else text
        header = _HEADER.match(text) or _LOOSE_HEADER.match(text)
        if header:
            table = _split_key(header.group(2))
            key = [] if number == line else None
            continue
        assign = _ASSIGN.match(text) or (_LOOSE_ASSIGN.match(text) if number == line else None)
        if assign:
            key = _split_key(assign.group(1)) if _ASSIGN.match(text) else [assign.group(1)]
    return ".".join([*table, *(key or [])])


_LOOSE_ASSIGN = re.compile(r"^\s*([^=\s\[#][^=]*?)\s*=")
_LOOSE_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]=]+?)\s*(\]\]?|$)")


def _missing_required(
    file: str, text: str, locator: Mapping[str, int], data: Mapping[str, Any], require: Iterable[tuple[str, str]]
) -> list[ConfigProblem]:
    # A table that is not a table (mqtt = "x") is the model's error to report.
    missing = [
        (table, key)
        for table, key in require
        if isinstance(data.get(table, {}), dict) and key not in data.get(table, {})
    ]
    if not missing:
        return []
    lines = text.splitlines()
    last = max(1, len(lines))
    if not data:
        names = " and ".join(f"{t}.{k}" for t, k in require)
        return [
            ConfigProblem(
                file, last, ".".join(missing[0]),
                f"the file has no settings (empty or truncated?); expected at least {names}",
            )
        ]
    out = []
    for table, key in missing:
        field = _field_info((table, key))
        expected = f"; expected {field.description}" if field is not None and field.description else ""
        line = locator.get(table, last)
        out.append(
            ConfigProblem(
                file, line, f"{table}.{key}",
                f"required key is missing (the device's identity must be written in the file){expected}",
            )
        )
    return out


# --------------------------------------------------------------------------- value rules


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def value_problems(file: str, locator: Mapping[str, int], data: Any) -> list[ConfigProblem]:
    """The rules every value obeys, whatever its key: no NUL or control characters in strings, at
    most MAX_STRING characters, at most MAX_LIST items per list or table, and for path keys the
    file system's limits. Checked before the model, so no later code sees such a value."""
    out: list[ConfigProblem] = []

    def problem(loc: tuple[Any, ...], message: str) -> None:
        out.append(ConfigProblem(file, _line_for(locator, loc), ".".join(str(p) for p in loc), message))

    def walk(value: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            bad = _CONTROL.search(value)
            if bad:
                problem(loc, f"contains the control character {bad.group()!r}; expected printable text")
            elif len(value) > MAX_STRING:
                problem(loc, f"got a string of {len(value)} characters; expected at most {MAX_STRING}")
            elif loc and _is_path_key(loc):
                reason = _path_problem(value)
                if reason:
                    problem(loc, reason)
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                problem(loc, f"got a list of {len(value)} items; expected at most {MAX_LIST}")
                return
            for index, item in enumerate(value):
                walk(item, (*loc, index))
        elif isinstance(value, dict):
            if len(value) > MAX_LIST:
                problem(loc, f"got a table of {len(value)} entries; expected at most {MAX_LIST}")
                return
            for key, item in value.items():
                if _CONTROL.search(key) or len(key) > MAX_STRING:
                    problem((*loc, key[:60]), "key name has control characters or is too long; expected a plain key")
                    continue
                walk(item, (*loc, key))

    walk(data, ())
    return out


def _is_path_key(loc: tuple[Any, ...]) -> bool:
    names = tuple(str(p) for p in loc if not isinstance(p, int))
    if names[-2:] in _PATH_KEYS or names[-1:] in {("ima_log",), ("boot_log",)}:
        return True
    return names in {("trust", "ca_file"), ("trust", "document_keys"), ("trust", "policy", "keys"),
                     ("deployment", "allowed_mount_roots")}


def _path_problem(value: str) -> str | None:
    if not value:
        return "got an empty path; expected a file system path"
    size = len(os.fsencode(value))
    if size > MAX_PATH_BYTES:
        return f"got a path of {size} bytes; expected at most {MAX_PATH_BYTES} (PATH_MAX)"
    long = next((part for part in value.split("/") if len(os.fsencode(part)) > MAX_NAME_BYTES), None)
    if long is not None:
        return f"a path component has {len(os.fsencode(long))} bytes; expected at most {MAX_NAME_BYTES} (NAME_MAX)"
    return None


_PATH_KEYS = {
    ("state", "dir"),
    ("telemetry", "runtime_dir"),
    ("mqtt", "ca_file"),
    ("mqtt", "cert_file"),
    ("mqtt", "key_file"),
    ("attestation", "ima_log"),
    ("attestation", "boot_log"),
    ("identity", "dir"),
    ("identity", "claim_cert"),
    ("identity", "claim_key"),
    ("identity", "fleet_ca"),
}


def _resolve_relative_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative paths in a config file are relative to the file, not to the process's cwd."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section, key in _PATH_KEYS:
        table = out.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            p = Path(table[key])
            if not p.is_absolute():
                table[key] = str((base_dir / p).resolve())
    trust = out.get("trust")
    if isinstance(trust, dict):
        out["trust"] = _resolve_trust_paths(trust, base_dir)
    return out


def _resolve_trust_paths(trust: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    def fix(value: Any) -> Any:
        return str((base_dir / value).resolve()) if isinstance(value, str) and value else value

    def fix_list(value: Any) -> Any:
        return [fix(v) for v in value] if isinstance(value, list) else value

    trust = dict(trust)
    trust["ca_file"] = fix(trust["ca_file"]) if "ca_file" in trust else None
    if trust["ca_file"] is None:
        del trust["ca_file"]
    if "document_keys" in trust:
        trust["document_keys"] = fix_list(trust["document_keys"])
    if isinstance(trust.get("policy"), list):
        trust["policy"] = [
            {**p, "keys": fix_list(p["keys"])} if isinstance(p, dict) and "keys" in p else p for p in trust["policy"]
        ]
    return trust


def _problem(file: str, locator: Mapping[str, int], err: Mapping[str, Any], data: Any) -> ConfigProblem:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    line = _line_for(locator, loc)
    etype = err["type"]
    if etype == "extra_forbidden":
        hint = _suggest(loc)
        return ConfigProblem(file, line, key, "unknown key" + (f", did you mean {hint}?" if hint else ""))
    field = _field_info(loc)
    expected = field.description if field is not None and field.description else None
    if etype == "missing":
        return ConfigProblem(
            file, line, key, "required key is missing" + (f"; expected {expected}" if expected else "")
        )
    got = _shown_value(loc, err.get("input"))
    detail = validation_message(err)
    if expected:
        message = f"{got}; expected {expected}" + (f" ({detail})" if detail and etype != "secret_ref" else "")
        if etype == "secret_ref":
            message = f"{got}; {detail}"
        elif etype in {"file_missing", "not_dir"}:
            message = f"{got}; {detail}; expected {expected}"
    else:
        message = f"{got}; {detail}"
    return ConfigProblem(file, line, key, message)


def _shown_value(loc: tuple[Any, ...], value: Any) -> str:
    if loc and loc[-1] in {"password", "key_password"}:
        return "got a secret value (hidden)"
    text = repr(value)
    return f"got {text[:60] + '...' if len(text) > 60 else text}"


def key_line(locator: Mapping[str, int], key: str) -> int | None:
    """The line of a dotted key (``mqtt.ca_file``, ``trust.registry_auth.0.password``), else of
    its nearest parent: for problems found after parsing (edge_agent.config_check)."""
    return _line_for(locator, tuple(key.split(".")))


def _line_for(locator: Mapping[str, int], loc: tuple[Any, ...]) -> int | None:
    """The line of the key, else of its nearest parent, else where the first key under it is."""
    parts = [str(p) for p in loc]
    while parts:
        path = ".".join(parts)
        line = locator.get(path)
        if line is not None:
            return line
        inside = [n for key, n in locator.items() if key.startswith(path + ".")]
        if inside:
            return min(inside)
        parts.pop()
    return None


def _model_at(loc: Iterable[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = AgentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = _unwrap_model(field.annotation)
        if ann is None:
            return None
        model = ann
    return model


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _field_info(loc: tuple[Any, ...]) -> Any:
    names = [p for p in loc if not isinstance(p, int)]
    if not names:
        return None
    model = _model_at(names[:-1])
    return model.model_fields.get(str(names[-1])) if model else None


def _suggest(loc: tuple[Any, ...]) -> str | None:
    parent = loc[:-1]
    model = _model_at(parent)
    if model is None:
        return None
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    if not match:
        return None
    return ".".join([*(str(p) for p in parent), match[0]])


# --------------------------------------------------------------------------- TOML key locations

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")
_ASSIGN = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_key(key: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return [p[1:-1] if p[:1] in {'"', "'"} else p for p in parts]


def toml_locate(text: str) -> dict[str, int]:
    """Map dotted key paths (arrays of tables indexed: ``trust.policy.0.mode``) to 1-based lines."""
    where: dict[str, int] = {}
    table: list[str] = []
    array_counts: dict[str, int] = {}
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        header = _HEADER.match(line)
        if header and (header.group(1), header.group(3)) in {("[", "]"), ("[[", "]]")}:
            names = _split_key(header.group(2))
            if header.group(1) == "[[":
                base = ".".join(names)
                index = array_counts.get(base, -1) + 1
                array_counts[base] = index
                where.setdefault(base, number)
                table = [*names, str(index)]
            else:
                table = _with_array_indexes(names, array_counts)
            where.setdefault(".".join(table), number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            path = ".".join([*table, *_split_key(assign.group(1))])
            where.setdefault(path, number)
            rest = line[assign.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) == 1:
                    in_multiline = quote
    return where


def _with_array_indexes(names: list[str], array_counts: Mapping[str, int]) -> list[str]:
    """[a.b] after [[a]] means a.<last index>.b."""
    out: list[str] = []
    plain: list[str] = []
    for name in names:
        plain.append(name)
        out.append(name)
        key = ".".join(plain)
        if key in array_counts and len(plain) < len(names):
            out.append(str(array_counts[key]))
    return out
