#!/usr/bin/env bash
# Start (or check) a PgBouncer on 127.0.0.1:6432 in transaction pooling mode in front of
# the local PostgreSQL, for the tests that prove the tool works through a pooler.
# Installs Debian's pgbouncer package when it is missing.
set -euo pipefail
DIR=/tmp/followups-pgbouncer
PORT=6432

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
    PGB=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    if pg_isready -h 127.0.0.1 -p "$PORT" -q 2>/dev/null; then
        echo "ci: pgbouncer already running on $PORT"
        exit 0
    fi
    mkdir -p "$DIR"
    cat >"$DIR/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
unix_socket_dir =
INI
    echo '"postgres" ""' >"$DIR/userlist.txt"
    # pgbouncer refuses to run as root; use the postgres system user when we are root.
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$DIR"
        su postgres -s /bin/sh -c "$PGB -d $DIR/pgbouncer.ini"
    else
        "$PGB" -d "$DIR/pgbouncer.ini"
    fi
    for _ in $(seq 1 20); do
        pg_isready -h 127.0.0.1 -p "$PORT" -q && break
        sleep 0.5
    done
    pg_isready -h 127.0.0.1 -p "$PORT"
    ;;
stop)
    [ -f "$DIR/pgbouncer.pid" ] && kill "$(cat "$DIR/pgbouncer.pid")" || true
    ;;
esac
