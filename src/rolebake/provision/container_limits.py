"""What a build container cannot do that a server can, and what to tell the role's author.

A role written for servers sometimes does what only a machine can: set a
kernel parameter, mount a filesystem, rename the host, or ask systemd for what
rolebake's lent systemctl cannot serve (timers that fire, sockets that activate,
networkd; docs/server-roles.md). The task then fails in the build container with
the tool's own words ("permission denied on key ..."). `advice` turns those
failures into one line that says why and how such a task is usually written
for images, without hiding the original message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What differs between the build container and the VM, for a `when:` guard.
_GUARD = "`when: ansible_virtualization_type != 'docker'`"


@dataclass(frozen=True)
class _Limit:
    modules: frozenset[str]  # the module's short name; empty: any module
    pattern: re.Pattern[str]  # searched in the task's message and output
    advice: str


_LIMITS = (
    _Limit(frozenset({"sysctl", "command", "shell"}),
           re.compile(r"sysctl: (permission denied|setting key .*Read-only file system)"
                      r"|/proc/sys/\S+: Read-only file system", re.I),
           "a kernel parameter belongs to the host that runs the container, not to the "
           "image: write the setting without applying it (`reload: false`), or guard the "
           f"task with {_GUARD}; set it on the host, or with `docker run --sysctl` for "
           "the keys a container may have"),
    _Limit(frozenset({"mount", "command", "shell"}),
           re.compile(r"mount: .*(permission denied|only root can)|Error mounting", re.I),
           "a build container cannot mount filesystems: keep the fstab entry without "
           f"mounting (`state: present`), or guard the task with {_GUARD}; give the "
           "container its volumes when it runs"),
    _Limit(frozenset({"hostname"}), re.compile(r".", re.S),
           "the engine sets a container's hostname when the container starts "
           "(`docker run --hostname`): guard the task with " + _GUARD),
    # rolebake's systemctl (scripts/systemctl.py) serves units in a build container; what
    # it cannot serve says so in its message (docs/server-roles.md lists it).
    _Limit(frozenset(),
           re.compile(r"not served in a build container \(rolebake's systemctl\)"),
           "a build container runs no systemd: rolebake's systemctl enables, starts and stops "
           "units, but not this (see docs/server-roles.md); guard the task with "
           f"{_GUARD}, or give it to a role that only servers get"),
    _Limit(frozenset(),
           re.compile(r'required executable "?systemctl"?|systemctl: (command )?not found'),
           "no systemctl here: rolebake lends one with the python toolchain, not with the "
           "apt bootstrap (ROLEBAKE_PYTHON_TOOLCHAIN=none, or a release it makes none for); "
           "lend the toolchain, install the `systemd` package in this layer or a parent "
           "(units are then enabled offline and starts skipped), or give the task to a role "
           "that only servers get"),
)


def advice(action: str, message: str, output: str = "") -> str | None:
    """One line on why a failed task cannot work in a build container; None when unknown.

    Args:
        action: the task's module (`ansible.posix.sysctl`, `sysctl`, ...).
        message: the task's failure message.
        output: what the task printed (stderr, stdout), searched too.
    """
    module = action.rsplit(".", 1)[-1]
    text = f"{message}\n{output}"
    for limit in _LIMITS:
        if (not limit.modules or module in limit.modules) and limit.pattern.search(text):
            return limit.advice
    return None
