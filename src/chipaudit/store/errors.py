"""The store's one exception type, so that a caller (the CLI) can print one line and choose an exit code
without knowing SQLite, PostgreSQL or SQLAlchemy."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot be opened or used. The message is one line and names the database, never with its
    password."""


class StoreAbsent(StoreError):
    """A store opened only to be read is not there yet: callers word this one for their users."""
