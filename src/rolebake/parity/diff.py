"""Compare a container's snapshot with a VM's and explain every difference.

Every compared item ends up in the report as `equal`, `expected` (with the reason it is
explainable: a VM boots a kernel, runs an init, has a hostname), `ids-shifted` (a system
user, group or file owner whose name agrees but whose dynamically allocated id does not)
`recommends` (a package on one side only because apt installed a Recommends there that
the other side's copy of the same package was installed without: see why.py) or
`different`. A package on one side only carries the chain that brought it (`why`).
Nothing is dropped; the CLI decides how much of it to show.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from rolebake.parity.snapshot import Group, PathState, Service, Snapshot, User
from rolebake.parity.why import Why, explain_package

__all__ = [
    "IDS_SHIFTED_HINT",
    "RECOMMENDS_HINT",
    "Category",
    "ParityItem",
    "ParityReport",
    "Status",
    "diff_snapshots",
]


class Status(enum.StrEnum):
    """How one compared item came out."""

    EQUAL = "equal"
    EXPECTED = "expected"
    # Names agree, dynamic system ids do not: a difference only with --strict-ids.
    IDS_SHIFTED = "ids-shifted"
    # On one side only through a Recommends the other side skipped: a difference unless
    # --accept-recommends.
    RECOMMENDS = "recommends"
    DIFFERENT = "different"


IDS_SHIFTED_HINT = (
    "names agree, dynamic system ids differ: whatever made system users first took the first "
    "free ids (on a VM, its boot packages: systemd, dbus, sshd). Files on shared storage "
    "would change owner; pin the uid/gid in the role (user: uid=..., group: gid=...) to make "
    "them equal. --strict-ids counts them as differences."
)

RECOMMENDS_HINT = (
    "on one side only because apt installed a package's Recommends there, while the other "
    "side has that package without them (a VM's boot packages are installed without "
    "Recommends). To make them equal, set `install_recommends: false` on the role's apt "
    "task, or `APT::Install-Recommends \"false\";` in the image's apt configuration (or "
    "install the package by name on both). --accept-recommends accepts them."
)


class Category(enum.StrEnum):
    """What kind of state an item is, in report order."""

    FACT = "fact"
    PACKAGE = "package"
    USER = "user"
    GROUP = "group"
    SERVICE = "service"
    RUNNING = "running"
    PATH = "path"


@dataclass(frozen=True)
class ParityItem:
    """One compared resource.

    Attributes:
        category: What kind of state this is.
        key: Its name (package, user, unit, path, fact).
        container: The container's value rendered as text, or None when absent there.
        vm: The VM's value, or None when absent there.
        status: equal, expected or different.
        reason: Why it is expected or how it differs; empty when equal.
        why: For a package on one side only, the chain that brought it there.
    """

    category: Category
    key: str
    container: str | None
    vm: str | None
    status: Status
    reason: str = ""
    why: Why | None = None

    @property
    def resource(self) -> str:
        """`category key`, the first column of the table."""
        return f"{self.category.value} {self.key}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "category": self.category.value,
            "key": self.key,
            "container": self.container,
            "vm": self.vm,
            "status": self.status.value,
            "reason": self.reason,
            "why": None if self.why is None else self.why.to_dict(),
        }


@dataclass(frozen=True)
class ParityReport:
    """All compared items of one parity run.

    Attributes:
        items: Every compared item.
        strict_ids: Count shifted dynamic system ids as differences (`--strict-ids`).
        accept_recommends: Do not count packages installed as Recommends on one side only
            as differences (`--accept-recommends`).
    """

    items: tuple[ParityItem, ...]
    strict_ids: bool = False
    accept_recommends: bool = False

    @property
    def differences(self) -> tuple[ParityItem, ...]:
        """Items that make parity fail (exit 5).

        Different ones; recommends unless accepted; ids-shifted with strict_ids.
        """
        failing = {Status.DIFFERENT}
        if self.strict_ids:
            failing.add(Status.IDS_SHIFTED)
        if not self.accept_recommends:
            failing.add(Status.RECOMMENDS)
        return tuple(i for i in self.items if i.status in failing)

    @property
    def recommends(self) -> tuple[ParityItem, ...]:
        """Packages on one side only through a Recommends the other side skipped."""
        return tuple(i for i in self.items if i.status is Status.RECOMMENDS)

    @property
    def ids_shifted(self) -> tuple[ParityItem, ...]:
        """Users, groups and file owners whose names agree and dynamic system ids do not."""
        return tuple(i for i in self.items if i.status is Status.IDS_SHIFTED)

    @property
    def expected(self) -> tuple[ParityItem, ...]:
        """Items that differ for a known reason."""
        return tuple(i for i in self.items if i.status is Status.EXPECTED)

    @property
    def equal_count(self) -> int:
        """How many items are the same on both sides."""
        return sum(1 for i in self.items if i.status is Status.EQUAL)

    @property
    def ok(self) -> bool:
        """True when nothing differs unexpectedly."""
        return not self.differences

    @property
    def verdict(self) -> str:
        """`ok`, `recommends` when only the recommends class fails it, else `different`."""
        if self.ok:
            return "ok"
        if all(i.status is Status.RECOMMENDS for i in self.differences):
            return Status.RECOMMENDS.value
        return Status.DIFFERENT.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for `--json`: a summary and every item, equal ones included."""
        return {
            "ok": self.ok,
            "status": self.verdict,
            "summary": {
                "equal": self.equal_count,
                "expected": len(self.expected),
                "ids_shifted": len(self.ids_shifted),
                "recommends": len(self.recommends),
                "different": len(self.differences),
            },
            "strict_ids": self.strict_ids,
            "accept_recommends": self.accept_recommends,
            "hints": {
                **({Status.IDS_SHIFTED.value: IDS_SHIFTED_HINT} if self.ids_shifted else {}),
                **({Status.RECOMMENDS.value: RECOMMENDS_HINT} if self.recommends else {}),
            },
            "items": [i.to_dict() for i in self.items],
        }


# --------------------------------------------------------------------------- rules

# Paths a booted machine has and a container never does.
VM_ONLY_PATHS: tuple[str, ...] = (
    "/boot",
    "/lib/modules",
    "/usr/lib/modules",
    "/etc/fstab",
    "/etc/machine-id",
)
# Files a container engine bind-mounts over at run time: whatever the image holds there,
# a running container shows the engine's version.
ENGINE_MANAGED_PATHS: tuple[str, ...] = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")

_FACT_REASONS: Mapping[str, str] = {
    "kernel": "the container shares the host's kernel",
    "hostname": "per-machine hostname",
    "machine_id": "per-machine id, made at first boot",
    "init": "a container runs no init",
}

_NO_INIT = "unknown (no init)"

_T = TypeVar("_T")


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def diff_snapshots(
    container: Snapshot,
    vm: Snapshot,
    *,
    vm_only_packages: Iterable[str] = (),
    vm_only_users: Iterable[str] = (),
    vm_only_groups: Iterable[str] = (),
    strict_ids: bool = False,
    accept_recommends: bool = False,
    requested_packages: Iterable[str] = (),
) -> ParityReport:
    """Compare the two snapshots item by item.

    Args:
        container: Snapshot of a container from the built image.
        vm: Snapshot of the VM the same roles were applied to.
        vm_only_packages: Packages the VM has only because it boots (kernel, init, sshd and
            their dependencies): `VMImage.added_packages` for a local VM.
        vm_only_users: Users those packages created (`VMImage.added_users`).
        vm_only_groups: Groups those packages created (`VMImage.added_groups`).
        strict_ids: Count shifted dynamic system ids as differences.
        accept_recommends: Do not count the `recommends` class as differences.
        requested_packages: Package names the roles' apt tasks asked for (the chains end
            there).

    Returns:
        The report, items ordered by category then key.
    """
    boot_pkgs = frozenset(vm_only_packages)
    items: list[ParityItem] = []
    items += _facts(container, vm)
    items += _compare(
        Category.PACKAGE,
        container.packages,
        vm.packages,
        render=str,
        vm_only=lambda name, _v: (
            "VM boot package (kernel, init, sshd, deps)" if name in boot_pkgs else None
        ),
    )
    items += _compare(
        Category.USER,
        container.users,
        vm.users,
        render=_render_user,
        vm_only=_created_by(frozenset(vm_only_users), "user"),
    )
    items += _compare(
        Category.GROUP,
        container.groups,
        vm.groups,
        render=_render_group,
        vm_only=_created_by(frozenset(vm_only_groups), "group"),
    )
    items += _compare(
        Category.SERVICE,
        container.services,
        vm.services,
        render=_render_service,
        vm_only=lambda _name, svc: (
            f"enabled by VM boot package {svc.package}" if svc.package in boot_pkgs else None
        ),
    )
    items += _running(container, vm)
    items += _compare(
        Category.PATH,
        container.paths,
        vm.paths,
        render=_render_path,
        vm_only=lambda path, _s: (
            "only a booted machine has it" if _under(path, VM_ONLY_PATHS) else None
        ),
        explain=lambda path: (
            "bind-mounted by the container engine" if _under(path, ENGINE_MANAGED_PATHS) else None
        ),
    )
    items = _explain_packages(items, container, vm, boot_pkgs, frozenset(requested_packages))
    return ParityReport(items=tuple(_shifted_ids(items, container, vm)), strict_ids=strict_ids,
                        accept_recommends=accept_recommends)


def _explain_packages(items: list[ParityItem], container: Snapshot, vm: Snapshot,
                      boot: frozenset[str], requested: frozenset[str]) -> list[ParityItem]:
    """Give each package on one side only its chain; class Recommends-only ones."""
    explained = []
    for item in items:
        one_side = (item.container is None) != (item.vm is None)
        if item.category is not Category.PACKAGE or item.status is not Status.DIFFERENT \
                or not one_side:
            explained.append(item)
            continue
        why = explain_package(
            item.key, "container" if item.vm is None else "vm",
            container_packages=container.packages, container_relations=container.relations,
            container_auto=container.auto_installed, vm_packages=vm.packages,
            vm_relations=vm.relations, vm_auto=vm.auto_installed, boot_packages=boot,
            requested=requested)
        if why is None:
            explained.append(item)
        elif why.recommends:
            explained.append(replace(item, status=Status.RECOMMENDS, reason=why.text(), why=why))
        else:
            explained.append(replace(item, reason=f"{item.reason}; {why.text()}", why=why))
    return explained


def _created_by(names: frozenset[str], kind: str) -> Callable[[str, object], str | None]:
    def reason(name: str, _value: object) -> str | None:
        if name in names:
            return f"{kind} made by a VM boot package"
        return None

    return reason


def _compare(
    category: Category,
    container: Mapping[str, _T],
    vm: Mapping[str, _T],
    *,
    render: Callable[[_T], str],
    vm_only: Callable[[str, _T], str | None],
    explain: Callable[[str], str | None] = lambda _key: None,
) -> list[ParityItem]:
    """Compare two keyed collections; `vm_only` explains what only the VM has."""
    items = []
    for key in sorted(set(container) | set(vm)):
        c, v = container.get(key), vm.get(key)
        c_text = None if c is None else render(c)
        v_text = None if v is None else render(v)
        if c_text == v_text:
            items.append(ParityItem(category, key, c_text, v_text, Status.EQUAL))
            continue
        reason = explain(key)
        if reason is None and _missing(c) and v is not None and not _missing(v):
            reason = vm_only(key, v)
        if reason is not None:
            items.append(ParityItem(category, key, c_text, v_text, Status.EXPECTED, reason))
        else:
            items.append(ParityItem(category, key, c_text, v_text, Status.DIFFERENT, _how(c, v)))
    return items


def _missing(value: object) -> bool:
    """Not there: no such key, or a managed path snapshotted as absent."""
    return value is None or (isinstance(value, PathState) and not value.exists)


def _how(container: object, vm: object) -> str:
    """Say which side lacks it, or which fields differ."""
    if container is None:
        return "only on the VM"
    if vm is None:
        return "only in the container"
    if isinstance(container, PathState) and isinstance(vm, PathState):
        if not container.exists:
            return "absent in the container"
        if not vm.exists:
            return "absent on the VM"
    if dataclasses.is_dataclass(container) and dataclasses.is_dataclass(vm):
        names = [
            f.name
            for f in dataclasses.fields(container)
            if getattr(container, f.name) != getattr(vm, f.name)
        ]
        return f"{', '.join(names)} differ" if len(names) > 1 else f"{names[0]} differs"
    return "differs"


def _facts(container: Snapshot, vm: Snapshot) -> list[ParityItem]:
    items = []
    for key in sorted(set(container.facts) | set(vm.facts)):
        c, v = container.facts.get(key), vm.facts.get(key)
        if c == v:
            items.append(ParityItem(Category.FACT, key, c, v, Status.EQUAL))
        elif key in _FACT_REASONS:
            items.append(ParityItem(Category.FACT, key, c, v, Status.EXPECTED, _FACT_REASONS[key]))
        else:
            items.append(ParityItem(Category.FACT, key, c, v, Status.DIFFERENT, _how(c, v)))
    return items


def _running(container: Snapshot, vm: Snapshot) -> list[ParityItem]:
    """Run-time state of the services enabled in the container (the image's own services).

    A container normally runs no init, so "unknown" against "running" is expected; whether a
    service is *enabled* is compared under services. A service that failed on one side is a
    difference: the roles left it unable to start. What else the VM runs or has failed
    (systemd's own units, sshd) gets one item each, not one row per unit.
    """
    units = sorted(name for name in container.services if name.endswith(".service"))
    items = []
    for unit in units:
        c, v = _service_state(container, unit), _service_state(vm, unit)
        if c == v:
            items.append(ParityItem(Category.RUNNING, unit, c, v, Status.EQUAL))
        elif "failed" in (c, v):
            where = "on the VM" if v == "failed" else "in the container"
            items.append(
                ParityItem(Category.RUNNING, unit, c, v, Status.DIFFERENT, f"failed {where}")
            )
        else:
            reason = (
                "the container runs no init"
                if container.running_services is None
                else "running state varies; enabled state is compared"
            )
            items.append(ParityItem(Category.RUNNING, unit, c, v, Status.EXPECTED, reason))
    c_text, v_text = _others(container.running_services, units), _others(vm.running_services, units)
    status = Status.EQUAL if c_text == v_text else Status.EXPECTED
    reason = "" if status is Status.EQUAL else "started by the init or VM boot packages"
    items.append(
        ParityItem(Category.RUNNING, "(other running services)", c_text, v_text, status, reason)
    )
    c_text, v_text = _others(container.failed_units, units), _others(vm.failed_units, units)
    if c_text == v_text:
        status, reason = Status.EQUAL, ""
    elif {c_text, v_text} <= {"none", _NO_INIT}:
        status, reason = Status.EXPECTED, "the container runs no init"
    else:
        # A unit failing on the VM alone points at a role that breaks on a booted machine.
        status, reason = Status.DIFFERENT, "units failed"
    items.append(
        ParityItem(Category.RUNNING, "(other failed units)", c_text, v_text, status, reason)
    )
    return items


def _service_state(snapshot: Snapshot, unit: str) -> str:
    if snapshot.running_services is None:
        return _NO_INIT
    if unit in (snapshot.failed_units or ()):
        return "failed"
    # Templates (getty@.service) run as instances (getty@tty1.service).
    base = unit.removesuffix(".service")
    for running in snapshot.running_services:
        if running == unit or (base.endswith("@") and running.startswith(base)):
            return "running"
    return "not running"


def _others(units: tuple[str, ...] | None, listed: list[str]) -> str:
    if units is None:
        return _NO_INIT
    others = [u for u in units if u not in listed]
    return ", ".join(others) if others else "none"


def _render_user(u: User) -> str:
    return f"uid={u.uid} gid={u.gid} home={u.home} shell={u.shell}"


def _render_group(g: Group) -> str:
    return f"gid={g.gid} members={','.join(g.members) or '-'}"


def _render_service(s: Service) -> str:
    return f"enabled ({', '.join(s.enabled_by)})"


def _render_path(p: PathState) -> str:
    if not p.exists:
        return "absent"
    # The ids too: a file on shared storage keeps numbers, not names.
    owner = f"{p.owner}({p.uid}):{p.group}({p.gid})" if p.uid is not None else \
        f"{p.owner}:{p.group}"
    text = f"{p.type} {p.mode} {owner}"
    if p.sha256:
        text += f" sha256:{p.sha256}"
    if p.link_target is not None:
        text += f" -> {p.link_target}"
    return text


# --------------------------------------------------------------------------- shifted ids


def _shifted_ids(items: list[ParityItem], container: Snapshot, vm: Snapshot) -> list[ParityItem]:
    """Re-class differences that are only dynamic system ids handed out in another order.

    A user or group qualifies when its name, home, shell and members agree and every id
    that differs lies in the dynamic system range on its side. A managed path qualifies
    when it differs only in its numeric owner or group, by exactly the shift of a user
    or group that qualified (same name on both sides).
    """
    uids: dict[str, tuple[int, int]] = {}
    gids: dict[str, tuple[int, int]] = {}
    reasons: dict[tuple[Category, str], str] = {}
    c_ids, v_ids = container.system_ids, vm.system_ids
    for name in set(container.groups) & set(vm.groups):
        cg, vg = container.groups[name], vm.groups[name]
        if cg != vg and replace(cg, gid=vg.gid) == vg and c_ids.has_gid(cg.gid) \
                and v_ids.has_gid(vg.gid):
            gids[name] = (cg.gid, vg.gid)
            reasons[Category.GROUP, name] = f"gid {cg.gid} -> {vg.gid}" + _taken_first(
                cg.gid, vg.gid, container.groups, vm.groups, lambda g: g.gid)
    for name in set(container.users) & set(vm.users):
        cu, vu = container.users[name], vm.users[name]
        if cu == vu or replace(cu, uid=vu.uid, gid=vu.gid) != vu:
            continue
        if cu.uid != vu.uid and not (c_ids.has_uid(cu.uid) and v_ids.has_uid(vu.uid)):
            continue
        # The primary group moved with its own row, or is in the range on both sides.
        if cu.gid != vu.gid and not (c_ids.has_gid(cu.gid) and v_ids.has_gid(vu.gid)):
            continue
        uids[name] = (cu.uid, vu.uid)
        moved = [f"uid {cu.uid} -> {vu.uid}"] if cu.uid != vu.uid else []
        moved += [f"gid {cu.gid} -> {vu.gid}"] if cu.gid != vu.gid else []
        if cu.uid != vu.uid:
            taken = _taken_first(cu.uid, vu.uid, container.users, vm.users, lambda u: u.uid)
        else:
            taken = _taken_first(cu.gid, vu.gid, container.groups, vm.groups, lambda g: g.gid)
        reasons[Category.USER, name] = ", ".join(moved) + taken
    for path in set(container.paths) & set(vm.paths):
        cp, vp = container.paths[path], vm.paths[path]
        if cp == vp or replace(cp, uid=vp.uid, gid=vp.gid) != vp or cp.uid is None \
                or vp.uid is None:
            continue
        moved = []
        if cp.uid != vp.uid:
            if uids.get(cp.owner or "") != (cp.uid, vp.uid):
                continue
            moved.append(f"owner {cp.owner} {cp.uid} -> {vp.uid}")
        if cp.gid != vp.gid:
            if gids.get(cp.group or "") != (cp.gid, vp.gid):
                continue
            moved.append(f"group {cp.group} {cp.gid} -> {vp.gid}")
        reasons[Category.PATH, path] = ", ".join(moved) + " (the ids shifted, not the names)"
    return [
        replace(i, status=Status.IDS_SHIFTED, reason=reasons[i.category, i.key])
        if i.status is Status.DIFFERENT and (i.category, i.key) in reasons else i
        for i in items
    ]


def _taken_first(c_id: int, vm_id: int, container: Mapping[str, Any], vm: Mapping[str, Any],
                 id_of: Callable[[Any], int]) -> str:
    """Name what the VM alone made between the two ids: those took the ids first.

    adduser hands out system ids from the bottom of the range, useradd -r from the top,
    so the ones that moved an id lie between the container's and the VM's.
    """
    low, high = min(c_id, vm_id), max(c_id, vm_id)
    first = sorted((id_of(v), name) for name, v in vm.items()
                   if name not in container and low <= id_of(v) <= high)
    if not first:
        return "; pin the id in the role"
    names = ", ".join(name for _, name in first[:4]) + (", ..." if len(first) > 4 else "")
    return f"; the VM made {names} first; pin the id in the role"
