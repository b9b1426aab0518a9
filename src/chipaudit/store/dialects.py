"""Everything that differs between SQLite and PostgreSQL, and nothing else: how a target becomes an engine,
how a write transaction takes its lock, where the schema version lives, how a duplicate insert is ignored,
and how a driver's error reads. The rest of the store is written once, in SQLAlchemy Core.

SQLite is the default (one file in the user's data folder); PostgreSQL serves a fleet whose results
should live on a server. Neither dialect's peculiarities may leak out of this module.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql.dml import Insert

from chipaudit.store.errors import StoreAbsent, StoreError, StoreTargetError

# A deep audit holds SQLite's write lock for milliseconds; a minute of waiting means something is wrong.
LOCK_TIMEOUT_S = 60.0
# Seconds to wait for a PostgreSQL server to answer before giving up with a clear error.
CONNECT_TIMEOUT_S = 10
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
# The execution option that marks a write transaction: on SQLite it must take the write lock at BEGIN,
# or two writers that both read first deadlock on the upgrade and one fails at once instead of waiting.
WRITE = "chipaudit_write"
# Any constant: the advisory lock that queues concurrent migrations of one PostgreSQL database, whose
# CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin.
_MIGRATION_LOCK = 0x63686970
# PostgreSQL has no PRAGMA user_version; the version lives in a one-row table of its own.
_PG_VERSION_TABLE = "chipaudit_schema"


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def display_name(target: str | Path) -> str:
    """The target as messages may show it: a path as given, a URL with its password hidden."""
    if "://" not in str(target):
        return str(target)
    try:
        return make_url(str(target)).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):  # unparsable, yet perhaps with a password in it
        return re.sub(r"(://[^/:@]*):[^@/]*@", r"\1:***@", str(target))


def engine_for(target: str | Path, create: bool) -> Engine:
    """An engine for a SQLite file path or a postgresql:// URL. A missing SQLite file is created only with
    `create`; otherwise StoreAbsent, so that a reader never leaves an empty database behind."""
    if is_postgres(target):
        return _postgres_engine(str(target))
    if "://" in str(target):
        raise StoreTargetError(f"{display_name(target)}: a store is a SQLite file path or a postgresql:// URL")
    return _sqlite_engine(Path(target), create)


def _postgres_engine(url: str) -> Engine:
    try:
        import psycopg  # noqa: F401  (SQLAlchemy would otherwise name a driver the user never asked for)
    except ImportError as e:
        raise StoreTargetError("a PostgreSQL store needs psycopg: pip install 'chipaudit[fleet]'") from e
    try:
        parsed = make_url(url).set(drivername="postgresql+psycopg")
    except (exc.ArgumentError, ValueError) as e:
        raise StoreTargetError(f"{display_name(url)}: not a usable PostgreSQL URL ({describe(e)})") from e
    # pre-ping: a long fleet run survives a server restart between two of its writes.
    return create_engine(parsed, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True)


def _sqlite_engine(path: Path, create: bool) -> Engine:
    if not path.exists():
        if not create:
            raise StoreAbsent(f"{path}: does not exist")
        if not path.parent.is_dir():
            raise StoreTargetError(f"{path}: the folder {path.parent} does not exist")
    engine = create_engine(URL.create("sqlite", database=str(path)), connect_args={"timeout": LOCK_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _connected(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # the driver's own implicit BEGIN would defeat BEGIN IMMEDIATE below
        dbapi.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


def lock_for_migration(conn: Connection) -> None:
    """Queue concurrent migrations. SQLite's write transaction already holds the only write lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


def read_version(conn: Connection) -> int:
    """The schema version; 0 for an empty database, or for a PostgreSQL store written before versions."""
    if conn.dialect.name == "sqlite":
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": _PG_VERSION_TABLE}).scalar() is None:
        return 0
    return int(conn.execute(text(f"SELECT max(version) FROM {_PG_VERSION_TABLE}")).scalar() or 0)


def write_version(conn: Connection, version: int) -> None:
    """SQLite keeps it in the file header, where chipaudit before the one store already looked: such an
    older chipaudit then refuses to write into a newer file instead of corrupting it."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
        return
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {_PG_VERSION_TABLE} (version INTEGER NOT NULL)"))
    conn.execute(text(f"DELETE FROM {_PG_VERSION_TABLE}"))
    conn.execute(text(f"INSERT INTO {_PG_VERSION_TABLE} (version) VALUES (:v)"), {"v": int(version)})


def insert_ignoring_duplicates(conn: Connection, table: Table) -> Insert:
    """An INSERT that leaves an existing row with the same key as it is (ON CONFLICT DO NOTHING)."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def describe(e: BaseException) -> str:
    """The driver's own first line: SQLAlchemy's wrapper would add the statement and its parameters (a
    whole report) and a link."""
    original = getattr(e, "orig", None) or e
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__


def error_for(name: str, e: BaseException) -> StoreError:
    """One line naming the store. A file that is no SQLite database at all (SQLite's NOTADB and CORRUPT
    codes, which its Python driver raises as a bare DatabaseError) is the user's input, exit 2; anything
    else is the store failing, exit 3."""
    kind = StoreTargetError if type(getattr(e, "orig", None)) is sqlite3.DatabaseError else StoreError
    return kind(f"{name}: {describe(e)}")
