#!/usr/bin/env bash
# Make sure a headless-capable Chromium is installed (the `browser` tests drive it).
#
# Idempotent: exits 0 at once when `chromium` runs. Otherwise installs Debian's
# `chromium` package with apt-get (no browser download from the internet works on these
# machines; the distribution package does). Needs root for the install; says what to run
# when it is not.
set -euo pipefail

say() { echo "ensure-chromium: $*" >&2; }

found() {
    local bin
    for bin in chromium chromium-browser; do
        if command -v "$bin" >/dev/null 2>&1 && "$bin" --version >/dev/null 2>&1; then
            say "$("$bin" --version 2>/dev/null | head -n 1) at $(command -v "$bin")"
            return 0
        fi
    done
    return 1
}

if found; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "chromium is not installed and this is not root: run 'sudo apt-get install -y chromium'"
    exit 1
fi

say "installing chromium (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

if ! found; then
    say "chromium is still missing after the install"
    exit 1
fi
