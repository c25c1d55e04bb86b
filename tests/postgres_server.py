"""A real PostgreSQL server for the tests: a private cluster in a temporary directory,
listening on loopback only, started with the server binaries of Debian's ``postgresql``
package (``make test`` installs it) and stopped at the end of the session."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "flexlog"


def server_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: Debian keeps them out of PATH."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``with PostgresServer() as pg: pg.url()``. The server refuses to run as root, so as
    root it runs as the ``postgres`` user the package creates."""

    def __init__(self) -> None:
        bindir = server_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found: `make test` installs Debian's "
                "postgresql package (apt-get install postgresql)"
            )
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="flexlog-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "--no-sync",
        )
        self.resume()
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, USER
        )
        return self

    def resume(self) -> None:
        """Start the server on its data directory (again)."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        log = str(self.root / "server.log")
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "start",
        )

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (``resume`` starts it again)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    def url(self, schema: str | None = None) -> str:
        base = f"postgresql://{USER}@127.0.0.1:{self.port}/{USER}"
        return base if schema is None else f"{base}?options=-csearch_path%3D{schema}"

    def fresh_url(self) -> str:
        """A URL of its own: a new schema, so that each test starts from an empty cache."""
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return self.url(schema)

    def stop(self) -> None:
        try:
            self.halt("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
