"""A real PostgreSQL for the tests of shared catalogs: a private server per test session, on 127.0.0.1 at a
free port, its socket in its own temporary folder, stopped and removed at teardown; each test gets a
database of its own. Skipped, saying why, where PostgreSQL's initdb and pg_ctl are not installed."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from warehouse import lake

_SEARCH = ["/usr/local/bin", "/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    port: int
    folder: Path
    _names: Iterator[int]

    def catalog(self, dbname: str) -> str:
        return f"postgres:dbname={dbname} host=127.0.0.1 port={self.port} user=postgres"

    def new_database(self) -> str:
        """A fresh, empty database; its --db catalog spec."""
        name = f"actwh_test_{next(self._names)}"
        con = lake.new_connection(postgres=True)
        try:
            con.execute(f"ATTACH '{self.catalog('postgres').removeprefix('postgres:')}' AS server (TYPE postgres)")
            con.execute(f"CALL postgres_execute('server', 'CREATE DATABASE {name}', use_transaction => false)")
        finally:
            con.close()
        return self.catalog(name)


def _as_postgres_user() -> list[str]:
    """initdb and the server refuse to run as root: run them as the postgres user there."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise NotAvailable("running as root without runuser: PostgreSQL cannot be started for the shared-catalog tests")
    return [runuser, "-u", "postgres", "--"]


class NotAvailable(Exception):
    """PostgreSQL cannot be run here; the message says why."""


@contextlib.contextmanager
def running_server() -> Iterator[Server]:
    """A private PostgreSQL server for the length of the block (bench/ uses it too)."""
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise NotAvailable("PostgreSQL is not installed (no initdb/pg_ctl on PATH): shared-catalog tests need it")
    prefix = _as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="actwh-pg-"))
    if prefix:
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "log"
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], **run)  # type: ignore[call-overload]
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=200 -c fsync=off"
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], **run)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL did not start: {(exc.stderr or exc.stdout).strip().splitlines()[-1:]}"
        ) from None
    try:
        yield Server(port, folder, itertools.count())
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    try:
        with running_server() as server:
            yield server
    except NotAvailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pg_catalog(postgres_server: Server) -> str:
    """A new, empty shared catalog for one test: `--db` spec `postgres:dbname=... host=127.0.0.1 port=...`."""
    return postgres_server.new_database()
