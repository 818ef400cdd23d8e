# syntax=docker/dockerfile:1
# The agentscale worker image: the redis_worker example, built from this
# workspace. Build from the repository root:
#   docker build -t <registry>/agentscale-worker:0.1.0 .

# ---- builder: pinned toolchain ----
FROM rust:1.95.0-slim-bookworm AS builder
# gcc/make/perl for librdkafka (bundled, built by rdkafka-sys) and ring.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential perl pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: manifests and lock file first, every target stubbed, so
# this layer (fetch + compiling all dependencies) is rebuilt only when a
# Cargo.toml or Cargo.lock changes, not when source code does.
COPY Cargo.toml Cargo.lock ./
COPY agentscale-core/Cargo.toml agentscale-core/
COPY agentscale-queue/Cargo.toml agentscale-queue/
COPY agentscale-state/Cargo.toml agentscale-state/
COPY agentscale-infer/Cargo.toml agentscale-infer/
COPY agentscale-autoscale/Cargo.toml agentscale-autoscale/
COPY agentscale/Cargo.toml agentscale/
COPY agentscale-testkit/Cargo.toml agentscale-testkit/
COPY agentscale-redis/Cargo.toml agentscale-redis/
COPY agentscale-rollout/Cargo.toml agentscale-rollout/
COPY agentscale-cli/Cargo.toml agentscale-cli/
COPY benches/Cargo.toml benches/
COPY examples/Cargo.toml examples/
COPY tests/Cargo.toml tests/
RUN set -eu; \
    for m in */Cargo.toml; do \
      d="$(dirname "$m")"; mkdir -p "$d/src"; \
      [ -e "$d/src/lib.rs" ] || echo '// stub' > "$d/src/lib.rs"; \
      sed -n 's/^path *= *"\(.*\)"/\1/p' "$m" | while read -r p; do \
        mkdir -p "$(dirname "$d/$p")"; echo 'fn main() {}' > "$d/$p"; \
      done; \
    done; \
    cargo fetch --locked; \
    cargo build --locked --release -p agentscale-examples --features redis --example redis_worker --example queue_keeper; \
    rm -rf */src examples/*.rs examples/*/ tests/tests agentscale-autoscale/examples

# The real sources; `touch` so cargo rebuilds our crates over the stubs.
COPY . .
RUN find . -name '*.rs' -not -path './target/*' -exec touch {} + \
    && cargo build --locked --release -p agentscale-examples --features redis --example redis_worker --example queue_keeper \
    && cp target/release/examples/redis_worker /usr/local/bin/agentscale-worker \
    && cp target/release/examples/queue_keeper /usr/local/bin/agentscale-queue-keeper

# ---- runtime: minimal, non-root ----
FROM debian:bookworm-20251229-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 agentscale \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin agentscale
COPY --from=builder /usr/local/bin/agentscale-worker /usr/local/bin/agentscale-worker
# The always-on queue keeper (deploy/base/queue-keeper.yaml runs it with
# `command`), so a fleet scaled to zero never strands a retry.
COPY --from=builder /usr/local/bin/agentscale-queue-keeper /usr/local/bin/agentscale-queue-keeper
USER 65532:65532
# /metrics, /healthz, /readyz (metrics_addr in the ConfigMap).
EXPOSE 9090
# Exec form: the worker is PID 1 and receives SIGTERM itself, drains within
# its grace period, then exits.
ENTRYPOINT ["/usr/local/bin/agentscale-worker"]
CMD ["work", "--concurrency", "8"]
