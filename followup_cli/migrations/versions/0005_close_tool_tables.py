"""Close this tool's tables to every role but their owner (PostgreSQL): row level security
with no policy, and no privileges for PUBLIC or any other role, on the tables and their
sequences. Nothing changes on SQLite, nor on the app's tables.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from followup_cli.migrations.closing import close_tables, reopen_tables
from followup_cli.tables import TOOL_TABLES

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
# The app's tables this revision alters: whoever runs it must own them (db check).
ALTERS_APP_TABLES: tuple[str, ...] = ()


def upgrade() -> None:
    close_tables(TOOL_TABLES)


def downgrade() -> None:
    reopen_tables(TOOL_TABLES)
