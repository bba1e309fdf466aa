# Remove the packages the python bootstrap added, unless a role now needs them:
# they were marked auto-installed, so apt only offers the unneeded ones for
# autoremoval, and only those of them that the bootstrap added ("$@") go.
set -eu
export DEBIAN_FRONTEND=noninteractive
# A package that merely Suggests python3 (iproute2 does) must not keep it.
removable=$(apt-get -s -o APT::AutoRemove::SuggestsImportant=false autoremove 2>/dev/null \
    | sed -n 's/^Remv \([^ ]*\).*/\1/p')
purge=""
for pkg in $removable; do
    for added in "$@"; do
        if [ "${pkg%%:*}" = "$added" ]; then purge="$purge $pkg"; fi
    done
done
if [ -n "$purge" ]; then
    # shellcheck disable=SC2086
    apt-get purge -y -qq $purge >/dev/null
    echo "removed bootstrap packages:$purge"
else
    echo "bootstrap packages kept: the roles need them"
fi
