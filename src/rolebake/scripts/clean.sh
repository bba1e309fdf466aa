# Run in the build container after the provisioner cleaned up after itself,
# right before commit. Leaves nothing of the build behind (DESIGN.md invariant 3).
set -u
# Daemons a role started are not part of an image, and their pid files would
# be stale in every container made from it. Stop everything but PID 1 and us.
for pid_dir in /proc/[0-9]*; do
    pid=${pid_dir#/proc/}
    [ "$pid" = 1 ] && continue
    [ "$pid" = "$$" ] && continue
    kill -TERM "$pid" 2>/dev/null || true
done
sleep 1
for pid_dir in /proc/[0-9]*; do
    pid=${pid_dir#/proc/}
    [ "$pid" = 1 ] && continue
    [ "$pid" = "$$" ] && continue
    kill -KILL "$pid" 2>/dev/null || true
done
find /run /var/run -xdev -name '*.pid' -type f -delete 2>/dev/null || true
if [ -e /usr/sbin/.rolebake-policy-rc.d ]; then
    rm -f /usr/sbin/policy-rc.d /usr/sbin/.rolebake-policy-rc.d
fi
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
       /var/cache/apt/archives/partial/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
       /var/lib/apt/periodic/update-success-stamp
# Emptying the lists makes their folder look freshly updated, and Ansible's
# `apt: cache_valid_time` would then skip the update a child layer needs.
[ -d /var/lib/apt/lists ] && touch -d @0 /var/lib/apt/lists
rm -rf /tmp/.rolebake* /var/tmp/.rolebake*
exit 0
