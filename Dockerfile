# syntax=docker/dockerfile:1
#
# lokstream image: a static musl binary on Alpine, configured through LOKSTREAM_* variables.
#
#   docker build -t lokstream .
#   docker run --stop-timeout 30 -p 9000:9000 -p 1883:1883 -p 9001:9001 \
#       -v lokstream-data:/data lokstream
#
# docs/deploy.md explains the configuration, health check, signals and volume.

# Build stage. Rust 1.95 is the toolchain the tests run on. The locked dependencies need
# at least Rust 1.89 (uuid 1.29 declares rust-version 1.89), so older images fail with
# --locked. On Alpine the host target is x86_64-unknown-linux-musl (or aarch64), which
# links statically by default. The image already has musl-dev and gcc, which ring's C code
# needs; the apk line makes that explicit.
FROM rust:1.95-alpine3.23 AS build

# Alpine's stable branches replace a package revision when they patch it and drop the old
# one, so pinning exact revisions breaks the build within months.
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev

WORKDIR /src

# Download dependencies in their own layer, so that a source change reuses it.
COPY Cargo.toml Cargo.lock ./
RUN cargo fetch --locked

# .dockerignore keeps target/, data/ and .git out of the context.
COPY . .

# The cache mount keeps compiled dependencies between builds (BuildKit, the default builder
# since Docker Engine 23). It is not part of the image, so the binary is copied out in the
# same step. Stripping drops the line tables that profile.release keeps for backtraces.
RUN --mount=type=cache,id=lokstream-target,target=/src/target,sharing=locked \
    cargo build --release --locked --offline --bin lokstream \
    && install -m 0755 target/release/lokstream /usr/local/bin/lokstream \
    && strip /usr/local/bin/lokstream

# Final stage: alpine rather than scratch or distroless. The HEALTHCHECK needs an HTTP client
# and lokstream has no health-check subcommand, so the image needs busybox wget, and Alpine
# adds only about 8 MB for it. It also brings tini as PID 1 and a shell for `docker exec`.
FROM alpine:3.23

# tini runs as PID 1: it forwards SIGTERM and SIGINT to lokstream and reaps orphaned
# processes, such as a health-check wget left behind when Docker kills a timed-out check.
# hadolint ignore=DL3018
RUN apk add --no-cache tini \
    && addgroup -S -g 10001 lokstream \
    && adduser -S -D -H -h /data -s /sbin/nologin -u 10001 -G lokstream lokstream \
    && mkdir -p /data/dump \
    && chown -R 10001:10001 /data

COPY --from=build /usr/local/bin/lokstream /usr/local/bin/lokstream

# Reference copy of every key and its default. The server reads conf/config.properties
# relative to its working directory (/ here), so this copy is never loaded.
COPY conf/config.properties /usr/share/doc/lokstream/config.properties

# Listeners bind all interfaces so that published ports reach them. Dumps go to the volume.
# Any other key is set the same way: LOKSTREAM_ plus the key upper-cased, dots as underscores.
ENV LOKSTREAM_BIND_ADDRESS=0.0.0.0 \
    LOKSTREAM_DUMP_DIR=/data/dump

# Created above with owner 10001, so that a new named volume starts with that owner.
VOLUME ["/data"]

# HTTP (SSE, push, dumps, status), MQTT over TCP, MQTT over WebSocket.
EXPOSE 9000 1883 9001

USER 10001:10001

# The check runs through sh so that a changed LOKSTREAM_PORT_HTTP is honoured. busybox wget
# exits non-zero on a connection error or an HTTP error status; Docker's --timeout ends a
# check that hangs, and tini reaps the wget it leaves behind.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "wget -q -O /dev/null \"http://127.0.0.1:${LOKSTREAM_PORT_HTTP:-9000}/healthz\" || exit 1"]

# Exec form: no shell sits between tini and lokstream, so SIGTERM reaches the server, which
# stops accepting, ends SSE streams and fsyncs the dump within shutdown.grace.secs (10 s by
# default). `docker stop` waits only 10 s before SIGKILL, so run with --stop-timeout 30.
ENTRYPOINT ["/sbin/tini", "--", "/usr/local/bin/lokstream"]
CMD ["run"]
