"""Secrets out of everything diagnostics sends or writes: the support bundle (every file in it) and
remote log lines.

Three layers, because no one of them is enough:
1. By value: every secret this device knows (what each secret reference in the config resolves
   to, the contents of key files, systemd credentials, environment variables whose names say
   secret, module containers' secret-named environment values) is replaced wherever it appears,
   in any file, log line or podman answer.
2. By name: in the config and in anything shaped as `name = value` / `"name": value`, values of
   keys named like password, secret, token, credential, private key, auth are replaced.
3. By shape: PEM private key blocks.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6  # shorter values would blank out ordinary words and numbers
MAX_KEY_FILE_BYTES = 256 * 1024
SECRET_NAME = re.compile(r"pass(word|wd|phrase)?|secret|token|credential|api[_-]?key|private|auth|session|cookie",
                         re.IGNORECASE)
SECRET_REF = re.compile(r"^(file|env|credential):[^\s]+$")  # a reference names a secret; it is not one
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                         re.DOTALL)
# A key starts a token (no backtracking through long words: a module's base64 line costs linear
# time) and is at most 64 characters.
ASSIGNMENT = re.compile(
    r"""(?P<key>(?<![A-Za-z0-9_.-])["']?[A-Za-z0-9_.-]{0,32}"""
    r"""(?:pass(?:word|wd|phrase)?|secret|token|credential|api[_-]?key|private[_-]?key)"""
    r"""[A-Za-z0-9_.-]{0,32}["']?\s{0,8}[:=]\s{0,8})(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,;}&]+)""",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


class Scrubber:
    """Replaces known secret values, secret-named assignments and PEM private keys in text."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        found: set[str] = set()
        for value in values:
            for piece in (value, value.strip()):
                if len(piece) >= MIN_SECRET_CHARS:
                    found.add(piece)
        self.values = sorted(found, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self.values)) if self.values else None

    def text(self, text: str) -> str:
        text = PEM_PRIVATE.sub(REDACTED, text)
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return ASSIGNMENT.sub(lambda m: m.group("key") + _redacted_like(m.group("value")), text)

    def data(self, data: bytes) -> bytes:
        return self.text(data.decode("utf-8", "replace")).encode()


def _redacted_like(value: str) -> str:
    if SECRET_REF.match(value.strip("\"'")):
        return value
    return f'"{REDACTED}"' if value.startswith('"') else (f"'{REDACTED}'" if value.startswith("'") else REDACTED)


# --------------------------------------------------------------------------- what the device knows


def _read_small(path: Path) -> str | None:
    try:
        if path.is_file() and path.stat().st_size <= MAX_KEY_FILE_BYTES:
            return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    return None


def _file_values(text: str) -> list[str]:
    """A secret file's content, and each of its lines (a PEM body line leaked alone is caught too)."""
    return [text, text.strip(), *(line.strip() for line in text.splitlines() if len(line.strip()) >= 16)]


def config_secret_values(config: Any) -> list[str]:
    """Every secret the loaded config points at: what each secret reference resolves to (errors
    ignored: an unresolvable secret cannot leak) and the contents of *key* files."""
    from pydantic import BaseModel

    from edge_shared.mqtt_config import SecretRef

    out: list[str] = []

    def walk(node: Any, name: str) -> None:
        if isinstance(node, BaseModel):
            for field_name in type(node).model_fields:
                walk(getattr(node, field_name), field_name)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, str(key))
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item, name)
        elif isinstance(node, SecretRef):
            with contextlib.suppress(OSError, KeyError, ValueError):
                out.extend(_file_values(node.resolve()))
            if node.scheme == "file":
                text = _read_small(Path(node.target))
                out.extend(_file_values(text) if text else [])
        elif isinstance(node, Path) and "key" in name.lower():
            text = _read_small(node)
            out.extend(_file_values(text) if text else [])

    walk(config, "")
    return out


def environment_secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets, and systemd credentials' contents."""
    env = os.environ if environ is None else environ
    out = [value for name, value in env.items() if is_secret_name(name)]
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        try:
            for path in Path(cred_dir).iterdir():
                text = _read_small(path)
                out.extend(_file_values(text) if text else [])
        except OSError:
            pass
    return out


def container_secret_values(env_lists: Iterable[Iterable[str]]) -> list[str]:
    """Secret-named values of containers' environments (podman inspect Config.Env: NAME=VALUE)."""
    out = []
    for env in env_lists:
        for item in env:
            name, sep, value = item.partition("=")
            if sep and is_secret_name(name):
                out.append(value)
    return out


# --------------------------------------------------------------------------- the config file


def redact_config_text(text: str, scrubber: Scrubber) -> str:
    """The config file as TOML without comments (a comment can hold anything), each secret-named
    key's value replaced (a secret reference stays: it names where the secret is, not the secret),
    then scrubbed by value. A file that does not parse is scrubbed line by line instead, so a
    broken config (when a technician most needs the bundle) is still included."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        lines = [f"# not valid TOML ({exc}); comments removed, secret-named values and known secrets redacted"]
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                continue
            key, sep, _ = stripped.partition("=")
            if sep and is_secret_name(key):
                lines.append(f"{key.rstrip()} = \"{REDACTED}\"")
            else:
                lines.append(line)
        return scrubber.text("\n".join(lines) + "\n")
    return scrubber.text(_emit(doc))


def _redact_tree(node: Any, name: str) -> Any:
    if isinstance(node, dict):
        return {k: _redact_tree(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_tree(v, name) for v in node]
    if is_secret_name(name) and not (isinstance(node, str) and SECRET_REF.match(node)):
        return REDACTED if not isinstance(node, bool) else node
    return node


def _value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def _key(key: str) -> str:
    import json

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _tables(value: Any) -> bool:
    """An array of tables ([[name]] in TOML)."""
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)


def _emit(doc: dict[str, Any]) -> str:
    doc = _redact_tree(doc, "")
    out: list[str] = []

    def table(node: dict[str, Any], path: list[str], header: str | None) -> None:
        scalars = {k: v for k, v in node.items() if not isinstance(v, dict) and not _tables(v)}
        if header is not None and (scalars or not node):
            out.append(header)
        for key, value in scalars.items():
            out.append(f"{_key(key)} = {_value(value)}")
        for key, value in node.items():
            sub = [*path, _key(key)]
            if isinstance(value, dict):
                table(value, sub, f"[{'.'.join(sub)}]")
            elif _tables(value):
                for item in value:
                    out.append(f"[[{'.'.join(sub)}]]")
                    table(item, sub, None)

    table(doc, [], None)
    return "\n".join(out) + "\n"
