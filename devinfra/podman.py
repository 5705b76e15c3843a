"""Real podman for tests: the dev containers.conf (runc and lowered ulimits: on these machines
podman's default crun fails with "setrlimit RLIMIT_NOFILE: Operation not permitted"), the REST API
service on a private socket, and tiny local images (no registry is reachable)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devinfra.procs import ManagedProcess, require_binary, wait_until
from edge_agent.api_url import podman_ping

DEV_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
[engine]
runtime = "runc"
"""
BUSYBOX_IMAGE = "localhost/edge-test-busybox:1"


def use_dev_containers_conf(workdir: Path) -> Path:
    """Point podman (CLI and service) at the dev containers.conf for this process and children."""
    conf = workdir / "containers.conf"
    conf.write_text(DEV_CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(conf)
    return conf


def podman(
    *args: str, check: bool = True, timeout: float = 300, store: PrivateStore | None = None
) -> subprocess.CompletedProcess[str]:
    """The podman CLI on the machine's container store, or on `store`."""
    argv = ["podman", *(store.options if store else ()), *args]
    env = {**os.environ, **store.env} if store else None
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, env=env)


def podman_answers(url: str) -> bool:
    """The podman API at `url` answers its ping (podman-py, as `edge-agent check` asks it)."""
    try:
        podman_ping(url, timeout=2)
    except OSError:
        return False
    return True


def podman_service_argv(url: str, options: Sequence[str] = ()) -> list[str]:
    """`podman system service` on `url` with no idle timeout: the API the agent talks to."""
    return [require_binary("podman"), *options, "system", "service", "--time=0", url]


@dataclass(frozen=True)
class PrivateStore:
    """A container store of its own, for a test whose subject is what the whole store holds (so no
    other test's containers and images are in it). Nothing of it is shared with the machine's store:
    not the storage, not the per-boot folder (podman "refreshes" a store whose per-boot folder it
    finds new, as after a reboot), not the locks (the default shared-memory locks are one set per
    machine, and a refresh frees them all): file locks in its own folder."""

    options: tuple[str, ...]  # podman's global options
    env: dict[str, str]  # CONTAINERS_CONF: the dev containers.conf plus the store's own locks


@contextmanager
def private_store(folder: Path) -> Iterator[PrivateStore]:
    """A PrivateStore in `folder`, removed at the end."""
    (folder / "root").mkdir(parents=True)
    # podman refuses a runroot path over 50 characters
    short = Path(tempfile.mkdtemp(prefix="edge-store-"))
    conf = folder / "containers.conf"
    conf.write_text(DEV_CONTAINERS_CONF + f'lock_type = "file"\ntmp_dir = "{short / "libpod"}"\n')
    store = PrivateStore(("--root", str(folder / "root"), "--runroot", str(short / "run")),
                         {"CONTAINERS_CONF": str(conf)})
    try:
        yield store
    finally:
        for kind in ("container", "image"):  # nothing runs there, so nothing stays mounted
            podman(kind, "rm", "--all", "--force", check=False, store=store)
        shutil.rmtree(short, ignore_errors=True)


def copy_image_into(store: PrivateStore, image: str) -> None:
    """Copy `image` from the machine's store into a private one (podman save | podman load)."""
    saved = subprocess.run(["podman", "save", "-q", image], check=True, capture_output=True, timeout=300).stdout
    subprocess.run(["podman", *store.options, "load", "-q"], input=saved, check=True, capture_output=True,
                   timeout=300, env={**os.environ, **store.env})


class PodmanService:
    """`podman system service` on a private socket: the API the agent talks to, on the machine's
    container store or on `store`."""

    def __init__(self, workdir: Path, store: PrivateStore | None = None) -> None:
        self.workdir = workdir
        self.store = store
        self.socket_path = workdir / "podman.sock"
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> PodmanService:
        self.proc = ManagedProcess(
            "podman-service", podman_service_argv(self.url, self.store.options if self.store else ()),
            self.workdir / "podman-service.log", env=self.store.env if self.store else None,
        )
        self.proc.start()
        self.proc.wait_ready(lambda: podman_answers(self.url), timeout=30)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


@contextmanager
def image_build_lock(name: str) -> Iterator[None]:
    """The lock scripts/image-lock.sh takes for building image `name`: the test suite's two workers
    never build one image at once (the second waits, then finds it)."""
    folder = Path(os.environ.get("EDGE_DEV_DIR", "/var/tmp/edge-agent-dev"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"build-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_busybox_image(name: str = BUSYBOX_IMAGE) -> str:
    """A tiny image made from busybox-static (instant, no registry needed)."""
    if podman("image", "exists", name, check=False).returncode == 0:
        return name
    with image_build_lock(name):
        if podman("image", "exists", name, check=False).returncode != 0:
            _import_busybox(name)
    return name


def _import_busybox(name: str) -> None:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("busybox-static is not installed: run scripts/install-deps.sh")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        (root / "bin").mkdir(parents=True)
        for d in ("tmp", "etc", "proc", "sys", "dev", "run", "var"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin/busybox")
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            link = root / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        podman("import", "--change", 'CMD ["/bin/sh"]', str(archive), name)


def wait_podman_gone(name: str, timeout: float = 30) -> None:
    wait_until(lambda: podman("container", "exists", name, check=False).returncode != 0, timeout, f"{name} removed")
