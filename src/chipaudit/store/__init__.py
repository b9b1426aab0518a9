"""The one data layer of chipaudit: the run history and the fleet runs, in one SQLite file (by default)
or one PostgreSQL database, through SQLAlchemy Core.

`Store.open` gives a migrated database; `schema` holds its tables and version; `dialects` is the only
place where SQLite and PostgreSQL differ. The history (chipaudit.evidence.history) and the fleet store
(chipaudit.fleet.store) are thin sets of queries over it.
"""

from chipaudit.store.database import Store
from chipaudit.store.errors import StoreAbsent, StoreError, StoreTargetError
from chipaudit.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Store", "StoreAbsent", "StoreError", "StoreTargetError"]
