# Give Ansible what its modules need in a base image that lacks it: python3,
# and python3-apt, which the apt module would otherwise install for itself and
# leave behind. Exit 3 when there is no way to do it.
set -eu
need=""
command -v python3 >/dev/null 2>&1 || need="python3"
if command -v dpkg-query >/dev/null 2>&1 && \
   ! dpkg-query -W -f '${Status}' python3-apt 2>/dev/null | grep -q "ok installed"; then
    need="$need python3-apt"
fi
if [ -z "$need" ]; then
    echo "python3 present: $(command -v python3)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 && { echo "python3 present: $(command -v python3)"; exit 0; }
    echo "the base image has no python3 and no apt-get to install it" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
before=$(dpkg-query -W -f '${Package}\n' | sort)
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null
after=$(dpkg-query -W -f '${Package}\n' | sort)
added=$(printf '%s\n' "$after" | grep -vxF "$before" | tr '\n' ' ')
# Auto-installed packages go at autoremove time, unless a role installs one of
# them explicitly (apt marks it manual again) or something it installs needs it.
# shellcheck disable=SC2086
apt-mark auto $added >/dev/null
echo "installed for the build:$need"
echo "added: $added"
