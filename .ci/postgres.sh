#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests. CI (.ci/run) and the test session (tests/pg.py) share it:
#
#   .ci/postgres.sh install     apt-get install Debian's postgresql when initdb/pg_ctl are missing
#                               (without creating or starting Debian's default cluster on port 5432)
#   .ci/postgres.sh bindir      print the folder holding initdb and pg_ctl; exit 1 when there is none
#   .ci/postgres.sh start DIR   start a server whose data, unix socket and log live in the empty folder DIR:
#                               127.0.0.1 only, a free port, trust auth, database scenelab_test; print its URL
#   .ci/postgres.sh stop DIR    stop that server and remove DIR (a no-op when DIR is gone; fine after a failed start)
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (runuser).
set -euo pipefail

MARKER=.scenelab-postgres  # written by start; stop removes only folders that hold it (or empty ones)
DB=scenelab_test

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {  # Debian's versioned folders first (newest), then initdb/pg_ctl/postgres side by side on PATH
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_ctl >/dev/null 2>&1; then
    d=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then echo "$d"; return 0; fi
  fi
  return 1
}

as_owner() {  # run a server binary as the folder's owner: `postgres` when we are root, else ourselves
  # runuser lives in /usr/sbin, which a minimal PATH (env -i, some CI shells) leaves out
  if [ "$(id -u)" = 0 ]; then PATH="$PATH:/usr/sbin:/sbin" runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd=${1:-}
case "$cmd" in
  install)
    if ! bindir >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      # postgresql-common first, told not to create (and start) a `main` cluster when postgresql is installed
      apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
      sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
      apt-get install -y -qq --no-install-recommends postgresql >/dev/null
      bindir >/dev/null || die "apt-get installed postgresql but initdb/pg_ctl are still missing"
    fi
    ;;
  bindir)
    bindir
    ;;
  start)
    dir=${2:?usage: $0 start DIR}
    [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ] || die "start needs an existing empty folder, got $dir"
    dir=$(cd "$dir" && pwd -P)
    bin=$(bindir) || die "no PostgreSQL server binaries (initdb, pg_ctl); install them with: apt-get install postgresql"
    touch "$dir/$MARKER"
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || die "running as root needs the user postgres (Debian's postgresql package creates it)"
      chown postgres: "$dir"
    fi
    chmod 700 "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
      || die "initdb failed: $(tail -n 20 "$dir/initdb.log")"
    # Only the loopback address and the socket in DIR; no durability (the server lives for one test run)
    as_owner tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | as_owner tee "$dir/data/pg_hba.conf" >/dev/null
    started=
    for _ in 1 2 3 4 5; do  # another process may take the free port first: try another
      port=$(free_port)
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 60 -s start >/dev/null 2>&1; then
        started=1
        break
      fi
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -s stop >/dev/null 2>&1 || true
    done
    [ -n "$started" ] || die "the server did not start: $(tail -n 20 "$dir/server.log" 2>/dev/null)"
    createdb=$bin/createdb
    [ -x "$createdb" ] || createdb=createdb
    "$createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB" || die "createdb $DB failed"
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/$DB"
    ;;
  stop)
    dir=${2:?usage: $0 stop DIR}
    [ -d "$dir" ] || exit 0
    if [ -n "$(ls -A "$dir")" ] && [ ! -e "$dir/$MARKER" ]; then
      die "refusing to stop or remove $dir: '$0 start' did not make it"
    fi
    if [ -f "$dir/data/postmaster.pid" ]; then
      bin=$(bindir) || die "no pg_ctl to stop the server in $dir"
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 60 -s stop >/dev/null 2>&1 \
        || echo "postgres.sh: pg_ctl stop failed for $dir" >&2
    fi
    rm -rf -- "$dir"
    ;;
  *)
    die "usage: $0 install | bindir | start DIR | stop DIR"
    ;;
esac
