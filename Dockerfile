# apisync container image. Build: docker build -t apisync .
# Run: docker run -v $PWD/apisync.toml:/etc/apisync/apisync.toml:ro \
#        -e APISYNC__DATABASE__URL=postgres://… -p 9464:9464 apisync
# The builder stages run the same commands as scripts/docker-build-steps.sh.

# Dependencies are compiled in their own layer (cargo-chef), so a change to
# apisync's code rebuilds only apisync.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# A patched dependency (see vendor/README.md): the recipe does not carry it.
COPY vendor vendor
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin apisync
COPY . .
RUN cargo build --release --locked --bin apisync

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to the APIs and to PostgreSQL. Debian's security
# updates replace package versions, so pinning one would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 apisync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin apisync
COPY --from=builder /app/target/release/apisync /usr/local/bin/apisync
USER 10001:10001
# The configuration is mounted at /etc/apisync/apisync.toml; secrets come as
# environment variables (APISYNC__DATABASE__URL, tokens referenced as ${VAR}).
# Metrics and health listen on all interfaces inside the container.
ENV APISYNC_CONFIG=/etc/apisync/apisync.toml \
    APISYNC__SERVER__LISTEN=0.0.0.0:9464
EXPOSE 9464
# apisync drains within shutdown_timeout (10 s by default); raise
# `docker stop -t` / stop_grace_period above it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 CMD ["apisync", "health"]
ENTRYPOINT ["apisync"]
CMD ["run"]
