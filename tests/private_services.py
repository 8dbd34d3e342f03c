"""A Redis and a PostgreSQL of a test's own, to stop and start under a running chat.

The fault tests must not touch the machine's shared servers, so each starts
its own from the same binaries (``redis-server``; PostgreSQL's ``initdb`` and
``pg_ctl``) on a free port, in a temporary directory, and ends only those.
``missing()`` says why they cannot run here (the test then skips, or fails
under ``CI=true``).
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from tests.servers import free_port, stop_process


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why a private Redis or PostgreSQL cannot be started here, or None."""
    if shutil.which("redis-server") is None:
        return "needs redis-server on PATH (apt-get install redis-server)"
    if _postgres_bin() is None:
        return "needs PostgreSQL's server binaries (apt-get install postgresql)"
    return None


def _wait(ready, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.1)


class PrivateRedis:
    """A redis-server on a free port, keeping nothing on disk."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait(self._answers, "redis-server")

    def stop(self) -> None:
        """Stop it (its data is gone: it keeps nothing on disk)."""
        if self.process is not None:
            stop_process(self.process)
        self.process = None


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a free port, trust auth."""

    def __init__(self) -> None:
        bindir = _postgres_bin()
        assert bindir is not None
        self.bindir = bindir
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        # Not under pytest's tmp_path: the server runs as the postgres user
        # (it refuses root), which may not enter root's private directories.
        self.dir = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")
        _wait(self._answers, "PostgreSQL")

    def stop(self) -> None:
        """Stop it the way an administrator does (fast: open connections are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
