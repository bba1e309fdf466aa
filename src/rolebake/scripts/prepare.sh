# Run in a fresh build container before any provisioner.
# Like Debian's own container images, stop package scripts from starting
# daemons while the image is built: invoke-rc.d asks policy-rc.d first.
set -eu
if [ -e /usr/sbin/policy-rc.d ]; then
    # The parent image has its own; keep it and leave it as it was.
    echo "policy-rc.d: kept the image's own"
    exit 0
fi
mkdir -p /usr/sbin
printf '#!/bin/sh\n# rolebake: no daemon starts during an image build\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
: > /usr/sbin/.rolebake-policy-rc.d
echo "policy-rc.d: installed"
