"""SQLAlchemy Core tables: the app's three tables plus this tool's own.

Column names of the app's tables are the app's contract and must not change. The columns
this tool adds are nullable or have defaults, so a row the app inserts with only its own
columns works. The migrations (followup_cli/migrations) are the schema's history; this
module is what the code reads and writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    false,
    func,
    or_,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

from followup_cli.vocabulary import Status


class UTCDateTime(TypeDecorator[datetime]):
    """timestamptz on PostgreSQL; on SQLite a naive UTC timestamp. Always aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores text and compares it as text: keep one format, without offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class GUID(TypeDecorator[str]):
    """uuid on PostgreSQL, text on SQLite; always a str in Python.

    Ids stay opaque strings in the code, so a malformed value in a SQLite row is data to
    report, not a crash in a type converter.
    """

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)


metadata = MetaData()


def partial_index(name: str, *columns: Any, where: Any, unique: bool = False) -> Index:
    """An index over the rows matching `where`, on PostgreSQL and SQLite alike."""
    return Index(name, *columns, unique=unique, postgresql_where=where, sqlite_where=where)


# An autoincrementing 64-bit key on PostgreSQL that is still SQLite's rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")

follow_up_requests = Table(
    "follow_up_requests",
    metadata,
    Column("id", GUID(), primary_key=True),
    Column("conversation_id", GUID()),
    Column("user_id", Text),
    Column("scheduled_for", UTCDateTime()),
    Column("urgency", Text, server_default=text("'routine'")),
    Column("display_text", Text),
    Column("original_message", Text),
    Column("status", Text, nullable=False, server_default=text("'scheduled'")),
    Column("child_name", Text),
    Column("child_age", Text),
    Column("device_token", Text),
    Column("follow_up_days", Integer),
    Column("follow_up_hours", Integer),
    Column("follow_up_minutes", Integer),
    Column("created_at", UTCDateTime(), server_default=func.now()),
    Column("sent_at", UTCDateTime()),
    # This tool's columns.
    Column("provider_name", Text),
    Column("claimed_by", Text),
    Column("claim_expires_at", UTCDateTime()),
    Column("failure_reason", Text),
    Column("failed_at", UTCDateTime()),
    # The token a device-specific failure happened with: a requeue needs a new one.
    Column("failed_device_token", Text),
    Column("in_app_only", Boolean, nullable=False, server_default=false()),
    # The database's one-line reason when it refused to record a delivery (never values).
    Column("failure_detail", Text),
    # Set when the database refused even to mark the row failed (e.g. a CHECK on status
    # without 'failed'): the row stays `scheduled` but no run claims it until
    # retry-failed releases it.
    Column("held_at", UTCDateTime()),
    # A follow-up whose attempts all failed for transient reasons (an outage, a timeout)
    # stays scheduled: no run claims it before retry_at, and neither the later follow-ups
    # of its conversation. retrying_since is its first such failure (it is marked failed
    # once its tries span FOLLOWUPS_GIVE_UP_AFTER); retry_count the runs that tried it.
    Column("retry_at", UTCDateTime()),
    Column("retrying_since", UTCDateTime()),
    Column("retry_count", Integer),
)

# The due scan reads only scheduled rows; a partial index keeps it independent of how
# many millions of sent and cancelled rows accumulate.
partial_index(
    "ix_follow_up_requests_due",
    follow_up_requests.c.scheduled_for,
    follow_up_requests.c.id,
    where=follow_up_requests.c.status == Status.SCHEDULED,
)

# "Does this conversation have a follow-up in flight?" during a claim: only leased rows,
# so the index stays as small as the work in flight.
partial_index(
    "ix_follow_up_requests_leased",
    follow_up_requests.c.conversation_id,
    where=and_(
        follow_up_requests.c.status == Status.SCHEDULED,
        follow_up_requests.c.claimed_by.is_not(None),
    ),
)

# Window queries (stats) and cleanup read one status at a time.
# "Does this conversation wait behind an earlier follow-up?" during a claim: held rows
# and rows waiting to be retried, a set as small as the trouble at hand.
partial_index(
    "ix_follow_up_requests_waiting",
    follow_up_requests.c.conversation_id,
    follow_up_requests.c.scheduled_for,
    where=and_(
        follow_up_requests.c.status == Status.SCHEDULED,
        or_(
            follow_up_requests.c.held_at.is_not(None),
            follow_up_requests.c.retry_at.is_not(None),
        ),
    ),
)
partial_index(
    "ix_follow_up_requests_sent_at",
    follow_up_requests.c.sent_at,
    where=follow_up_requests.c.status == Status.SENT,
)
partial_index(
    "ix_follow_up_requests_failed_at",
    follow_up_requests.c.failed_at,
    where=follow_up_requests.c.status == Status.FAILED,
)
partial_index(
    "ix_follow_up_requests_cancelled_created",
    follow_up_requests.c.created_at,
    where=follow_up_requests.c.status == Status.CANCELLED,
)
partial_index(
    "ix_follow_up_requests_cancelled_due",
    follow_up_requests.c.scheduled_for,
    where=follow_up_requests.c.status == Status.CANCELLED,
)
# Held rows (stats, stats --check, retry-failed): normally none, so the index is empty.
partial_index(
    "ix_follow_up_requests_held",
    follow_up_requests.c.held_at,
    where=follow_up_requests.c.held_at.is_not(None),
)

# The app's own columns of follow_up_requests (its contract); every other column of that
# table was added by this tool.
APP_REQUEST_COLUMNS = (
    "id",
    "conversation_id",
    "user_id",
    "scheduled_for",
    "urgency",
    "display_text",
    "original_message",
    "status",
    "child_name",
    "child_age",
    "device_token",
    "follow_up_days",
    "follow_up_hours",
    "follow_up_minutes",
    "created_at",
    "sent_at",
)

# A whole row as one JSON object: jsonb on PostgreSQL, JSON text on SQLite.
RowJSON = JSON().with_variant(postgresql.JSONB(), "postgresql")

# Where `cleanup --archive` moves old sent and cancelled follow-ups.
# The app's columns and the provider name, as they were when archived: what operators
# query.
ARCHIVED_COLUMNS = (*APP_REQUEST_COLUMNS, "provider_name")
follow_up_requests_archive = Table(
    "follow_up_requests_archive",
    metadata,
    *(
        Column(name, follow_up_requests.c[name].type, primary_key=name == "id")
        for name in ARCHIVED_COLUMNS
    ),
    Column("archived_at", UTCDateTime(), nullable=False),
    # The whole row as the database had it, every column including the app's own that
    # this module does not define (e.g. a row level security owner): what a restore puts
    # back (docs/operations.md). Null for rows archived before revision 0008.
    Column("row_data", RowJSON),
)

# Cooldown state of the alerts that must not repeat every minute (e.g. low success rate).
followups_alert_state = Table(
    "followups_alert_state",
    metadata,
    Column("name", Text, primary_key=True),
    # ok | low
    Column("state", Text, nullable=False),
    Column("last_alert_at", UTCDateTime()),
    Column("changed_at", UTCDateTime()),
)

# Access tokens of the push services that cannot be computed afresh by every process
# (FCM's OAuth 2 tokens, unlike APNs' provider token): one row per credential, shared by
# every run and host so that one of them fetches a token and the others reuse it. It
# holds a credential: closed to other roles like every table of TOOL_TABLES.
followups_push_credentials = Table(
    "followups_push_credentials",
    metadata,
    Column("name", Text, primary_key=True),
    Column("token", Text),  # null until the first renewal has stored one
    Column("expires_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    # Set while one process fetches a new token, so that the others wait for it.
    Column("renewal_started_at", UTCDateTime()),
)

provider_review_requests = Table(
    "provider_review_requests",
    metadata,
    Column("id", GUID(), primary_key=True),
    Column("conversation_id", GUID()),
    Column("schedule_followup", Boolean, nullable=False, server_default=false()),
    Column("created_at", UTCDateTime(), server_default=func.now()),
)
Index("ix_provider_review_requests_conversation", provider_review_requests.c.conversation_id)

follow_up_messages = Table(
    "follow_up_messages",
    metadata,
    Column("id", GUID(), primary_key=True),
    Column("conversation_id", GUID()),
    Column("user_id", Text),
    Column("message_content", Text),
    Column("is_from_user", Boolean, nullable=False, server_default=false()),
    Column("follow_up_id", GUID()),
    Column("timestamp", UTCDateTime(), server_default=func.now()),
)
# At most one in-app message per follow-up, enforced by the database as a last line of
# defence behind the claim protocol.
partial_index(
    "ux_follow_up_messages_follow_up_id",
    follow_up_messages.c.follow_up_id,
    unique=True,
    where=follow_up_messages.c.follow_up_id.is_not(None),
)
Index(
    "ix_follow_up_messages_conversation",
    follow_up_messages.c.conversation_id,
    follow_up_messages.c.timestamp,
)

# Every push attempt, for debugging and statistics.
follow_up_attempts = Table(
    "follow_up_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("follow_up_id", GUID(), nullable=False),
    Column("run_id", Text),
    Column("attempted_at", UTCDateTime(), nullable=False),
    Column("attempt", Integer, nullable=False),
    # sent | transient | permanent | config | skipped
    Column("outcome", Text, nullable=False),
    Column("reason", Text),
    Column("status_code", Integer),
    Column("apns_id", Text),
    Column("is_test", Boolean, nullable=False, server_default=false()),
)
Index("ix_follow_up_attempts_follow_up", follow_up_attempts.c.follow_up_id)
Index("ix_follow_up_attempts_attempted_at", follow_up_attempts.c.attempted_at)

# One row per send-due run, so monitoring works without log files.
follow_up_runs = Table(
    "follow_up_runs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text),
    Column("pid", Integer),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("push_backend", Text),
    Column("claimed", Integer, nullable=False, server_default=text("0")),
    Column("sent", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("skipped", Integer, nullable=False, server_default=text("0")),
    # completed | config_error | outage | error
    Column("outcome", Text),
)
Index("ix_follow_up_runs_started_at", follow_up_runs.c.started_at)

# The app's tables. Their row level security and grants are the app's to decide: this
# tool never changes them (it only warns when they are open to the API roles).
APP_TABLES = ("follow_up_requests", "follow_up_messages", "provider_review_requests")

# Alembic's version table, under this tool's own name so that it never collides with an
# Alembic history the app's database may already keep.
VERSION_TABLE = "followups_schema_version"

# Every table this tool owns, the one list that the migrations close to other roles (row
# level security with no policy, no privileges but the owner's) and that `db grants`
# reads. A new table of the tool goes here, and the migration that creates it calls
# followup_cli.migrations.closing.close_tables([its name]).
TOOL_TABLES = (
    "follow_up_attempts",
    "follow_up_runs",
    "follow_up_requests_archive",
    "followups_alert_state",
    "followups_push_credentials",
    VERSION_TABLE,
)
