#!/usr/bin/env bash
# Renders the config of one hub node into CONFIG_DIR/<server_name>/: hub.conf
# from hub.conf.template and hub-accounts.conf from the centres listed in
# CONFIG_DIR/centres (one a line, kept by add-centre.sh). Creates the hub's
# secrets in CONFIG_DIR/secrets/hub.env (mode 0600) the first time, and hub
# reporting's NATS credentials in CONFIG_DIR/secrets/network-reporting.env and
# network-reporting.password.
#
#   deploy/nats/render-hub.sh --config-dir /etc/toxaudit/nats \
#       server_name=hub-1 client_listen=0.0.0.0:4222 monitor_listen=127.0.0.1:8222 \
#       cluster_listen=0.0.0.0:6222 leafnode_listen=0.0.0.0:7422 \
#       store_dir=/var/lib/toxaudit-nats \
#       routes='"nats-route://route:PASSWORD@hub-1:6222", "nats-route://route:PASSWORD@hub-2:6222", "nats-route://route:PASSWORD@hub-3:6222"'
#
# In routes, the literal word PASSWORD stands for the route password of
# hub.env, so that it never has to be typed on a command line. Each route URL
# (with the password) goes into hub.env as TOXAUDIT_ROUTE_URL_<n>, and
# hub.conf names only the variables: config files hold no secret.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config_dir=""
if [[ "${1:-}" == "--config-dir" ]]; then
    config_dir="$2"
    shift 2
fi
if [[ -z "$config_dir" ]]; then
    echo "usage: render-hub.sh --config-dir DIR server_name=... [key=value]..." >&2
    exit 64
fi
mkdir -p "$config_dir/secrets"
chmod 0700 "$config_dir/secrets"
touch "$config_dir/centres"

# nats-server reads an environment value as a config value: a secret that
# began with a digit would parse as a number, so each starts with a letter.
random_secret() { printf 's%s' "$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 31)"; }

hub_env="$config_dir/secrets/hub.env"
if [[ ! -f "$hub_env" ]]; then
    (
        umask 077
        {
            echo "TOXAUDIT_SYS_PASSWORD=$(random_secret)"
            echo "TOXAUDIT_ROUTE_PASSWORD=$(random_secret)"
            echo "TOXAUDIT_NETWORK_ADMIN_PASSWORD=$(random_secret)"
            echo "TOXAUDIT_NETWORK_REPORTING_PASSWORD=$(random_secret)"
        } >"$hub_env"
    )
fi
route_password="$(sed -n 's/^TOXAUDIT_ROUTE_PASSWORD=//p' "$hub_env")"
# Hub reporting's NATS credentials, for toxaudit rather than nats-server: an
# env file (compose, a Kubernetes Secret) and the bare password (a systemd
# credential for --nats-password-file).
(
    umask 077
    reporting_password="$(sed -n 's/^TOXAUDIT_NETWORK_REPORTING_PASSWORD=//p' "$hub_env")"
    {
        echo "TOXAUDIT_NATS_USER=network-reporting"
        echo "TOXAUDIT_NATS_PASSWORD=$reporting_password"
    } >"$config_dir/secrets/network-reporting.env"
    printf '%s\n' "$reporting_password" >"$config_dir/secrets/network-reporting.password"
)

# route_variables ROUTES: writes each quoted URL of ROUTES, with PASSWORD
# replaced, to hub.env as TOXAUDIT_ROUTE_URL_<n> (replacing the previous
# ones; every node shares the list) and prints the routes as those variables.
route_variables() {
    local routes="$1" url index=0 references=""
    local -a urls=()
    while IFS= read -r url; do
        [[ -n "$url" ]] && urls+=("$url")
    done < <(grep -o '"[^"]*"' <<<"$routes" | tr -d '"')
    if [[ ${#urls[@]} -eq 0 ]]; then
        echo "render-hub.sh: routes= lists no quoted URL" >&2
        exit 64
    fi
    (
        umask 077
        sed -i '/^TOXAUDIT_ROUTE_URL_/d' "$hub_env"
        for url in "${urls[@]}"; do
            index=$((index + 1))
            echo "TOXAUDIT_ROUTE_URL_$index=${url//PASSWORD/$route_password}" >>"$hub_env"
        done
    )
    for index in "${!urls[@]}"; do
        references+="${references:+, }\$TOXAUDIT_ROUTE_URL_$((index + 1))"
    done
    printf '%s' "$references"
}

server_name=""
values=()
for assignment in "$@"; do
    case "$assignment" in
        server_name=*) server_name="${assignment#server_name=}" ;;
        routes=*) assignment="routes=$(route_variables "${assignment#routes=}")" ;;
    esac
    values+=("$assignment")
done
if [[ ! "$server_name" =~ ^[A-Za-z0-9_-]+$ ]]; then
    echo "render-hub.sh: server_name=NAME is required ([A-Za-z0-9_-])" >&2
    exit 64
fi

node_dir="$config_dir/$server_name"
mkdir -p "$node_dir"
"$here/render.sh" "$here/hub.conf.template" "${values[@]}" >"$node_dir/hub.conf"
"$here/render-hub-accounts.sh" "$config_dir" >"$node_dir/hub-accounts.conf"
echo "rendered $node_dir/hub.conf and hub-accounts.conf" >&2
