#!/usr/bin/env bash
# Run a command against a throwaway PostgreSQL cluster: tests/postgres.sh CMD [ARGS...]
#
# The cluster lives in a temp dir, listens on 127.0.0.1 and a socket in that dir only, and is stopped and
# deleted when CMD exits; CMD's exit code is ours. CMD sees DATABASE_URL=postgres://... for a superuser,
# because pytest-django creates and drops its own test_<name> database.
# PG_BIN overrides where initdb, pg_ctl, postgres and psql are looked for.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

find_pg_bin() {
    local dir
    local on_path
    on_path=$(command -v pg_ctl 2>/dev/null || true)
    for dir in "${PG_BIN:-}" ${on_path:+"$(dirname "$(readlink -f "$on_path")")"} \
        $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" && -x "$dir/psql" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if ! pg_bin=$(find_pg_bin); then
    echo "$0: PostgreSQL binaries (initdb, pg_ctl, postgres, psql) not found." >&2
    echo "Install them (Debian: apt-get install postgresql-15) or set PG_BIN to their directory." >&2
    exit 1
fi

# initdb refuses to run as root, so as root the cluster belongs to the postgres user.
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
    if ! id postgres >/dev/null 2>&1; then
        echo "$0: running as root needs a 'postgres' user to own the cluster (initdb refuses root)." >&2
        exit 1
    fi
    if ! runuser=$(command -v runuser || command -v /usr/sbin/runuser || command -v /sbin/runuser); then
        echo "$0: running as root needs runuser (util-linux) to act as the postgres user." >&2
        exit 1
    fi
    as_owner=("$runuser" -u postgres --)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/arbiter-pg.XXXXXX")
cleanup() {
    local status=$?
    if [[ -f "$tmp/data/postmaster.pid" ]]; then
        # Immediate: the data is thrown away, so there is nothing to flush.
        "${as_owner[@]}" "$pg_bin/pg_ctl" stop -D "$tmp/data" -m immediate >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ ${#as_owner[@]} -gt 0 ]]; then
    chown postgres: "$tmp"
fi

user=arbiter
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

printf '%s\n' "$password" >"$tmp/pwfile"
[[ ${#as_owner[@]} -eq 0 ]] || chown postgres: "$tmp/pwfile"
"${as_owner[@]}" "$pg_bin/initdb" -D "$tmp/data" -U "$user" --pwfile="$tmp/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2
    echo "$0: initdb failed" >&2
    exit 1
}

# Durability settings are off: a crash only loses a cluster we delete anyway.
if ! "${as_owner[@]}" "$pg_bin/pg_ctl" start -D "$tmp/data" -w -t 60 -l "$tmp/postgres.log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$tmp -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off" >/dev/null; then
    cat "$tmp/postgres.log" >&2
    echo "$0: PostgreSQL did not start on 127.0.0.1:$port" >&2
    exit 1
fi

"${as_owner[@]}" "$pg_bin/psql" -X -q -h "$tmp" -p "$port" -U "$user" -d postgres \
    -c "CREATE DATABASE arbiter" >/dev/null

export DATABASE_URL="postgres://$user:$password@127.0.0.1:$port/arbiter"
echo "tests/postgres.sh: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2

set +e
"$@"
exit $?
