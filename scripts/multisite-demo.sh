#!/usr/bin/env bash
# The multi-site topology of ADR 0006 on one machine: a three-node hub
# cluster and a leaf node for each of two centres (leeds, salford-royal),
# all real nats-servers on free loopback ports, configured by the
# deploy/nats/ scripts exactly as an operator would. Each centre runs
# `toxaudit up` on its own leaf and imports its half of the founding audit's
# demo data through gRPC; reporting at the hub reads the network stream;
# the network report is printed once it equals the report of all the demo
# data imported in one place.
#
# Needs only what `make release` builds; installs nats-server when missing
# (scripts/ensure-nats-server.sh). Every process it starts is stopped on
# exit, however it exits. Work files go to $MULTISITE_DIR (default:
# target/multisite-demo, emptied first).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
toxaudit="${TOXAUDIT:-$root/target/release/toxaudit}"
work="${MULTISITE_DIR:-$root/target/multisite-demo}"
seed="${DEMO_SEED:-1}"
deadline_seconds="${MULTISITE_DEADLINE_SECONDS:-120}"
centres=(leeds salford-royal)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { echo "multisite-demo: $*" >&2; exit 1; }

pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        echo "multisite-demo: failed; logs are in $work/logs" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: runs a process in the background, logging to logs/NAME.log.
start() {
    local name="$1"
    shift
    "$@" >"$work/logs/$name.log" 2>&1 &
    pids+=("$!")
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until DESCRIPTION COMMAND...: polls COMMAND until it succeeds, for at
# most $deadline_seconds.
wait_until() {
    local description="$1" started=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - started > deadline_seconds)); then
            fail "timed out waiting for $description"
        fi
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# http_get URL: the body, or a failure for anything but a 2xx answer.
http_get() {
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1"
}
healthy() { http_get "http://127.0.0.1:$1/healthz?js-enabled-only=true" >/dev/null; }
leaf_linked() { http_get "http://127.0.0.1:$1/leafz" | grep -q '"name": "hub-'; }

[[ -x "$toxaudit" ]] || fail "$toxaudit is missing: run make release first"
command -v python3 >/dev/null || fail "python3 is needed (it also installs nats-server)"
nats_server="$(scripts/ensure-nats-server.sh)"

rm -rf "$work"
mkdir -p "$work/logs"
config="$work/nats"

say "rendering the NATS configs (deploy/nats) for a hub of three nodes and ${#centres[@]} centres"
declare -A client cluster leafnode monitor
for node in 1 2 3; do
    client[$node]="$(free_port)"
    cluster[$node]="$(free_port)"
    leafnode[$node]="$(free_port)"
    monitor[$node]="$(free_port)"
done
routes="\"nats-route://route:PASSWORD@127.0.0.1:${cluster[1]}\", \"nats-route://route:PASSWORD@127.0.0.1:${cluster[2]}\", \"nats-route://route:PASSWORD@127.0.0.1:${cluster[3]}\""
for node in 1 2 3; do
    deploy/nats/render-hub.sh --config-dir "$config" \
        "server_name=hub-$node" \
        "client_listen=127.0.0.1:${client[$node]}" \
        "monitor_listen=127.0.0.1:${monitor[$node]}" \
        "cluster_listen=127.0.0.1:${cluster[$node]}" \
        "leafnode_listen=127.0.0.1:${leafnode[$node]}" \
        "store_dir=$work/store/hub-$node" \
        "routes=$routes" 2>/dev/null
done
declare -A leaf_client leaf_monitor grpc http
hub_leafnodes="127.0.0.1:${leafnode[1]},127.0.0.1:${leafnode[2]},127.0.0.1:${leafnode[3]}"
for centre in "${centres[@]}"; do
    leaf_client[$centre]="$(free_port)"
    leaf_monitor[$centre]="$(free_port)"
    grpc[$centre]="$(free_port)"
    http[$centre]="$(free_port)"
    deploy/nats/add-centre.sh --config-dir "$config" --hub-leafnodes "$hub_leafnodes" "$centre" \
        "client_listen=127.0.0.1:${leaf_client[$centre]}" \
        "monitor_listen=127.0.0.1:${leaf_monitor[$centre]}" \
        "store_dir=$work/store/$centre" 2>/dev/null
done

say "starting the hub: hub-1, hub-2, hub-3 (JetStream domain hub)"
for node in 1 2 3; do
    start "hub-$node" env -i PATH="$PATH" bash -c \
        "set -a; . '$config/secrets/hub.env'; exec '$nats_server' -c '$config/hub-$node/hub.conf'"
done
for node in 1 2 3; do
    wait_until "hub-$node" healthy "${monitor[$node]}"
done

say "starting a leaf node per centre (JetStream domain = the centre)"
for centre in "${centres[@]}"; do
    start "$centre-leaf" env -i PATH="$PATH" bash -c \
        "set -a; . '$config/secrets/$centre.env'; exec '$nats_server' -c '$config/$centre/leaf.conf'"
done
for centre in "${centres[@]}"; do
    wait_until "the $centre leaf node" healthy "${leaf_monitor[$centre]}"
    wait_until "the $centre leaf link" leaf_linked "${leaf_monitor[$centre]}"
done

admin_password="$(sed -n 's/^TOXAUDIT_NETWORK_ADMIN_PASSWORD=//p' "$config/secrets/hub.env")"
say "creating the network stream at the hub (toxaudit network sync)"
wait_until "the network stream" "$toxaudit" network sync \
    --nats "nats://network-admin:$admin_password@127.0.0.1:${client[1]}" \
    --centre leeds --centre salford-royal
"$toxaudit" network sync --nats "nats://network-admin:$admin_password@127.0.0.1:${client[1]}" \
    --centre leeds --centre salford-royal

export TOXAUDIT_JWT_SECRET
TOXAUDIT_JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '/+=\n')"

say "starting toxaudit at each centre, on its own leaf node"
for centre in "${centres[@]}"; do
    # The leaf admits no client without credentials: the centre's services
    # connect as `services`, with the password file add-centre.sh wrote.
    start "$centre-toxaudit" "$toxaudit" up \
        --nats "nats://127.0.0.1:${leaf_client[$centre]}" \
        --nats-user services \
        --nats-password-file "$config/secrets/$centre-services.password" \
        --data-dir "$work/$centre" \
        --grpc-addr "127.0.0.1:${grpc[$centre]}" \
        --http-addr "127.0.0.1:${http[$centre]}"
done
hub_grpc="$(free_port)"
hub_http="$(free_port)"
say "starting reporting at the hub, on the network stream"
start "hub-reporting" "$toxaudit" serve reporting \
    --nats "nats://127.0.0.1:${client[1]}" \
    --nats-user network-reporting \
    --nats-password-file "$config/secrets/network-reporting.password" \
    --data-dir "$work/hub-reporting" \
    --grpc-addr "127.0.0.1:$hub_grpc" \
    --http-addr "127.0.0.1:$hub_http"
for centre in "${centres[@]}"; do
    wait_until "toxaudit at $centre" port_open "${grpc[$centre]}"
done
wait_until "reporting at the hub" port_open "$hub_grpc"

say "importing the founding audit's demo data (seed $seed), each centre its own half"
"$toxaudit" demo-data paper2019 --seed "$seed" >"$work/paper2019.ndjson"
for centre in "${centres[@]}"; do
    grep -F "\"centre\":\"$centre\"" "$work/paper2019.ndjson" >"$work/$centre.ndjson" || true
    token="$("$toxaudit" token issue --centre "$centre" --role clinician)"
    # The whole file at once, as an operator would: `import --server` sends
    # it as one Ingest.Import, which the centre's ingest checks whole and then
    # appends in JetStream atomic batches of at most 1000 events.
    "$toxaudit" import --server "http://127.0.0.1:${grpc[$centre]}" --token "$token" "$work/$centre.ndjson"
done

say "waiting for the network report to hold both centres"
# The same data imported in one place gives the report the network must reach.
"$toxaudit" import --data-dir "$work/single-site" "$work/paper2019.ndjson" >/dev/null
"$toxaudit" report --data-dir "$work/single-site" --format json >"$work/expected-report.json"
auditor="$("$toxaudit" token issue --centre leeds --role auditor)"
network_report_matches() {
    "$toxaudit" report --server "http://127.0.0.1:$hub_grpc" --token "$auditor" --format json \
        >"$work/network-report.json" &&
        cmp -s "$work/network-report.json" "$work/expected-report.json"
}
wait_until "the network report to converge" network_report_matches

say "the network report, read at the hub"
"$toxaudit" report --server "http://127.0.0.1:$hub_grpc" --token "$auditor" --format table
say "multi-site demo done: both centres' events reached the hub once each"
