#!/usr/bin/env bash
# The whole test suite, as the README's second command and CI's only step.
# Installs the system programs the tests need (kubectl, chromium, git, curl, nginx + stream module, tinyproxy,
# fcgiwrap, ss, redis-server, script, systemd-analyze) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# No incremental compilation: CI builds once from a fresh clone, where incremental state only costs time
# and disk (it grew to 28 GB here; a CI run once failed with "No space left on device"). Set
# CARGO_INCREMENTAL=1 to keep it for repeated local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

need_apt=()
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# git-mirror's tests serve repositories with git daemon and git http-backend (both in Debian's git) behind nginx + fcgiwrap
command -v git >/dev/null 2>&1 || need_apt+=(git)
# kas-demo's git test also drives the demo repositories' curl post-receive hook
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || need_apt+=(nginx)
# kas/tests/transports.rs: agents through a real HTTP CONNECT proxy (tinyproxy) and behind nginx (TLS
# terminated for wss://, TCP pass-through with the stream module for tls://)
{ command -v tinyproxy || [ -x /usr/bin/tinyproxy ]; } >/dev/null 2>&1 || need_apt+=(tinyproxy)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
{ command -v fcgiwrap || [ -x /usr/sbin/fcgiwrap ]; } >/dev/null 2>&1 || need_apt+=(fcgiwrap)
# `ss` reads listen backlogs (kas's listener test)
{ command -v ss || [ -x /usr/sbin/ss ] || [ -x /usr/bin/ss ]; } >/dev/null 2>&1 || need_apt+=(iproute2)
# kas replicas share a Redis (kas/tests/replicas.rs, `kas demo --replicas N`)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# `script` gives `kubectl exec -it` a pseudo-terminal (sim-apiserver's exec tests; util-linux, usually present)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
# `systemd-analyze` checks deploy/systemd/kas.service (kas-demo's deploy test)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

echo "== rustfmt"
cargo fmt --all -- --check

echo "== the protocol crate depends on no async runtime or socket crate"
if cargo tree -p protocol -e normal --prefix none | grep -E '^(tokio|smol|async-io|async-std|mio|async-net) v'; then
    echo "protocol must stay Sans-IO" >&2
    exit 1
fi
if cargo tree -p traffic-trace -e normal --prefix none | grep -E '^(tokio|smol|async-io|async-std|mio|async-net|protocol|kas|simulator) v'; then
    echo "traffic-trace (the recording format kas and the simulator share) must stay pure" >&2
    exit 1
fi

echo "== the pure crates read no clock, start no thread, open no socket or file (scripts/sans-io-clippy/clippy.toml)"
# Its own target dir: another clippy configuration must not invalidate the workspace's checked crates.
CLIPPY_CONF_DIR="$PWD/scripts/sans-io-clippy" CARGO_TARGET_DIR=target/sans-io-check \
    cargo clippy -q -p protocol -p agent-config -p access-control -p gitops -p traffic-trace --lib -- \
    -D warnings -D clippy::disallowed_methods -D clippy::disallowed_types

echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== the kas binary links no agent, Kubernetes client, simulated API server or tokio runtime"
# The demo (agentk, simulated clusters, a tokio runtime) is the kas-demo crate; `kas demo` execs it.
if cargo tree -p kas -e normal --prefix none | grep -E '^(kube|agentk|sim-apiserver|simulator|hyper-util|tokio-util) v'; then
    echo "kas must not depend on these (see ARCHITECTURE.md, crate kas-demo)" >&2
    exit 1
fi
# hyper 1 depends on tokio (feature `sync`) unconditionally; that, and nothing with a runtime, is allowed.
if cargo tree -p kas -e normal --prefix none | grep -qE '^tokio v'; then
    tokio_users=$(cargo tree -p kas -e normal -i tokio --depth 1 --prefix none | tail -n +2 | sed 's/ .*//' | sort -u | tr '\n' ' ')
    tokio_features=$(cargo tree -p kas -e normal,features -i tokio --prefix none \
        | sed -n 's/^tokio feature "\([^"]*\)".*/\1/p' | { grep -vxE 'default|sync' || true; } | sort -u | tr '\n' ' ')
    if [ "$tokio_users" != "hyper " ] || [ -n "$tokio_features" ]; then
        echo "kas reaches tokio through [${tokio_users}] with runtime features [${tokio_features}]; only hyper with 'sync' is allowed" >&2
        exit 1
    fi
fi

echo "== the simulator links no agent or Kubernetes client (it drives protocol's pure types)"
if cargo tree -p simulator -e normal --prefix none | grep -E '^(kube|agentk) v'; then
    echo "the simulator must not depend on these (reconnect policy: protocol::tunnel::reconnect)" >&2
    exit 1
fi
# The live view (--serve) is tiny_http on a std thread: no async runtime or hyper in the simulator.
if cargo tree -p simulator -e normal --prefix none | grep -E '^(tokio|hyper|smol|async-io) v'; then
    echo "the simulator must not link an async runtime or hyper (its live view uses tiny_http)" >&2
    exit 1
fi

echo "== binaries the conformance suite runs against (target/debug/agentk, target/debug/kas, target/debug/kas-demo)"
cargo build -p agentk -p kas -p kas-demo

# Also runs, bounded: the fuzz targets' bodies for a few seconds each (protocol/tests/fuzz_bodies.rs),
# the simulator's fault campaigns and checker self-tests, and both conformance suites against our
# binaries and, under every injectable fault, against the self-test agent and kas. The test run never
# rewrites the conformance vectors: regenerate them with `cargo run -p conformance -- gen-vectors`.
echo "== tests (unit, property, fuzz bodies, simulation, integration, kubectl and Chromium end to end, conformance)"
cargo test --workspace

# The vendored, patched polling (kas's reactor; vendor/polling/VENDORED.md) is outside the workspace:
# its own tests, the changed epoll backend's included, run here, into the workspace's target/.
echo "== vendored polling (kas's reactor)"
cargo test --manifest-path vendor/polling/Cargo.toml --target-dir target/vendor
