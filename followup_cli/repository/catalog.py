"""The statements of db check: what the app's schema allows (columns, CHECK constraints,
foreign keys, triggers), who owns the tables, this tool's schema revision, and the
read-only transaction the check runs in."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from followup_cli.repository.base import RepositoryBase
from followup_cli.repository.rows import CheckFacts, ColumnFacts, ForeignKeyFacts, TableOwner
from followup_cli.tables import VERSION_TABLE


class CatalogStatements(RepositoryBase):
    """db check, and db upgrade's first step."""

    def begin_read_only(self) -> None:
        """The first statement of a transaction that must not write anything."""
        if self.dialect == "postgresql":
            self.conn.execute(text("SET TRANSACTION READ ONLY"))
        else:
            self.conn.execute(text("PRAGMA query_only = ON"))

    def end_read_only(self) -> None:
        if self.dialect != "postgresql":  # a connection setting, not a transaction's
            self.conn.execute(text("PRAGMA query_only = OFF"))

    def table_names(self) -> set[str]:
        return set(inspect(self.conn).get_table_names())

    def columns(self, table: str) -> list[ColumnFacts]:
        facts = []
        for c in inspect(self.conn).get_columns(table):
            type_ = c["type"]
            labels = getattr(type_, "enums", None)
            facts.append(
                ColumnFacts(
                    name=c["name"],
                    type=str(type_.compile(dialect=self.conn.dialect)),
                    not_null=not c["nullable"],
                    has_default=c.get("default") is not None
                    or bool(c.get("identity"))
                    or bool(c.get("computed"))
                    or bool(c.get("primary_key") and self.dialect == "sqlite"),
                    enum_labels=tuple(labels) if labels else None,
                )
            )
        return facts

    def check_constraints(self, table: str) -> list[CheckFacts]:
        return [
            CheckFacts(name=c.get("name"), expression=c["sqltext"])
            for c in inspect(self.conn).get_check_constraints(table)
        ]

    def foreign_keys(self, table: str) -> list[ForeignKeyFacts]:
        return [
            ForeignKeyFacts(
                name=fk.get("name"),
                columns=tuple(fk["constrained_columns"]),
                referred_table=fk["referred_table"],
                referred_columns=tuple(fk["referred_columns"]),
            )
            for fk in inspect(self.conn).get_foreign_keys(table)
        ]

    def triggers(self, tables: Sequence[str]) -> list[tuple[str, str]]:
        """(table, trigger) for the app's own triggers on these tables, enabled or not
        (the database's internal ones, e.g. for foreign keys, apart)."""
        if self.dialect == "postgresql":
            found = self.conn.execute(
                text(
                    "SELECT c.relname, t.tgname FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables) "
                    "AND pg_table_is_visible(c.oid) ORDER BY 1, 2"
                ),
                {"tables": list(tables)},
            )
        else:
            found = self.conn.execute(
                text(
                    "SELECT tbl_name, name FROM sqlite_master "
                    "WHERE type = 'trigger' AND tbl_name IN :tables ORDER BY 1, 2"
                ).bindparams(bindparam("tables", expanding=True)),
                {"tables": list(tables)},
            )
        return [(str(t), str(n)) for t, n in found]

    def check_allows(
        self, table: str, expression: str, column_name: str, column_type: str, value: str
    ) -> bool | None:
        """Would this CHECK expression accept `value` in `column_name`? None when it
        cannot be told from that column alone (it reads other columns too).

        The expression comes from the database's own catalog and is evaluated over one
        made-up row, inside a savepoint of a read-only transaction.
        """
        probe = (
            f"SELECT ({expression}) FROM "
            f"(SELECT CAST(:value AS {column_type}) AS {column_name}) AS {table}"
        )
        try:
            with self.conn.begin_nested():
                result = self.conn.execute(text(probe), {"value": value}).scalar()
        except SQLAlchemyError:
            return None
        # A CHECK whose expression is NULL lets the row through.
        return result is None or bool(result)

    def table_owners(self, names: Sequence[str]) -> list[TableOwner]:
        """Each existing table's owner, and whether the connected user may alter it."""
        found = self.conn.execute(
            text(
                "SELECT t.name, n.nspname AS schema, "
                "pg_get_userbyid(c.relowner) AS owner, "
                "pg_has_role(current_user, c.relowner, 'USAGE') AS may_alter "
                "FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position) "
                "JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name)) "
                "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY t.position"
            ),
            {"names": list(names)},
        ).all()
        return [
            TableOwner(row.name, row.schema, str(row.owner), bool(row.may_alter)) for row in found
        ]

    def schema_revision(self) -> str | None:
        """This tool's schema revision, None before the first `db upgrade`."""
        if VERSION_TABLE not in self.table_names():
            return None
        found = self.conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
        return None if found is None else str(found[0])
