#!/usr/bin/env bash
# Start (or check) a PgBouncer on 127.0.0.1:6432 in transaction pooling mode in front of
# the local PostgreSQL, for the tests that prove the tool works through a pooler.
# Installs Debian's pgbouncer package when it is missing.
#
# Its user list has the superuser and the tests' least-privilege runtime role
# (tests/helpers.py, RUNTIME_ROLE). A PgBouncer already running from an older configuration is
# reloaded (SIGHUP), which keeps its open connections; one this script did not start is
# reloaded through its admin console when it allows that; otherwise the script says so
# and fails.
set -euo pipefail
DIR=/tmp/followups-pgbouncer
PORT=6432
USERS=(postgres followups_test_runtime)

write_config() {
    local target=$1
    cat >"$target/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
auth_type = trust
auth_file = $DIR/userlist.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
unix_socket_dir =
INI
    : >"$target/userlist.txt"
    for user in "${USERS[@]}"; do
        echo "\"$user\" \"\"" >>"$target/userlist.txt"
    done
}

running_pid() {
    [ -f "$DIR/pgbouncer.pid" ] || return 1
    local pid
    pid=$(cat "$DIR/pgbouncer.pid")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

launch() {
    local pgb
    pgb=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    # pgbouncer refuses to run as root; use the postgres system user when we are root.
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$pgb -d $DIR/pgbouncer.ini"
    else
        "$pgb" -d "$DIR/pgbouncer.ini"
    fi
    for _ in $(seq 1 20); do
        pg_isready -h 127.0.0.1 -p "$PORT" -q && break
        sleep 0.5
    done
    pg_isready -h 127.0.0.1 -p "$PORT"
}

case "${1:-start}" in
start)
    if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
        echo "ci: installing pgbouncer"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq pgbouncer >/dev/null 2>&1 || {
            apt-get update -qq >/dev/null 2>&1
            apt-get install -y -qq pgbouncer >/dev/null
        }
    fi
    mkdir -p "$DIR"
    fresh=$(mktemp -d)
    write_config "$fresh"
    changed=0
    for file in pgbouncer.ini userlist.txt; do
        if ! cmp -s "$fresh/$file" "$DIR/$file"; then
            cp "$fresh/$file" "$DIR/$file"
            changed=1
        fi
    done
    rm -rf "$fresh"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$DIR"
    fi
    if pg_isready -h 127.0.0.1 -p "$PORT" -q 2>/dev/null; then
        if [ "$changed" = 0 ]; then
            echo "ci: pgbouncer already running on $PORT"
        elif pid=$(running_pid); then
            echo "ci: pgbouncer on $PORT reloads its new configuration"
            kill -HUP "$pid"
            sleep 1
        elif psql -h 127.0.0.1 -p "$PORT" -U postgres -d pgbouncer -qc RELOAD >/dev/null 2>&1; then
            echo "ci: pgbouncer on $PORT reloaded through its admin console"
        else
            echo "ci: a pgbouncer this script did not start holds port $PORT and cannot be" \
                "reloaded; stop it, then run $0 start again" >&2
            exit 1
        fi
        exit 0
    fi
    launch
    ;;
stop)
    if pid=$(running_pid); then
        kill "$pid"
    fi
    ;;
esac
