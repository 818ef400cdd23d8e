# Redis Cluster for the cluster tests: 3 masters + 3 replicas of Debian's
# redis-server in cluster mode on six consecutive free loopback ports
# (preferred 7000-7005; the cluster bus uses port + 10000), made with
# `redis-cli --cluster create --cluster-replicas 1`. Data dirs, nodes.conf,
# logs and pid files live in $AGENTSCALE_RUN_DIR/redis-cluster/<port>/. A
# throwaway test cluster: no persistence, node timeout 2 s (fast failover).
#
# `up` is idempotent: a running cluster whose state is ok is reused; a
# partial one (a node died, a create failed) is stopped and made afresh.
# `down` stops the six servers by PID.
#
# Exports:
#   AGENTSCALE_REDIS_CLUSTER_URLS  redis://127.0.0.1:<p0>,…,redis://127.0.0.1:<p5>

rediscluster_dir() { echo "$AGENTSCALE_RUN_DIR/redis-cluster"; }
rediscluster_portfile() { echo "$(rediscluster_dir)/ports"; }

rediscluster_env() {
  [ -f "$(rediscluster_portfile)" ] || return 0
  local p urls=""
  for p in $(cat "$(rediscluster_portfile)"); do urls+="${urls:+,}redis://127.0.0.1:$p"; done
  echo "export AGENTSCALE_REDIS_CLUSTER_URLS=$urls"
}

# rediscluster_ok <port>: the node answers and says cluster_state:ok.
rediscluster_ok() {
  redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

# rediscluster_running: the recorded six are alive and the cluster is ok.
rediscluster_running() {
  [ -f "$(rediscluster_portfile)" ] || return 1
  local p
  for p in $(cat "$(rediscluster_portfile)"); do
    pid_alive "$(rediscluster_dir)/$p/redis.pid" || return 1
    rediscluster_ok "$p" || return 1
  done
}

# rediscluster_base: the first port b >= 7000 with b..b+5 and their bus ports free.
rediscluster_base() {
  local b=7000 i ok
  while [ "$b" -lt 60000 ]; do
    ok=1
    for i in 0 1 2 3 4 5; do
      if ! port_free $((b + i)) || ! port_free $((b + i + 10000)); then ok=0; break; fi
    done
    if [ "$ok" = 1 ]; then echo "$b"; return 0; fi
    b=$((b + 10))
  done
  return 1
}

rediscluster_up() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server"
    (apt-get update -qq && apt-get install -y -qq redis-server redis-tools) >&2
  fi
  if rediscluster_running; then
    log "redis cluster already running (ports $(tr '\n' ' ' <"$(rediscluster_portfile)"))"
    rediscluster_env
    return 0
  fi
  rediscluster_down
  local dir base p i nodes="" ports=""
  dir=$(rediscluster_dir)
  rm -rf "$dir"
  mkdir -p "$dir"
  base=$(rediscluster_base) || { log "no six free ports for the redis cluster"; return 1; }
  log "starting redis cluster on 127.0.0.1:$base-$((base + 5))"
  for i in 0 1 2 3 4 5; do
    p=$((base + i))
    mkdir -p "$dir/$p"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --protected-mode no \
      --cluster-enabled yes --cluster-config-file "$dir/$p/nodes.conf" \
      --cluster-node-timeout 2000 --save "" --appendonly no \
      --dir "$dir/$p" --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log" >&2
    nodes+=" 127.0.0.1:$p"
    ports+="$p"$'\n'
  done
  for i in 0 1 2 3 4 5; do
    wait_port $((base + i)) 10 || { log "redis node $((base + i)) did not start"; return 1; }
  done
  # shellcheck disable=SC2086
  if ! redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1; then
    log "redis-cli --cluster create failed; see $dir/create.log"
    tail -20 "$dir/create.log" >&2
    return 1
  fi
  printf %s "$ports" >"$(rediscluster_portfile)"
  for _ in $(seq 1 300); do
    if rediscluster_running; then
      rediscluster_env
      return 0
    fi
    sleep 0.1
  done
  log "redis cluster did not reach cluster_state:ok within 30s"
  return 1
}

rediscluster_down() {
  local dir d
  dir=$(rediscluster_dir)
  [ -d "$dir" ] || return 0
  for d in "$dir"/*/; do
    [ -f "$d/redis.pid" ] && stop_pidfile "$d/redis.pid" "redis cluster node $(basename "$d")"
  done
  rm -f "$(rediscluster_portfile)"
}
