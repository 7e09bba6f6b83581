"""Indexes: leased follow-ups (the claim's per-conversation ordering check) and cancelled
follow-ups by due time (stats' cancelled count).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ("follow_up_requests",)


def upgrade() -> None:
    leased: Any = sa.text("status = 'scheduled' AND claimed_by IS NOT NULL")
    op.create_index(
        "ix_follow_up_requests_leased",
        "follow_up_requests",
        ["conversation_id"],
        if_not_exists=True,
        postgresql_where=leased,
        sqlite_where=leased,
    )
    cancelled: Any = sa.text("status = 'cancelled'")
    op.create_index(
        "ix_follow_up_requests_cancelled_due",
        "follow_up_requests",
        ["scheduled_for"],
        if_not_exists=True,
        postgresql_where=cancelled,
        sqlite_where=cancelled,
    )


def downgrade() -> None:
    for name in ("ix_follow_up_requests_cancelled_due", "ix_follow_up_requests_leased"):
        op.drop_index(name, table_name="follow_up_requests", if_exists=True)
