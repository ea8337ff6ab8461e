#!/usr/bin/env bash
# Builds the simulator binary with profile-guided optimisation (PGO) into target/pgo/release/simulator
# (issue #17: the day scenario's wall time; the profile is flat, so the gain has to come from the
# compiler's layout, inlining and branch decisions as a whole). Steps: an instrumented build
# (-Cprofile-generate, target/pgo-gen), training runs on short scenarios derived from day.yaml (with its
# crash and rolling restart moved into the window, another seed) and 100k.yaml (a 100,000-agent cut) —
# never the timed scenarios themselves — then llvm-profdata merge and the final -Cprofile-use build
# (target/pgo). The normal target/release build is untouched. PGO changes code generation only: the
# same seed gives the same trace hash as the plain build.
#
#   scripts/pgo-build.sh    # prints the binary's path; first time: 2 release builds + ~1.5 min training
#
# Training runs again only when the instrumented binary was rebuilt (a source change), so a second
# run with nothing changed costs two no-op cargo builds.
#
# Needs llvm-profdata of rustc's LLVM major version (rustc 1.95: LLVM 22; Debian's llvm-22, installed
# with apt-get when missing; /usr/bin/llvm-profdata of an older LLVM cannot read the profiles).
set -euo pipefail
cd "$(dirname "$0")/.."

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata="llvm-profdata-$llvm_major"
if ! command -v "$profdata" >/dev/null 2>&1; then
    echo "installing llvm-$llvm_major (for $profdata)" >&2
    apt-get install -y -q "llvm-$llvm_major" >/dev/null
fi

data="$PWD/target/pgo-data"
profile="$data/simulator.profdata"
gen=target/pgo-gen/release/simulator
base_flags="${RUSTFLAGS:-}"

echo "pgo: instrumented build (target/pgo-gen)" >&2
RUSTFLAGS="$base_flags -Cprofile-generate=$data/raw" \
    cargo build --release -q -p simulator --target-dir target/pgo-gen

# Training, unless the profile is newer than the instrumented binary (nothing changed since: the
# final build below is then up to date too). Scenarios: a 30-minute day with its faults inside the
# window, and 10 minutes of 100k (its agents connect over 5 minutes, the client traffic starts at 5
# minutes, the crash at 6).
if [ ! -f "$profile" ] || [ "$gen" -nt "$profile" ]; then
    rm -rf "$data"
    mkdir -p "$data/raw"
    sed -e 's/^seed: .*/seed: 2/' -e 's/^duration: 24h/duration: 30m/' -e 's/at: 6h/at: 10m/' \
        -e 's/at: 12h/at: 20m/' -e 's/^sample_interval: .*/sample_interval: 1m/' \
        simulator/scenarios/day.yaml >"$data/train-day.yaml"
    sed -e 's/^seed: .*/seed: 2/' -e 's/^duration: 1h/duration: 10m/' -e 's/at: 30m/at: 6m/' \
        simulator/scenarios/100k.yaml >"$data/train-100k.yaml"
    for scenario in "$data"/train-*.yaml; do
        echo "pgo: training on $(basename "$scenario")" >&2
        "$gen" run --scenario "$scenario" --quiet >"${scenario%.yaml}.out"
        grep -qx 'all invariants held' "${scenario%.yaml}.out" || { echo "training run failed: $scenario" >&2; exit 1; }
    done
    "$profdata" merge -o "$profile" "$data"/raw/*.profraw
fi

echo "pgo: optimised build (target/pgo)" >&2
RUSTFLAGS="$base_flags -Cprofile-use=$profile" \
    cargo build --release -q -p simulator --target-dir target/pgo
echo "target/pgo/release/simulator"
