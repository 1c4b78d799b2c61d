"""Persistence: ORM models, engines and sessions, migrations. SQL itself lives in `repositories.py`."""

from app.db.base import Base, UTCDateTime, new_id, utcnow
from app.db.session import Database, is_busy_error, make_engine, make_sessionmaker

__all__ = [
    "Base",
    "Database",
    "UTCDateTime",
    "is_busy_error",
    "make_engine",
    "make_sessionmaker",
    "new_id",
    "utcnow",
]
