"""Initial schema: the app's tables when missing, plus this tool's columns, tables, indexes.

On a fresh database this creates everything, the app's tables closed to the API roles of
an auto-generated REST API (migrations/closing.py). On an existing production database
(the app's tables already there) it only adds what this tool needs, and never touches
rows or the app's grants.
Offline (--sql) it emits IF NOT EXISTS forms, for a DBA's pipeline on PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from followup_cli.migrations.closing import close_created, remember_missing
from followup_cli.tables import GUID, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = (
    "follow_up_requests",
    "follow_up_messages",
    "provider_review_requests",
)

# Columns this tool adds to the app's follow_up_requests.
TOOL_COLUMNS: tuple[tuple[str, Any, dict[str, Any]], ...] = (
    ("provider_name", sa.Text, {}),
    ("claimed_by", sa.Text, {}),
    ("claim_expires_at", UTCDateTime, {}),
    ("failure_reason", sa.Text, {}),
    ("failed_at", UTCDateTime, {}),
    ("failed_device_token", sa.Text, {}),
    ("in_app_only", sa.Boolean, {"nullable": False, "server_default": sa.false()}),
)


def _tool_columns() -> list[sa.Column[object]]:
    return [sa.Column(name, type_(), **kw) for name, type_, kw in TOOL_COLUMNS]


def _existing_tables() -> set[str] | None:
    if context.is_offline_mode():
        return None
    return set(sa.inspect(op.get_bind()).get_table_names())


def _existing_columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    tables = _existing_tables()
    offline = tables is None

    def missing(name: str) -> bool:
        return offline or name not in (tables or set())

    remember_missing(ALTERS_APP_TABLES)

    if missing("follow_up_requests"):
        op.create_table(
            "follow_up_requests",
            sa.Column("id", GUID(), primary_key=True),
            sa.Column("conversation_id", GUID()),
            sa.Column("user_id", sa.Text),
            sa.Column("scheduled_for", UTCDateTime()),
            sa.Column("urgency", sa.Text, server_default=sa.text("'routine'")),
            sa.Column("display_text", sa.Text),
            sa.Column("original_message", sa.Text),
            sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'scheduled'")),
            sa.Column("child_name", sa.Text),
            sa.Column("child_age", sa.Text),
            sa.Column("device_token", sa.Text),
            sa.Column("follow_up_days", sa.Integer),
            sa.Column("follow_up_hours", sa.Integer),
            sa.Column("follow_up_minutes", sa.Integer),
            sa.Column("created_at", UTCDateTime(), server_default=sa.func.now()),
            sa.Column("sent_at", UTCDateTime()),
            *_tool_columns(),
            if_not_exists=offline,
        )
    if offline:
        for column in _tool_columns():
            op.add_column("follow_up_requests", column, if_not_exists=True)
    else:
        have = _existing_columns("follow_up_requests")
        for column in _tool_columns():
            if column.name not in have:
                op.add_column("follow_up_requests", column)

    if missing("provider_review_requests"):
        op.create_table(
            "provider_review_requests",
            sa.Column("id", GUID(), primary_key=True),
            sa.Column("conversation_id", GUID()),
            sa.Column("schedule_followup", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("created_at", UTCDateTime(), server_default=sa.func.now()),
            if_not_exists=offline,
        )
    if missing("follow_up_messages"):
        op.create_table(
            "follow_up_messages",
            sa.Column("id", GUID(), primary_key=True),
            sa.Column("conversation_id", GUID()),
            sa.Column("user_id", sa.Text),
            sa.Column("message_content", sa.Text),
            sa.Column("is_from_user", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("follow_up_id", GUID()),
            sa.Column("timestamp", UTCDateTime(), server_default=sa.func.now()),
            if_not_exists=offline,
        )
    if missing("follow_up_attempts"):
        op.create_table(
            "follow_up_attempts",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("follow_up_id", GUID(), nullable=False),
            sa.Column("run_id", sa.Text),
            sa.Column("attempted_at", UTCDateTime(), nullable=False),
            sa.Column("attempt", sa.Integer, nullable=False),
            sa.Column("outcome", sa.Text, nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("status_code", sa.Integer),
            sa.Column("apns_id", sa.Text),
            sa.Column("is_test", sa.Boolean, nullable=False, server_default=sa.false()),
            if_not_exists=offline,
        )
    if missing("follow_up_runs"):
        op.create_table(
            "follow_up_runs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("host", sa.Text),
            sa.Column("pid", sa.Integer),
            sa.Column("started_at", UTCDateTime(), nullable=False),
            sa.Column("finished_at", UTCDateTime()),
            sa.Column("push_backend", sa.Text),
            sa.Column("claimed", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("sent", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("failed", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("skipped", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("outcome", sa.Text),
            if_not_exists=offline,
        )

    scheduled = sa.text("status = 'scheduled'")
    has_follow_up = sa.text("follow_up_id IS NOT NULL")
    indexes: list[tuple[str, str, list[str], dict[str, object]]] = [
        (
            "ix_follow_up_requests_due",
            "follow_up_requests",
            ["scheduled_for", "id"],
            {"postgresql_where": scheduled, "sqlite_where": scheduled},
        ),
        (
            "ix_provider_review_requests_conversation",
            "provider_review_requests",
            ["conversation_id"],
            {},
        ),
        (
            "ux_follow_up_messages_follow_up_id",
            "follow_up_messages",
            ["follow_up_id"],
            {"unique": True, "postgresql_where": has_follow_up, "sqlite_where": has_follow_up},
        ),
        (
            "ix_follow_up_messages_conversation",
            "follow_up_messages",
            ["conversation_id", "timestamp"],
            {},
        ),
        ("ix_follow_up_attempts_follow_up", "follow_up_attempts", ["follow_up_id"], {}),
        ("ix_follow_up_attempts_attempted_at", "follow_up_attempts", ["attempted_at"], {}),
        ("ix_follow_up_runs_started_at", "follow_up_runs", ["started_at"], {}),
    ]
    for name, table, columns, kw in indexes:
        op.create_index(name, table, columns, if_not_exists=True, **kw)  # type: ignore[arg-type]
    close_created()


def downgrade() -> None:
    """Removes this tool's own pieces; the app's tables and rows stay."""
    for name, table in (
        ("ix_follow_up_runs_started_at", "follow_up_runs"),
        ("ix_follow_up_attempts_attempted_at", "follow_up_attempts"),
        ("ix_follow_up_attempts_follow_up", "follow_up_attempts"),
        ("ux_follow_up_messages_follow_up_id", "follow_up_messages"),
        ("ix_follow_up_messages_conversation", "follow_up_messages"),
        ("ix_follow_up_requests_due", "follow_up_requests"),
    ):
        op.drop_index(name, table_name=table, if_exists=True)
    op.drop_table("follow_up_runs", if_exists=True)
    op.drop_table("follow_up_attempts", if_exists=True)
    with op.batch_alter_table("follow_up_requests") as batch:
        for name, _, _ in reversed(TOOL_COLUMNS):
            batch.drop_column(name)
