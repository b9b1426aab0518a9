"""A network namespace with nothing but loopback, and a real PostgreSQL server inside it.

The server listens on 127.0.0.1 inside the namespace only (so nothing outside the machine, nor the host's
own interfaces, can be reached or reach it) and on a Unix socket in its data folder, through which
tests in this process, outside the namespace, talk to it as well.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest


class Namespace:
    """A network namespace with only loopback, held open by a sleeping process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--fork", "--kill-child", "sleep", "3600"])
        # Ray keeps its sessions and sockets here; a cluster of its own per namespace.
        self.ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        deadline = time.time() + 10
        while time.time() < deadline:
            kids = psutil.Process(self.holder.pid).children()
            if kids:
                self.pid = kids[0].pid
                break
            time.sleep(0.05)
        self.run("ip", "link", "set", "lo", "up")

    def argv(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", *cmd]

    def run(self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.argv(*cmd), env=env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} exited {p.returncode}: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        return p

    def close(self) -> None:
        """Stop every process in the namespace (a whole Ray cluster), then the namespace itself.

        Not `ray stop`, which stops every Ray process on the machine, other clusters included."""
        ours = os.readlink(f"/proc/{self.pid}/ns/net")
        for proc in psutil.process_iter():
            try:
                if proc.pid != self.pid and os.readlink(f"/proc/{proc.pid}/ns/net") == ours:
                    proc.kill()
            except (OSError, psutil.Error):
                pass
        self.holder.kill()
        self.holder.wait()
        shutil.rmtree(self.ray_dir, ignore_errors=True)


class Postgres:
    """Where a running server answers: `url` inside the namespace, `socket_url` from anywhere here."""

    def __init__(self, port: int, data: Path):
        self.port, self.data = port, data
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.socket_url = self.database("postgres")

    def database(self, name: str) -> str:
        return f"postgresql://postgres@/{name}?host={self.data}&port={self.port}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database: each test its own, on one server."""
        self.drop_database(name)
        self._admin(f'CREATE DATABASE "{name}"')
        return self.database(name)

    def drop_database(self, name: str) -> None:
        """Gone, even while clients are connected to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.data), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]


@contextmanager
def postgres_server(ns: Namespace, port: int, env: dict[str, str] | None = None) -> Iterator[Postgres]:
    """A real PostgreSQL server inside the namespace, on 127.0.0.1, run as the postgres user."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    bindir = Path(bins[-1]).parent
    # Under a folder the postgres user can reach (pytest's own are private to root).
    data = Path(tempfile.mkdtemp(prefix="chipaudit-pg-"))
    subprocess.run(["chown", "postgres:postgres", str(data)], check=True)
    as_pg = ["runuser", "-u", "postgres", "--"]
    try:
        ns.run(*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", env=env)
        ns.run(*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
               f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "start", env=env)
        yield Postgres(port, data)
    finally:
        ns.run(*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop", env=env, check=False)
        shutil.rmtree(data, ignore_errors=True)
