# Run in the build container after the provisioner cleaned up after itself,
# right before commit. Leaves nothing of the build behind (DESIGN.md invariant 3).
set -u
# Daemons a role started are not part of an image, and their pid files would
# be stale in every container made from it. Stop everything but PID 1, the
# container's own command and us. Under the engine's init (PID 1, which reaps;
# engine/containers.py) that command, `sleep infinity`, is init's child: when it
# ends, so does the container.
keep=" 1 $$ "
for pid_dir in /proc/[0-9]*; do
    [ "$(cut -d' ' -f4 "$pid_dir/stat" 2>/dev/null)" = 1 ] || continue
    [ "$(tr '\0' ' ' < "$pid_dir/cmdline" 2>/dev/null)" = "sleep infinity " ] || continue
    keep="$keep${pid_dir#/proc/} "
done
for pid_dir in /proc/[0-9]*; do
    pid=${pid_dir#/proc/}
    case "$keep" in *" $pid "*) continue ;; esac
    kill -TERM "$pid" 2>/dev/null || true
done
# Give them up to 10 s to go, without waiting when there was nothing to stop: a
# database flushes its files on SIGTERM, and one killed mid-flush would leave the
# image a crashed data folder to recover at every first start.
tries=0
while [ "$tries" -lt 200 ]; do
    alive=""
    for pid_dir in /proc/[0-9]*; do
        pid=${pid_dir#/proc/}
        case "$keep" in *" $pid "*) continue ;; esac
        [ -e "$pid_dir/stat" ] || continue
        # A zombie (state Z) is gone already; its parent reaps it.
        state=$(cut -d' ' -f3 "$pid_dir/stat" 2>/dev/null || echo Z)
        [ "$state" = Z ] || { alive=1; break; }
    done
    [ -z "$alive" ] && break
    sleep 0.05
    tries=$((tries + 1))
done
killed=""
for pid_dir in /proc/[0-9]*; do
    pid=${pid_dir#/proc/}
    case "$keep" in *" $pid "*) continue ;; esac
    state=$(cut -d' ' -f3 "$pid_dir/stat" 2>/dev/null || echo Z)
    [ "$state" = Z ] && continue
    name=$(cat "$pid_dir/comm" 2>/dev/null) || continue
    kill -KILL "$pid" 2>/dev/null && killed="$killed $name"
done
[ -z "$killed" ] || echo "notice: killed what did not stop within 10 s of SIGTERM:$killed" \
    >> /tmp/.rolebake-notices
find /run /var/run -xdev -name '*.pid' -type f -delete 2>/dev/null || true
# sd_booted's mark for Ansible (prepare.sh): on /dev, never committed; gone all the same.
rmdir /dev/.systemd 2>/dev/null
rm -f /etc/dpkg/dpkg.cfg.d/zz-rolebake-unsafe-io /etc/dpkg/dpkg.cfg.d/zz-rolebake-systemctl \
      /lib/lsb/init-functions.d/01-rolebake-init-watch
if [ -e /usr/sbin/.rolebake-policy-rc.d ]; then
    rm -f /usr/sbin/policy-rc.d /usr/sbin/.rolebake-policy-rc.d
fi
rm -rf /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old \
       /var/lib/apt/periodic/update-success-stamp
if [ "${ROLEBAKE_APT_CACHE:-}" = 1 ]; then
    # The lists and archives folders are the shared cache's volumes, never committed:
    # leave them for the next build, and say what this one downloaded into them.
    rm -f /etc/apt/apt.conf.d/00rolebake-apt-cache
    if [ -e /tmp/.rolebake-apt-since ]; then
        # ctime, not mtime: apt dates a package file with the mirror's Last-Modified.
        find /var/cache/apt/archives -maxdepth 1 -name '*.deb' -cnewer /tmp/.rolebake-apt-since \
            -printf '%s\n' | awk '{n++; s+=$1} END {printf "apt cache: %d packages downloaded (%d bytes)\n", n, s}'
    fi
else
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*
    # Emptying the lists makes their folder look freshly updated, and Ansible's
    # `apt: cache_valid_time` would then skip the update a child layer needs.
    [ -d /var/lib/apt/lists ] && touch -d @0 /var/lib/apt/lists
fi
# What the build container had to say (an init script's start that never returned).
cat /tmp/.rolebake-notices 2>/dev/null
rm -rf /tmp/.rolebake* /var/tmp/.rolebake*
exit 0
