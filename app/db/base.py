"""Declarative base, constraint naming convention and the column types every model shares."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import DateTime, Dialect, MetaData, String
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, so that migrations can drop and alter them on both databases
# (SQLite batch mode recreates tables and needs every constraint named).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 32  # uuid4().hex


def new_id() -> str:
    """An opaque, unguessable id: 32 lowercase hex digits (UUID4)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    Binds aware datetimes only (a naive one raises `ValueError`: its zone is a guess) and converts them
    to UTC. SQLite stores them without an offset and returns naive values, so results are re-tagged as
    UTC; PostgreSQL stores `timestamptz` and results are converted to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UTCDateTime needs a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"UTCDateTime needs a timezone-aware datetime, got naive {value.isoformat()}")
        value = value.astimezone(UTC)
        # SQLite's DATETIME storage ignores tzinfo; store the UTC wall time explicitly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(TypeDecorator[Any]):
    """A `StrEnum` stored as its string value in a VARCHAR; loads back as the enum member.

    Pair it with a CHECK constraint on the column (see `check_in`), which is what the database enforces.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum_cls: type[StrEnum], length: int = 16) -> None:
        super().__init__(length)
        self.enum_cls = enum_cls

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return self.enum_cls(value).value  # rejects unknown strings before they reach the database

    def process_result_value(self, value: Any, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum_cls(value)


def check_in(column: str, enum_cls: type[StrEnum]) -> str:
    """SQL for a CHECK constraint that `column` holds one of the enum's values."""
    values = ", ".join(f"'{member.value}'" for member in enum_cls)
    return f"{column} IN ({values})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}  # a bare Mapped[datetime] is UTC too

    def __init__(self, **kwargs: Any) -> None:
        # Nullable columns left out start as None instead of "unloaded": otherwise reading one after the
        # session closes (a response built after commit) raises DetachedInstanceError.
        for column in self.__table__.columns:
            if (
                column.nullable
                and column.default is None
                and column.server_default is None
                and column.key not in kwargs
            ):
                kwargs[column.key] = None
        for key, value in kwargs.items():
            if not hasattr(type(self), key):
                raise TypeError(f"{key!r} is an invalid keyword argument for {type(self).__name__}")
            setattr(self, key, value)
