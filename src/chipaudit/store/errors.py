"""The store's one exception type, so that a caller (the CLI) can print one line and choose an exit code
without knowing SQLite, PostgreSQL or SQLAlchemy."""

from __future__ import annotations

from chipaudit.errors import InputError, Unavailable


class StoreError(Unavailable):
    """The store cannot be opened or used. The message is one line and names the database, never with its
    password."""


class StoreTargetError(StoreError, InputError):
    """The store named is no store chipaudit can open (a malformed URL, another database, a missing
    folder): the user's input is wrong (exit 2), unlike a server that cannot be reached (exit 3)."""


class StoreAbsent(StoreError):
    """A store opened only to be read is not there yet: callers word this one for their users."""
