# Shared by scripts/bench.sh and scripts/k8s-proxy-costs.sh (sourced, not run): loopback ports, a
# throw-away PKI and tokens, and kas's configuration for one agent and one user. The caller sets W
# (its working directory) before sourcing and calls `bench_credentials` once.

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 30 s) until a TCP port accepts; on failure shows the tails of $W's logs.
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened; logs:" >&2
    tail -n 5 "$W"/*.log "$W"/*.err >&2 2>/dev/null || true
    return 1
}

# $W/ca.pem (+ key), kas's certificate for localhost/127.0.0.1 ($W/kas.crt, $W/kas.key), an agent
# token in $W/agent.token (AGENT_TOKEN), a user token (USER_TOKEN, BEARER = its Authorization
# header), and $W/agents.yaml / $W/users.yaml with their digests (the token itself is never written
# to kas's files).
bench_credentials() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/ca.key" \
        -out "$W/ca.pem" -days 2 -subj /CN=bench-ca \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/kas.key" \
        -out "$W/kas.csr" -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$W/ext"
    openssl x509 -req -in "$W/kas.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial \
        -out "$W/kas.crt" -days 2 -extfile "$W/ext" 2>/dev/null
    AGENT_TOKEN="$(openssl rand -hex 24)"
    USER_TOKEN="$(openssl rand -hex 24)"
    echo "$AGENT_TOKEN" >"$W/agent.token"
    printf 'agents:\n  - id: 1\n    name: agent-1\n    token_sha256: %s\n' "$(bench_sha "$AGENT_TOKEN")" >"$W/agents.yaml"
    printf 'users:\n  - name: bench\n    token_sha256: %s\n    agents: "*"\n' "$(bench_sha "$USER_TOKEN")" >"$W/users.yaml"
    BEARER="Authorization: Bearer pat:1:$USER_TOKEN"
}
bench_sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# kas's configuration for the files above: $W/kas.yaml with the agent listener (TLS) on AGENT_PORT and
# the API listener on KAS_API_PORT, over TLS when the argument is 1.
write_kas_yaml() { # api_tls: 0|1
    local tls=""
    [ "${1:-0}" = 1 ] && tls="  tls: { cert_file: $W/kas.crt, key_file: $W/kas.key }"
    cat >"$W/kas.yaml" <<EOF
state_dir: $W
agent_listener:
  address: 127.0.0.1:$AGENT_PORT
  tls: { cert_file: $W/kas.crt, key_file: $W/kas.key }
api_listener:
  address: 127.0.0.1:$KAS_API_PORT
$tls
agent_auth:
  backend: embedded
users:
  file: $W/users.yaml
log: { level: warn }
EOF
}
