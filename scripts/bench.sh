#!/usr/bin/env bash
# The benchmark users read (not part of scripts/test.sh): one table, every row measured in the same
# run on loopback, then the tunnel table (bulk and round trip vs raw TLS, idle connections).
#
#   scripts/bench.sh [--seconds S] [--install-rathole] [--no-build] [--idle N] [--bin-dir DIR]
#                    [--http-only] [--perf DIR] [--compare DIR]
#
# --http-only: only the HTTP table (no tunnel table, no idle agents).
# --perf DIR: also record `perf` profiles (call graphs) of kas and agentk during the kas rows'
# c=1 and c=64 small-request cells, as DIR/<row>-c<N>.data (read with `perf report -i`).
# --idle N: the idle-agents section's largest N (default: 100,000 where the open-file limit can be
# raised that far, else the hard limit less 1,000); it also runs N/4 to show linearity; 0 skips it.
# --bin-dir: take kas, agentk, sim-apiserver and examples/{bench,idle_agents} from DIR instead of
# building them (default target/release).
# --compare DIR: also measure the plain-HTTP kas rows with the kas and agentk binaries in DIR (another
# build, e.g. a copy of target/release before a change), labelled with DIR's name, in the same run.
# After the table, a second one: per request, how often the serving processes' threads were
# scheduled (wake-ups), their CPU time and their time waiting for a CPU (from
# /proc/PID/task/*/schedstat, all threads summed), in the c=1 and c=64 small-request cells.
# Experiments: BENCH_KAS_ARGS (extra kas flags, e.g. "--threads 1") and BENCH_AGENTK_ENV (extra
# VAR=value words for agentk, e.g. "TOKIO_WORKER_THREADS=1") apply to every kas row.
#
# Rows (wrk, one thread; each measurement is bounded to S seconds, default 5):
#   nginx direct                       the in-cluster service itself
#   rathole (TLS)                      rathole 0.5's TLS transport to the same nginx (if installed;
#                                      --install-rathole runs `cargo install rathole` first)
#   kas service proxy, plain-HTTP API  kas /api/v1/agents/1/proxy/default/nginx:PORT/… → tunnel →
#                                      agentk → nginx
#   kas service proxy, HTTPS API       the same with kas's API over TLS
#   sim-apiserver direct               GET /version on the simulated API server
#   kas /k8s-proxy, plain-HTTP API     the same request through kas's /k8s-proxy and agentk
# Columns: small requests at c=1 and c=64 (req/s, p50, p99), 1 MiB bodies at c=8 (req/s), and the
# RSS of the serving processes after the row's load. agentk and kas log at `warn` (nginx's access
# log is off, rathole logs no requests). Only ratios within one run mean anything: the machine may be
# shared.
set -euo pipefail

SECONDS_PER=5
INSTALL_RATHOLE=0
BUILD=1
IDLE=auto
BIN_DIR=""
HTTP_ONLY=0
PERF_DIR=""
COMPARE_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER="$2"; shift 2 ;;
        --install-rathole) INSTALL_RATHOLE=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --idle) IDLE="$2"; shift 2 ;;
        --bin-dir) BIN_DIR="$2"; BUILD=0; shift 2 ;;
        --http-only) HTTP_ONLY=1; shift ;;
        --perf) PERF_DIR="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        --compare) COMPARE_DIR="$(cd "$2" && pwd)"; shift 2 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | grep '^#'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
for tool in wrk nginx openssl curl sha256sum; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool" >&2; exit 2; }
done
if [ "$INSTALL_RATHOLE" = 1 ] && ! command -v rathole >/dev/null; then
    # Not --locked: rathole 0.5.0's lock file pins time 0.3.29, which no longer compiles with current
    # Rust (E0282 in time's format_description); semver-compatible updates of its dependencies do.
    timeout 1800 cargo install rathole --version 0.5.0
fi
if [ "$BUILD" = 1 ]; then
    timeout 3600 cargo build --release -q -p kas --bin kas -p agentk --bin agentk \
        -p sim-apiserver --bin sim-apiserver
    [ "$HTTP_ONLY" = 1 ] ||
        timeout 3600 cargo build --release -q -p runtime-tokio --example bench --example idle_agents
fi
BIN="${BIN_DIR:-$ROOT/target/release}"

W="$(mktemp -d /tmp/kas-bench.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# ---------------------------------------------------------------- credentials
bench_credentials

# ---------------------------------------------------------------- nginx, the in-cluster service
NGINX_PORT=$(port)
mkdir -p "$W/www"
head -c 1048576 /dev/urandom >"$W/www/1m"
cat >"$W/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $W/nginx-body;
    proxy_temp_path $W/nginx-proxy;
    fastcgi_temp_path $W/nginx-fcgi;
    uwsgi_temp_path $W/nginx-uwsgi;
    scgi_temp_path $W/nginx-scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $W/www;
        location = /small { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
nginx -c "$W/nginx.conf" -e "$W/nginx.err" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT"

# ---------------------------------------------------------------- the simulated API server
API_PORT=$(port)
"$BIN/sim-apiserver" --listen "127.0.0.1:$API_PORT" --kubeconfig-out "$W/cluster.kubeconfig" \
    --pods 10 >"$W/apiserver.log" 2>&1 &
API_PID=$!
PIDS+=("$API_PID")
wait_port "$API_PORT"
# The Service agentk resolves: cluster IP 127.0.0.1, port = nginx's port.
curl -sf -X POST -H 'content-type: application/json' \
    "http://127.0.0.1:$API_PORT/api/v1/namespaces/default/services" -d @- >/dev/null <<EOF
{"apiVersion":"v1","kind":"Service","metadata":{"name":"nginx","namespace":"default"},
 "spec":{"clusterIP":"127.0.0.1","clusterIPs":["127.0.0.1"],"ports":[{"name":"http","port":$NGINX_PORT,"protocol":"TCP"}],"selector":{"app":"nginx"}}}
EOF

# ---------------------------------------------------------------- measuring
# wrk prints latency in us/ms/s; normalise to a short string.
RESULTS="$W/results"
: >"$RESULTS"
# Profiles the kas rows' small-request cells when --perf is given (perf runs as long as wrk).
perf_start() { # name
    PERF_PID=""
    [ -n "$PERF_DIR" ] && [ -n "${KAS_PID:-}" ] && [ -n "${PERF_PIDS:-}" ] || return 0
    local file
    file="$PERF_DIR/$(tr -c 'a-zA-Z0-9=\n' '-' <<<"$1" | tr -s '-').data"
    perf record -q -F 199 --call-graph dwarf,16384 -o "$file" -p "$PERF_PIDS" \
        -- sleep "$SECONDS_PER" >/dev/null 2>&1 &
    PERF_PID=$!
}
perf_stop() { [ -z "${PERF_PID:-}" ] || wait "$PERF_PID" || true; }
measure() { # name url conns [header]
    local out
    case "$1" in *" c="*) perf_start "$1" ;; esac
    if [ -n "${4:-}" ]; then
        out=$(timeout $((SECONDS_PER + 30)) wrk -t1 -c"$3" -d"${SECONDS_PER}s" --latency -H "$4" "$2" 2>&1 || true)
    else
        out=$(timeout $((SECONDS_PER + 30)) wrk -t1 -c"$3" -d"${SECONDS_PER}s" --latency "$2" 2>&1 || true)
    fi
    perf_stop
    local rps p50 p99 errs
    awk '/ requests in / { print $1 }' <<<"$out" >"$W/requests"
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    errs=$(awk '/Non-2xx or 3xx responses:/ { print $NF } /Socket errors:/ { print "sock" }' <<<"$out" | tr '\n' ' ')
    [ -n "$errs" ] && echo "  ($1: errors: $errs)" >&2
    echo "${rps:-?}|${p50:-?}|${p99:-?}"
}
# Per process: CPU ns (user + system, /proc/PID/stat), and over its live threads the run-queue
# wait ns and the times scheduled (/proc/PID/task/*/schedstat).
sched() { # name=pid...
    local spec cpu tck
    tck=$(getconf CLK_TCK)
    for spec in "$@"; do
        cpu=$(awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.0f", ($12 + $13) * 1e9 / t }' "/proc/${spec#*=}/stat" 2>/dev/null || echo 0)
        cat "/proc/${spec#*=}/task/"*/schedstat 2>/dev/null |
            awk -v n="${spec%%=*}" -v c="$cpu" '{ w += $2; s += $3 } END { printf "%s %.0f %.0f %.0f\n", n, c, w, s }'
    done
}
# Per request between two `sched` snapshots: "name wake-ups · CPU µs · wait µs, ...".
per_request() { # before after requests
    awk -v n="$3" 'NR == FNR { r[$1] = $2; w[$1] = $3; s[$1] = $4; next }
        n > 0 { printf "%s%s %.1f · %.0f µs · %.0f µs", sep, $1, ($4 - s[$1]) / n,
                ($2 - r[$1]) / n / 1000, ($3 - w[$1]) / n / 1000; sep = ", " }' "$1" "$2"
}
# A measurement with the scheduler counters of the processes around it: "rps|p50|p99" on stdout,
# the per-request costs appended to $W/cost.
measure_cost() { # name url conns header pids...
    local name="$1" url="$2" conns="$3" header="$4" out
    shift 4
    sched "$@" >"$W/sched-before"
    out=$(measure "$name" "$url" "$conns" "$header")
    sched "$@" >"$W/sched-after"
    per_request "$W/sched-before" "$W/sched-after" "$(cat "$W/requests" 2>/dev/null || echo 0)" >"$W/cost-$conns"
    echo "$out"
}
row() { # label small_url big_url header name=pid...
    local label="$1" small="$2" big="$3" header="$4"
    shift 4
    # Warm-up (pooled connections, the service watch, TLS sessions).
    measure warm "$small" 4 "$header" >/dev/null
    local c1 c64 big_rps rss=""
    c1=$(measure_cost "$label c=1" "$small" 1 "$header" "$@")
    c64=$(measure_cost "$label c=64" "$small" 64 "$header" "$@")
    printf '%s|%s|%s\n' "$label" "$(cat "$W/cost-1")" "$(cat "$W/cost-64")" >>"$W/costs"
    if [ -n "$big" ]; then
        big_rps=$(measure "$label 1MiB" "$big" 8 "$header" | cut -d'|' -f1)
    else
        big_rps="—"
    fi
    for spec in "$@"; do
        rss="$rss${rss:+, }${spec%%=*} $(rss_mib "${spec#*=}") MiB"
    done
    printf '%s|%s|%s|%s|%s\n' "$label" "$c1" "$c64" "$big_rps" "${rss:-—}" >>"$RESULTS"
    echo "measured: $label" >&2
}

row "nginx direct" "http://127.0.0.1:$NGINX_PORT/small" "http://127.0.0.1:$NGINX_PORT/1m" "" \
    "nginx=$NGINX_PID"

# ---------------------------------------------------------------- rathole (TLS transport)
if command -v rathole >/dev/null; then
    RH_CTRL=$(port)
    RH_PORT=$(port)
    openssl pkcs12 -export -out "$W/identity.pfx" -inkey "$W/kas.key" -in "$W/kas.crt" \
        -certfile "$W/ca.pem" -passout pass:bench 2>/dev/null
    cat >"$W/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$RH_CTRL"
[server.transport]
type = "tls"
[server.transport.tls]
pkcs12 = "$W/identity.pfx"
pkcs12_password = "bench"
[server.services.nginx]
token = "$AGENT_TOKEN"
bind_addr = "127.0.0.1:$RH_PORT"
EOF
    cat >"$W/rathole-client.toml" <<EOF
[client]
remote_addr = "localhost:$RH_CTRL"
[client.transport]
type = "tls"
[client.transport.tls]
trusted_root = "$W/ca.pem"
hostname = "localhost"
[client.services.nginx]
token = "$AGENT_TOKEN"
local_addr = "127.0.0.1:$NGINX_PORT"
EOF
    RUST_LOG=warn rathole --server "$W/rathole-server.toml" >"$W/rathole-server.log" 2>&1 &
    RHS_PID=$!
    PIDS+=("$RHS_PID")
    wait_port "$RH_CTRL"
    RUST_LOG=warn rathole --client "$W/rathole-client.toml" >"$W/rathole-client.log" 2>&1 &
    RHC_PID=$!
    PIDS+=("$RHC_PID")
    wait_port "$RH_PORT"
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$RH_PORT/small" >/dev/null && break; sleep 0.1; done
    row "rathole (TLS)" "http://127.0.0.1:$RH_PORT/small" "http://127.0.0.1:$RH_PORT/1m" "" \
        "server=$RHS_PID" "client=$RHC_PID"
    kill "$RHS_PID" "$RHC_PID" 2>/dev/null || true
else
    echo "rathole (TLS)|not installed (scripts/bench.sh --install-rathole)||||" >>"$RESULTS"
fi

# ---------------------------------------------------------------- kas + agentk
AGENT_PORT=$(port)
KAS_API_PORT=$(port)
start_kas() { # tls: 0|1, [bin dir]
    local dir="${2:-$BIN}"
    write_kas_yaml "$1"
    # shellcheck disable=SC2086 # BENCH_KAS_ARGS: extra flags, split on purpose (experiments)
    "$dir/kas" --config "$W/kas.yaml" ${BENCH_KAS_ARGS:-} >"$W/kas.log" 2>&1 &
    KAS_PID=$!
    PIDS+=("$KAS_PID")
    wait_port "$AGENT_PORT"
    wait_port "$KAS_API_PORT"
    # shellcheck disable=SC2086 # BENCH_AGENTK_ENV: extra VAR=value words for agentk (experiments)
    env ${BENCH_AGENTK_ENV:-} RUST_LOG=warn "$dir/agentk" --kas-address "tls://127.0.0.1:$AGENT_PORT" \
        --token-file "$W/agent.token" --ca-file "$W/ca.pem" --kubeconfig "$W/cluster.kubeconfig" \
        >"$W/agentk.log" 2>&1 &
    AGENTK_PID=$!
    PIDS+=("$AGENTK_PID")
}
stop_kas() {
    kill "$AGENTK_PID" "$KAS_PID" 2>/dev/null || true
    wait "$AGENTK_PID" "$KAS_PID" 2>/dev/null || true
}
wait_proxy() { # url
    for _ in $(seq 300); do
        curl -sfk -H "$BEARER" "$1" >/dev/null && return 0
        sleep 0.1
    done
    echo "kas never proxied $1; logs:" >&2
    tail -5 "$W/kas.log" "$W/agentk.log" >&2
    return 1
}

start_kas 0
BASE="http://127.0.0.1:$KAS_API_PORT"
SVC="$BASE/api/v1/agents/1/proxy/default/nginx:$NGINX_PORT"
wait_proxy "$SVC/small"
PERF_PIDS="$KAS_PID,$AGENTK_PID"
row "kas service proxy, plain-HTTP API" "$SVC/small" "$SVC/1m" "$BEARER" \
    "kas=$KAS_PID" "agentk=$AGENTK_PID"
PERF_PIDS=""
row "sim-apiserver direct (GET /version)" "http://127.0.0.1:$API_PORT/version" "" "" \
    "apiserver=$API_PID"
PERF_PIDS="$KAS_PID,$AGENTK_PID"
row "kas /k8s-proxy, plain-HTTP API" "$BASE/k8s-proxy/version" "" "$BEARER" \
    "kas=$KAS_PID" "agentk=$AGENTK_PID"
stop_kas
PERF_PIDS=""

if [ -n "$COMPARE_DIR" ]; then
    NAME="$(basename "$COMPARE_DIR")"
    start_kas 0 "$COMPARE_DIR"
    BASE="http://127.0.0.1:$KAS_API_PORT"
    SVC="$BASE/api/v1/agents/1/proxy/default/nginx:$NGINX_PORT"
    wait_proxy "$SVC/small"
    row "kas service proxy, plain-HTTP API ($NAME)" "$SVC/small" "$SVC/1m" "$BEARER" \
        "kas=$KAS_PID" "agentk=$AGENTK_PID"
    row "kas /k8s-proxy, plain-HTTP API ($NAME)" "$BASE/k8s-proxy/version" "" "$BEARER" \
        "kas=$KAS_PID" "agentk=$AGENTK_PID"
    stop_kas
fi

start_kas 1
BASE="https://127.0.0.1:$KAS_API_PORT"
SVC="$BASE/api/v1/agents/1/proxy/default/nginx:$NGINX_PORT"
wait_proxy "$SVC/small"
row "kas service proxy, HTTPS API" "$SVC/small" "$SVC/1m" "$BEARER" \
    "kas=$KAS_PID" "agentk=$AGENTK_PID"
stop_kas

# ---------------------------------------------------------------- the table
echo
echo "kas bench, $(date -u +%Y-%m-%d), $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg), loopback, wrk -t1, ${SECONDS_PER} s per cell"
echo
echo "| path | c=1 small: req/s · p50 · p99 | c=64 small: req/s · p50 · p99 | c=8, 1 MiB: req/s | RSS after |"
echo "|---|---|---|---|---|"
while IFS='|' read -r label r1 p1 q1 r64 p64 q64 big rss; do
    if [ -z "$p1" ]; then
        echo "| $label | $r1 | | | |"
    else
        echo "| $label | $r1 · $p1 · $q1 | $r64 · $p64 · $q64 | $big | $rss |"
    fi
done <"$RESULTS"
echo
# The issue's goals, from the rows above (p50s in µs).
awk -F'|' '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6; return v + 0 }
    { rps1[$1] = $2; p50[$1] = us($3); p99[$1] = us($4); rps64[$1] = $5; p99_64[$1] = us($7) }
    END {
        rh = "rathole (TLS)"; d = "sim-apiserver direct (GET /version)"
        for (k in rps1) {
            if (k ~ /^kas service proxy/ && (rh in rps1) && rps1[rh] > 0)
                printf "%s: c=1 %.2f× rathole'"'"'s req/s (p99 %.0f vs %.0f µs), c=64 %.2f× (p99 %.0f vs %.0f µs)\n",
                    k, rps1[k] / rps1[rh], p99[k], p99[rh], rps64[k] / rps64[rh], p99_64[k], p99_64[rh]
            if (k ~ /^kas \/k8s-proxy/ && (d in rps1))
                printf "%s: adds %.0f µs p50 at c=1 over the API server direct\n", k, p50[k] - p50[d]
        }
    }' "$RESULTS" | sort
echo
echo "Per request (all threads of each serving process; wake-ups = times a thread was scheduled, wait = time runnable but waiting for a CPU):"
echo
echo "| path | c=1: wake-ups · CPU · wait | c=64: wake-ups · CPU · wait |"
echo "|---|---|---|"
while IFS='|' read -r label k1 k64; do
    echo "| $label | $k1 | $k64 |"
done <"$W/costs"
echo

[ "$HTTP_ONLY" = 1 ] && exit 0

# ---------------------------------------------------------------- the tunnel table
# Bulk (MiB/s and CPU s per GiB) and round trip against raw rustls: medians of BENCH_ROUNDS (default 7)
# alternating rounds of BENCH_PHASE_MS each (both taken from the environment).
"$BIN/examples/bench" --idle 0

# ---------------------------------------------------------------- idle agents on one kas
if [ "$IDLE" = auto ]; then
    if (ulimit -n 101000) 2>/dev/null; then
        IDLE=100000
    else
        HARD="$(ulimit -Hn)"
        IDLE=$((HARD - 1000))
    fi
fi
if [ "$IDLE" -gt 0 ]; then
    echo
    echo "idle agents, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$IDLE" -lt 100000 ]; then
        echo "100,000 connections in one process are blocked here by the open-file limit (hard $(ulimit -Hn), no"
        echo "CAP_SYS_RESOURCE to raise it): measured at N=$((IDLE / 4)) and N=$IDLE, 100,000 projected linearly from them."
    fi
    "$BIN/examples/idle_agents" --n "$((IDLE / 4)),$IDLE" --kas "$BIN/kas"
fi
