"""A comparable record of a machine's state, taken through a testinfra Host.

The same code snapshots the container (`docker://...`) and the VM (`ssh://...`). Every
command costs a round trip (a `docker exec` or an SSH channel, slow under TCG), so each
category is one small POSIX shell script whose output is parsed here; the parsers are
public so unit tests can feed them recorded output.

Enabled services are read from the symlinks `systemctl enable` and `update-rc.d` leave on
disk, not from a running systemd: a container has none, and packages still enable their
units there.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rolebake.errors import SnapshotError
from rolebake.parity.dpkg import (
    PackageRecords,
    PackageRelations,
    parse_package_records,
    parse_packages,
)
from rolebake.parity.sysids import DEBIAN_DEFAULT, SYSIDS_SCRIPT, SystemIds, parse_system_ids

__all__ = [
    "ACCOUNTS_SCRIPT",
    "FACTS_SCRIPT",
    "PACKAGES_SCRIPT",
    "PATHS_SCRIPT",
    "SERVICES_SCRIPT",
    "Facts",
    "Group",
    "PackageRecords",
    "PathState",
    "Service",
    "Snapshot",
    "User",
    "parse_accounts",
    "parse_facts",
    "parse_package_records",
    "parse_packages",
    "parse_paths",
    "parse_services",
    "take_snapshot",
]

SNAPSHOT_FORMAT = 1


class CommandResult(Protocol):
    """What we use of testinfra's CommandResult."""

    @property
    def rc(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


class Host(Protocol):
    """What we use of a testinfra Host: `testinfra.get_host(url).run(command)`."""

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult: ...


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class User:
    """A passwd entry (the gecos field is left out: tools rewrite it freely)."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class Group:
    """A group entry; members in the order getent gives them, which is the file's order."""

    name: str
    gid: int
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Service:
    """A unit or SysV script that is enabled on disk.

    Attributes:
        name: Unit name (`ssh.service`) or, for SysV, `<script>` with `.sysv` appended
            (`ssh.sysv`), so the two mechanisms never collide.
        enabled_by: Where it is hooked in, sorted: `multi-user.target.wants`,
            `static:sysinit.target.wants` for vendor wiring under /usr/lib, `rc2.d` for SysV.
        package: The package owning the unit file or init script, when dpkg knows it.
    """

    name: str
    enabled_by: tuple[str, ...]
    package: str | None = None


@dataclass(frozen=True)
class PathState:
    """State of one path the roles manage.

    Attributes:
        path: Absolute path as given.
        type: `file`, `directory`, `link`, `other`, or `absent`.
        mode: Octal permission bits as stat prints them (`644`, `4755`).
        owner: Owner name (or uid when the name does not resolve).
        group: Group name (or gid).
        sha256: Content hash for regular files; `unreadable` when it cannot be read.
        link_target: What a symlink points to, as written.
        uid: Owner's numeric id (what a file on shared storage keeps); None in old records.
        gid: Group's numeric id.
    """

    path: str
    type: str
    mode: str | None = None
    owner: str | None = None
    group: str | None = None
    sha256: str | None = None
    link_target: str | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def exists(self) -> bool:
        """Whether the path exists (a dangling symlink exists)."""
        return self.type != "absent"


@dataclass(frozen=True)
class Snapshot:
    """The state of one machine, JSON-serialisable with `to_dict`/`from_dict`.

    Attributes:
        packages: Installed package → version (a non-`ii` dpkg state is appended in brackets).
        users: User name → User.
        groups: Group name → Group.
        services: Enabled service name → Service.
        paths: Managed path → PathState.
        facts: Facts expected to differ between a container and a VM (kernel, hostname,
            machine_id, init) and some that should not (os, arch, debian_version).
        running_services: Services systemd reports running, or None without a running systemd.
        failed_units: Units systemd reports failed, or None without a running systemd.
        system_ids: The range its tools hand out system uids and gids from.
        relations: Installed package → its Depends, Pre-Depends, Recommends and Provides
            (empty in snapshots recorded before they were kept).
        auto_installed: Packages apt marked automatically installed; None when not recorded.
    """

    packages: Mapping[str, str] = field(default_factory=dict)
    users: Mapping[str, User] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    paths: Mapping[str, PathState] = field(default_factory=dict)
    facts: Mapping[str, str] = field(default_factory=dict)
    running_services: tuple[str, ...] | None = None
    failed_units: tuple[str, ...] | None = None
    system_ids: SystemIds = DEBIAN_DEFAULT
    relations: Mapping[str, PackageRelations] = field(default_factory=dict)
    auto_installed: frozenset[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (`json.dumps(snapshot.to_dict())`)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "packages": dict(sorted(self.packages.items())),
            "users": {k: asdict(v) for k, v in sorted(self.users.items())},
            "groups": {
                k: {**asdict(v), "members": list(v.members)} for k, v in sorted(self.groups.items())
            },
            "services": {
                k: {**asdict(v), "enabled_by": list(v.enabled_by)}
                for k, v in sorted(self.services.items())
            },
            "paths": {k: asdict(v) for k, v in sorted(self.paths.items())},
            "facts": dict(sorted(self.facts.items())),
            "running_services": _list_or_none(self.running_services),
            "failed_units": _list_or_none(self.failed_units),
            "system_ids": self.system_ids.to_dict(),
            "relations": {k: v.to_dict() for k, v in sorted(self.relations.items())},
            "auto_installed": (None if self.auto_installed is None
                               else sorted(self.auto_installed)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Inverse of `to_dict`.

        Raises:
            SnapshotError: The data is from another format version or malformed.
        """
        if data.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"snapshot format {data.get('format')!r} is not supported")
        try:
            running = data.get("running_services")
            failed = data.get("failed_units")
            auto = data.get("auto_installed")
            return cls(
                packages={str(k): str(v) for k, v in data["packages"].items()},
                users={k: User(**v) for k, v in data["users"].items()},
                groups={
                    k: Group(name=v["name"], gid=v["gid"], members=tuple(v["members"]))
                    for k, v in data["groups"].items()
                },
                services={
                    k: Service(
                        name=v["name"], enabled_by=tuple(v["enabled_by"]), package=v["package"]
                    )
                    for k, v in data["services"].items()
                },
                paths={k: PathState(**v) for k, v in data["paths"].items()},
                facts={str(k): str(v) for k, v in data["facts"].items()},
                running_services=None if running is None else tuple(running),
                failed_units=None if failed is None else tuple(failed),
                system_ids=SystemIds.from_dict(data.get("system_ids")
                                               or DEBIAN_DEFAULT.to_dict()),
                relations={str(k): PackageRelations.from_dict(v)
                           for k, v in (data.get("relations") or {}).items()},
                auto_installed=None if auto is None else frozenset(auto),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise SnapshotError(f"malformed snapshot data: {err!r}") from err


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


# --------------------------------------------------------------------------- scripts

# Each package's relations (why it is there: parity's chains), then apt's auto marks.
PACKAGES_SCRIPT = r"""
fmt='${db:Status-Abbrev}\t${Package}\t${Architecture}\t${Version}\t'
fmt="$fmt"'${Depends}\t${Pre-Depends}\t${Recommends}\t${Provides}\n'
dpkg-query -W -f="$fmt" || exit $?
echo '@@extended_states'
cat /var/lib/apt/extended_states 2>/dev/null
exit 0
"""

# Then the system id range (sysids.py): the first free one is what a new system user gets.
ACCOUNTS_SCRIPT = (r"""getent passwd && echo '@@groups' && getent group || exit $?
echo '@@sysids'""" + SYSIDS_SCRIPT)

# Symlinks in *.wants/*.requires are what `systemctl enable` (and deb-systemd-helper in
# maintainer scripts, which works without systemd) creates; S links in rc?.d are SysV's.
# Forks are what costs under TCG (a shell loop with readlink per link took 8 s), so: one
# find, one realpath for all targets (-m: one output line per input, even if dangling),
# one dpkg-query -S for the owners, under both spellings of merged /usr.
SERVICES_SCRIPT = r"""
set -u
links=$( {
  find /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system \
    -mindepth 2 -maxdepth 2 -type l \( -path '*.wants/*' -o -path '*.requires/*' \)
  find /etc/rc2.d /etc/rc3.d /etc/rc4.d /etc/rc5.d /etc/rcS.d \
    -mindepth 1 -maxdepth 1 -type l -name 'S*'
} 2>/dev/null | sort -u)
[ -n "$links" ] || exit 0
targets=$(printf '%s\n' "$links" | xargs -d '\n' realpath -m --)
printf '%s\n' "$links" | sed 's/^/L\t/'
printf '%s\n' "$targets" | sed 's/^/T\t/'
if command -v dpkg-query >/dev/null; then
  { printf '%s\n' "$targets"
    printf '%s\n' "$targets" | sed -n -e 's#^/usr/lib/#/lib/#p' -e t -e 's#^/lib/#/usr/lib/#p'
  } | sort -u | xargs -d '\n' dpkg-query -S 2>/dev/null | sed 's/^/O\t/'
fi
exit 0
"""

FACTS_SCRIPT = r"""
printf 'kernel\t%s\n' "$(uname -r)"
printf 'arch\t%s\n' "$(uname -m)"
printf 'hostname\t%s\n' "$(uname -n)"
printf 'machine_id\t%s\n' "$(cat /etc/machine-id 2>/dev/null)"
printf 'init\t%s\n' "$(cat /proc/1/comm 2>/dev/null)"
printf 'os\t%s\n' "$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"')"
printf 'debian_version\t%s\n' "$(cat /etc/debian_version 2>/dev/null)"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl list-units --type=service --state=running --no-legend --plain --no-pager \
    | while read -r unit _rest; do printf 'running\t%s\n' "$unit"; done
  systemctl list-units --state=failed --no-legend --plain --no-pager \
    | while read -r unit _rest; do printf 'failed\t%s\n' "$unit"; done
else
  printf 'running\t@none\n'
fi
"""

# Paths come in as "$@"; output is one line per path, prefixed with its index, so a path
# with odd characters cannot break the parsing.
PATHS_SCRIPT = r"""
i=0
for p in "$@"; do
  if [ -L "$p" ]; then t=link
  elif [ -d "$p" ]; then t=directory
  elif [ -f "$p" ]; then t=file
  elif [ -e "$p" ]; then t=other
  else printf '%s\tabsent\n' "$i"; i=$((i + 1)); continue
  fi
  meta=$(stat -c '%a %U %G %u %g' -- "$p")
  extra=''
  if [ "$t" = file ]; then
    extra=$( (sha256sum < "$p") 2>/dev/null | cut -d' ' -f1)
    [ -n "$extra" ] || extra=unreadable
  elif [ "$t" = link ]; then
    extra=$(readlink -- "$p")
  fi
  printf '%s\t%s\t%s\t%s\n' "$i" "$t" "$meta" "$extra"
  i=$((i + 1))
done
"""


# --------------------------------------------------------------------------- parsers


def parse_accounts(output: str) -> tuple[dict[str, User], dict[str, Group]]:
    """Parse ACCOUNTS_SCRIPT output into users and groups.

    Raises:
        SnapshotError: The output has no group section or a malformed line.
    """
    passwd, sep, group = output.partition("@@groups\n")
    group = group.partition("@@sysids\n")[0]
    if not sep:
        raise SnapshotError("getent output has no group section", details=output[-2000:])
    users: dict[str, User] = {}
    for line in passwd.splitlines():
        if not line:
            continue
        fields = line.split(":")
        if len(fields) != 7:
            raise SnapshotError("unexpected passwd entry", details=line)
        try:
            users[fields[0]] = User(
                name=fields[0],
                uid=int(fields[2]),
                gid=int(fields[3]),
                home=fields[5],
                shell=fields[6],
            )
        except ValueError as err:
            raise SnapshotError("unexpected passwd entry", details=line) from err
    groups: dict[str, Group] = {}
    for line in group.splitlines():
        if not line:
            continue
        fields = line.split(":")
        if len(fields) != 4:
            raise SnapshotError("unexpected group entry", details=line)
        try:
            members = tuple(m for m in fields[3].split(",") if m)
            groups[fields[0]] = Group(name=fields[0], gid=int(fields[2]), members=members)
        except ValueError as err:
            raise SnapshotError("unexpected group entry", details=line) from err
    return users, groups


def parse_services(output: str) -> dict[str, Service]:
    """Parse SERVICES_SCRIPT output into enabled services.

    `L` lines are the links, `T` lines their resolved targets in the same order, `O` lines
    dpkg's owners. On merged-/usr systems the vendor directory is seen twice (/lib and
    /usr/lib); those are folded together, and owners match under either spelling, since
    dpkg records whichever path the package shipped.

    Raises:
        SnapshotError: An unknown line, or links and targets that do not pair up.
    """
    links: list[str] = []
    targets: list[str] = []
    owners: dict[str, str] = {}
    for line in output.splitlines():
        if not line:
            continue
        kind, sep, rest = line.partition("\t")
        if kind == "L" and sep:
            links.append(rest)
        elif kind == "T" and sep:
            targets.append(_normalise(rest))
        elif kind == "O" and sep:
            packages, found, path = rest.partition(": ")
            if found and not packages.startswith("diversion"):
                # `pkg1, pkg2: path` when several packages ship the path; the first decides.
                owners[_normalise(path)] = packages.split(",")[0].split(":")[0].strip()
        else:
            raise SnapshotError("unexpected service listing", details=line)
    if len(links) != len(targets):
        raise SnapshotError(
            f"service listing has {len(links)} links but {len(targets)} targets",
            details="\n".join(output.splitlines()[:20]),
        )
    hooks: dict[str, set[str]] = {}
    unit_files: dict[str, str] = {}
    for link, target in zip(links, targets, strict=True):
        name, hook = _service_name_and_hook(link)
        if name is None:
            continue
        hooks.setdefault(name, set()).add(hook)
        unit_files.setdefault(name, target)
    return {
        name: Service(
            name=name,
            enabled_by=tuple(sorted(hook_set)),
            package=owners.get(unit_files[name]),
        )
        for name, hook_set in sorted(hooks.items())
    }


def _service_name_and_hook(link: str) -> tuple[str | None, str]:
    """`/etc/systemd/system/multi-user.target.wants/ssh.service` → (`ssh.service`, hook)."""
    parts = link.rstrip("/").split("/")
    if len(parts) < 2:
        return None, ""
    directory, base = parts[-2], parts[-1]
    if directory.startswith("rc") and directory.endswith(".d"):
        # S01ssh → ssh.sysv; the two-digit order is update-rc.d's business, not ours.
        script = base[1:].lstrip("0123456789")
        return (f"{script}.sysv" if script else None), directory
    vendor = link.startswith(("/usr/lib/", "/lib/"))
    return base, (f"static:{directory}" if vendor else directory)


def _normalise(path: str) -> str:
    """Collapse `..` and the /lib vs /usr/lib spelling so paths from both sides compare."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    clean = "/" + "/".join(parts)
    return clean.removeprefix("/usr") if clean.startswith("/usr/lib/") else clean


@dataclass(frozen=True)
class Facts:
    """What FACTS_SCRIPT reports; the unit lists are None without a running systemd."""

    facts: Mapping[str, str]
    running_services: tuple[str, ...] | None
    failed_units: tuple[str, ...] | None


def parse_facts(output: str) -> Facts:
    """Parse FACTS_SCRIPT output.

    Raises:
        SnapshotError: A line has no tab-separated value.
    """
    facts: dict[str, str] = {}
    units: dict[str, list[str]] = {"running": [], "failed": []}
    has_init = True
    for line in output.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("\t")
        if not sep:
            raise SnapshotError("unexpected facts output", details=line)
        if key == "running" and value == "@none":
            has_init = False
        elif key in units:
            units[key].append(value)
        else:
            facts[key] = value
    return Facts(
        facts=facts,
        running_services=tuple(sorted(units["running"])) if has_init else None,
        failed_units=tuple(sorted(units["failed"])) if has_init else None,
    )


def parse_paths(output: str, paths: list[str]) -> dict[str, PathState]:
    """Parse PATHS_SCRIPT output for `paths` (in the order they were passed).

    Raises:
        SnapshotError: A line is malformed or a path got no line.
    """
    states: dict[str, PathState] = {}
    for line in output.splitlines():
        if not line:
            continue
        fields = line.split("\t")
        try:
            path = paths[int(fields[0])]
        except (ValueError, IndexError) as err:
            raise SnapshotError("unexpected path listing", details=line) from err
        if fields[1:] == ["absent"]:
            states[path] = PathState(path=path, type="absent")
            continue
        meta = fields[2].split(" ") if len(fields) == 4 else []
        # Five fields (mode, names, ids); three in output recorded before ids were kept.
        if len(meta) not in (3, 5) or not all(m.isdigit() for m in meta[3:]):
            raise SnapshotError("unexpected path listing", details=line)
        kind, extra = fields[1], fields[3]
        mode, owner, group = meta[:3]
        uid, gid = (int(meta[3]), int(meta[4])) if len(meta) == 5 else (None, None)
        states[path] = PathState(
            path=path,
            type=kind,
            mode=mode,
            owner=owner,
            group=group,
            sha256=extra if kind == "file" else None,
            link_target=extra if kind == "link" else None,
            uid=uid,
            gid=gid,
        )
    missing = [p for p in paths if p not in states]
    if missing:
        raise SnapshotError("no state reported for some paths", details="\n".join(missing))
    return states


# --------------------------------------------------------------------------- take


def _run(host: Host, what: str, script: str, *args: str) -> str:
    # No testinfra %-formatting (it only applies when args are passed): quote ourselves.
    result = host.run(shlex.join(["sh", "-c", script, "rolebake-snapshot", *args]))
    if result.rc != 0:
        raise SnapshotError(
            f"collecting {what} failed (exit {result.rc})",
            details="\n".join((result.stdout + result.stderr).splitlines()[-20:]),
        )
    return result.stdout


def take_snapshot(host: Host, managed_paths: Iterable[str] = ()) -> Snapshot:
    """Snapshot a machine through a testinfra Host (docker://, ssh://, local://...).

    Five commands in all: packages, accounts, services, facts, managed paths. Run it as
    root (e.g. `docker://root@<id>`), or files only root can read hash as `unreadable`.

    Args:
        host: A `testinfra.get_host(...)` Host.
        managed_paths: Absolute paths the roles manage; each is recorded with type, mode,
            owner, group and sha256 (files) or target (links). Directories are not recursed.

    Returns:
        The snapshot.

    Raises:
        SnapshotError: A command failed or its output could not be parsed; carries the tail.
    """
    paths = sorted(set(managed_paths))
    relative = [p for p in paths if not p.startswith("/")]
    if relative:
        raise SnapshotError("managed paths must be absolute", details="\n".join(relative))
    packages = parse_package_records(_run(host, "installed packages", PACKAGES_SCRIPT))
    accounts = _run(host, "users and groups", ACCOUNTS_SCRIPT)
    users, groups = parse_accounts(accounts)
    services = parse_services(_run(host, "enabled services", SERVICES_SCRIPT))
    facts = parse_facts(_run(host, "facts", FACTS_SCRIPT))
    states = parse_paths(_run(host, "managed paths", PATHS_SCRIPT, *paths), paths) if paths else {}
    return Snapshot(
        packages=packages.versions,
        relations=packages.relations,
        auto_installed=packages.auto_installed,
        users=users,
        groups=groups,
        services=services,
        paths=states,
        facts=facts.facts,
        running_services=facts.running_services,
        failed_units=facts.failed_units,
        system_ids=parse_system_ids(accounts.partition("@@sysids\n")[2]),
    )
