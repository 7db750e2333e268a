#!/usr/bin/env bash
# Renders the NATS configs of docker-compose.yml into deploy/compose/nats/
# with the deploy/nats scripts: three hub nodes and the centres leeds and
# salford-royal, on the compose network's host names. Run once before
# `docker compose up`; secrets land in nats/secrets/ (mode 0600).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nats="$here/../nats"
config="$here/nats"
routes='"nats-route://route:PASSWORD@hub-1:6222", "nats-route://route:PASSWORD@hub-2:6222", "nats-route://route:PASSWORD@hub-3:6222"'
for node in 1 2 3; do
    "$nats/render-hub.sh" --config-dir "$config" "server_name=hub-$node" \
        client_listen=0.0.0.0:4222 monitor_listen=0.0.0.0:8222 \
        cluster_listen=0.0.0.0:6222 leafnode_listen=0.0.0.0:7422 \
        store_dir=/data "routes=$routes"
done
for centre in leeds salford-royal; do
    "$nats/add-centre.sh" --config-dir "$config" \
        --hub-leafnodes hub-1:7422,hub-2:7422,hub-3:7422 "$centre" \
        client_listen=0.0.0.0:4222 monitor_listen=0.0.0.0:8222 store_dir=/data
done
# The services' token secret, shared by every toxaudit container.
if [[ ! -f "$config/secrets/toxaudit.env" ]]; then
    (umask 077; echo "TOXAUDIT_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '/+=\n')" \
        >"$config/secrets/toxaudit.env")
fi
# The containers read the configs through a read-only bind mount.
chmod -R a+rX "$config"/hub-* "$config"/leeds "$config"/salford-royal
echo "rendered $config; now: docker compose -f $here/docker-compose.yml up -d" >&2
