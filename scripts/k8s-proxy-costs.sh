#!/usr/bin/env bash
# agentk's cost per `/k8s-proxy` request (GET /version on the simulated API server, through kas,
# wrk -c1), for one or more agentk binaries against the same kas and sim-apiserver, one after the
# other in the same run: p50, then CPU time and context switches per request (`perf stat -p`), then
# system calls per request with the most frequent ones (`strace -c -f -p`, which slows agentk down:
# read the counts, not the time).
#
#   scripts/k8s-proxy-costs.sh BIN_DIR AGENTK... (BIN_DIR holds kas and sim-apiserver; S=seconds, default 3)
#
# Not part of scripts/test.sh; needs wrk, perf, strace, openssl, curl, bc.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,/^set /p' "$0" | grep '^#'; exit 2; }
for tool in wrk perf strace openssl curl bc; do
    command -v "$tool" >/dev/null || { echo "k8s-proxy-costs.sh needs $tool" >&2; exit 2; }
done
BIN="$1"; shift
S=${S:-3}
W=$(mktemp -d /tmp/k8s-proxy-costs.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf $W' EXIT
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
bench_credentials
API_PORT=$(port); AGENT_PORT=$(port); KAS_API_PORT=$(port)
"$BIN/sim-apiserver" --listen "127.0.0.1:$API_PORT" --kubeconfig-out "$W/cluster.kubeconfig" --pods 10 >"$W/api.log" 2>&1 &
PIDS+=($!); wait_port "$API_PORT"
write_kas_yaml 0
"$BIN/kas" --config "$W/kas.yaml" >"$W/kas.log" 2>&1 &
PIDS+=($!); wait_port "$KAS_API_PORT"
URL="http://127.0.0.1:$KAS_API_PORT/k8s-proxy/version"
reqs() { awk '/ requests in / { print $1 }' <<<"$1"; }
for AG in "$@"; do
    RUST_LOG=warn "$AG" --kas-address "tls://127.0.0.1:$AGENT_PORT" --token-file "$W/agent.token" \
        --ca-file "$W/ca.pem" --kubeconfig "$W/cluster.kubeconfig" >"$W/agentk.log" 2>&1 &
    AP=$!; PIDS+=($AP)
    for _ in $(seq 300); do curl -sf -H "$BEARER" "$URL" >/dev/null && break; sleep 0.1; done
    wrk -t1 -c4 -d1s -H "$BEARER" "$URL" >/dev/null
    out=$(wrk -t1 -c1 -d${S}s --latency -H "$BEARER" "$URL")
    n=$(reqs "$out"); p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    perf stat -x, -e task-clock,context-switches -p $AP -o "$W/perf" -- wrk -t1 -c1 -d${S}s -H "$BEARER" "$URL" >"$W/wrk2"
    n2=$(reqs "$(cat $W/wrk2)")
    tc=$(awk -F, '/task-clock/ { print $1 }' "$W/perf"); cs=$(awk -F, '/context-switches/ { print $1 }' "$W/perf")
    strace -c -f -p $AP -o "$W/strace" 2>/dev/null &
    SP=$!; sleep 1
    out3=$(wrk -t1 -c1 -d${S}s -H "$BEARER" "$URL"); n3=$(reqs "$out3")
    kill -INT $SP; wait $SP 2>/dev/null || true
    calls=$(awk '$NF == "total" { print $4 }' "$W/strace")
    printf '%s: c=1 %s req p50 %s | perf: %s req, CPU %.0f µs/req, context switches %.2f/req | strace: %s req, %.1f syscalls/req\n' \
        "$AG" "$n" "$p50" "$n2" "$(echo "$tc*1000/$n2" | bc -l)" "$(echo "$cs/$n2" | bc -l)" "$n3" "$(echo "$calls/$n3" | bc -l)"
    grep -E "^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+" "$W/strace" | grep -v " total$" | sort -k4 -nr | head -8 | awk -v n="$n3" '{ printf "    %-16s %.2f/req\n", $NF, $4/n }'
    kill $AP; wait $AP 2>/dev/null || true
done
