#!/usr/bin/env bash
# Make sure a Docker engine answers, installing and starting one when needed.
#
# Idempotent: exits 0 at once when `docker info` answers. Otherwise installs the engine
# (Debian's docker.io) when `dockerd` is missing, starts dockerd in the background with
# its log in $REASON_DOCKERD_LOG, and waits for the socket. CI machines have the docker
# CLI but no engine; no registry can be reached, so nothing here pulls an image.
set -euo pipefail

WAIT_S=${REASON_DOCKERD_WAIT_S:-60}
LOG=${REASON_DOCKERD_LOG:-/tmp/reason-dockerd.log}

say() { echo "ensure-docker: $*" >&2; }

if docker info >/dev/null 2>&1; then
    say "engine answers"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        say "dockerd is not installed and this is not root: install docker.io (apt-get install -y docker.io) as root"
        exit 1
    fi
    say "installing docker.io (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

if ! command -v docker >/dev/null 2>&1; then
    say "the docker CLI is missing after the install; install docker.io or docker-ce-cli"
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    say "no engine answers and starting dockerd needs root: run 'sudo dockerd &' or start the docker service"
    exit 1
fi

# A stale pid file from a dockerd that died makes a new one refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    say "starting dockerd (log: $LOG)"
    setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
fi

start=$(date +%s)
until docker info >/dev/null 2>&1; do
    if [ $(( $(date +%s) - start )) -ge "$WAIT_S" ]; then
        say "dockerd did not answer within ${WAIT_S}s; last lines of $LOG:"
        tail -n 20 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.5
done
say "engine answers after $(( $(date +%s) - start ))s"
