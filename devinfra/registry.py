"""A real OCI registry (docker-registry / distribution 2.8) on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import requests

from devinfra.procs import ManagedProcess, free_port, require_binary


def registry_config(workdir: Path, port: int) -> Path:
    """docker-registry's config.yml: a filesystem store in `workdir`, deletes on, 127.0.0.1:port."""
    conf = workdir / "config.yml"
    conf.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {workdir}/data\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    return conf


def registry_argv(conf: Path) -> list[str]:
    return [require_binary("docker-registry"), "serve", str(conf)]


def registry_reachable(url: str) -> bool:
    try:
        return requests.get(f"{url}/v2/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Registry:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Registry:
        conf = registry_config(self.workdir, self.port)
        self.proc = ManagedProcess("registry", registry_argv(conf), self.workdir / "registry.log")
        self.proc.start()
        self.proc.wait_ready(lambda: registry_reachable(self.url))
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
