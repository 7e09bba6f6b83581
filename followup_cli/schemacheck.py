"""The app's schema, checked for what would make delivery fail: `followups db check`, and
the first step of `followups db upgrade`.

Each check is a function that reads the catalog through the repository and returns its
findings; CHECKS lists them, and a new check is one more function there. A finding is
one line that names tables, columns, constraints and triggers (never data), its level,
and when there is one, the SQL that fixes it.

- error: delivery would fail for some or all follow-ups (the database refuses what this
  tool writes). `db upgrade` stops before changing anything; `db check` exits 1.
- warning: delivery copes, but someone should know (a refused row is set aside, not
  retried).

The role checks (ROLE_CHECKS, PostgreSQL only) look at the database as the runtime role
meets it (`db check --role ROLE`, by default the connected user): row level security
without a policy for it, app triggers that run as it, privileges it lacks. Each is a
function of the repository and the role's facts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from followup_cli.db import Database
from followup_cli.errors import ConfigError
from followup_cli.repository import (
    CheckFacts,
    ColumnFacts,
    EffectiveAccess,
    Repository,
    RoleFacts,
    RowSecurityFacts,
)
from followup_cli.security import (
    API_ROLES,
    RUNTIME_PRIVILEGES,
    qualified,
    quote_ident,
    validate_role,
)
from followup_cli.tables import APP_TABLES, TOOL_TABLES
from followup_cli.vocabulary import Status

ERROR = "error"
WARNING = "warning"

REQUESTS = "follow_up_requests"
MESSAGES = "follow_up_messages"
# The statuses this tool writes into the app's column.
TOOL_STATUSES = (Status.SENT.value, Status.FAILED.value)  # plain str: quoted by repr() below
# The columns of follow_up_messages that send-due fills.
MESSAGE_COLUMNS = frozenset(
    {
        "id",
        "conversation_id",
        "user_id",
        "message_content",
        "is_from_user",
        "follow_up_id",
        "timestamp",
    }
)
# Columns a follow-up's own text or ids go into, whose width the app may have narrowed.
WRITTEN_TEXT_COLUMNS = ("user_id", "message_content")

_STATUS_WORD = re.compile(r"\bstatus\b", re.IGNORECASE)
_LITERAL = re.compile(r"'((?:[^']|'')*)'")
_BOUNDED = re.compile(r"^(?:VARCHAR|CHAR|CHARACTER VARYING|CHARACTER|NVARCHAR)\s*\((\d+)\)$", re.I)
_SET_ASIDE = "marked failed (database_rejected) or held, never retried on its own"


@dataclass(frozen=True)
class Finding:
    level: str
    message: str
    fix: str | None = None


Check = Callable[[Repository], list[Finding]]
RoleCheck = Callable[[Repository, RoleFacts], list[Finding]]


# The app's columns send-due, stats and cleanup read or write (db upgrade adds only this
# tool's own; these it expects the app to have).
REQUIRED_REQUEST_COLUMNS = (
    "id",
    "conversation_id",
    "user_id",
    "scheduled_for",
    "urgency",
    "display_text",
    "status",
    "device_token",
    "created_at",
    "sent_at",
)


def app_tables_exist(repo: Repository) -> list[Finding]:
    """A database without the app's follow-ups is not the app's (a wrong URL, another
    schema on the search_path), or a new one that `db upgrade` fills (so `db upgrade`
    does not run this check)."""
    if REQUESTS in repo.table_names():
        return []
    return [
        Finding(
            ERROR,
            f"{REQUESTS} does not exist here: this is not the app's database (check the "
            "URL and the search_path), or a new one, which `followups db upgrade` creates "
            "the app's tables in",
        )
    ]


def app_table_columns(repo: Repository) -> list[Finding]:
    """A table of the app's name without the columns this tool uses is someone else's
    (or an older one): send-due and `db upgrade` would fail on it."""
    present = repo.table_names()
    findings = []
    for table, wanted in ((REQUESTS, REQUIRED_REQUEST_COLUMNS), (MESSAGES, MESSAGE_COLUMNS)):
        if table not in present:
            continue
        have = {c.name for c in repo.columns(table)}
        missing = [c for c in wanted if c not in have]
        if missing:
            findings.append(
                Finding(
                    ERROR,
                    f"{table} has no column {', '.join(sorted(missing))}, which this tool "
                    "uses: it is not the app's table, or an older one; `db upgrade` adds "
                    "only this tool's own columns",
                )
            )
    return findings


def status_values(repo: Repository) -> list[Finding]:
    """`status` must take 'sent' and 'failed': an enum type, a CHECK or a narrow type may
    not."""
    if REQUESTS not in repo.table_names():
        return []
    status = _column(repo.columns(REQUESTS), "status")
    if status is None:
        return []
    findings: list[Finding] = []
    allowed = list(TOOL_STATUSES)
    if status.enum_labels is not None:
        for value in TOOL_STATUSES:
            if value not in status.enum_labels:
                allowed.remove(value)
                findings.append(
                    Finding(
                        ERROR,
                        f"{REQUESTS}.status has the enum type {status.type} without '{value}', "
                        "which this tool writes",
                        f"ALTER TYPE {status.type} ADD VALUE IF NOT EXISTS '{value}';",
                    )
                )
    width = _width(status.type)
    if width is not None and any(len(v) > width for v in allowed):
        findings.append(
            Finding(
                ERROR,
                f"{REQUESTS}.status is {status.type}, too narrow for "
                f"{' and '.join(repr(v) for v in allowed if len(v) > width)}, "
                "which this tool writes",
                f"ALTER TABLE {REQUESTS} ALTER COLUMN status TYPE text;",
            )
        )
    for check in repo.check_constraints(REQUESTS):
        if _STATUS_WORD.search(check.expression):
            findings.extend(_status_check(repo, check, status, allowed))
    return findings


def _status_check(
    repo: Repository, check: CheckFacts, status: ColumnFacts, values: Sequence[str]
) -> list[Finding]:
    verdicts = {
        value: repo.check_allows(REQUESTS, check.expression, "status", status.type, value)
        for value in values
    }
    refused = [v for v, ok in verdicts.items() if ok is False]
    name = check.name or "(unnamed)"
    if refused:
        return [
            Finding(
                ERROR,
                f"CHECK constraint {name} on {REQUESTS}.status does not allow "
                f"{' or '.join(repr(v) for v in refused)}, which this tool writes",
                _status_check_fix(repo, check, refused),
            )
        ]
    if any(ok is None for ok in verdicts.values()):
        return [
            Finding(
                WARNING,
                f"CHECK constraint {name} on {REQUESTS} reads status together with other "
                f"columns; make sure a row may become 'sent' and 'failed': {check.expression}",
            )
        ]
    return []


def _status_check_fix(repo: Repository, check: CheckFacts, refused: Sequence[str]) -> str | None:
    if check.name is None or repo.dialect != "postgresql":
        return None  # SQLite cannot change a constraint in place: the table must be rebuilt
    values: list[str] = []
    for value in [m.replace("''", "'") for m in _LITERAL.findall(check.expression)]:
        if value not in values:
            values.append(value)
    values += [v for v in refused if v not in values]
    listed = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    name = _quote(check.name)
    return (
        f"ALTER TABLE {REQUESTS} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} "
        f"CHECK (status IN ({listed})) NOT VALID; "
        f"ALTER TABLE {REQUESTS} VALIDATE CONSTRAINT {name};"
    )


def message_columns(repo: Repository) -> list[Finding]:
    """Every in-app message is refused if the app's table requires a column this tool does
    not fill; a long text is, if a column it fills was narrowed."""
    if MESSAGES not in repo.table_names():
        return []
    findings = []
    for column in repo.columns(MESSAGES):
        if column.name not in MESSAGE_COLUMNS:
            if column.not_null and not column.has_default:
                findings.append(
                    Finding(
                        ERROR,
                        f"{MESSAGES}.{column.name} is NOT NULL without a default and this tool "
                        "does not fill it: every in-app message would be refused "
                        "(or give it a default the app accepts)",
                        None
                        if repo.dialect != "postgresql"
                        else f"ALTER TABLE {MESSAGES} ALTER COLUMN {_quote(column.name)} "
                        "DROP NOT NULL;",
                    )
                )
        elif column.name in WRITTEN_TEXT_COLUMNS and _width(column.type) is not None:
            findings.append(
                Finding(
                    WARNING,
                    f"{MESSAGES}.{column.name} is {column.type}: a follow-up with a longer "
                    f"value is refused by the database and {_SET_ASIDE}",
                    None
                    if repo.dialect != "postgresql"
                    else f"ALTER TABLE {MESSAGES} ALTER COLUMN {_quote(column.name)} TYPE text;",
                )
            )
    return findings


def triggers(repo: Repository) -> list[Finding]:
    """The app's triggers may refuse rows for reasons of their own."""
    present = [t for t in APP_TABLES if t in repo.table_names()]
    return [
        Finding(WARNING, f"trigger {name} on {table}: a follow-up it refuses is {_SET_ASIDE}")
        for table, name in repo.triggers(present)
    ]


def message_foreign_keys(repo: Repository) -> list[Finding]:
    """A message whose parent row is missing is refused."""
    if MESSAGES not in repo.table_names():
        return []
    return [
        Finding(
            WARNING,
            f"foreign key {fk.name or '(unnamed)'} on {MESSAGES} "
            f"({', '.join(fk.columns)} -> {fk.referred_table}.{', '.join(fk.referred_columns)}): "
            f"a follow-up whose {fk.referred_table} row is missing is {_SET_ASIDE}",
        )
        for fk in repo.foreign_keys(MESSAGES)
    ]


def app_table_access(repo: Repository) -> list[Finding]:
    """What the API roles of an auto-generated REST API (Supabase's `anon` and
    `authenticated`, and PUBLIC) can do to every row of the app's tables, judged from
    their privileges and the tables' row level security and policies.

    Writing any follow-up is an error: this tool would push its text to any phone. So is
    reading or deleting every follow-up, and anything on every message (health
    information, parents' conversations). Every row of provider_review_requests is a
    warning. A policy with an expression other than `true` is the app's own rule and is
    not judged."""
    if repo.dialect != "postgresql":
        return []
    reach: dict[tuple[str, str], list[EffectiveAccess]] = {}
    for access in repo.effective_access(APP_TABLES, API_ROLES):
        if access.every_row:
            kind = "read" if access.command == "SELECT" else "write"
            reach.setdefault((access.table, kind), []).append(access)
    findings = []
    for (table, kind), found in reach.items():
        roles = list(dict.fromkeys(a.role for a in found))
        commands = [a.command for a in found if a.role == roles[0]]
        level, harm = _every_row_harm(table, kind, commands, roles)
        findings.append(
            Finding(
                level,
                f"{table}: {', '.join(roles)} can {', '.join(commands)} every row "
                f"({_why_every_row(found)}), so {harm}",
                _every_row_fix(qualified(found[0].schema, table), found),
            )
        )
    return findings


def _every_row_harm(
    table: str, kind: str, commands: Sequence[str], roles: Sequence[str]
) -> tuple[str, str]:
    who = (
        "anyone with the app's public key"
        if {"anon", "PUBLIC"} & set(roles)
        else "any signed-in user of the app"
    )
    if table == REQUESTS and {"INSERT", "UPDATE"} & set(commands):
        return ERROR, f"{who} can make this tool push any text to any phone"
    if table == REQUESTS:
        if kind == "read":
            return ERROR, f"{who} can read children's names and ages and clinicians' messages"
        return ERROR, f"{who} can delete follow-ups before they are sent"
    if table == MESSAGES:
        if kind == "read":
            return ERROR, f"{who} can read parents' conversations"
        return ERROR, f"{who} can write into or delete from parents' conversations"
    return WARNING, f"{who} can see or change which conversations clinicians review"


def _why_every_row(found: Sequence[EffectiveAccess]) -> str:
    if not found[0].row_security:
        return "row level security is off"
    policies = sorted({p for a in found for p in a.open_policies})
    return f"policy {', '.join(repr(p) for p in policies)} admits every row"


def _every_row_fix(where: str, found: Sequence[EffectiveAccess]) -> str:
    if not found[0].row_security:
        return (
            f"ALTER TABLE {where} ENABLE ROW LEVEL SECURITY; then give the app's users "
            "policies that admit their own rows only (docs/security.md)"
        )
    policies = sorted({p for a in found for p in a.open_policies})
    return " ".join(f"DROP POLICY {quote_ident(p)} ON {where};" for p in policies) + (
        " then give the app's users policies that admit their own rows only (docs/security.md)"
    )


def check_exposure(repo: Repository) -> list[Finding]:
    """This tool's tables that lost their closing (migrations/closing.py): row level
    security off, or privileges held by PUBLIC or the API roles. Empty on SQLite (no
    roles)."""
    if repo.dialect != "postgresql":
        return []
    findings = []
    for t in repo.table_access(TOOL_TABLES, API_ROLES):
        where = qualified(t.schema, t.name)
        if not t.row_security:
            findings.append(
                Finding(
                    WARNING,
                    f"{t.name}: row level security is off on this tool's table",
                    f"ALTER TABLE {where} ENABLE ROW LEVEL SECURITY;",
                )
            )
        others = (["PUBLIC"] if t.public_privileges else []) + list(t.holders)
        if others:
            names = ", ".join(others)
            grantees = ", ".join(
                "PUBLIC" if name == "PUBLIC" else quote_ident(name) for name in others
            )
            findings.append(
                Finding(
                    WARNING,
                    f"{t.name}: {names} hold privileges on this tool's table",
                    f"REVOKE ALL ON TABLE {where} FROM {grantees};",
                )
            )
    return findings


def readers_past_row_security(repo: Repository) -> list[Finding]:
    """Roles that read this tool's tables although they are closed: BYPASSRLS with
    SELECT (Supabase's supabase_read_only_user has pg_read_all_data, which gives SELECT on
    every table). Row level security and REVOKE cannot stop them; their passwords must go
    only to those who may read children's health information. The tables' owner, the
    roles that are it and superusers (docs/security.md) are left out."""
    if repo.dialect != "postgresql":
        return []
    findings = []
    for r in repo.past_row_security(TOOL_TABLES):
        if not r.tables:
            continue
        why = ["BYPASSRLS"] + (["pg_read_all_data"] if r.read_all_data else [])
        findings.append(
            Finding(
                WARNING,
                f"{r.role} ({', '.join(why)}) reads {', '.join(r.tables)} past row level "
                "security: the archive holds children's names and messages, the "
                "credentials FCM access tokens; give its password only to those who may "
                "read them",
                None if r.read_all_data else f"ALTER ROLE {quote_ident(r.role)} NOBYPASSRLS;",
            )
        )
    return findings


def upgrade_ownership(repo: Repository) -> list[Finding]:
    """`db upgrade` alters the app's tables (columns, indexes), which only their owner
    may do. An app table owned by another role (Supabase's older projects:
    supabase_admin) makes it fail with "must be owner". Judged for the role that runs
    `db upgrade`: the connected user, when it owns this tool's tables or they do not
    exist yet."""
    if repo.dialect != "postgresql":
        return []
    from followup_cli import migrate

    tool = repo.table_owners(TOOL_TABLES)
    if tool and not all(t.current_user_may_alter for t in tool):
        return []  # another role upgrades (e.g. `db check` run as the runtime role)
    altered = migrate.pending_app_alterations(repo.schema_revision())
    user = repo.current_role()
    return [
        Finding(
            ERROR,
            f"{t.name} is owned by {t.owner}, and {user} may not alter it: `db upgrade` "
            f"must add this tool's columns and indexes to it and would fail with "
            f'"must be owner of table {t.name}". Run `db upgrade` as {t.owner}, or '
            f"hand the table to {user}",
            f"ALTER TABLE {qualified(t.schema, t.name)} OWNER TO {quote_ident(user)}; "
            f"(as {t.owner} or a superuser)",
        )
        for t in repo.table_owners([name for name in APP_TABLES if name in altered])
        if not t.current_user_may_alter
    ]


# -- the runtime role (PostgreSQL) ------------------------------------------------------

# Row level security's names for the commands a policy covers ('*' is every command).
_POLICY_COMMANDS = {"SELECT": "r", "INSERT": "a", "UPDATE": "w", "DELETE": "d"}


def _commands(table: str) -> list[str]:
    """The commands the runtime role runs on a table (UPDATE (columns) is UPDATE)."""
    return [privilege.split(" ", 1)[0] for privilege in RUNTIME_PRIVILEGES[table]]


def _under_row_security(t: RowSecurityFacts, role: RoleFacts) -> bool:
    """Does row level security apply to the role here? Not to a superuser or a BYPASSRLS
    role, nor to the table's owner unless the table forces it."""
    if not t.enabled or role.superuser or role.bypass_rls:
        return False
    return t.forced or not t.owner


@dataclass(frozen=True)
class PolicyGap:
    """An app table under row level security for the role with no policy for commands
    send-due runs on it: send-due sees nothing due there, or every write is refused."""

    table: str
    schema: str
    forced: bool
    missing: tuple[str, ...]


def policy_gaps(repo: Repository, role: RoleFacts) -> list[PolicyGap]:
    """The app tables whose row level security hides rows from, or refuses writes by, the
    role when it runs send-due (PostgreSQL)."""
    gaps = []
    for t in repo.row_security(APP_TABLES, role.name):
        if not _under_row_security(t, role):
            continue
        missing = tuple(
            c
            for c in _commands(t.name)
            if "*" not in t.policy_commands and _POLICY_COMMANDS[c] not in t.policy_commands
        )
        if missing:
            gaps.append(PolicyGap(t.name, t.schema, t.forced and t.owner, missing))
    return gaps


def runtime_policies(repo: Repository, role: RoleFacts) -> list[Finding]:
    """An app table under row level security with no policy that lets the runtime role
    do its work: on follow_up_requests it sees nothing due or cannot record a delivery,
    on follow_up_messages every in-app message is refused. provider_review_requests is
    the runtime's only through an app trigger that runs as it."""
    findings = []
    who = quote_ident(role.name)
    invokers = [t for t in repo.trigger_functions(APP_TABLES) if not t.security_definer]
    if invokers:
        for t in repo.row_security(APP_TABLES, role.name):
            if _under_row_security(t, role) and not _commands(t.name) and not t.policy_commands:
                findings.append(
                    Finding(
                        WARNING,
                        f"{t.name}: row level security is on and no policy applies to "
                        f"{role.name}: an app trigger that runs as {role.name} and uses it "
                        f"is refused, and its follow-up is {_SET_ASIDE}",
                    )
                )
    for gap in policy_gaps(repo, role):
        forced = " (forced, so it applies to the table's owner too)" if gap.forced else ""
        where = qualified(gap.schema, gap.table)
        findings.append(
            Finding(
                ERROR,
                f"{gap.table}: row level security is on{forced} and no policy lets "
                f"{role.name} {', '.join(gap.missing)}, which this tool needs: "
                + (
                    f"every in-app message is refused and its follow-up is {_SET_ASIDE}"
                    if gap.table == MESSAGES
                    else "send-due finds nothing due, or cannot record what it delivered"
                ),
                f"DROP POLICY IF EXISTS {who} ON {where}; CREATE POLICY {who} ON {where} "
                f"FOR ALL TO {who} USING (true) WITH CHECK (true);",
            )
        )
    return findings


def invoker_triggers(repo: Repository, role: RoleFacts) -> list[Finding]:
    """An app trigger whose function runs as the invoker runs as the runtime role during
    send-due: what it reads or writes needs that role's grants and policies. (A
    superuser has them all.)"""
    if role.superuser:
        return []
    return [
        Finding(
            WARNING,
            f"trigger {t.trigger} on {t.table} runs {t.function} as the invoker, "
            f"{role.name} during send-due: a table it uses without {role.name}'s grant or "
            f"policy refuses the delivery, and the follow-up is {_SET_ASIDE}; grant "
            f"{role.name} what the function uses, or make it SECURITY DEFINER",
        )
        for t in repo.trigger_functions(APP_TABLES)
        if not t.security_definer
    ]


def runtime_privileges(repo: Repository, role: RoleFacts) -> list[Finding]:
    """Privileges the runtime role lacks among those `db grants` gives it: on the
    tables, the columns it updates, the attempts' id sequence and the schema."""
    who = quote_ident(role.name)
    tables = [name for name, privileges in RUNTIME_PRIVILEGES.items() if privileges]
    findings = []
    schemas_checked: set[str] = set()
    for t in repo.table_access(tables, ()):
        if t.schema not in schemas_checked:
            schemas_checked.add(t.schema)
            if not repo.has_privilege(role.name, "schema", t.schema, "", "USAGE"):
                findings.append(
                    Finding(
                        ERROR,
                        f"{role.name} lacks USAGE on schema {t.schema}, where this tool's "
                        "tables are",
                        f"GRANT USAGE ON SCHEMA {quote_ident(t.schema)} TO {who};",
                    )
                )
        missing = []
        for privilege in RUNTIME_PRIVILEGES[t.name]:
            command, _, columns = privilege.partition(" ")
            if not columns:
                if not repo.has_privilege(role.name, "table", t.schema, t.name, command):
                    missing.append(command)
                continue
            present = {c.name for c in repo.columns(t.name)}  # before `db upgrade`, fewer
            lacking = [
                c
                for c in columns.strip("()").split(", ")
                if c in present
                and not repo.has_privilege(role.name, "column", t.schema, t.name, command, c)
            ]
            if lacking:
                missing.append(f"{command} ({', '.join(lacking)})")
        where = qualified(t.schema, t.name)
        if missing:
            findings.append(
                Finding(
                    ERROR,
                    f"{role.name} lacks {', '.join(missing)} on {t.name}, which the runtime "
                    "commands need",
                    f"GRANT {', '.join(missing)} ON TABLE {where} TO {who};",
                )
            )
        if "INSERT" in _commands(t.name):
            for schema, sequence in repo.owned_sequences(t.schema, t.name):
                if not repo.has_privilege(role.name, "sequence", schema, sequence, "USAGE"):
                    findings.append(
                        Finding(
                            ERROR,
                            f"{role.name} lacks USAGE on sequence {sequence}, which an INSERT "
                            f"into {t.name} needs",
                            f"GRANT USAGE ON SEQUENCE {qualified(schema, sequence)} TO {who};",
                        )
                    )
    return findings


# What in the app's schema would make delivery fail, or let anyone forge or read
# follow-ups: `db upgrade` runs these before it changes anything.
APP_CHECKS: tuple[Check, ...] = (
    app_table_columns,
    status_values,
    message_columns,
    triggers,
    message_foreign_keys,
    app_table_access,
    upgrade_ownership,
)
# Who can reach this tool's tables: `db upgrade` runs these after upgrading, since the
# upgrade closes the tables itself.
ACCESS_CHECKS: tuple[Check, ...] = (check_exposure, readers_past_row_security)
CHECKS = (app_tables_exist, *APP_CHECKS, *ACCESS_CHECKS)  # everything `db check` reports
# The database as the runtime role meets it: `db check` runs these too (PostgreSQL).
ROLE_CHECKS: tuple[RoleCheck, ...] = (runtime_policies, invoker_triggers, runtime_privileges)


def run(
    db: Database,
    checks: Sequence[Check] = (),
    *,
    role: str | None = None,
    role_checks: Sequence[RoleCheck] | None = None,
) -> list[Finding]:
    """Every check's findings, errors first; reads the catalog only.

    With the default checks, the role checks run too, on PostgreSQL, for `role` (by
    default the connected user); `role_checks` picks others."""
    if role is not None:
        validate_role(role)
        if db.dialect != "postgresql":
            raise ConfigError("db check --role needs a PostgreSQL database (SQLite has no roles)")
    if role_checks is None:
        role_checks = () if checks else ROLE_CHECKS
    with db.read_only() as repo:
        findings = [finding for check in checks or CHECKS for finding in check(repo)]
        if role_checks and repo.dialect == "postgresql":
            findings.extend(_role_findings(repo, role or repo.current_role(), role_checks))
    return sorted(findings, key=lambda f: f.level != ERROR)


def _role_findings(repo: Repository, role: str, checks: Sequence[RoleCheck]) -> list[Finding]:
    facts = repo.role_facts(role)
    if facts is None:
        return [
            Finding(
                ERROR,
                f"role {role} does not exist, so its grants and policies were not checked",
                f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '...';",
            )
        ]
    return [finding for check in checks for finding in check(repo, facts)]


def errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == ERROR]


def _column(columns: Sequence[ColumnFacts], name: str) -> ColumnFacts | None:
    return next((c for c in columns if c.name == name), None)


def _width(type_: str) -> int | None:
    bounded = _BOUNDED.match(type_.strip())
    return int(bounded.group(1)) if bounded else None


def _quote(identifier: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", identifier):
        return identifier
    return '"' + identifier.replace('"', '""') + '"'
