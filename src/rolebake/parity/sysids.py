"""The range of dynamically allocated system ids on a machine, from its own configuration.

Tools that make system users (`adduser --system` in maintainer scripts, `useradd -r` as
Ansible's `user: system=true` runs it, systemd-sysusers) hand out the first free id of
this range. Two machines that made different users first give the same name different
ids; parity needs the range to tell such a shift from a real difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DEBIAN_DEFAULT", "SYSIDS_SCRIPT", "SystemIds", "parse_system_ids"]

# Printed after the accounts (ACCOUNTS_SCRIPT): the settings of both tools, one
# `NAME VALUE` line each. A missing file or setting prints nothing.
SYSIDS_SCRIPT = r"""
name='^[[:space:]]*(SYS_[UG]ID_M(IN|AX)|(FIRST|LAST)_SYSTEM_[UG]ID)'
for f in /etc/login.defs /etc/adduser.conf; do
  [ -r "$f" ] && sed -n -E "s/$name[[:space:]=]+\"?([0-9]+).*/\\1 \\4/p" "$f"
done
true
"""

_MIN = {"uid": ("SYS_UID_MIN", "FIRST_SYSTEM_UID"), "gid": ("SYS_GID_MIN", "FIRST_SYSTEM_GID")}
_MAX = {"uid": ("SYS_UID_MAX", "LAST_SYSTEM_UID"), "gid": ("SYS_GID_MAX", "LAST_SYSTEM_GID")}


@dataclass(frozen=True)
class SystemIds:
    """Dynamically allocated system uids and gids, both ends included.

    Attributes:
        uid_min: First dynamic system uid.
        uid_max: Last dynamic system uid.
        gid_min: First dynamic system gid.
        gid_max: Last dynamic system gid.
        source: Where the numbers come from (`login.defs, adduser.conf` or the default).
    """

    uid_min: int
    uid_max: int
    gid_min: int
    gid_max: int
    source: str

    def has_uid(self, uid: int) -> bool:
        """Whether `uid` is one a tool hands out to system users."""
        return self.uid_min <= uid <= self.uid_max

    def has_gid(self, gid: int) -> bool:
        """Whether `gid` is one a tool hands out to system groups."""
        return self.gid_min <= gid <= self.gid_max

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SystemIds:
        """Inverse of `to_dict`."""
        return cls(**data)


# Debian Policy 9.2.2: 100-999 are allocated dynamically by the system's tools.
DEBIAN_DEFAULT = SystemIds(100, 999, 100, 999, "Debian policy (100-999)")


def parse_system_ids(output: str) -> SystemIds:
    """Parse SYSIDS_SCRIPT output into the machine's dynamic system id range.

    Either tool may have made a system user, so the range spans both: the lowest first id
    and the highest last id either one names. What neither names keeps Debian's default.
    Lines that are not `NAME NUMBER` are ignored (a hand-edited file is not our business).
    """
    found: dict[str, int] = {}
    for line in output.splitlines():
        name, _, value = line.strip().partition(" ")
        if value.strip().isdigit():
            found[name] = int(value)
    if not found:
        return DEBIAN_DEFAULT
    ends: dict[str, int] = {}
    for kind in ("uid", "gid"):
        lows = [found[n] for n in _MIN[kind] if n in found]
        highs = [found[n] for n in _MAX[kind] if n in found]
        ends[f"{kind}_min"] = min(lows) if lows else getattr(DEBIAN_DEFAULT, f"{kind}_min")
        ends[f"{kind}_max"] = max(highs) if highs else getattr(DEBIAN_DEFAULT, f"{kind}_max")
    sources = [f for f, names in (("login.defs", "SYS_"), ("adduser.conf", "_SYSTEM_"))
               if any(names in n for n in found)]
    return SystemIds(source=", ".join(sources), **ends)
