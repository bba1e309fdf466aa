# Run in a fresh build container before any provisioner.
# Like Debian's own container images, stop package scripts from starting
# daemons while the image is built: invoke-rc.d asks policy-rc.d first.
set -eu
if [ -e /usr/sbin/policy-rc.d ]; then
    # The parent image has its own; keep it and leave it as it was.
    echo "policy-rc.d: kept the image's own"
else
    mkdir -p /usr/sbin
    printf '#!/bin/sh\n# rolebake: no daemon starts during an image build\nexit 101\n' \
        > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    : > /usr/sbin/.rolebake-policy-rc.d
    echo "policy-rc.d: installed"
fi
# A role's own `service: state=started` does start the daemon, as on a server (a
# database role then creates its users), and clean.sh stops it before commit. With no
# systemd running, Ansible's service module (and Chef's) runs `/etc/init.d/NAME start`;
# a daemon that stays in the foreground there (`daemonize no`, written for a systemd
# unit) would hold the task forever. Every Debian init script sources
# /lib/lsb/init-functions, which sources these hooks first: this one runs the start in
# the background, away from the module's pipes, and lets the task go on when it has
# not returned after a minute, leaving the daemon running. Removed by clean.sh.
if [ -f /lib/lsb/init-functions ] && [ -d /lib/lsb/init-functions.d ]; then
    cat > /lib/lsb/init-functions.d/01-rolebake-init-watch <<'HOOK'
# rolebake: an init script's start may not hold an image build (removed before commit).
case "${1:-}" in
start|restart|reload|force-reload|try-restart)
    if [ -z "${ROLEBAKE_INIT_CHILD:-}" ] && [ -x "$0" ]; then
        _rb_out=$(mktemp /tmp/.rolebake-init.XXXXXX)
        ROLEBAKE_INIT_CHILD=1 "$0" "$@" >"$_rb_out" 2>&1 </dev/null &
        _rb_pid=$! _rb_ticks=0
        while kill -0 "$_rb_pid" 2>/dev/null && [ "$_rb_ticks" -lt 600 ]; do
            sleep 0.1
            _rb_ticks=$((_rb_ticks + 1))
        done
        if kill -0 "$_rb_pid" 2>/dev/null; then
            echo "notice: '${0##*/} $1' was still running after 60 s, so its daemon stays in the foreground: left running, the build went on; give the image's service to config.cmd" | tee -a /tmp/.rolebake-notices
            exit 0
        fi
        cat "$_rb_out"
        rm -f "$_rb_out"
        wait "$_rb_pid"
        exit $?
    fi ;;
esac
HOOK
fi
# rolebake's systemctl, lent with the python toolchain (provision/pytoolchain.py), serves
# Ansible's service module only where the module believes systemd runs the machine: it
# looks for sd_booted's marks, /run/systemd/system, /dev/.run/systemd or /dev/.systemd.
# /dev is the engine's tmpfs and never committed, and systemd's own tools only look at
# /run/systemd/system. While a systemctl of the roles' own is installed (it comes first
# on PATH and works offline, starting nothing) the mark goes, so that the service module
# uses the init scripts as before: dpkg's hook keeps it so after each package change.
if [ -x /mnt/rolebake-python/systemd/systemctl ] && [ -d /etc/dpkg/dpkg.cfg.d ]; then
    mark='if [ -x /usr/bin/systemctl ] || [ -x /bin/systemctl ]; then rmdir /dev/.systemd 2>/dev/null; else mkdir -p /dev/.systemd; fi; true'
    echo "post-invoke=$mark" > /etc/dpkg/dpkg.cfg.d/zz-rolebake-systemctl
    sh -c "$mark"
fi
# As Debian's own container images do: dpkg skips its fsync calls during the build
# (a build that dies is thrown away with its container anyway). Removed by clean.sh.
if [ -d /etc/dpkg/dpkg.cfg.d ] && [ ! -e /etc/dpkg/dpkg.cfg.d/zz-rolebake-unsafe-io ]; then
    echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/zz-rolebake-unsafe-io
fi
# The shared apt cache (aptcache.py) is mounted over the lists and archives folders.
[ "${ROLEBAKE_APT_CACHE:-}" = 1 ] || exit 0
command -v apt-get >/dev/null 2>&1 || exit 0
# Keep what apt downloads: the archives folder is the cache, not the layer.
printf '%s\n' 'Binary::apt::APT::Keep-Downloaded-Packages "true";' \
    'APT::Keep-Downloaded-Packages "true";' > /etc/apt/apt.conf.d/00rolebake-apt-cache
: > /tmp/.rolebake-apt-since
stamp=/var/cache/apt/archives/rolebake-lists.stamp
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | cksum | cut -d' ' -f1)
age=""
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sources" ] && [ -n "$(ls /var/lib/apt/lists)" ]; then
    age=$(( $(date +%s) - $(stat -c %Y "$stamp") ))
fi
if [ -n "$age" ] && [ "$age" -le "${ROLEBAKE_APT_MAX_AGE:-3600}" ]; then
    echo "apt lists: shared, $age s old"
    exit 0
fi
rm -f "$stamp"
if apt-get update -qq >/tmp/.rolebake-apt-update.log 2>&1; then
    printf '%s\n' "$sources" > "$stamp"
    # Ansible's `apt: cache_valid_time` reads the folder's time: they are fresh now.
    touch /var/lib/apt/lists
    echo "apt lists: refreshed"
else
    echo "apt lists: refresh failed, the roles update them: $(tail -n 1 /tmp/.rolebake-apt-update.log)"
fi
