"""Alembic environment. Run through `followups db upgrade`, which passes the connection
(online) or the URL (offline, --sql: a sqlalchemy URL built from its parts, never a
string for Alembic to parse again) in config.attributes."""

from alembic import context

from followup_cli.migrate import VERSION_TABLE
from followup_cli.tables import metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.attributes["url"],
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        output_buffer=config.attributes.get("output_buffer"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
