"""Closing this tool's tables to every role but their owner, on PostgreSQL.

On databases behind an auto-generated API (Supabase, PostgREST) default privileges give
the API roles every privilege on each new table in `public`, so a table this tool creates
would be readable and writable with the app's public key. Each of the tool's tables gets:

- row level security enabled, with no policy: only the owner and roles with BYPASSRLS
  see or change rows;
- every privilege revoked from PUBLIC and from every role other than the owner, on the
  table and on the sequences it owns. Row level security alone would leave TRUNCATE, and
  a sequence's setval, to anyone holding those privileges.

A runtime role gets back exactly what it needs from `followups db grants ROLE`.

The app's tables, when `db upgrade` creates them itself (a new database), come closed
too, to the API roles: row level security on, no policy, and no privileges for PUBLIC,
`anon` or `authenticated`. Otherwise the app's public key could insert a follow-up, and
this tool would push its text to any phone. The app team then grants its users what
they need, with policies (docs/security.md). Tables the app made are never changed:
remember_missing() notes which tables do not exist yet, before they are created, and
close_created() closes only those, the same way online and in `--sql` output.

The statement is one DO block, so it runs the same online and in `db upgrade --sql`
output, and skips a table that does not exist (yet): a migration may pass the whole
TOOL_TABLES list. Revoking is not undone by running it again, but it does remove grants
made since: call it for the tables a migration creates, not for tables that already had
their runtime grants.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# No % (the statement may pass through a pyformat driver) and no :name (SQLAlchemy's bind
# syntax): regclass::text and regrole::text quote the names themselves.
_CLOSE = """
DO $followups$
DECLARE
    wanted text;
    target regclass;
    item record;
    grantee text;
BEGIN
    FOREACH wanted IN ARRAY ARRAY[{names}]::text[] LOOP
        target := to_regclass(quote_ident(wanted));
        CONTINUE WHEN target IS NULL;
        EXECUTE 'ALTER TABLE ' || target::text || ' ENABLE ROW LEVEL SECURITY';
        FOR item IN
            SELECT c.oid::regclass AS rel,
                   CASE WHEN c.relkind = 'S' THEN 'SEQUENCE ' ELSE 'TABLE ' END AS kind
            FROM pg_class c
            WHERE c.oid = target
               OR (c.relkind = 'S'
                   AND c.oid IN (SELECT d.objid FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass
                                   AND d.refclassid = 'pg_class'::regclass
                                   AND d.refobjid = target
                                   AND d.deptype IN ('a', 'i')))
        LOOP
            EXECUTE 'REVOKE ALL ON ' || item.kind || item.rel::text || ' FROM PUBLIC';
            FOR grantee IN
                SELECT DISTINCT a.grantee::regrole::text
                FROM pg_class c, aclexplode(c.relacl) a
                WHERE c.oid = item.rel AND a.grantee <> 0 AND a.grantee <> c.relowner
            LOOP
                EXECUTE 'REVOKE ALL ON ' || item.kind || item.rel::text || ' FROM '
                    || grantee || ' CASCADE';
            END LOOP;
        END LOOP;
    END LOOP;
END
$followups$
"""

_OPEN = """
DO $followups$
DECLARE
    wanted text;
    target regclass;
BEGIN
    FOREACH wanted IN ARRAY ARRAY[{names}]::text[] LOOP
        target := to_regclass(quote_ident(wanted));
        CONTINUE WHEN target IS NULL;
        EXECUTE 'ALTER TABLE ' || target::text || ' DISABLE ROW LEVEL SECURITY';
    END LOOP;
END
$followups$
"""


# The API roles of an auto-generated REST API (Supabase, PostgREST) that act for the
# app's public key and its signed-in users.
_API_ROLES = ("anon", "authenticated")
_MISSING = "followups_new_app_tables"

_REMEMBER_MISSING = """
CREATE TEMPORARY TABLE {marker} AS
SELECT wanted FROM unnest(ARRAY[{names}]::text[]) AS wanted
WHERE to_regclass(quote_ident(wanted)) IS NULL
"""

_CLOSE_CREATED = """
DO $followups$
DECLARE
    wanted text;
    target regclass;
    grantee text;
BEGIN
    FOR wanted IN SELECT * FROM {marker} LOOP
        target := to_regclass(quote_ident(wanted));
        CONTINUE WHEN target IS NULL;
        EXECUTE 'ALTER TABLE ' || target::text || ' ENABLE ROW LEVEL SECURITY';
        EXECUTE 'REVOKE ALL ON TABLE ' || target::text || ' FROM PUBLIC';
        FOR grantee IN
            SELECT quote_ident(r.rolname) FROM pg_roles r
            WHERE r.rolname = ANY(ARRAY[{api_roles}]::text[])
        LOOP
            EXECUTE 'REVOKE ALL ON TABLE ' || target::text || ' FROM ' || grantee;
        END LOOP;
    END LOOP;
END
$followups$
"""


def remember_missing(names: Sequence[str]) -> None:
    """Note which of these tables do not exist yet (PostgreSQL only), for close_created()."""
    if names and _postgresql():
        op.execute(_REMEMBER_MISSING.format(marker=_MISSING, names=_literals(names)))


def close_created() -> None:
    """Close to the API roles the tables remember_missing() noted, now created."""
    if _postgresql():
        op.execute(
            _CLOSE_CREATED.format(
                marker=_MISSING, api_roles=", ".join(f"'{role}'" for role in _API_ROLES)
            )
        )
        op.execute(f"DROP TABLE {_MISSING}")


def _literals(names: Sequence[str]) -> str:
    for name in names:
        # Table names come from the code, never from input; refuse anything odd anyway.
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"unexpected table name {name!r}")
    return ", ".join(f"'{name}'" for name in names)


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def close_tables(names: Sequence[str]) -> None:
    """Row level security on, every other role's privileges off (PostgreSQL only)."""
    if names and _postgresql():
        op.execute(_CLOSE.format(names=_literals(names)))


def reopen_tables(names: Sequence[str]) -> None:
    """The downgrade: row level security off. Revoked privileges are not given back."""
    if names and _postgresql():
        op.execute(_OPEN.format(names=_literals(names)))
