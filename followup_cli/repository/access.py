"""The statements of the security checks (PostgreSQL catalogs): who can reach the tables,
through privileges, row level security and its policies, roles and their members."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text

from followup_cli.repository.base import RepositoryBase
from followup_cli.repository.rows import (
    EffectiveAccess,
    PastRowSecurity,
    RoleFacts,
    RowSecurityFacts,
    TableAccess,
    TriggerFunction,
)


class AccessStatements(RepositoryBase):
    """db check's security checks, db grants, and what stats finds hidden from its role."""

    def table_access(self, names: Sequence[str], roles: Sequence[str]) -> list[TableAccess]:
        """For each table of `names` that exists (as the tool's statements resolve it):
        its schema, row level security, and which of `roles` can read it or hold any
        privilege on it, directly, through PUBLIC or through a role they belong to."""
        found = self.conn.execute(
            text(_TABLE_ACCESS), {"names": list(names), "roles": list(roles)}
        ).all()
        return [
            TableAccess(
                name=row.name,
                schema=row.schema,
                row_security=bool(row.row_security),
                readers=tuple(row.readers),
                holders=tuple(row.holders),
                public_privileges=bool(row.public_privileges),
            )
            for row in found
        ]

    def owned_sequences(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(schema, name) of the sequences a table's serial or identity columns use."""
        found = self.conn.execute(text(_OWNED_SEQUENCES), {"schema": schema, "table": table})
        return [(row.schema, row.name) for row in found]

    def current_role(self) -> str:
        return str(self.conn.scalar(text("SELECT current_user")))

    def role_facts(self, role: str) -> RoleFacts | None:
        found = self.conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :role"),
            {"role": role},
        ).first()
        if found is None:
            return None
        return RoleFacts(role, bool(found.rolsuper), bool(found.rolbypassrls))

    def row_security(self, names: Sequence[str], role: str) -> list[RowSecurityFacts]:
        """For each table of `names` that exists: its row level security as `role` meets it."""
        found = self.conn.execute(text(_ROW_SECURITY), {"names": list(names), "role": role})
        return [
            RowSecurityFacts(
                name=row.name,
                schema=row.schema,
                enabled=bool(row.enabled),
                forced=bool(row.forced),
                owner=bool(row.owner),
                policy_commands=tuple(row.commands),
            )
            for row in found
        ]

    def trigger_functions(self, tables: Sequence[str]) -> list[TriggerFunction]:
        """The app's triggers on these tables with the function each runs and whether
        that function runs as its owner (SECURITY DEFINER) or as the invoker."""
        found = self.conn.execute(
            text(
                "SELECT c.relname, t.tgname, CAST(CAST(t.tgfoid AS regprocedure) AS text) AS fn, "
                "p.prosecdef FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables) "
                "AND pg_table_is_visible(c.oid) ORDER BY 1, 2"
            ),
            {"tables": list(tables)},
        )
        return [
            TriggerFunction(str(row.relname), str(row.tgname), str(row.fn), bool(row.prosecdef))
            for row in found
        ]

    def has_privilege(
        self, role: str, kind: str, schema: str, name: str, privilege: str, column: str = ""
    ) -> bool:
        """has_table_privilege and its kin: `kind` is table, column, sequence or schema."""
        role_, privilege_ = "CAST(:role AS text)", "CAST(:privilege AS text)"
        target = (
            "CAST(:schema AS text)"
            if kind == "schema"
            else "format('%I.%I', CAST(:schema AS text), CAST(:name AS text))"
        )
        arguments = {
            "table": f"has_table_privilege({role_}, {target}, {privilege_})",
            "column": f"has_column_privilege({role_}, {target}, CAST(:column AS text), "
            f"{privilege_})",
            "sequence": f"has_sequence_privilege({role_}, {target}, {privilege_})",
            "schema": f"has_schema_privilege({role_}, {target}, {privilege_})",
        }[kind]
        return bool(
            self.conn.scalar(
                text(f"SELECT {arguments}"),
                {
                    "role": role,
                    "schema": schema,
                    "name": name,
                    "privilege": privilege,
                    "column": column,
                },
            )
        )

    def effective_access(self, names: Sequence[str], roles: Sequence[str]) -> list[EffectiveAccess]:
        """For each table of `names` that exists, each of `roles` that exists (and PUBLIC)
        and each of SELECT, INSERT, UPDATE and DELETE: what the role can do."""
        found = self.conn.execute(
            text(_EFFECTIVE_ACCESS), {"names": list(names), "roles": list(roles)}
        ).all()
        return [
            EffectiveAccess(
                table=row.name,
                schema=row.schema,
                role=row.role,
                command=row.command,
                row_security=bool(row.row_security),
                privileged=bool(row.privileged),
                bypass_rls=bool(row.bypass_rls),
                open_policies=tuple(row.open_policies),
                narrowing_policies=tuple(row.narrowing_policies),
            )
            for row in found
        ]

    def past_row_security(self, names: Sequence[str]) -> list[PastRowSecurity]:
        """Roles with BYPASSRLS, other than superusers and the tables' owners (and their
        members), with the tables among these each can SELECT."""
        found = self.conn.execute(text(_PAST_ROW_SECURITY), {"names": list(names)}).all()
        return [
            PastRowSecurity(
                role=row.role,
                bypass_rls=bool(row.bypass_rls),
                read_all_data=bool(row.read_all_data),
                can_login=bool(row.can_login),
                tables=tuple(row.tables),
            )
            for row in found
        ]

    def members_among(self, role: str, candidates: Sequence[str]) -> list[str]:
        """Those of `candidates` (existing roles) that have `role`'s privileges through
        membership, and so would get whatever is granted to it."""
        found = self.conn.execute(
            text(
                "SELECT m.rolname FROM pg_roles m JOIN pg_roles r ON r.rolname = :role "
                "WHERE m.rolname = ANY(CAST(:candidates AS text[])) AND m.oid <> r.oid "
                "AND pg_has_role(m.oid, r.oid, 'MEMBER') ORDER BY m.rolname"
            ),
            {"role": role, "candidates": list(candidates)},
        )
        return [str(name) for (name,) in found]


_TABLE_ACCESS = """
SELECT t.name, n.nspname AS schema, c.relrowsecurity AS row_security,
       ARRAY(SELECT r.rolname FROM pg_roles r
             WHERE r.rolname = ANY(CAST(:roles AS text[]))
               AND has_table_privilege(r.oid, c.oid, 'SELECT')
             ORDER BY r.rolname) AS readers,
       ARRAY(SELECT r.rolname FROM pg_roles r
             WHERE r.rolname = ANY(CAST(:roles AS text[]))
               AND has_table_privilege(
                   r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
             ORDER BY r.rolname) AS holders,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0) AS public_privileges
FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY t.position
"""


# The expression of a policy, as text: 'true' for one that admits every row.
_EFFECTIVE_ACCESS = """
WITH tables AS (
    SELECT t.name, t.position, c.oid, c.relacl, c.relrowsecurity, n.nspname AS schema
    FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
    JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
    JOIN pg_namespace n ON n.oid = c.relnamespace
), roles AS (
    SELECT r.rolname AS name, r.oid, r.rolbypassrls AS bypass, 0 AS position
    FROM pg_roles r WHERE r.rolname = ANY(CAST(:roles AS text[]))
    UNION ALL
    SELECT 'PUBLIC', 0, false, 1
), commands AS (
    SELECT * FROM (VALUES ('SELECT', 'r', 1), ('INSERT', 'a', 2), ('UPDATE', 'w', 3),
                          ('DELETE', 'd', 4)) AS v(command, code, position)
), policies AS (
    SELECT p.polrelid, p.polname, p.polcmd, p.polroles, p.polpermissive,
           COALESCE(pg_get_expr(p.polqual, p.polrelid), '') AS qual,
           COALESCE(pg_get_expr(p.polwithcheck, p.polrelid),
                    pg_get_expr(p.polqual, p.polrelid), '') AS checked
    FROM pg_policy p
), applying AS (
    SELECT t.oid AS relid, roles.name AS role, commands.command, p.polname, p.polpermissive,
           CASE commands.command
               WHEN 'INSERT' THEN p.checked = 'true'
               WHEN 'UPDATE' THEN p.qual = 'true' AND p.checked = 'true'
               ELSE p.qual = 'true' END AS admits_all
    FROM tables t CROSS JOIN roles CROSS JOIN commands
    JOIN policies p ON p.polrelid = t.oid AND p.polcmd IN ('*', commands.code)
    WHERE 0 = ANY(p.polroles)
       OR (roles.oid <> 0 AND EXISTS (SELECT 1 FROM unnest(p.polroles) AS granted(oid)
                                      WHERE pg_has_role(roles.oid, granted.oid, 'USAGE')))
)
SELECT t.name, t.schema, roles.name AS role, commands.command,
       t.relrowsecurity AS row_security, roles.bypass AS bypass_rls,
       CASE
           WHEN roles.oid = 0 THEN
               EXISTS (SELECT 1 FROM aclexplode(t.relacl) a
                       WHERE a.grantee = 0 AND a.privilege_type = commands.command)
               OR (commands.command <> 'DELETE' AND EXISTS (
                       SELECT 1 FROM pg_attribute att, aclexplode(att.attacl) a
                       WHERE att.attrelid = t.oid AND att.attnum > 0 AND NOT att.attisdropped
                         AND a.grantee = 0 AND a.privilege_type = commands.command))
           WHEN commands.command = 'DELETE' THEN has_table_privilege(roles.oid, t.oid, 'DELETE')
           ELSE has_any_column_privilege(roles.oid, t.oid, commands.command)
       END AS privileged,
       ARRAY(SELECT a.polname FROM applying a
             WHERE a.relid = t.oid AND a.role = roles.name AND a.command = commands.command
               AND a.polpermissive AND a.admits_all ORDER BY 1) AS open_policies,
       ARRAY(SELECT a.polname FROM applying a
             WHERE a.relid = t.oid AND a.role = roles.name AND a.command = commands.command
               AND NOT a.polpermissive AND NOT a.admits_all ORDER BY 1) AS narrowing_policies
FROM tables t CROSS JOIN roles CROSS JOIN commands
ORDER BY t.position, roles.position, roles.name, commands.position
"""


_PAST_ROW_SECURITY = """
WITH tables AS (
    SELECT t.name, t.position, c.oid, c.relowner
    FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
    JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
)
SELECT r.rolname AS role, r.rolbypassrls AS bypass_rls, r.rolcanlogin AS can_login,
       COALESCE((SELECT pg_has_role(r.oid, p.oid, 'USAGE') FROM pg_roles p
                 WHERE p.rolname = 'pg_read_all_data'), false) AS read_all_data,
       ARRAY(SELECT t.name FROM tables t
             WHERE NOT pg_has_role(r.oid, t.relowner, 'USAGE')
               AND has_table_privilege(r.oid, t.oid, 'SELECT')
             ORDER BY t.position) AS tables
FROM pg_roles r
WHERE r.rolbypassrls AND NOT r.rolsuper AND r.rolname NOT LIKE 'pg\\_%'
ORDER BY r.rolname
"""


_ROW_SECURITY = """
SELECT t.name, n.nspname AS schema, c.relrowsecurity AS enabled,
       c.relforcerowsecurity AS forced, pg_has_role(r.oid, c.relowner, 'USAGE') AS owner,
       ARRAY(SELECT CAST(p.polcmd AS text) FROM pg_policy p
             WHERE p.polrelid = c.oid AND p.polpermissive
               AND EXISTS (SELECT 1 FROM unnest(p.polroles) AS granted(oid)
                           WHERE CASE WHEN granted.oid = 0 THEN true
                                 ELSE pg_has_role(r.oid, granted.oid, 'USAGE') END)
             ORDER BY 1) AS commands
FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_roles r ON r.rolname = CAST(:role AS text)
ORDER BY t.position
"""


_OWNED_SEQUENCES = """
SELECT sn.nspname AS schema, s.relname AS name
FROM pg_class t
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_depend d ON d.refobjid = t.oid
    AND d.refclassid = CAST('pg_class' AS regclass)
    AND d.classid = CAST('pg_class' AS regclass)
    AND d.deptype IN ('a', 'i')
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE tn.nspname = :schema AND t.relname = :table
ORDER BY s.relname
"""
