"""Where a module's artifacts live on the device, and how a new version is put there atomically.

    <state>/artifacts/<module>/<slot>/          bind-mounted read-only at the artifact's path
        sha256-<manifest hex>/                   one complete version: model.onnx, model.onnx.sha256,
                                                 model.json, .manifest.json (the manifest itself)
        current  -> sha256-<hex>                 what the module reads (<path>/current/model.onnx)
        previous -> sha256-<hex>                 the one before, kept for a rollback
        .staging-<hex>-<random>/                 a download in progress (never seen through current)

A version directory appears only by rename from its staging directory after every file was
downloaded and its digest checked, so its existence means it is complete. `current` is switched
with a rename of a new symlink over the old one: the module sees the old set or the new set,
never a mix. The layout on disk is the state: nothing about artifacts is kept in the database.

Blocking file and network I/O; the callers run it with edge_shared.threads.run_blocking.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_agent.logs import get_logger
from edge_shared.artifacts.format import (
    METADATA_FILE,
    ArtifactContents,
    ArtifactFormatError,
    artifact_contents,
    validate_metadata,
)
from edge_shared.strict_json import loads_strict
from edge_shared.trust.registry import RegistryClient, RegistryError, parse_reference

log = get_logger(__name__)


MANIFEST_FILE = ".manifest.json"
CURRENT, PREVIOUS = "current", "previous"
DEFAULT_MAX_ARTIFACT_BYTES = 512 * 1024 * 1024  # streamed to disk, never held in memory


class ArtifactFailed(Exception):
    """`code`: artifact_digest_mismatch, artifact_invalid, artifact_not_found, artifact_unreachable,
    artifact_too_large, artifact_io."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


_REGISTRY_CODES = {
    "digest_mismatch": "artifact_digest_mismatch",
    "not_found": "artifact_not_found",
    "too_large": "artifact_too_large",
    "unreachable": "artifact_unreachable",
    "truncated": "artifact_unreachable",
}


def version_name(digest: str) -> str:
    return "sha256-" + digest.removeprefix("sha256:")


STAGING_PREFIX = ".staging-"


def digest_of_name(name: str) -> str | None:
    return "sha256:" + name.removeprefix("sha256-") if name.startswith("sha256-") else None


@dataclass(frozen=True)
class Placed:
    digest: str  # the manifest digest now `current`
    previous: str | None  # what `current` was before (None: nothing, or the same)
    contents: ArtifactContents


class ArtifactDirs:
    """The artifact tree under the agent's state directory."""

    def __init__(
        self, root: Path, registry: RegistryClient | None = None, max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        min_free_bytes: int = 0,
    ) -> None:
        self.root = root
        self.registry = registry
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes  # state.min_free_mb: what a download must leave free
        self._staging: set[Path] = set()  # staging folders of downloads in progress (in threads)
        self._lock = threading.Lock()

    def slot_dir(self, module: str, slot: str) -> Path:
        return self.root / module / slot

    def version_dir(self, module: str, slot: str, digest: str) -> Path:
        return self.slot_dir(module, slot) / version_name(digest)

    def link(self, module: str, slot: str, which: str = CURRENT) -> str | None:
        """The manifest digest `current` (or `previous`) points at, None when there is none."""
        try:
            return digest_of_name(os.readlink(self.slot_dir(module, slot) / which))
        except OSError:
            return None

    def ensure_slot(self, module: str, slot: str) -> Path:
        """The directory to mount (made if missing, readable by the module's user)."""
        path = self.slot_dir(module, slot)
        _make_dirs(path)
        path.chmod(0o755)
        return path

    def contents(self, module: str, slot: str, digest: str) -> ArtifactContents | None:
        """The contents of a complete version on disk, None when it is not there."""
        try:
            body = (self.version_dir(module, slot, digest) / MANIFEST_FILE).read_bytes()
        except OSError:
            return None
        try:
            return artifact_contents(body)
        except ArtifactFormatError:
            return None

    # ------------------------------------------------------------------ download

    def fetch(self, module: str, slot: str, reference: str) -> ArtifactContents:
        """Make the version `reference` (repository@sha256:...) complete on disk: nothing to do when
        it is already there; otherwise download manifest and blobs into a staging directory,
        checking every digest, and rename it into place. Raises ArtifactFailed."""
        ref = parse_reference(reference)
        digest = ref.digest
        if digest is None:
            raise ArtifactFailed("artifact_invalid", f"{reference}: not pinned to a digest")
        have = self.contents(module, slot, digest)
        if have is not None:
            return have
        if self.registry is None:
            raise ArtifactFailed("artifact_unreachable", f"{reference}: not on the device and no registry client")
        log.info("artifact %s downloading for module %s", reference, module,
                 extra={"EVENT": "artifact.fetching", "MODULE": module, "DIGEST": digest})
        slot_dir = self.ensure_slot(module, slot)
        staging = slot_dir / f"{STAGING_PREFIX}{digest.removeprefix('sha256:')[:12]}-{secrets.token_hex(4)}"
        with self._lock:
            self._staging.add(staging)
        try:
            manifest = self.registry.get_manifest(ref, digest)
            try:
                contents = artifact_contents(manifest.body, f"{ref.repository}@{digest}")
            except ArtifactFormatError as exc:
                raise ArtifactFailed(exc.code, str(exc)) from None
            total = sum(f.size for f in contents.files)
            if total > self.max_bytes:
                raise ArtifactFailed("artifact_too_large", f"{reference}: {total} bytes; the limit is {self.max_bytes}")
            usage = shutil.disk_usage(slot_dir)
            check_space(usage.total, usage.free, total, self.min_free_bytes, reference)
            staging.mkdir(mode=0o755)
            for f in contents.files:
                with open(staging / f.name, "xb") as fh:
                    written = self.registry.download_blob(ref, f.digest, fh, max_bytes=max(f.size, 1))
                    if written != f.size:
                        raise ArtifactFailed(
                            "artifact_digest_mismatch",
                            f"{reference}: {f.name} is {written} bytes, the manifest says {f.size}",
                        )
                    fh.flush()
                    os.fchmod(fh.fileno(), 0o644)  # before the fsync: the mode must survive a power cut too
                    os.fsync(fh.fileno())
                if f.sidecar:
                    _write(staging / (f.name + ".sha256"), f"{f.digest.removeprefix('sha256:')}  {f.name}\n".encode())
            check_metadata(staging / METADATA_FILE, reference)
            _write(staging / MANIFEST_FILE, manifest.body)
            staging.chmod(0o755)
            _fsync_dir(staging)
            os.replace(staging, self.version_dir(module, slot, digest))
            _fsync_dir(slot_dir)
        except RegistryError as exc:
            code = _REGISTRY_CODES.get(exc.code, "artifact_registry_error")
            raise ArtifactFailed(code, f"{reference}: {exc.message}") from None
        except OSError as exc:
            if self.contents(module, slot, digest) is not None:  # another fetch finished it first
                return self.contents(module, slot, digest)  # type: ignore[return-value]
            where = exc.filename or staging
            raise ArtifactFailed("artifact_io", f"{reference}: cannot write {where}: {exc.strerror}") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._staging.discard(staging)
        log.info(
            "artifact %s downloaded for module %s (%d bytes)",
            reference,
            module,
            total,
            extra={"EVENT": "artifact.fetched", "MODULE": module, "DIGEST": digest},
        )
        return contents

    # ------------------------------------------------------------------ switch and collect

    def switch(self, module: str, slot: str, digest: str) -> Placed:
        """Point `current` at a complete version (atomically); the old one becomes `previous`."""
        contents = self.contents(module, slot, digest)
        if contents is None:
            raise ArtifactFailed("artifact_io", f"module {module}: {digest} is not on the device")
        slot_dir = self.ensure_slot(module, slot)
        old = self.link(module, slot)
        if old == digest:
            return Placed(digest, None, contents)
        if old is not None and self.contents(module, slot, old) is not None:
            _relink(slot_dir, PREVIOUS, version_name(old))
        _relink(slot_dir, CURRENT, version_name(digest))
        _fsync_dir(slot_dir)
        log.info(
            "module %s: artifact at %s switched to %s (was %s)",
            module,
            slot,
            digest[:19],
            (old or "none")[:19],
            extra={"EVENT": "artifact.switched", "MODULE": module, "DIGEST": digest},
        )
        return Placed(digest, old, contents)

    def discard(self, module: str, slot: str, digest: str) -> bool:
        """Remove one version now (a module refused it), unless it is `current`; a `previous`
        link to it goes too (a rollback never returns to a model the module refused)."""
        if self.link(module, slot) == digest:
            return False
        slot_dir = self.slot_dir(module, slot)
        if self.link(module, slot, PREVIOUS) == digest:
            (slot_dir / PREVIOUS).unlink(missing_ok=True)
        version = self.version_dir(module, slot, digest)
        if not version.exists():
            return False
        shutil.rmtree(version, ignore_errors=True)
        _fsync_dir(slot_dir)
        log.info("module %s: removed refused artifact version %s", module, digest[:19],
                 extra={"EVENT": "artifact.removed", "MODULE": module, "DIGEST": digest})
        return True

    def collect(self, module: str, slot: str, keep: set[str]) -> list[str]:
        """Remove versions other than `keep`, `current` and `previous` (staging folders: collect_staging)."""
        slot_dir = self.slot_dir(module, slot)
        keep = keep | {d for d in (self.link(module, slot), self.link(module, slot, PREVIOUS)) if d}
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in slot_dir.iterdir():
                digest = digest_of_name(entry.name)
                if entry.is_symlink():
                    continue
                if digest is not None and digest not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(digest)
        for digest in removed:
            log.info(
                "module %s: removed old artifact version %s",
                module,
                digest[:19],
                extra={"EVENT": "artifact.removed", "MODULE": module, "DIGEST": digest},
            )
        return removed

    def collect_staging(self) -> list[Path]:
        """Remove staging folders no download of this process is writing: what a crash or a
        power cut left behind (a download in progress keeps its folder). Blocking: run it in a
        thread."""
        removed = []
        for staging in self.root.glob(f"*/*/{STAGING_PREFIX}*"):
            with self._lock:
                if staging in self._staging:
                    continue
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
            log.info("removed an interrupted artifact download %s", staging,
                     extra={"EVENT": "artifact.staging_removed", "MODULE": staging.parent.parent.name})
        return removed

    def forget_module(self, module: str) -> None:
        shutil.rmtree(self.root / module, ignore_errors=True)


def check_space(total: int, free: int, need: int, min_free: int, reference: str) -> None:
    """Refuse a download of `need` bytes that would leave less than `min_free` bytes free: final
    (artifact_no_space) when it could not fit even on the empty filesystem, else transient
    (artifact_io: retried, something may be freed meanwhile)."""
    mb = 1024 * 1024
    if need + min_free > total:
        raise ArtifactFailed(
            "artifact_no_space",
            f"{reference}: {need / mb:.1f} MB cannot fit on the state filesystem ({total / mb:.1f} MB in all, "
            f"state.min_free_mb={min_free // mb} kept free)",
        )
    if need + min_free > free:
        raise ArtifactFailed(
            "artifact_io",
            f"{reference}: {need / mb:.1f} MB needed and state.min_free_mb={min_free // mb} kept free; "
            f"{free / mb:.1f} MB free on the state filesystem",
        )


def check_metadata(path: Path, reference: str) -> None:
    """The model's metadata (model.json) is what the module reads its input shape from: it is
    checked on the device, not only when the fleet pushed it."""
    try:
        doc = loads_strict(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ArtifactFailed("artifact_invalid_metadata", f"{reference}: {METADATA_FILE}: {exc}") from None
    if not isinstance(doc, dict):
        raise ArtifactFailed("artifact_invalid_metadata", f"{reference}: {METADATA_FILE}: expected a JSON object")
    try:
        validate_metadata(doc, f"{reference}: {METADATA_FILE}")
    except ArtifactFormatError as exc:
        raise ArtifactFailed("artifact_invalid_metadata", str(exc)) from None


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fchmod(fh.fileno(), 0o644)
        os.fsync(fh.fileno())


def _make_dirs(path: Path) -> None:
    """mkdir -p, each new directory's name synced into its parent: a power cut after the version
    was placed in it must not take the whole slot away."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir()
        _fsync_dir(new.parent)


def _relink(directory: Path, name: str, target: str) -> None:
    tmp = directory / f".{name}.{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    os.replace(tmp, directory / name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
