"""What every domain's statements share: the connection they run on, its dialect, and
the few helpers more than one domain uses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection


class RepositoryBase:
    """One connection inside one transaction (see Database.transaction); never commits."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name


# A row that is no longer waiting to be tried again (sent, failed, requeued).
_NOT_RETRYING: dict[str, Any] = {"retry_at": None, "retrying_since": None, "retry_count": None}


def _aware(value: datetime | None) -> datetime | None:
    """min() over a timestamp column comes back naive from SQLite."""
    if value is not None and value.tzinfo is None:
        from datetime import UTC

        return value.replace(tzinfo=UTC)
    return value


def _one_of(dialect: str, column: Any, ids: Sequence[str]) -> Any:
    """`column IN (ids)`. On PostgreSQL as `column = ANY(array)`: one parameter however
    many ids (an IN list has one each, which SQLAlchemy renders and PostgreSQL parses
    afresh for every batch size), the same statement text every time."""
    if dialect == "postgresql":
        from sqlalchemy import any_, bindparam
        from sqlalchemy.dialects.postgresql import ARRAY, UUID

        return column == any_(bindparam(None, list(ids), type_=ARRAY(UUID(as_uuid=False))))
    return column.in_(list(ids))


def _insert_ignore(dialect: str, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on either backend."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
