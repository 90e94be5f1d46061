#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests: its own cluster in a temp folder, on a loopback port,
# tuned for speed over durability (fsync off). It never touches the Debian default cluster.
#
#   PROMPTLABEL_TEST_DATABASE_URL=$(bash scripts/start_postgres.sh)   # start (or find it running)
#   bash scripts/start_postgres.sh stop                                # stop it, delete its folder
#   bash scripts/start_postgres.sh status                              # exit 0 while it runs
#
# Only the URL (postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/DB) goes to stdout, as the last
# line; progress and errors go to stderr. Installs the `postgresql` Debian package when no server
# binaries are found (needs root). As root, the server runs as the `postgres` OS user, since
# PostgreSQL refuses to run as root; as anyone else, it runs as that user.
#
# Environment (all optional):
#   PROMPTLABEL_PG_PORT             loopback port (54329)
#   PROMPTLABEL_PG_DIR              the cluster's folder (${TMPDIR:-/tmp}/promptlabel-pg-PORT)
#   PROMPTLABEL_PG_USER, _PASSWORD, _DB   role, its password and database (all "promptlabel")
#   PROMPTLABEL_PG_MAX_CONNECTIONS  (200: 50 concurrent test clients, each with a small pool)
#   PROMPTLABEL_PG_BINDIR           a folder with initdb, pg_ctl, postgres, psql, pg_isready
set -euo pipefail

# stdout carries the URL only; everything else (ours, apt's, pg_ctl's) goes to stderr.
exec 3>&1 1>&2

action="${1:-start}"
port="${PROMPTLABEL_PG_PORT:-54329}"
base_dir="${PROMPTLABEL_PG_DIR:-${TMPDIR:-/tmp}/promptlabel-pg-${port}}"
db_user="${PROMPTLABEL_PG_USER:-promptlabel}"
db_password="${PROMPTLABEL_PG_PASSWORD:-promptlabel}"
db_name="${PROMPTLABEL_PG_DB:-promptlabel}"
max_connections="${PROMPTLABEL_PG_MAX_CONNECTIONS:-200}"

say() { echo "start_postgres: $*"; }
die() {
  say "error: $*"
  exit 1
}

case "$action" in
  start | stop | status) ;;
  *) die "unknown action '$action' (start, stop or status)" ;;
esac
[[ "$port" =~ ^[0-9]+$ ]] || die "PROMPTLABEL_PG_PORT must be a number, got '$port'"
[[ "$max_connections" =~ ^[0-9]+$ ]] || die "PROMPTLABEL_PG_MAX_CONNECTIONS must be a number"
# The names go into SQL and the URL unquoted, so keep them to characters that need no escaping.
for value in "$db_user" "$db_password" "$db_name"; do
  [[ "$value" =~ ^[A-Za-z0-9_]+$ ]] || die "PG user, password and db must match [A-Za-z0-9_]+"
done
case "$base_dir" in
  /*) ;;
  *) base_dir="$PWD/$base_dir" ;;
esac
# The socket lives in the folder, and a socket path is limited to 107 bytes.
[ "${#base_dir}" -le 80 ] || die "'$base_dir' is too long for a socket path; set PROMPTLABEL_PG_DIR"
data_dir="$base_dir/data"
log_file="$base_dir/postgres.log"
url="postgresql+psycopg://${db_user}:${db_password}@127.0.0.1:${port}/${db_name}"
# The server's user may not be allowed into the caller's cwd (e.g. /root); nothing here needs it.
cd /

find_bindir() {
  local candidate
  if [ -n "${PROMPTLABEL_PG_BINDIR:-}" ]; then
    echo "$PROMPTLABEL_PG_BINDIR"
    return
  fi
  # Debian keeps each major version's binaries apart; take the newest.
  for candidate in $(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V -r); do
    if [ -x "$candidate/initdb" ] && [ -x "$candidate/postgres" ]; then
      echo "$candidate"
      return
    fi
  done
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(readlink -f "$(command -v initdb)")"
  fi
}

install_postgres() {
  [ "$(id -u)" -eq 0 ] || die "no PostgreSQL server binaries found; install the postgresql package"
  command -v apt-get >/dev/null || die "no PostgreSQL server binaries and no apt-get to install them"
  say "installing postgresql (apt-get)"
  # We only need the binaries: a drop-in stops the package from creating (and starting) the
  # default cluster, which this script never uses.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/promptlabel.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

bindir="$(find_bindir)"
if [ -z "$bindir" ] && [ "$action" = start ]; then
  install_postgres
  bindir="$(find_bindir)"
fi
if [ -z "$bindir" ]; then
  [ "$action" = start ] && die "no PostgreSQL server binaries found after installing postgresql"
  # Without binaries nothing of ours can be running: stopping is just cleaning up.
  [ "$action" = stop ] && rm -rf "$base_dir" && exit 0
  die "no PostgreSQL server binaries found"
fi
for tool in initdb pg_ctl postgres psql pg_isready; do
  [ -x "$bindir/$tool" ] || die "$bindir/$tool is missing (set PROMPTLABEL_PG_BINDIR)"
done

# Who runs the server: PostgreSQL refuses root, so root hands it to the `postgres` OS user.
if [ "$(id -u)" -eq 0 ]; then
  server_user=postgres
  if ! id -u "$server_user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin "$server_user"
  fi
  as_server() { runuser -u "$server_user" -- "$@"; }
else
  server_user="$(id -un)"
  as_server() { "$@"; }
fi

pg_ctl_() { as_server "$bindir/pg_ctl" -D "$data_dir" "$@"; }
is_running() { [ -f "$data_dir/PG_VERSION" ] && pg_ctl_ status >/dev/null 2>&1; }
is_ready() { "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; }

# Closes every descriptor but stdin, stdout and stderr (call it in a subshell). The server outlives
# this script, so it must not inherit our URL pipe (the caller's $(...) would wait for it forever),
# our lock, or any other descriptor the caller handed down (a CI runner waiting for its pipe to
# close would hang).
close_extra_fds() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd="${fd##*/}"
    # Some are gone by now (the listing's own): ignore those.
    if [ "$fd" -gt 2 ]; then { eval "exec $fd>&-"; } 2>/dev/null || true; fi
  done
}

stop_server() {
  if is_running; then
    say "stopping the server on port $port"
    pg_ctl_ stop -m fast -w >/dev/null
  fi
  rm -rf "$base_dir"
}

init_cluster() {
  local major
  major="$("$bindir/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')"
  # Reuse a complete cluster of the same major version (a restart takes a second); else start over.
  if [ -f "$base_dir/.initialized" ] && [ "$(cat "$data_dir/PG_VERSION" 2>/dev/null)" = "$major" ]; then
    return
  fi
  rm -rf "$base_dir"
  # The folder holds the socket too, so only the server's user (and root) can reach the socket;
  # that is what makes `trust` on the socket safe. TCP logins need the password.
  mkdir -p "$base_dir"
  chmod 700 "$base_dir"
  chown "$server_user:" "$base_dir"
  as_server test -w "$base_dir" ||
    die "$server_user cannot write $base_dir (a parent is closed to it); set PROMPTLABEL_PG_DIR"
  say "creating a PostgreSQL $major cluster in $data_dir"
  as_server "$bindir/initdb" -D "$data_dir" --username=postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --no-locale --no-sync --no-instructions >/dev/null
  # Throw-away data: durability off (a crash may lose it, which is fine for tests).
  cat >>"$data_dir/postgresql.conf" <<EOF

# -- scripts/start_postgres.sh: a throw-away test server ----------------------------------------
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$base_dir'
max_connections = $max_connections
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
jit = off
EOF
  as_server touch "$base_dir/.initialized"
}

start_server() {
  if is_running; then
    say "already running on port $port"
  else
    if is_ready; then
      die "port $port is taken by another PostgreSQL server; set PROMPTLABEL_PG_PORT"
    fi
    init_cluster
    say "starting on 127.0.0.1:$port (log: $log_file)"
    if ! (close_extra_fds && pg_ctl_ start -w -t 60 -l "$log_file" >/dev/null); then
      tail -n 20 "$log_file" || true
      die "the server did not start (see $log_file)"
    fi
  fi
  for _ in $(seq 1 60); do
    is_ready && break
    sleep 0.5
  done
  is_ready || die "the server on port $port does not accept connections (see $log_file)"
  # Idempotent, so a run interrupted before this point is completed by the next one.
  as_server "$bindir/psql" -X -q -h "$base_dir" -p "$port" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 >/dev/null <<EOF
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$db_user') THEN
    CREATE ROLE $db_user LOGIN CREATEDB PASSWORD '$db_password';
  ELSE
    ALTER ROLE $db_user LOGIN CREATEDB PASSWORD '$db_password';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $db_name OWNER $db_user'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db_name')\gexec
EOF
  echo "$url" >&3
}

# One caller at a time per port (parallel CI steps may race to start the same server).
exec 9>"${TMPDIR:-/tmp}/promptlabel-pg-${port}.lock"
flock 9

case "$action" in
  start) start_server ;;
  stop) stop_server ;;
  status)
    if is_running && is_ready; then
      say "running on port $port"
      echo "$url" >&3
    else
      say "not running on port $port"
      exit 1
    fi
    ;;
esac
