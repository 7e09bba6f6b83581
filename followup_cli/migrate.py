"""`followups db upgrade`: Alembic, driven programmatically (no alembic.ini to ship).

The version table has this tool's own name, so it never collides with an Alembic
history the app's database may already keep.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from followup_cli.db import Database, sqlalchemy_url
from followup_cli.tables import VERSION_TABLE

# Two hosts upgrading at once take turns (transaction-scoped: PgBouncer-safe).
UPGRADE_LOCK_KEY = 0x466F6C6C6F7776


def _config(stdout: TextIO | None = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def pending_app_alterations(current: str | None) -> set[str]:
    """The app's tables that the revisions after `current` (None: all) alter, which only
    their owner may do. Each revision declares them in ALTERS_APP_TABLES."""
    script = ScriptDirectory.from_config(_config())
    altered: set[str] = set()
    for revision in script.iterate_revisions("head", current):
        if revision.revision != current:
            altered.update(revision.module.ALTERS_APP_TABLES)
    return altered


def upgrade(db: Database, to: str = "head") -> tuple[str | None, str]:
    """Bring the schema to head (or the revision `to`) in one transaction. Returns
    (revision before, after)."""
    cfg = _config()
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(UPGRADE_LOCK_KEY)))
        before = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, to)
        after = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    assert after is not None
    return before, after


def upgrade_sql(url: str, out: TextIO) -> None:
    """Write the upgrade as SQL for the database behind `url`, without connecting. Alembic
    gets the URL in parts (db.sqlalchemy_url), as the engine does."""
    cfg = _config(stdout=out)
    cfg.attributes["url"] = sqlalchemy_url(url)
    cfg.attributes["output_buffer"] = out
    command.upgrade(cfg, "head", sql=True)
