# Kafka-protocol broker: tansu (crates.io `tansu`, a Kafka-compatible broker in
# Rust). Built once into $AGENTSCALE_CACHE/tansu (about 11-13 minutes on 2
# cores; `dynostore` is needed for the memory:// storage engine, `libsql` for
# the persistent sqlite:// engine the broker-restart test uses), then started
# on a free loopback port with the in-memory storage engine.
#
# Exports:
#   AGENTSCALE_KAFKA_BROKERS  bootstrap servers of the running broker
#   AGENTSCALE_TANSU_BIN      the broker binary (fault tests start their own)
kafka_bin() { echo "$AGENTSCALE_CACHE/tansu/bin/tansu"; }
kafka_pidfile() { echo "$AGENTSCALE_RUN_DIR/tansu.pid"; }
kafka_portfile() { echo "$AGENTSCALE_RUN_DIR/tansu.port"; }

# Bump when the features change, so cached builds are rebuilt.
kafka_features=dynostore,libsql
kafka_install() {
  local bin stamp; bin=$(kafka_bin); stamp="$AGENTSCALE_CACHE/tansu/features"
  [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$kafka_features" ] && return 0
  if ! command -v cargo >/dev/null; then
    log "cargo is needed to build tansu"; return 1
  fi
  mkdir -p "$AGENTSCALE_CACHE/logs"
  log "building tansu into $AGENTSCALE_CACHE/tansu (about 13 minutes on 2 cores; log: $AGENTSCALE_CACHE/logs/tansu-build.log)"
  # A private target dir, so a workspace CARGO_TARGET_DIR is not polluted.
  if ! CARGO_TARGET_DIR="$AGENTSCALE_CACHE/tansu/target" cargo install tansu --locked \
      --features "$kafka_features" --root "$AGENTSCALE_CACHE/tansu" \
      >"$AGENTSCALE_CACHE/logs/tansu-build.log" 2>&1; then
    log "building tansu failed; see $AGENTSCALE_CACHE/logs/tansu-build.log"; return 1
  fi
  rm -rf "$AGENTSCALE_CACHE/tansu/target"
  echo "$kafka_features" >"$stamp"
}

kafka_free_port() { # a free port, starting at the preferred one
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

kafka_env() {
  if pid_alive "$(kafka_pidfile)" && [ -f "$(kafka_portfile)" ]; then
    echo "export AGENTSCALE_KAFKA_BROKERS=127.0.0.1:$(cat "$(kafka_portfile)")"
  fi
  echo "export AGENTSCALE_TANSU_BIN=$(kafka_bin)"
}

kafka_up() {
  install_locked kafka kafka_install || return 1
  local pidfile portfile port
  pidfile=$(kafka_pidfile); portfile=$(kafka_portfile)
  if pid_alive "$pidfile" && [ -f "$portfile" ] && ! port_free "$(cat "$portfile")"; then
    log "tansu already running (pid $(cat "$pidfile"), port $(cat "$portfile"))"
  else
    stop_pidfile "$pidfile" tansu
    port=$(kafka_free_port 19092)
    log "starting tansu on 127.0.0.1:$port"
    setsid nohup "$(kafka_bin)" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://tansu/ \
      >"$AGENTSCALE_RUN_DIR/tansu.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo "$port" >"$portfile"
    if ! wait_port "$port" 30; then
      log "tansu did not accept connections; see $AGENTSCALE_RUN_DIR/tansu.log"
      stop_pidfile "$pidfile" tansu
      return 1
    fi
  fi
  kafka_env
}

kafka_down() {
  stop_pidfile "$(kafka_pidfile)" tansu
  rm -f "$(kafka_portfile)"
}
