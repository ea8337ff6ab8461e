#!/usr/bin/env bash
# The simulator's speed benchmark: runs the speed scenarios in the release build and prints a table of
# wall time, CPU time, simulated/real ratio, events per second, peak RSS and trace hash, with the
# machine. Not a test: it asserts nothing (README "Simulator speed" shows its output).
#
#   scripts/sim-speed.sh                      # capacity (10k x 1 h), day (10k x 24 h), 100k (100k x 1 h)
#   scripts/sim-speed.sh steady capacity      # any scenarios under simulator/scenarios/, by name
#   SIM_SPEED_TIMEOUT=1800 scripts/sim-speed.sh   # per-run bound in seconds (default 1800)
#   SIM_SPEED_PROFILE=simulator/profiles/vm-2core-2026-12-03.yaml scripts/sim-speed.sh   # another cost profile
#   scripts/sim-speed.sh --pgo day            # time the profile-guided build (scripts/pgo-build.sh, target/pgo)
#   SIM_SPEED_BUILD=pgo scripts/sim-speed.sh  # the same; --plain / SIM_SPEED_BUILD=plain (the default): target/release
# The PGO build (trained on short cuts of day and 100k, not on these runs) gives the same trace hashes and
# 12-17 % less CPU on 1 h and 4 h cuts of day, but only 0-3 % on the whole day (2 pairs, 2026-12-06, busy
# machine): the plain build stays the default. The build that ran is printed above the table.
# CPU above wall is the other threads' share: cluster changes on the informer workers (sim::informer,
# one per core beyond the first, at most 3) and half of the deferred keepalive rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${SIM_SPEED_BUILD:-plain}"
scenarios=()
for arg in "$@"; do
    case "$arg" in
        --pgo) build=pgo ;;
        --plain) build=plain ;;
        *) scenarios+=("$arg") ;;
    esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(capacity day 100k)
limit="${SIM_SPEED_TIMEOUT:-1800}"
profile_args=()
[ -z "${SIM_SPEED_PROFILE:-}" ] || profile_args=(--profile "$SIM_SPEED_PROFILE")

command -v /usr/bin/time >/dev/null 2>&1 || { echo "needs /usr/bin/time (Debian package time)" >&2; exit 1; }
case "$build" in
    plain) cargo build --release -q -p simulator; bin=target/release/simulator ;;
    pgo) scripts/pgo-build.sh >/dev/null; bin=target/pgo/release/simulator ;;
    *) echo "SIM_SPEED_BUILD: plain or pgo, not $build" >&2; exit 1 ;;
esac
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u +%Y-%m-%d)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')  cost profile: ${SIM_SPEED_PROFILE:-the default}"
echo "build: $build ($bin)"
echo
printf '| %-9s | %7s | %4s | %9s | %9s | %8s | %7s | %11s | %9s | %-16s | %s\n' \
    scenario agents kas simulated wall cpu 'sim/wall' events 'events/s' 'trace hash' 'peak RSS |'
printf '|%s|\n' '-----------|---------|------|-----------|-----------|----------|---------|-------------|-----------|------------------|----------'
for name in "${scenarios[@]}"; do
    file="simulator/scenarios/$name.yaml"
    [ -f "$file" ] || { echo "no scenario $file" >&2; exit 1; }
    status=0
    timeout "$limit" /usr/bin/time -f 'TIME %e %U %S %M' "$bin" run --scenario "$file" --quiet "${profile_args[@]}" \
        >"$out/$name.out" 2>"$out/$name.err" || status=$?
    line=$(grep -m1 '^scenario ' "$out/$name.out" || true)
    agents=$(sed -E 's/.*: ([0-9]+) agents.*/\1/' <<<"$line")
    kas=$(sed -E 's/.* ([0-9]+) kas.*/\1/' <<<"$line")
    sim=$(sed -E 's/.* ([0-9.]+)s simulated.*/\1/' <<<"$line")
    events=$(grep -m1 '^events: ' "$out/$name.out" | awk '{print $2}')
    hash=$(grep -m1 '^trace hash: ' "$out/$name.out" | awk '{print $3}')
    read -r _ wall user sys rss < <(grep '^TIME ' "$out/$name.err" | tail -1) || true
    if [ "$status" -ne 0 ] && [ -z "$hash" ]; then
        printf '| %-9s | failed (exit %s; bound %ss): %s\n' "$name" "$status" "$limit" \
            "$(grep -v '^TIME ' "$out/$name.err" | tail -1)"
        continue
    fi
    verdict=$(grep -qx 'all invariants held' "$out/$name.out" && echo '' || echo ' (VIOLATION)')
    awk -v n="$name" -v a="$agents" -v k="$kas" -v s="$sim" -v w="$wall" -v u="$user" -v y="$sys" \
        -v e="$events" -v h="$hash" -v r="$rss" -v v="$verdict" 'BEGIN {
        printf "| %-9s | %7d | %4d | %8.0fs | %8.1fs | %7.1fs | %6.0fx | %11d | %9.0f | %-16s | %6.0f MiB%s |\n",
            n, a, k, s, w, u + y, s / w, e, e / w, h, r / 1024, v }'
done
echo
echo "wall: elapsed time; cpu: user + system time of the run (the machine may be shared: cpu is the figure"
echo "that does not depend on other load); sim/wall: simulated seconds per wall-clock second."
