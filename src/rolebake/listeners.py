"""Which TCP ports a container listens on, and on which address: for a ready check's error.

A `ready.port` that never opens from outside the container is often a service
that is up but bound to 127.0.0.1 (Redis and many server roles default to it):
the verification container's address never reaches it. The kernel's own tables
(/proc/net/tcp and tcp6, in the container's network namespace) say so without
any tool in the image; the socket inodes under /proc/<pid>/fd name the process.

Root in a container cannot read the fds of another user's process (Docker
grants no CAP_SYS_PTRACE), so a service running as `www-data` stays nameless
to a look as root: the tables give each socket's owner uid, and a second look
as that uid names it (`owners_to_ask`).
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass

__all__ = ["LISTENERS_SCRIPT", "Listener", "merge_owners", "owners_to_ask", "parse_listeners"]

# The tables, then `pid inode comm` for every socket a process holds. Run as root (it
# sees root's processes and every table), then as each uid whose socket it could not
# name: /proc/<pid>/fd is readable by the process's own user.
LISTENERS_SCRIPT = r"""
cat /proc/net/tcp /proc/net/tcp6 2>/dev/null
echo @@sockets
for f in /proc/[0-9]*/fd/*; do
  l=$(readlink "$f" 2>/dev/null) || continue
  case $l in socket:*) ;; *) continue ;; esac
  p=${f#/proc/}; p=${p%%/*}
  i=${l#socket:[}; echo "$p ${i%]} $(cat /proc/$p/comm 2>/dev/null)"
done
true
"""

_LISTEN = "0A"  # TCP_LISTEN in include/net/tcp_states.h


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket.

    Attributes:
        address: The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, `::1`, ...).
        port: Its port.
        pid: The process holding it, when it could be found.
        program: That process's name (`/proc/<pid>/comm`).
        uid: The socket's owner, from the kernel's table.
    """

    address: str
    port: int
    pid: int | None = None
    program: str = ""
    uid: int | None = None

    @property
    def loopback_only(self) -> bool:
        """Only the container itself reaches it (127.0.0.0/8, ::1, ::ffff:127.x)."""
        ip = ipaddress.ip_address(self.address)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return ip.is_loopback or (mapped is not None and mapped.is_loopback)

    def describe(self) -> str:
        """`python3 (pid 7) listens on 127.0.0.1:8000`."""
        who = f"{self.program or 'a process'}" + (f" (pid {self.pid})" if self.pid else "")
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{who} listens on {host}:{self.port}"


def parse_listeners(output: str) -> list[Listener]:
    """Parse LISTENERS_SCRIPT output: every listening socket, with its process if known.

    Lines that are not table rows (headers, anything unexpected) are skipped: the
    result only adds words to an error message, it never decides one.
    """
    tables, _, sockets = output.partition("@@sockets\n")
    owners: dict[str, tuple[int, str]] = {}
    for line in sockets.splitlines():
        pid, _, rest = line.partition(" ")
        inode, _, comm = rest.partition(" ")
        if pid.isdigit() and inode.isdigit():
            owners.setdefault(inode, (int(pid), comm.strip()))
    found: list[Listener] = []
    for line in tables.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN or ":" not in fields[1]:
            continue
        hex_address, _, hex_port = fields[1].partition(":")
        try:
            address = _address(hex_address)
            port = int(hex_port, 16)
        except ValueError:
            continue
        owner = owners.get(fields[9])
        found.append(Listener(address=address, port=port, pid=owner[0] if owner else None,
                              program=owner[1] if owner else "",
                              uid=int(fields[7]) if fields[7].isdigit() else None))
    return found


def owners_to_ask(found: list[Listener], port: int | None = None) -> list[int]:
    """The uids (not root) whose sockets a look as root could not name, on `port` if given."""
    return sorted({item.uid for item in found if item.pid is None and item.uid
                   and (port is None or item.port == port)})


def merge_owners(found: list[Listener], again: list[Listener]) -> list[Listener]:
    """`found` with the processes another look (as a socket's owner) named filled in."""
    named = {(item.address, item.port): item for item in again if item.pid is not None}
    return [named.get((item.address, item.port), item) if item.pid is None else item
            for item in found]


def _address(hex_address: str) -> str:
    """The kernel prints each 32-bit word of the address in the host's byte order."""
    if len(hex_address) not in (8, 32):
        raise ValueError(hex_address)
    raw = b"".join(int(hex_address[i:i + 8], 16).to_bytes(4, sys.byteorder)
                   for i in range(0, len(hex_address), 8))
    return str(ipaddress.ip_address(raw))
