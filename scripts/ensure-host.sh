#!/usr/bin/env bash
# Make sure the host has what rolebake's targets need, installing Debian
# packages when we are root with apt, and starting a Docker engine when none
# answers, and a loopback registry when none answers. Usage:
# ensure-host.sh engine|qemu|podman|registry|browser
set -euo pipefail

log() { printf 'host: %s\n' "$*"; }
die() { printf 'host: %s\n' "$*" >&2; exit "${2:-1}"; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "missing Debian packages: ${missing[*]} (install them, or run as root with apt)" 2
    fi
    log "installing ${missing[*]}"
    if [ ! -f /var/lib/apt/periodic/rolebake-updated ] || [ -n "$(find /var/lib/apt/periodic/rolebake-updated -mmin +360 2>/dev/null)" ]; then
        apt-get update -qq
        mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/rolebake-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

engine_answers() {
    python3 - <<'PY' 2>/dev/null
import os, socket, sys
host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
if not host.startswith("unix://"):
    sys.exit(0 if os.system("docker info >/dev/null 2>&1") == 0 else 1)
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
try:
    s.connect(host[len("unix://"):])
    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
    sys.exit(0 if b"OK" in s.recv(1024) else 1)
except OSError:
    sys.exit(1)
PY
}

engine() {
    # openssh-server: the sshd the remote-engine test (DOCKER_HOST=ssh://) starts itself.
    apt_install debootstrap openssh-server openssh-client
    if engine_answers; then log "container engine answers"; return 0; fi
    if [ -n "${DOCKER_HOST:-}" ]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST" 4
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    command -v dockerd >/dev/null || die "no dockerd after installing docker.io" 4
    log "starting dockerd in the background (log: /var/log/rolebake-dockerd.log)"
    nohup dockerd >/var/log/rolebake-dockerd.log 2>&1 &
    for _ in $(seq 1 120); do
        if engine_answers; then log "container engine answers"; return 0; fi
        sleep 0.5
    done
    tail -n 20 /var/log/rolebake-dockerd.log >&2 || true
    die "dockerd did not answer within 60 s" 4
}

qemu() {
    apt_install qemu-system-x86 qemu-utils e2fsprogs openssh-client debootstrap
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing" 1
    log "qemu $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') ready"
}

podman() {
    apt_install buildah podman
    # podman's default ulimits cannot be applied on this kind of machine.
    if ! grep -qs default_ulimits /etc/containers/containers.conf; then
        mkdir -p /etc/containers
        printf '[containers]\ndefault_ulimits = ["nofile=4096:4096","nproc=4096:4096"]\n' \
            >> /etc/containers/containers.conf
    fi
    # Docker talks plain HTTP to loopback registries by default; Podman must be told.
    local conf=/etc/containers/registries.conf.d/50-rolebake-loopback.conf
    if [ ! -f "$conf" ]; then
        mkdir -p "$(dirname "$conf")"
        printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY_ADDR" > "$conf"
    fi
    log "buildah and podman ready"
}

# Headless Chromium: the parity HTML report test opens the page in it (screenshot, DOM).
browser() {
    apt_install chromium
    command -v chromium >/dev/null || die "chromium is missing" 1
    log "$(chromium --version 2>/dev/null | head -n1) ready"
}

# The loopback registry the tests push to and share layers through: Debian's
# docker-registry (the CNCF distribution registry), its data in a throwaway directory.
REGISTRY_ADDR=${ROLEBAKE_TEST_REGISTRY:-127.0.0.1:5000}

registry_answers() {
    curl -fsS -o /dev/null --max-time 3 "http://$REGISTRY_ADDR/v2/" 2>/dev/null
}

registry() {
    apt_install docker-registry curl
    if registry_answers; then log "registry answers at $REGISTRY_ADDR"; return 0; fi
    local dir
    dir=$(mktemp -d /tmp/rolebake-registry.XXXXXX)
    printf '%s\n' "version: 0.1" "log: {level: warn}" "storage:" \
        "  filesystem: {rootdirectory: $dir/data}" "  delete: {enabled: true}" \
        "http: {addr: $REGISTRY_ADDR}" > "$dir/config.yml"
    log "starting a registry at $REGISTRY_ADDR (data and log: $dir)"
    # Its own session: it outlives this script and make, as the engine does.
    setsid nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
    echo $! > "$dir/registry.pid"
    for _ in $(seq 1 40); do
        if registry_answers; then log "registry answers at $REGISTRY_ADDR"; return 0; fi
        sleep 0.25
    done
    tail -n 20 "$dir/registry.log" >&2 || true
    die "the registry did not answer within 10 s" 1
}

case "${1:-}" in
    engine) engine ;;
    qemu) qemu ;;
    podman) podman ;;
    registry) registry ;;
    browser) browser ;;
    *) die "usage: $0 engine|qemu|podman|registry|browser" 2 ;;
esac
