"""Rows the database refuses: the database's reason, and the hold for rows that cannot
even be marked failed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from followup_cli.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ("follow_up_requests",)

COLUMNS: tuple[tuple[str, Any], ...] = (
    ("failure_detail", sa.Text),
    ("held_at", UTCDateTime),
)


def upgrade() -> None:
    if context.is_offline_mode():
        for name, type_ in COLUMNS:
            op.add_column("follow_up_requests", sa.Column(name, type_()), if_not_exists=True)
    else:
        have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("follow_up_requests")}
        for name, type_ in COLUMNS:
            if name not in have:
                op.add_column("follow_up_requests", sa.Column(name, type_()))
    held: Any = sa.text("held_at IS NOT NULL")
    op.create_index(
        "ix_follow_up_requests_held",
        "follow_up_requests",
        ["held_at"],
        if_not_exists=True,
        postgresql_where=held,
        sqlite_where=held,
    )


def downgrade() -> None:
    op.drop_index("ix_follow_up_requests_held", table_name="follow_up_requests", if_exists=True)
    with op.batch_alter_table("follow_up_requests") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
