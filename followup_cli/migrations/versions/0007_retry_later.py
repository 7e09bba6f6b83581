"""Follow-ups tried again by a later run after transient failures: when the next try may
come, since when it has been failing, and how many runs have tried it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from followup_cli.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ("follow_up_requests",)

COLUMNS: tuple[tuple[str, Any], ...] = (
    ("retry_at", UTCDateTime),
    ("retrying_since", UTCDateTime),
    ("retry_count", sa.Integer),
)
WAITING_INDEX = "ix_follow_up_requests_waiting"


def upgrade() -> None:
    if context.is_offline_mode():
        for name, type_ in COLUMNS:
            op.add_column("follow_up_requests", sa.Column(name, type_()), if_not_exists=True)
    else:
        have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("follow_up_requests")}
        for name, type_ in COLUMNS:
            if name not in have:
                op.add_column("follow_up_requests", sa.Column(name, type_()))
    waiting: Any = sa.text("status = 'scheduled' AND (held_at IS NOT NULL OR retry_at IS NOT NULL)")
    op.create_index(
        WAITING_INDEX,
        "follow_up_requests",
        ["conversation_id", "scheduled_for"],
        if_not_exists=True,
        postgresql_where=waiting,
        sqlite_where=waiting,
    )


def downgrade() -> None:
    op.drop_index(WAITING_INDEX, table_name="follow_up_requests", if_exists=True)
    with op.batch_alter_table("follow_up_requests") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
