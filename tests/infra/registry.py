"""A real OCI registry (docker-registry / distribution 2.8) on a free loopback port."""

from __future__ import annotations

from pathlib import Path

from tests.infra.podman import registry_reachable
from tests.infra.procs import ManagedProcess, free_port, require_binary


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
        binary = require_binary("docker-registry")
        conf = self.workdir / "config.yml"
        conf.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.workdir}/data\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.proc = ManagedProcess("registry", [binary, "serve", str(conf)], self.workdir / "registry.log")
        self.proc.start()
        self.proc.wait_ready(lambda: registry_reachable(self.url))
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
