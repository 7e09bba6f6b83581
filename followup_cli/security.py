"""Who can reach the tables: the exposure check and a runtime role's grants (PostgreSQL).

- check_exposure() finds tables open to the API roles of an auto-generated REST API
  (Supabase's `anon` and `authenticated`): the app's follow-ups and messages without row
  level security, and any of this tool's tables that lost its closing (see
  followup_cli/migrations/closing.py). `db upgrade` prints the findings as warnings.
- runtime_grants() writes the statements that give a least-privilege runtime role (what
  cron connects as) exactly what send-due, retry-failed, stats, cleanup and test-send
  need, and nothing else. It refuses a role that must not run the tool (refuse_role).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from followup_cli.db import Database
from followup_cli.errors import ConfigError, NotFound
from followup_cli.repository import RoleFacts
from followup_cli.tables import APP_REQUEST_COLUMNS, APP_TABLES, TOOL_TABLES, follow_up_requests

# The roles an auto-generated API acts as for the app's public key and signed-in users
# (Supabase's names).
API_ROLES = ("anon", "authenticated")
# Every role a REST API request can act as: the above, the secret key's role (which
# bypasses row level security) and the login role PostgREST switches from.
REQUEST_ROLES = (*API_ROLES, "service_role", "authenticator")

# The app's tables that hold health information and that the check looks at.
SENSITIVE_APP_TABLES = ("follow_up_requests", "follow_up_messages")

# Columns of follow_up_requests the runtime role may change: the status and time it
# sets, and the columns this tool added for its own bookkeeping. Never the message, the
# child's data or the device token; provider_name is the app's input.
RUNTIME_UPDATE_COLUMNS = (
    "status",
    "sent_at",
    *(
        c.name
        for c in follow_up_requests.columns
        if c.name not in APP_REQUEST_COLUMNS and c.name != "provider_name"
    ),
)

# What the runtime role needs on each table. Every table of APP_TABLES and TOOL_TABLES
# has an entry (an empty one means no access), so a new table must be decided here.
RUNTIME_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # claim, finish, requeue, stats (SELECT, column UPDATE), cleanup (DELETE)
    "follow_up_requests": (
        "SELECT",
        f"UPDATE ({', '.join(RUNTIME_UPDATE_COLUMNS)})",
        "DELETE",
    ),
    # the in-app message of each delivered follow-up
    "follow_up_messages": ("INSERT",),
    # schedule and cancel are the app's (and QA's) commands, not the runtime's
    "provider_review_requests": (),
    # every push attempt; stats reads them, cleanup deletes old ones
    "follow_up_attempts": ("SELECT", "INSERT", "DELETE"),
    # one row per send-due run; stats reads them, cleanup deletes old ones
    "follow_up_runs": ("SELECT", "INSERT", "DELETE"),
    # cleanup --archive only adds rows; nothing at run time reads them back
    "follow_up_requests_archive": ("INSERT",),
    # the success-rate alert's cooldown
    "followups_alert_state": ("SELECT", "INSERT", "UPDATE"),
    # FCM access tokens shared by every run: read, claim a renewal, store the new one
    "followups_push_credentials": ("SELECT", "INSERT", "UPDATE"),
    # only `db upgrade` (the owner) reads and writes the schema version
    "followups_schema_version": (),
}


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted, so any role or schema name is safe."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def validate_role(role: str) -> str:
    """A role name as given; refuses what cannot be (or must not be) a runtime role."""
    if not role or not role.strip():
        raise ConfigError("the role name must not be empty")
    if "\x00" in role:
        raise ConfigError("the role name must not contain a NUL character")
    if len(role.encode()) > 63:
        raise ConfigError("the role name must be at most 63 bytes (PostgreSQL truncates longer)")
    if role.lower() == "public" or role.lower().startswith("pg_"):
        raise ConfigError(f"refusing to grant to {role!r}: it is not a runtime role")
    return role


@dataclass(frozen=True)
class GrantScript:
    statements: list[str]


def refuse_role(role: str, facts: RoleFacts | None, members: Sequence[str], create: bool) -> None:
    """A ConfigError when `role` must not get the runtime grants: a role a REST API
    request acts as (the grants, policies included, would be anyone's with the app's
    key), a role such a request role belongs to, a superuser or a BYPASSRLS role (row
    level security and grants mean nothing to it), or a role that does not exist (unless
    `create`)."""
    create_it = f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '...';"
    if role in REQUEST_ROLES:
        raise ConfigError(
            f"refusing to grant to {role}: the app's REST API acts as it for anyone with "
            f"the app's keys; create a role of the tool's own: {_RUNTIME_EXAMPLE}"
        )
    if facts is None:
        if create:
            return
        raise ConfigError(
            f"role {role} does not exist; create it first ({create_it}) or add --create "
            "to have the script create it"
        )
    if members:
        raise ConfigError(
            f"refusing to grant to {role}: {', '.join(members)} "
            f"{'is a member' if len(members) == 1 else 'are members'} of it, so the app's "
            f"REST API would act with its grants; use a role no API role belongs to: "
            f"{_RUNTIME_EXAMPLE}"
        )
    if facts.superuser:
        raise ConfigError(
            f"refusing to grant to {role}: it is a superuser, which no grant or policy "
            f"limits; run the tool as a least-privilege role: {_RUNTIME_EXAMPLE}"
        )
    if facts.bypass_rls:
        raise ConfigError(
            f"refusing to grant to {role}: it bypasses row level security (BYPASSRLS) and "
            f"reads every row of every table it can select; run the tool as a "
            f"least-privilege role: {_RUNTIME_EXAMPLE}"
        )


_RUNTIME_EXAMPLE = "CREATE ROLE followups_runtime LOGIN PASSWORD '...';"


def runtime_grants(db: Database, role: str, *, create: bool = False) -> GrantScript:
    """The statements that give `role` what the runtime commands need, for the schema
    each table is in, after creating the role when `create` and it does not exist.
    Read-only: prints, never applies. Refuses a role that must not run the tool."""
    if db.dialect != "postgresql":
        raise ConfigError("db grants needs a PostgreSQL database (SQLite has no roles)")
    role = validate_role(role)
    names = (*APP_TABLES, *TOOL_TABLES)
    with db.transaction() as repo:
        found = {t.name: t for t in repo.table_access(names, ())}
        missing = [name for name in names if name not in found]
        if missing:
            raise NotFound(
                f"table {missing[0]} not found; run `followups db upgrade` first "
                "(as the role that owns the tables)"
            )
        facts = repo.role_facts(role)
        refuse_role(role, facts, repo.members_among(role, REQUEST_ROLES), create)
        sequences = {
            name: repo.owned_sequences(found[name].schema, name)
            for name in names
            if "INSERT" in RUNTIME_PRIVILEGES[name]
        }

    who = quote_ident(role)
    granted = [name for name in names if RUNTIME_PRIVILEGES[name]]
    statements = [
        f"-- Runtime role {who}: what send-due, retry-failed, stats, cleanup and test-send need.",
        "-- Apply as the owner of the tables after each `followups db upgrade`; safe to repeat.",
        "BEGIN;",
    ]
    if facts is None:
        statements += [
            f"CREATE ROLE {who} LOGIN NOSUPERUSER NOBYPASSRLS;",
            f"-- then give it a password (psql: \\password {who}) and use it in the URL.",
        ]
    for schema in sorted({found[name].schema for name in granted}):
        statements.append(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {who};")
    for name in granted:
        where = qualified(found[name].schema, name)
        statements.append(f"GRANT {', '.join(RUNTIME_PRIVILEGES[name])} ON TABLE {where} TO {who};")
        for schema, sequence in sequences.get(name, []):
            statements.append(f"GRANT USAGE ON SEQUENCE {qualified(schema, sequence)} TO {who};")
    statements.append(
        "-- Row level security: this tool's tables admit only their owner and these policies;"
    )
    statements.append("-- on the app's tables the policies matter once the app enables it.")
    for name in granted:
        where = qualified(found[name].schema, name)
        statements.append(f"DROP POLICY IF EXISTS {who} ON {where};")
        statements.append(
            f"CREATE POLICY {who} ON {where} FOR ALL TO {who} USING (true) WITH CHECK (true);"
        )
    statements.append("COMMIT;")
    return GrantScript(statements=statements)
