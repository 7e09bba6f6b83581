-- Supabase's migrations that shape the roles, run as supabase_admin after init.sql
-- (supabase/postgres, migrations/db/migrations):
--   10000000000000_demote-postgres.sql
--   20221103090837_revoke_admin.sql
--   20230201083204_grant_auth_roles_to_postgres.sql
--   20230529180330_alter_api_roles_for_inherit.sql
--   20240606060239_grant_predefined_roles_to_postgres.sql
DO $demote$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres') THEN
        ALTER ROLE postgres NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS;
        REVOKE supabase_admin FROM authenticator;
        GRANT anon, authenticated, service_role TO postgres;
        ALTER ROLE authenticated INHERIT;
        ALTER ROLE anon INHERIT;
        ALTER ROLE service_role INHERIT;
        GRANT pg_read_all_data, pg_signal_backend TO postgres;
    END IF;
END
$demote$;
GRANT ALL ON SCHEMA extensions TO postgres;
