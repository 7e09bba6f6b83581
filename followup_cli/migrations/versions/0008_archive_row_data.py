"""The whole row in the archive: follow_up_requests_archive.row_data holds every column of
an archived follow-up as the database had it (jsonb on PostgreSQL, JSON text on SQLite),
the app's columns this tool does not know included, so that it can be restored as it was.

Null for rows archived before. The runtime role's INSERT on the archive is a table
privilege, so it covers the new column: no grant changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from followup_cli.tables import RowJSON

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ()

TABLE = "follow_up_requests_archive"
COLUMN = "row_data"


def upgrade() -> None:
    if context.is_offline_mode():
        op.add_column(TABLE, sa.Column(COLUMN, RowJSON), if_not_exists=True)
    elif COLUMN not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}:
        op.add_column(TABLE, sa.Column(COLUMN, RowJSON))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column(COLUMN)
