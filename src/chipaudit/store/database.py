"""One database, opened once per use and brought to the current schema on opening.

Every read and every write is one transaction, so a process that dies mid-write leaves the database as
it was; on SQLite a write takes the file's write lock at its start, so concurrent processes queue
(for up to LOCK_TIMEOUT_S) instead of failing or interleaving. Every error of the database, its driver or
SQLAlchemy leaves as StoreError with one line naming the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, Engine, Table, exc
from sqlalchemy.sql.dml import Insert

from chipaudit.store import dialects, schema
from chipaudit.store.errors import StoreError


class Store:
    """The history and the fleet runs of one SQLite file or PostgreSQL database."""

    def __init__(self, name: str, engine: Engine):
        self.name, self.engine = name, engine

    @classmethod
    def open(cls, target: str | Path, create: bool = True) -> Store:
        """Open (with `create`, make) a SQLite file or a postgresql:// URL and migrate it to SCHEMA_VERSION.
        Without `create`, a missing SQLite file raises StoreAbsent and is not created."""
        name = dialects.display_name(target)
        try:
            store = cls(name, dialects.engine_for(target, create))
        except StoreError:
            raise
        except (exc.SQLAlchemyError, ValueError) as e:
            raise dialects.error_for(name, e) from e
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One transaction that only reads: on SQLite it waits for no lock until a writer commits."""
        with self._transaction(write=False) as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction that writes, committed at the end of the block, rolled back on any exception."""
        with self._transaction(write=True) as conn:
            yield conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{dialects.WRITE: write})
                with conn.begin():
                    yield conn
        except StoreError:
            raise
        except exc.SQLAlchemyError as e:
            raise dialects.error_for(self.name, e) from e

    def insert_ignoring_duplicates(self, conn: Connection, table: Table) -> Insert:
        return dialects.insert_ignoring_duplicates(conn, table)

    def migrate(self) -> None:
        """Bring the database to SCHEMA_VERSION. The version is read first without a write lock, so that
        opening a current database (the usual case) never queues behind a writer."""
        with self.read() as conn:
            version = dialects.read_version(conn)
        self._refuse_newer(version)
        if version == schema.SCHEMA_VERSION:
            return
        with self.write() as conn:
            dialects.lock_for_migration(conn)
            version = dialects.read_version(conn)  # another process may have migrated meanwhile
            self._refuse_newer(version)
            for reached, step in schema.MIGRATIONS:
                if reached > version:
                    step(conn)
            if version != schema.SCHEMA_VERSION:
                dialects.write_version(conn, schema.SCHEMA_VERSION)

    def _refuse_newer(self, version: int) -> None:
        if version > schema.SCHEMA_VERSION:
            raise StoreError(f"{self.name}: written by a newer chipaudit (store schema {version}, this one "
                             f"knows {schema.SCHEMA_VERSION}); upgrade chipaudit to use it")
