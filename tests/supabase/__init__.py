"""A PostgreSQL cluster set up as Supabase sets one up, for the tests (offline).

`init.sql` and `demote.sql` beside this file reproduce, in this project's own SQL, what
Supabase's init scripts and migrations (the supabase/postgres repository, migrations/db)
do to roles and privileges, in the order its migrate.sh runs them:

- `initdb` makes `supabase_admin` the cluster's superuser;
- `postgres` is created as a superuser and runs the init scripts: the API roles `anon`,
  `authenticated` and `service_role` (BYPASSRLS), `authenticator` (PostgREST's login
  role, a member of the three), `supabase_read_only_user` (BYPASSRLS, pg_read_all_data),
  USAGE on `public` for the API roles, and default privileges that give them ALL on
  every table, sequence and function `postgres` or `supabase_admin` creates in `public`;
  `auth.uid()`, `auth.role()` and `auth.jwt()` read `request.jwt.claims`;
- then, as `supabase_admin`, `postgres` is demoted: NOSUPERUSER with CREATEROLE and
  BYPASSRLS, a member of the API roles and of pg_read_all_data.

Not modelled: extensions and their event triggers, storage, realtime, the auth tables.

One cluster serves the whole test session (`cluster()`); each test gets a database
cloned from a template that holds the per-database part (grants, default privileges, the
auth schema), owned by `postgres` as a Supabase project's database is.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.private_postgres import PrivateCluster, why_unavailable

HERE = Path(__file__).parent
SUPERUSER = "supabase_admin"
OWNER = "postgres"  # what a Supabase user connects as, and what runs `db upgrade`
TEMPLATE = "supabase_template"
# The runtime role the docs tell a Supabase user to create (as postgres).
RUNTIME = "followups_runtime"
API_ROLES = ("anon", "authenticated", "service_role")

_cluster: Supabase | None = None


class Supabase:
    def __init__(self) -> None:
        self.cluster = PrivateCluster(superuser=SUPERUSER)
        try:
            self._set_up()
        except BaseException:
            self.cluster.remove()
            raise

    def _set_up(self) -> None:
        # migrate.sh: postgres is pre-created as a superuser and owns the database.
        self.execute(
            "postgres",
            f"CREATE ROLE {OWNER} SUPERUSER LOGIN",
            user=SUPERUSER,
        )
        self.execute("postgres", f"CREATE DATABASE {TEMPLATE} OWNER {OWNER}", user=SUPERUSER)
        self.execute(TEMPLATE, (HERE / "init.sql").read_text(), user=OWNER)
        self.execute(TEMPLATE, (HERE / "demote.sql").read_text(), user=SUPERUSER)
        self.execute(
            TEMPLATE,
            f"CREATE ROLE {RUNTIME} LOGIN",
            user=OWNER,  # CREATEROLE, as a Supabase user creates one
        )

    def url(self, database: str, user: str = OWNER) -> str:
        return self.cluster.url(database, user)

    def libpq(self, database: str, user: str = OWNER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.cluster.port}/{database}"

    def execute(
        self,
        database: str,
        statement: str | sql.Composable,
        params: Any = None,
        *,
        user: str = OWNER,
    ) -> list[Any]:
        """One statement (or a script without parameters), autocommit, as `user`."""
        with psycopg.connect(self.libpq(database, user), autocommit=True) as conn:
            cursor = conn.execute(statement, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def new_database(self) -> str:
        name = f"sb_{uuid.uuid4().hex[:12]}"
        self.execute(
            "postgres",
            f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE} OWNER {OWNER}',
            user=SUPERUSER,
        )
        return name

    def drop_database(self, name: str) -> None:
        self.execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', user=SUPERUSER)

    @contextmanager
    def as_api(
        self, database: str, role: str, claims: dict[str, Any] | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection as PostgREST makes one for a request: logged in as
        `authenticator`, then, in the request's transaction, SET LOCAL ROLE to the JWT's
        role and request.jwt.claims set to its claims. Commits at the end."""
        with psycopg.connect(self.libpq(database, "authenticator")) as conn:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                conn.execute(
                    "SELECT set_config('request.jwt.claims', %s, true)",
                    (json.dumps({"role": role, **(claims or {})}),),
                )
                yield conn

    def remove(self) -> None:
        self.cluster.remove()


def cluster() -> Supabase:
    """The session's Supabase cluster, made on first use (removed at exit by conftest)."""
    global _cluster
    if _cluster is None:
        _cluster = Supabase()
    return _cluster


def remove() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.remove()
        _cluster = None


def unavailable() -> str | None:
    return why_unavailable()
