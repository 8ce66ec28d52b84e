"""The embedded default store: SQLite through the standard library."""

from adapters.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
