-- A database as Supabase sets one up, for the tests (tests/supabase/__init__.py).
-- Modelled on the supabase/postgres repository, migrations/db:
--   init-scripts/00000000000000-initial-schema.sql (roles, grants, default privileges),
--   init-scripts/00000000000001-auth-schema.sql (the auth schema, auth.uid()),
--   init-scripts/00000000000003-post-setup.sql (search paths).
-- migrate.sh runs the init scripts as `postgres` while it is still a superuser, in the
-- database the project uses; demote.sql then runs as `supabase_admin`. Left out: the
-- extensions (pgjwt, pg_graphql, pgsodium, pg_net, pg_cron and their event triggers),
-- storage, realtime and the auth tables, which do not decide who can reach this
-- tool's tables or the app's.

-- Roles are the cluster's: created once, by the first database set up (the template).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        -- Supabase super admin (the cluster's superuser from initdb)
        ALTER USER supabase_admin WITH SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
        -- Supabase replication user
        CREATE USER supabase_replication_admin WITH LOGIN REPLICATION;
        -- Supabase read-only user
        CREATE ROLE supabase_read_only_user WITH LOGIN BYPASSRLS;
        GRANT pg_read_all_data TO supabase_read_only_user;
        -- The API roles: the app's public key, signed-in users, the secret key
        CREATE ROLE anon NOLOGIN NOINHERIT;
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
        -- PostgREST logs in as authenticator and switches to the role the JWT names
        CREATE USER authenticator NOINHERIT;
        GRANT anon TO authenticator;
        GRANT authenticated TO authenticator;
        GRANT service_role TO authenticator;
        GRANT supabase_admin TO authenticator;
        ALTER ROLE anon SET statement_timeout = '3s';
        ALTER ROLE authenticated SET statement_timeout = '8s';
        ALTER USER supabase_admin SET search_path TO public, extensions;
        ALTER ROLE postgres SET search_path TO "$user", public, extensions;
    END IF;
END
$roles$;

CREATE SCHEMA IF NOT EXISTS extensions;

GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
GRANT USAGE ON SCHEMA extensions TO postgres, anon, authenticated, service_role;

-- So that the API roles get grants whenever supabase_admin creates tables or functions
ALTER DEFAULT PRIVILEGES FOR USER supabase_admin IN SCHEMA public GRANT ALL
    ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR USER supabase_admin IN SCHEMA public GRANT ALL
    ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR USER supabase_admin IN SCHEMA public GRANT ALL
    ON FUNCTIONS TO postgres, anon, authenticated, service_role;

-- The auth schema's helpers, as GoTrue defines them today: the JWT's claims come from
-- request.jwt.claims, set by PostgREST in each request's transaction.
CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION supabase_admin;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
CREATE OR REPLACE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$$;
CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
