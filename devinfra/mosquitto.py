"""A real mosquitto broker on a free loopback port, with an optional extra config block (TLS, ACL)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from devinfra.procs import ManagedProcess, free_port, port_open, require_binary

# What config/mosquitto/mosquitto.conf ships: a reader of a whole fleet's retained state gets up
# to three messages per device at once, and mosquitto drops what a client has not taken beyond
# this bound (QoS 0 included); 40000 reads 10,000 devices (docs/protocol.md, "Reading retained state").
MAX_QUEUED_MESSAGES = 40000


def mosquitto_conf(data_dir: Path, port: int, *, anonymous: bool, extra: str = "") -> str:
    """A mosquitto.conf for a loopback listener on `port`, persistence in `data_dir`, the shipped
    per-client queue bound, plus `extra` (TLS, ACL, limits; a later line wins). Persistence on, so
    retained messages and persistent sessions survive a broker restart. Started as root, mosquitto
    drops to the "mosquitto" user and could then not write its persistence file (nor read
    certificates and keys) in 0700 work folders: stay root. TCP_NODELAY on, as
    config/mosquitto/mosquitto.conf recommends (Nagle's algorithm holds a packet for the peer's
    40 ms delayed ACK)."""
    user = "user root\n" if os.geteuid() == 0 else ""
    return (
        f"per_listener_settings false\n{user}"
        f"persistence true\npersistence_location {data_dir}/\nset_tcp_nodelay true\n"
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        f"allow_anonymous {'true' if anonymous else 'false'}\n"
        f"listener {port} 127.0.0.1\n"
        f"{extra}\n"
    )


def mosquitto_argv(conf: Path) -> list[str]:
    return [require_binary("mosquitto"), "-c", str(conf)]


class Mosquitto:
    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None, anonymous: bool = True) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.anonymous = anonymous
        self.conf_path = workdir / "mosquitto.conf"
        self.proc: ManagedProcess | None = None

    def write_conf(self) -> None:
        self.conf_path.write_text(mosquitto_conf(self.workdir, self.port, anonymous=self.anonymous,
                                                 extra=self.extra_conf))

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its config and ACL file without dropping clients."""
        assert self.proc is not None and self.proc.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGHUP)

    def start(self) -> Mosquitto:
        self.write_conf()
        self.proc = ManagedProcess("mosquitto", mosquitto_argv(self.conf_path), self.workdir / "mosquitto.log")
        self.proc.start()
        self.proc.wait_ready(lambda: port_open(self.port))
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()

    def restart(self) -> None:
        self.stop()
        self.start()
