#!/usr/bin/env bash
# Adds a centre to the network:
#   1. lists it in CONFIG_DIR/centres and re-renders every hub node's
#      hub-accounts.conf with the centre's leaf user;
#   2. adds the centre's leaf password to CONFIG_DIR/secrets/hub.env;
#   3. renders the centre's leaf node config CONFIG_DIR/<centre>/leaf.conf and
#      its secrets CONFIG_DIR/secrets/<centre>.env (mode 0600), whose leaf URLs
#      name every hub node given with --hub-leafnodes;
#   4. writes the centre services' NATS credentials for toxaudit:
#      CONFIG_DIR/secrets/<centre>-services.env and .password (mode 0600).
# Then, as it prints: restart each hub node in turn (the new password variable
# is read only at start), start the leaf in the centre, and
# run `toxaudit network sync` so that the hub sources the centre's stream.
#
#   deploy/nats/add-centre.sh --config-dir /etc/toxaudit/nats \
#       --hub-leafnodes hub-1.example.org:7422,hub-2.example.org:7422,hub-3.example.org:7422 \
#       leeds [client_listen=127.0.0.1:4222] [monitor_listen=127.0.0.1:8222] \
#       [store_dir=/var/lib/toxaudit-nats] [server_name=leeds-leaf]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
    echo "usage: add-centre.sh --config-dir DIR --hub-leafnodes H1:P,H2:P,H3:P CENTRE [key=value]..." >&2
    exit 64
}
config_dir=""
hub_leafnodes=""
while [[ $# -gt 0 && "$1" == --* ]]; do
    case "$1" in
        --config-dir) config_dir="$2"; shift 2 ;;
        --hub-leafnodes) hub_leafnodes="$2"; shift 2 ;;
        *) usage ;;
    esac
done
[[ -n "$config_dir" && -n "$hub_leafnodes" && $# -ge 1 ]] || usage
centre="$1"
shift
if [[ ! "$centre" =~ ^[a-z0-9-]{2,32}$ || "$centre" == "all" ]]; then
    echo "add-centre.sh: a centre is 2 to 32 characters of [a-z0-9-], and not 'all'" >&2
    exit 64
fi
IFS=',' read -r -a hubs <<<"$hub_leafnodes"
if [[ ${#hubs[@]} -ne 3 ]]; then
    echo "add-centre.sh: --hub-leafnodes names the three hub nodes' leafnode host:port" >&2
    exit 64
fi
hub_env="$config_dir/secrets/hub.env"
if [[ ! -f "$hub_env" ]]; then
    echo "add-centre.sh: $hub_env is missing: render the hub first (render-hub.sh)" >&2
    exit 66
fi

# nats-server reads an environment value as a config value: a secret that
# began with a digit would parse as a number, so each starts with a letter.
random_secret() { printf 's%s' "$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 31)"; }
umask 077

# 1. The centre list and the hub's accounts.
if ! grep -qx "$centre" "$config_dir/centres"; then
    echo "$centre" >>"$config_dir/centres"
fi
for node_dir in "$config_dir"/*/; do
    if [[ -f "$node_dir/hub.conf" ]]; then
        "$here/render-hub-accounts.sh" "$config_dir" >"$node_dir/hub-accounts.conf"
    fi
done

# 2. The centre's leaf password, known to the hub.
variable="TOXAUDIT_LEAF_$(tr 'a-z-' 'A-Z_' <<<"$centre")_PASSWORD"
if ! grep -q "^$variable=" "$hub_env"; then
    echo "$variable=$(random_secret)" >>"$hub_env"
fi
leaf_password="$(sed -n "s/^$variable=//p" "$hub_env")"

# 3. The leaf node's config and secrets.
centre_env="$config_dir/secrets/$centre.env"
if [[ ! -f "$centre_env" ]]; then
    {
        echo "TOXAUDIT_SYS_PASSWORD=$(random_secret)"
        echo "TOXAUDIT_CENTRE_SERVICES_PASSWORD=$(random_secret)"
        echo "TOXAUDIT_CENTRE_REPORTING_PASSWORD=$(random_secret)"
    } >"$centre_env"
fi
sed -i '/^TOXAUDIT_HUB_LEAF_URL_/d' "$centre_env"
for index in 0 1 2; do
    echo "TOXAUDIT_HUB_LEAF_URL_$((index + 1))=nats-leaf://leaf-$centre:$leaf_password@${hubs[$index]}" >>"$centre_env"
done

# 4. The centre services' own credentials, for toxaudit rather than
# nats-server: an env file (TOXAUDIT_NATS_USER / TOXAUDIT_NATS_PASSWORD, for
# compose or a Kubernetes Secret) and the bare password (for
# --nats-password-file, a systemd credential).
services_password="$(sed -n 's/^TOXAUDIT_CENTRE_SERVICES_PASSWORD=//p' "$centre_env")"
{
    echo "TOXAUDIT_NATS_USER=services"
    echo "TOXAUDIT_NATS_PASSWORD=$services_password"
} >"$config_dir/secrets/$centre-services.env"
printf '%s\n' "$services_password" >"$config_dir/secrets/$centre-services.password"

mkdir -p "$config_dir/$centre"
umask 022
"$here/render.sh" "$here/leaf.conf.template" \
    "centre=$centre" "server_name=$centre-leaf" \
    "client_listen=127.0.0.1:4222" "monitor_listen=127.0.0.1:8222" \
    "store_dir=/var/lib/toxaudit-nats" "$@" >"$config_dir/$centre/leaf.conf"

cat >&2 <<NEXT
added centre $centre:
  hub:    $config_dir/<node>/hub-accounts.conf re-rendered; $hub_env has $variable
          -> copy both to every hub node, then restart the nodes one at a time
             (systemctl restart toxaudit-nats-hub; not reload: nats-server
             reads $variable from its environment only at start)
  centre: $config_dir/$centre/leaf.conf and $centre_env
          -> install them in the centre and start its leaf node
          $config_dir/secrets/$centre-services.{env,password}
          -> the services' credentials (toxaudit --nats-user services ...)
  then:   toxaudit network sync --nats nats://network-admin:<password>@<hub>:4222 --centre $centre ...
NEXT
