"""Recorded snapshot command output and a Host that replays it (for the parity unit tests)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from rolebake.parity import snapshot as snap

FIXTURES = Path(__file__).parent / "fixtures"

# Recorded with the scripts in rolebake.parity.snapshot: `container/` in a chroot of the
# probe minbase rootfs (what the base image is imported from), `vm/` on a freshly booted
# parity VM (prepare_vm_image of the same rootfs), both for these managed paths.
RECORDED_PATHS = [
    "/bin",
    "/boot",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/nope",
    "/etc/passwd",
    "/etc/ssh/sshd_config",
]


def recorded(side: str, category: str) -> str:
    return (FIXTURES / side / f"{category}.txt").read_text()


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str = ""


class RecordedHost:
    """A testinfra Host stand-in answering each snapshot script with recorded output."""

    def __init__(self, side: str, *, fail: str | None = None) -> None:
        self.side = side
        self.fail = fail
        self.commands: list[str] = []

    def run(self, command: str, *args: str, **kwargs: object) -> Result:
        assert not args, "snapshot must quote commands itself"
        self.commands.append(command)
        for category, script in (
            ("packages", snap.PACKAGES_SCRIPT),
            ("accounts", snap.ACCOUNTS_SCRIPT),
            ("services", snap.SERVICES_SCRIPT),
            ("facts", snap.FACTS_SCRIPT),
            ("paths", snap.PATHS_SCRIPT),
        ):
            if command.startswith(f"sh -c {_quoted(script)}"):
                if category == self.fail:
                    return Result(rc=2, stdout="", stderr="sh: 1: dpkg-query: not found\n")
                return Result(rc=0, stdout=recorded(self.side, category))
        raise AssertionError(f"unexpected command {command!r}")


def _quoted(script: str) -> str:
    return shlex.quote(script)


# Two "roles" that made system users, recorded where nothing else made users first
# (`container`) and where a VM's boot packages did (`vm`); see fixtures/sysusers/README.md.
SYSUSERS_PATHS = ["/etc/rbsvc.conf", "/var/lib/rbsvc", "/var/log/memcache"]


class SysusersHost:
    """Replays fixtures/sysusers/<side>: accounts and managed paths; the rest is empty."""

    def __init__(self, side: str) -> None:
        self.side = side

    def run(self, command: str, *args: str, **kwargs: object) -> Result:
        assert not args, "snapshot must quote commands itself"
        for category, script in (("accounts", snap.ACCOUNTS_SCRIPT), ("paths", snap.PATHS_SCRIPT)):
            if command.startswith(f"sh -c {_quoted(script)}"):
                return Result(0, recorded(f"sysusers/{self.side}", category))
        if command.startswith(f"sh -c {_quoted(snap.FACTS_SCRIPT)}"):
            return Result(0, "running\t@none\n")
        return Result(0, "")
