#!/usr/bin/env bash
# Benchmarks lokstream against Mosquitto (MQTT ingest) and nginx+nchan (SSE fan-out and idle
# streams), and its dump compressor against gzip -6, all on this machine in one run, and
# writes the tables to BENCHMARKS.md.
#
#   scripts/bench.sh            full run (installs the peers from Debian if missing, builds
#                               in release mode, takes several minutes)
#   scripts/bench.sh --smoke    tiny counts on a debug build, peers only if installed;
#                               prints the tables and leaves BENCHMARKS.md alone (CI runs it)
#   --out FILE                  write the tables to FILE instead
#
# Every server is started here on 127.0.0.1 with ports picked here, and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=""
COMMAND="scripts/bench.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "usage: scripts/bench.sh [--smoke] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done

CORPUS="$(cd .. && pwd)/shared/data/messages-real.jsonl"
if [ ! -f "$CORPUS" ]; then
    echo "error: $CORPUS not found; the benchmark publishes the real message corpus" >&2
    exit 1
fi
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

step() {
    echo
    echo "==> $*"
}

WORK="$(mktemp -d -t lokstream-bench.XXXXXX)"
STARTED_PIDS=()
cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Stops one process started here and removes it from the cleanup list.
stop() {
    local pid=$1 kept=() other
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for other in "${STARTED_PIDS[@]}"; do
        [ "$other" = "$pid" ] || kept+=("$other")
    done
    STARTED_PIDS=("${kept[@]}")
}

# A free TCP port on 127.0.0.1, as the kernel hands out for port 0.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 30 s until 127.0.0.1:PORT accepts connections.
wait_port() {
    local port=$1 name=$2 tries
    for tries in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: $name did not listen on 127.0.0.1:$port within 30 s" >&2
    return 1
}

# --- peers and build ---------------------------------------------------------------------

have_mosquitto() { command -v mosquitto >/dev/null 2>&1; }
have_nchan() { command -v nginx >/dev/null 2>&1 && [ -f "$NCHAN_MODULE" ]; }

if [ "$SMOKE" -eq 0 ] && ! { have_mosquitto && have_nchan; }; then
    step "install mosquitto, nginx and libnginx-mod-nchan from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto nginx libnginx-mod-nchan >/dev/null
fi

if [ "$SMOKE" -eq 1 ]; then
    step "build (debug: the smoke run checks that the harness works, not the numbers)"
    cargo build --locked --bins
    BIN=target/debug
else
    step "build (release)"
    cargo build --locked --release --bins
    BIN=target/release
fi
BENCH=("$BIN/lokstream-bench" --corpus "$CORPUS" --results "$WORK/results.jsonl")

# Each stream uses a file descriptor in the server and one in the load tool.
ulimit -n "$(ulimit -Hn)"

# --- sizes -------------------------------------------------------------------------------

if [ "$SMOKE" -eq 1 ]; then
    INGEST=(--publishers 2 --passes 1 --idle-secs 2 --timeout-secs 60)
    FANOUT=(--clients 20 --rates 20,max --duration-secs 1 --max-messages 500 --drain-secs 2)
    IDLE_STREAMS=200
    COMPRESS=(--megabytes 2 --repeat 1)
else
    INGEST=(--publishers 4 --passes 3 --idle-secs 3 --timeout-secs 300)
    FANOUT=(--clients 1000 --rates 50,200,max --duration-secs 10 --max-messages 200000 --drain-secs 3)
    # 20,000 streams, unless the open-files limit, which this script cannot raise past the
    # hard limit, leaves less room in one process.
    IDLE_STREAMS=$(( $(ulimit -n) - 200 ))
    [ "$IDLE_STREAMS" -gt 20000 ] && IDLE_STREAMS=20000
    COMPRESS=(--megabytes 32 --repeat 3)
fi

# --- servers -----------------------------------------------------------------------------

# Starts lokstream with NAME's own dump directory; extra arguments are more --set options.
# Sets LOK_PID, LOK_HTTP and LOK_MQTT.
start_lokstream() {
    local name=$1 http_port mqtt_port
    shift
    http_port=$(free_port)
    mqtt_port=$(free_port)
    "$BIN/lokstream" \
        --set bind.address=127.0.0.1 --set port.http="$http_port" \
        --set mqtt.port="$mqtt_port" --set mqtt.ws.port=0 \
        --set dump.dir="$WORK/$name/dump" --set log.level=warn "$@" \
        >"$WORK/$name.log" 2>&1 &
    LOK_PID=$!
    STARTED_PIDS+=("$LOK_PID")
    LOK_HTTP="127.0.0.1:$http_port"
    LOK_MQTT="127.0.0.1:$mqtt_port"
    wait_port "$http_port" "lokstream ($name)"
    wait_port "$mqtt_port" "lokstream MQTT ($name)"
}

# Starts Mosquitto with queues large enough that it drops nothing a benchmark sends.
# Sets MOSQUITTO_PID and MOSQUITTO_MQTT.
start_mosquitto() {
    local port
    port=$(free_port)
    mkdir -p "$WORK/mosquitto"
    cat >"$WORK/mosquitto/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000000
max_inflight_messages 1000
log_dest stderr
log_type error
CONF
    mosquitto -c "$WORK/mosquitto/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    MOSQUITTO_PID=$!
    STARTED_PIDS+=("$MOSQUITTO_PID")
    MOSQUITTO_MQTT="127.0.0.1:$port"
    wait_port "$port" mosquitto
}

# Starts nginx with nchan: EventSource subscribers on /sub/ID, HTTP publishers on /pub/ID.
# Two workers, one per core, as lokstream's runtime has two worker threads here.
# Sets NGINX_PID and NGINX_HTTP.
start_nchan() {
    local port dir="$WORK/nginx"
    port=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
load_module $NCHAN_MODULE;
worker_processes $(nproc);
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections $(ulimit -n);
}
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location ~ ^/sub/(\w+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
        }
        location ~ ^/pub/(\w+)$ {
            nchan_publisher;
            nchan_channel_id \$1;
        }
    }
}
CONF
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
    NGINX_PID=$!
    STARTED_PIDS+=("$NGINX_PID")
    NGINX_HTTP="127.0.0.1:$port"
    wait_port "$port" "nginx+nchan"
}

# --- cases -------------------------------------------------------------------------------

LOAD_BEFORE="$(uptime)"

step "case 1: ingest"
for qos in 0 1; do
    for dumps in true false; do
        start_lokstream "ingest-q$qos-$dumps" --set dump.write_enabled="$dumps"
        "${BENCH[@]}" ingest --server lokstream --mqtt "$LOK_MQTT" --http "$LOK_HTTP" \
            --dumps "$dumps" --qos "$qos" "${INGEST[@]}"
        stop "$LOK_PID"
    done
    if have_mosquitto; then
        start_mosquitto
        "${BENCH[@]}" ingest --server mosquitto --mqtt "$MOSQUITTO_MQTT" --qos "$qos" "${INGEST[@]}"
        stop "$MOSQUITTO_PID"
    else
        echo "mosquitto is not installed; ingest runs without its peer"
    fi
done

step "case 2: fan-out"
start_lokstream fanout --set dump.write_enabled=true
"${BENCH[@]}" fanout --server lokstream --http "$LOK_HTTP" --mqtt "$LOK_MQTT" "${FANOUT[@]}"
stop "$LOK_PID"
if have_nchan; then
    start_nchan
    "${BENCH[@]}" fanout --server nchan --http "$NGINX_HTTP" \
        --stream-path /sub/bench --publish-path /pub/bench "${FANOUT[@]}"
    stop "$NGINX_PID"
else
    echo "nginx with nchan is not installed; fan-out runs without its peer"
fi

step "case 3: idle connections ($IDLE_STREAMS streams)"
start_lokstream idle --set stream.connections.max=$((IDLE_STREAMS + 100))
"${BENCH[@]}" idle --server lokstream --http "$LOK_HTTP" --connections "$IDLE_STREAMS" --pid "$LOK_PID"
stop "$LOK_PID"
if have_nchan; then
    start_nchan
    nginx_pids=(--pid "$NGINX_PID")
    for worker in $(pgrep -P "$NGINX_PID"); do
        nginx_pids+=(--pid "$worker")
    done
    "${BENCH[@]}" idle --server nchan --http "$NGINX_HTTP" --stream-path /sub/idle \
        --connections "$IDLE_STREAMS" "${nginx_pids[@]}"
    stop "$NGINX_PID"
fi

step "case 4: dump compression"
mkdir -p "$WORK/compress"
"${BENCH[@]}" compress --dir "$WORK/compress" "${COMPRESS[@]}"

LOAD_AFTER="$(uptime)"

# --- report ------------------------------------------------------------------------------

if [ -z "$OUT" ]; then
    if [ "$SMOKE" -eq 1 ]; then OUT="$WORK/BENCHMARKS-smoke.md"; else OUT=BENCHMARKS.md; fi
fi

version_of() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "not installed"
}

# Prints the runs an earlier report holds, each heading one level deeper: its latest run
# (from "## Run" up to "## Earlier runs") and the runs it already kept below that.
earlier_runs() {
    [ -f "$1" ] || return 0
    awk '
        /^## Earlier runs$/ { earlier = 1; next }
        /^## Run$/ { latest = 1 }
        earlier && /^Each earlier full run/ { next }
        earlier { print; next }
        latest && /^#/ { print "#" $0; next }
        latest { print }
    ' "$1"
}

PREVIOUS="$WORK/previous.md"
earlier_runs "$OUT" >"$PREVIOUS"

{
    cat <<'TEXT'
# Benchmarks

`scripts/bench.sh` measures lokstream against established servers on the same machine in
one run and writes this file; no number here is typed by hand. Machines here are shared,
so absolute numbers drift between runs: read the ratios in the check tables, which compare
two servers measured minutes apart under the same load. The script starts every server on
127.0.0.1, drives it with `lokstream-bench` (`src/bin/lokstream-bench/`), and stops it.
The dump writer's own benchmark, `cargo bench --bench dump`, is recorded in
`docs/benchmarks/dump-writer.md`, and the SSE benchmark, `cargo bench --bench sse`, in
`docs/benchmarks/sse.md`.

Payloads are the lines of the real message corpus (`../shared/data/messages-real.jsonl`),
each published with a fresh `id_str` because lokstream drops a repeated
`(source_type, id_str)`. Latency runs from just before the publish to the parse of the
event at the client, both on one monotonic clock of the load tool, and its percentiles come
from an HDR histogram of every delivery. Rates count messages from the first publish to the
last arrival.

- **Ingest**: MQTT publishers send the corpus as fast as the server takes it, at QoS 0 and
  QoS 1. On lokstream one SSE client on `all` and one MQTT subscriber on `all` are
  connected and `received` counts the SSE client; dump lines come from
  `/api/status.json`. On Mosquitto (`max_queued_messages` and `max_inflight_messages`
  raised so that it drops nothing) one subscriber receives the publish topic. Where
  `received` is below `sent`, the server dropped messages and the rate counts only those
  that arrived; `lost in broker` is lokstream's `broker.messages_lost`, messages its
  embedded broker dropped because a subscriber fell behind its in-memory log. The MQTT
  subscriber may receive fewer than `sent` at QoS 1: the broker drops the oldest messages
  for a subscriber that falls behind its channel log, and counts them apart from
  `lost in broker`, which is the server's own ingest and hub. At QoS 0 lokstream spends
  about three times Mosquitto's CPU per message, because it parses, stores and fans out
  each one; `docs/benchmarks/ingest.md` has the profile and why 1.5 times Mosquitto is
  out of reach on this design.
- **Fan-out**: SSE clients on one channel, one publisher at fixed rates and at full speed,
  fresh clients per rate. lokstream's publisher sends QoS 1 over MQTT to the ingest topic
  (dumps on); nchan's POSTs to an `nchan_publisher` location over 4 keep-alive connections,
  and its clients use an `nchan_subscriber eventsource` location. At `max` each server is
  offered what its own publisher path takes, so only deliveries/s are compared there.
- **Idle connections**: open SSE streams that receive nothing; memory is the server's
  `VmRSS` (all nginx processes summed) before and after. PSS splits the memory nginx's
  workers share, which RSS counts once per worker.
- **Dump compression**: a file of corpus lines of some tens of MB, compressed by flate2 at
  level 5 with the call sequence of lokstream's dump compressor (that code is private to
  the library), against `gzip -6`; the fastest of three runs counts.

A full run takes about ten minutes: `scripts/bench.sh`. It writes its tables at the top and
keeps the tables of earlier runs under "Earlier runs", so each change shows its before and
after. CI runs `scripts/bench.sh --smoke`, which uses tiny counts on a debug build so that
the harness cannot rot.
TEXT
    echo
    echo "## Run"
    echo
    echo "| | |"
    echo "| --- | --- |"
    echo "| command | \`$COMMAND\`$([ "$SMOKE" -eq 1 ] && echo ' (smoke: numbers are meaningless)') |"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| commit | $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' with uncommitted changes') |"
    echo "| machine | $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/ {print $2}') GiB |"
    echo "| load before | \`$LOAD_BEFORE\` |"
    echo "| load after | \`$LOAD_AFTER\` |"
    echo "| streams for the idle case | $IDLE_STREAMS (open-files limit $(ulimit -n)) |"
    echo "| peers | mosquitto $(version_of mosquitto), nginx $(version_of nginx), nchan $(version_of libnginx-mod-nchan), gzip $(version_of gzip) |"
    echo "| lokstream | $("$BIN/lokstream" --version), $(rustc --version) |"
    echo
    "${BENCH[@]}" report
    if [ -s "$PREVIOUS" ]; then
        echo
        echo "## Earlier runs"
        echo
        echo "Each earlier full run of the script, newest first, as it was written."
        echo
        cat "$PREVIOUS"
    fi
} >"$OUT"

step "wrote $OUT"
if [ "$SMOKE" -eq 1 ]; then
    cat "$OUT"
fi
