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
    Repository,
    RoleFacts,
    RowSecurityFacts,
    TableAccess,
)
from followup_cli.security import (
    API_ROLES,
    RUNTIME_PRIVILEGES,
    SENSITIVE_APP_TABLES,
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


def check_exposure(repo: Repository) -> list[Finding]:
    """Tables the API roles of an auto-generated REST API can reach (Supabase's `anon`
    and `authenticated`): the app's follow-ups and messages without row level security,
    and any of this tool's tables that lost its closing (migrations/closing.py). Empty on
    SQLite (no roles) and when the database has no such roles."""
    if repo.dialect != "postgresql":
        return []
    app = repo.table_access(SENSITIVE_APP_TABLES, API_ROLES)
    tool = repo.table_access(TOOL_TABLES, API_ROLES)
    findings = [_open_app_table(t) for t in app if not t.row_security and t.readers]
    for t in tool:
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


def _open_app_table(t: TableAccess) -> Finding:
    return Finding(
        WARNING,
        f"{t.name}: row level security is off and {', '.join(t.readers)} can read every "
        "row, as can anyone holding the app's public key; enable it and give the app's "
        "users policies",
        f"ALTER TABLE {qualified(t.schema, t.name)} ENABLE ROW LEVEL SECURITY;",
    )


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


def runtime_policies(repo: Repository, role: RoleFacts) -> list[Finding]:
    """An app table under row level security with no policy that lets the runtime role
    do its work: on follow_up_requests it sees nothing due or cannot record a delivery,
    on follow_up_messages every in-app message is refused. provider_review_requests is
    the runtime's only through an app trigger that runs as it."""
    findings = []
    invokers = [t for t in repo.trigger_functions(APP_TABLES) if not t.security_definer]
    for t in repo.row_security(APP_TABLES, role.name):
        if not _under_row_security(t, role):
            continue
        who = quote_ident(role.name)
        needed = _commands(t.name)
        if not needed:
            if invokers and not t.policy_commands:
                findings.append(
                    Finding(
                        WARNING,
                        f"{t.name}: row level security is on and no policy applies to "
                        f"{role.name}: an app trigger that runs as {role.name} and uses it "
                        f"is refused, and its follow-up is {_SET_ASIDE}",
                    )
                )
            continue
        missing = [
            c
            for c in needed
            if "*" not in t.policy_commands and _POLICY_COMMANDS[c] not in t.policy_commands
        ]
        if not missing:
            continue
        forced = " (forced, so it applies to the table's owner too)" if t.forced and t.owner else ""
        where = qualified(t.schema, t.name)
        findings.append(
            Finding(
                ERROR,
                f"{t.name}: row level security is on{forced} and no policy lets {role.name} "
                f"{', '.join(missing)}, which this tool needs: "
                + (
                    f"every in-app message is refused and its follow-up is {_SET_ASIDE}"
                    if t.name == MESSAGES
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


# What in the app's schema would make delivery fail: `db upgrade` runs these before it
# changes anything.
APP_CHECKS: tuple[Check, ...] = (status_values, message_columns, triggers, message_foreign_keys)
# Who can reach the tables: `db upgrade` runs this after upgrading, since the upgrade
# closes this tool's tables itself.
ACCESS_CHECKS: tuple[Check, ...] = (check_exposure,)
CHECKS = APP_CHECKS + ACCESS_CHECKS  # everything `db check` reports
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
