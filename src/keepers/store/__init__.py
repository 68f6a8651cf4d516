"""The store: the only package that writes SQL. DuckDB (embedded) or PostgreSQL, one schema."""

from keepers.store.database import Database, Tx, open_database

__all__ = ["Database", "Tx", "open_database"]
