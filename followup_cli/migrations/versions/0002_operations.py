"""Operations: indexes for stats and cleanup windows, the archive table, alert state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from followup_cli.tables import GUID, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ("follow_up_requests",)


def _missing(table: str) -> bool:
    if context.is_offline_mode():
        return True
    return table not in sa.inspect(op.get_bind()).get_table_names()


def upgrade() -> None:
    offline = context.is_offline_mode()
    partial_indexes: list[tuple[str, str, str]] = [
        # Window queries (stats) and the cleanup scan read one status at a time.
        ("ix_follow_up_requests_sent_at", "sent_at", "status = 'sent'"),
        ("ix_follow_up_requests_failed_at", "failed_at", "status = 'failed'"),
        ("ix_follow_up_requests_cancelled_created", "created_at", "status = 'cancelled'"),
    ]
    for name, column, where in partial_indexes:
        condition: Any = sa.text(where)
        op.create_index(
            name,
            "follow_up_requests",
            [column],
            if_not_exists=True,
            postgresql_where=condition,
            sqlite_where=condition,
        )

    if _missing("follow_up_requests_archive"):
        op.create_table(
            "follow_up_requests_archive",
            sa.Column("id", GUID(), primary_key=True),
            sa.Column("conversation_id", GUID()),
            sa.Column("user_id", sa.Text),
            sa.Column("scheduled_for", UTCDateTime()),
            sa.Column("urgency", sa.Text),
            sa.Column("display_text", sa.Text),
            sa.Column("original_message", sa.Text),
            sa.Column("status", sa.Text),
            sa.Column("child_name", sa.Text),
            sa.Column("child_age", sa.Text),
            sa.Column("device_token", sa.Text),
            sa.Column("follow_up_days", sa.Integer),
            sa.Column("follow_up_hours", sa.Integer),
            sa.Column("follow_up_minutes", sa.Integer),
            sa.Column("created_at", UTCDateTime()),
            sa.Column("sent_at", UTCDateTime()),
            sa.Column("provider_name", sa.Text),
            sa.Column("archived_at", UTCDateTime(), nullable=False),
            if_not_exists=offline,
        )
    if _missing("followups_alert_state"):
        op.create_table(
            "followups_alert_state",
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("last_alert_at", UTCDateTime()),
            sa.Column("changed_at", UTCDateTime()),
            if_not_exists=offline,
        )


def downgrade() -> None:
    op.drop_table("followups_alert_state", if_exists=True)
    op.drop_table("follow_up_requests_archive", if_exists=True)
    for name in (
        "ix_follow_up_requests_cancelled_created",
        "ix_follow_up_requests_failed_at",
        "ix_follow_up_requests_sent_at",
    ):
        op.drop_index(name, table_name="follow_up_requests", if_exists=True)
