"""followups_push_credentials: FCM access tokens shared by every run and host, closed to
every role but its owner on PostgreSQL like every table of this tool (it holds a
credential).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from followup_cli.migrations.closing import close_tables
from followup_cli.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ()

TABLE = "followups_push_credentials"


def upgrade() -> None:
    offline = context.is_offline_mode()
    if offline or TABLE not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            TABLE,
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("token", sa.Text),
            sa.Column("expires_at", UTCDateTime()),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
            sa.Column("renewal_started_at", UTCDateTime()),
            if_not_exists=offline,
        )
        close_tables([TABLE])


def downgrade() -> None:
    op.drop_table(TABLE, if_exists=True)
