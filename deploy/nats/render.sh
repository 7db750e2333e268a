#!/usr/bin/env bash
# Renders a toxaudit NATS config template: every {{key}} is replaced by the
# value given as key=value. Fails when a placeholder is left unfilled, so a
# config never reaches nats-server half rendered. Prints to stdout.
#
#   deploy/nats/render.sh deploy/nats/leaf.conf.template centre=leeds \
#       server_name=leeds-leaf client_listen=0.0.0.0:4222 ... > leeds.conf
set -euo pipefail
# Bash 5.2 would read & in a replacement as the matched text.
shopt -u patsub_replacement 2>/dev/null || true

if [[ $# -lt 1 ]]; then
    echo "usage: render.sh TEMPLATE [key=value]..." >&2
    exit 64
fi
template="$1"
shift
text="$(cat "$template")"
# A later key=value overrides an earlier one with the same key, so callers
# can pass defaults first and the operator's choices after them.
declare -A values=()
for assignment in "$@"; do
    key="${assignment%%=*}"
    if [[ "$key" == "$assignment" || ! "$key" =~ ^[a-z_]+$ ]]; then
        echo "render.sh: '$assignment' is not key=value with a key of [a-z_]" >&2
        exit 64
    fi
    values[$key]="${assignment#*=}"
done
for key in "${!values[@]}"; do
    text="${text//\{\{$key\}\}/${values[$key]}}"
done
if left="$(grep -o '{{[a-z_]*}}' <<<"$text" | sort -u | tr '\n' ' ')" && [[ -n "$left" ]]; then
    echo "render.sh: $template: no value for ${left}" >&2
    exit 65
fi
printf '%s\n' "$text"
