"""A PostgreSQL server of a test's own, to restart or stop while `send-due` runs.

The shared server (FOLLOWUPS_TEST_DATABASE_URL) serves other test runs and must never be
restarted. This one is made with the same installation's `initdb` and `pg_ctl` in a
temporary directory, on a free port, with trust authentication on 127.0.0.1 only, and is
removed afterwards. `initdb` refuses to run as root, so as root it runs as the `postgres`
OS user (`runuser`), as CI does.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from followup_cli import migrate
from followup_cli.db import Database


def find_bin_dir() -> Path | None:
    """The newest installed server's bin directory (Debian layout), or one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def why_unavailable() -> str | None:
    """None when a private server can be made here, else the reason."""
    if find_bin_dir() is None:
        return "no initdb / pg_ctl found (/usr/lib/postgresql/*/bin or PATH)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    def __init__(self, superuser: str = "postgres") -> None:
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        self._bin = bin_dir
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="followups-pg-"))
        self._data = self._dir / "data"
        self._log = self._dir / "server.log"
        self.superuser = superuser
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            entry = pwd.getpwnam("postgres")
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self._data), "-U", superuser, "--auth=trust", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self._bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self._dir,
            timeout=120,
        )

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            action,
            "-D",
            str(self._data),
            "-l",
            str(self._log),
            "-w",
            "-o",
            options,
            *args,
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        """A fast shutdown: sessions get "terminating connection due to administrator
        command", as in a managed database's restart or failover."""
        self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        return f"postgresql+psycopg://{user or self.superuser}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh database with this tool's schema; its URL."""
        name = f"followups_{uuid.uuid4().hex[:8]}"
        admin = Database(self.url())
        try:
            with admin.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    f'CREATE DATABASE "{name}"'
                )
        finally:
            admin.close()
        db = Database(self.url(name))
        try:
            migrate.upgrade(db)
        finally:
            db.close()
        return self.url(name)

    def remove(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self._dir, ignore_errors=True)
