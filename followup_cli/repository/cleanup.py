"""The statements of cleanup: find old sent and cancelled follow-ups, archive them whole,
delete them with their attempts, and delete old runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    case,
    column,
    delete,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    select,
)

from followup_cli.repository.base import RepositoryBase
from followup_cli.tables import (
    ARCHIVED_COLUMNS,
    follow_up_attempts,
    follow_up_requests,
    follow_up_requests_archive,
    follow_up_runs,
)
from followup_cli.vocabulary import Status

requests = follow_up_requests.c


class CleanupStatements(RepositoryBase):
    """cleanup, with or without --archive."""

    def count_purgeable(self, cutoff: datetime) -> tuple[int, int]:
        """(sent older than cutoff, cancelled created before cutoff)."""
        sent = self.conn.scalar(
            select(func.count()).where(requests.status == Status.SENT, requests.sent_at < cutoff)
        )
        cancelled = self.conn.scalar(
            select(func.count()).where(
                requests.status == Status.CANCELLED, requests.created_at < cutoff
            )
        )
        return int(sent or 0), int(cancelled or 0)

    def purgeable_batch(self, cutoff: datetime, status: str, limit: int) -> list[str]:
        """Ids of up to `limit` old sent (by sent_at) or cancelled (by created_at) rows,
        skipping rows another transaction holds."""
        column = requests.sent_at if status == Status.SENT else requests.created_at
        stmt = (
            select(requests.id)
            .where(requests.status == status, column < cutoff)
            .order_by(column)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.conn.scalars(stmt))

    def whole_row_json(self) -> ColumnElement[Any]:
        """The whole follow_up_requests row as one JSON object, for archive_requests: every
        column the database has, the app's own that tables.py does not define included.

        PostgreSQL converts the row itself (to_jsonb), whatever its columns. SQLite has no
        such function, so its columns are read here, once per cleanup, into a json_object.
        """
        if self.dialect == "postgresql":
            # table.* rather than the bare table name, which a column of that name would
            # shadow.
            return func.to_jsonb(literal_column(f"{follow_up_requests.name}.*"))
        names = [c["name"] for c in inspect(self.conn).get_columns(follow_up_requests.name)]
        return _sqlite_json_object(names)

    def archive_requests(
        self, ids: Sequence[str], archived_at: datetime, row_data: ColumnElement[Any]
    ) -> None:
        """Copy these follow-ups into the archive, in one statement: the operators' columns
        and `row_data` (whole_row_json) with every column."""
        columns = [follow_up_requests.c[name] for name in ARCHIVED_COLUMNS]
        self.conn.execute(
            insert(follow_up_requests_archive).from_select(
                [*ARCHIVED_COLUMNS, "archived_at", "row_data"],
                select(
                    *columns,
                    literal(archived_at, follow_up_requests_archive.c.archived_at.type),
                    row_data,
                ).where(requests.id.in_(list(ids))),
            )
        )

    def delete_requests(self, ids: Sequence[str]) -> int:
        """Delete sent/cancelled follow-ups (never failed or scheduled) and their attempt
        records. follow_up_messages rows stay: they are the parents' history."""
        if not ids:
            return 0
        attempts = follow_up_attempts.c
        self.conn.execute(delete(follow_up_attempts).where(attempts.follow_up_id.in_(list(ids))))
        return self.conn.execute(
            delete(follow_up_requests).where(
                requests.id.in_(list(ids)), requests.status.in_([Status.SENT, Status.CANCELLED])
            )
        ).rowcount

    def delete_runs_before(self, cutoff: datetime) -> int:
        runs = follow_up_runs.c
        return self.conn.execute(delete(follow_up_runs).where(runs.started_at < cutoff)).rowcount


# SQLite allows 127 arguments per function call unless built otherwise (1,000 from 3.48):
# json_object and json_insert take two per column.
_SQLITE_JSON_COLUMNS_PER_CALL = 50


def _sqlite_json_object(names: Sequence[str]) -> ColumnElement[Any]:
    """json_object('name', name, ...) over the current row of the statement's one table,
    the columns beyond the first call's share added by json_insert (which, unlike
    json_patch, keeps null values). JSON cannot hold a BLOB: one is kept as its hex text."""
    # json_insert's path cannot name a column with a double quote; json_object's key can.
    names = sorted(names, key=lambda name: '"' in name, reverse=True)
    step = _SQLITE_JSON_COLUMNS_PER_CALL

    def value(name: str) -> Any:
        col: ColumnClause[Any] = column(name)
        return case((func.typeof(col) == "blob", func.hex(col)), else_=col)

    expression = func.json_object(
        *(part for name in names[:step] for part in (literal(name), value(name)))
    )
    for start in range(step, len(names), step):
        expression = func.json_insert(
            expression,
            *(
                part
                for name in names[start : start + step]
                for part in (literal(f'$."{name}"'), value(name))
            ),
        )
    return expression
