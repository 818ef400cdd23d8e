# Redis: runs at 127.0.0.1:6379 on every machine of this project. Started here
# only if it is down (the same command the machine uses). Fault tests start
# their own redis-server on free ports; they need the binary, checked here.
redis_env() { echo "export AGENTSCALE_REDIS_URL=redis://127.0.0.1:6379"; }
redis_up() {
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    (apt-get update -qq && apt-get install -y -qq redis-server redis-tools) >&2
  fi
  if port_free 6379; then
    log "starting redis on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
    wait_port 6379 10 || { log "redis did not start"; return 1; }
  fi
  redis_env
}
redis_down() { :; } # the machine's Redis is not ours to stop
