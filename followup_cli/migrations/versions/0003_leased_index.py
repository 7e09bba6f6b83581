"""Index of leased follow-ups, for the claim's per-conversation ordering check.

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


def downgrade() -> None:
    op.drop_index("ix_follow_up_requests_leased", table_name="follow_up_requests", if_exists=True)
