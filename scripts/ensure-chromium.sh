#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are installed, for the
# dashboard's browser test (tests/e2e/dashboard.rs). Installs them with apt
# only when one is missing, runs `apt-get update` only when the install
# cannot find them in the current package lists, and stays quiet otherwise.
# Prints nothing on success; exits non-zero when they cannot be installed.
set -euo pipefail

have_both() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

if have_both; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium and chromedriver are missing and apt-get is not available; install them by hand" >&2
    exit 1
fi

sudo_prefix=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_prefix=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
install() {
    "${sudo_prefix[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1
}

if ! install; then
    "${sudo_prefix[@]}" apt-get update -qq >/dev/null 2>&1
    install
fi

if ! have_both; then
    echo "ensure-chromium: chromium or chromedriver is still missing after apt-get install" >&2
    exit 1
fi
