"""A PostgreSQL server of a test's own: initdb into a temporary directory, its own free port and
socket directory, stopped and deleted afterwards.

Tests that stop, restart or break a server use this one, never the machine-wide server that
every other test (and anyone else on the host) is connected to. It runs the server binaries of
the local install (Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH); as root it
runs them as the `postgres` OS user, since the server refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def server_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (the newest Debian install, else PATH)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(part) for part in p.parent.parent.name.split(".") if part.isdigit()],
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayPostgres:
    """One initdb'd cluster: `start()`, `stop()` (fast shutdown, as an operator's restart does),
    `url` for the superuser `postgres` (trust auth unless `auth` gives initdb other options),
    `socket_dir` for local connections, `close()` deletes it all."""

    def __init__(self, bindir: Path, auth: tuple[str, ...] = ("--auth=trust",)) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="fitserve-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", *auth,
                  "--encoding=UTF8", "--no-sync", "--no-instructions")  # fmt: skip

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as_user, str(self.bindir / tool), *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}{log}")

    def start(self, *, durable: bool = False) -> None:
        """fsync off unless `durable`: nothing here outlives the test, and it keeps a shared
        machine's disk quiet. `durable` keeps Postgres' defaults (a benchmark's own server)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            subprocess.run([*self._as_user, *stop], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
