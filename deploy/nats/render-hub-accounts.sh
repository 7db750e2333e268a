#!/usr/bin/env bash
# Prints the hub's hub-accounts.conf for the centres listed in
# CONFIG_DIR/centres: one leaf user per centre (hub-centre-user.conf.template)
# inside hub-accounts.conf.template.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config_dir="${1:?usage: render-hub-accounts.sh CONFIG_DIR}"
users=""
while read -r centre; do
    [[ -z "$centre" ]] && continue
    variable="TOXAUDIT_LEAF_$(tr 'a-z-' 'A-Z_' <<<"$centre")_PASSWORD"
    users+="$("$here/render.sh" "$here/hub-centre-user.conf.template" \
        "centre=$centre" "centre_password_variable=$variable")"$'\n'
done <"$config_dir/centres"
"$here/render.sh" "$here/hub-accounts.conf.template" "centre_leaf_users=${users%$'\n'}"
