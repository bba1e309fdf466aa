"""Why a package is installed on one side only: the chain of relations that brought it.

For a package only one side has, walk its reverse relations on that side (which installed
package Pre-Depends, Depends on or Recommends it, directly or through a virtual package it
provides) up to the first package both sides have: the *head*, where the sides part. Then
on up to what the roles asked for (apt's manual marks, the names the roles' apt tasks
gave) or to a VM boot package. Say how the other side got the head too: a VM boot
package (those are installed without Recommends), asked for by the roles, or pulled in
by another package.

When the sides part at a Recommends (the head is on both sides and recommends the next
link), the difference is apt's Install-Recommends and nothing the roles do differently:
parity classes it `recommends`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from rolebake.parity.dpkg import RELATIONS, PackageRelations

__all__ = ["Why", "explain_package", "requested_from_tasks"]

# A chain longer than this says nothing a person would follow.
MAX_CHAIN = 8
_APT_ACTIONS = frozenset({"apt", "ansible.builtin.apt", "ansible.legacy.apt", "package",
                          "ansible.builtin.package", "ansible.legacy.package"})
_SIDE_NAMES = {"container": "the container", "vm": "the VM"}


@dataclass(frozen=True)
class Why:
    """The chain that brought a package to one side and how the other side differs.

    Attributes:
        side: `container` or `vm`: where the package is.
        chain: The package first, then what pulled it in, up to the root.
        relations: `relations[i]` is how `chain[i + 1]` pulls in `chain[i]` (`Depends`,
            `Pre-Depends`, `Recommends`).
        root: How this side got `chain[-1]` (`asked for by the roles`, `VM boot package`,
            `manually installed`, or `nothing installed needs it` when nothing does).
        head: The first package of the chain both sides have, or None.
        head_there: How the other side got the head ("" without a head).
        recommends: The sides part at a Recommends: the head recommends the link below it.
    """

    side: str
    chain: tuple[str, ...]
    relations: tuple[str, ...]
    root: str
    head: str | None = None
    head_there: str = ""

    @property
    def recommends(self) -> bool:
        """True when the head pulls in the link below it by Recommends only."""
        if self.head is None:
            return False
        return self.relations[self.chain.index(self.head) - 1] == "Recommends"

    @property
    def other_side(self) -> str:
        """`vm` for `container` and the other way round."""
        return "vm" if self.side == "container" else "container"

    def chain_text(self) -> str:
        """`psmisc ← (Recommends) procps ← (Depends) apache2 (asked for by the roles)`."""
        parts = [self.chain[0]]
        for name, relation in zip(self.chain[1:], self.relations, strict=True):
            parts.append(f"({relation}) {name}")
        return " ← ".join(parts) + f" ({self.root})"

    def text(self) -> str:
        """The chain, then how the other side got its head."""
        text = f"in {_SIDE_NAMES[self.side]}: {self.chain_text()}"
        if self.head is not None:
            text += f"; {_SIDE_NAMES[self.other_side]} has {self.head}: {self.head_there}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the text included."""
        return {
            "side": self.side,
            "chain": [{"package": name, "pulled_in_by": relation}
                      for name, relation in zip(self.chain, [*self.relations, None],
                                                strict=True)],
            "root": self.root,
            "head": self.head,
            "head_there": self.head_there,
            "recommends": self.recommends,
            "text": self.text(),
        }


class _Side:
    """One machine's packages, reverse relations and what explains a root there."""

    def __init__(self, name: str, packages: Collection[str],
                 relations: Mapping[str, PackageRelations], auto: frozenset[str] | None,
                 boot: frozenset[str], requested: frozenset[str]) -> None:
        self.name, self.packages, self.relations = name, frozenset(packages), relations
        self.auto, self.boot, self.requested = auto, boot, requested
        provided: dict[str, set[str]] = {}
        for package, rel in relations.items():
            for virtual in rel.provides:
                provided.setdefault(virtual, set()).add(package)
        # Who pulls in whom: the alternative apt took is the first one installed, and a
        # virtual name stands for every installed package that provides it.
        self._parents: dict[str, dict[str, str]] = {}
        for relation in RELATIONS:
            for parent, rel in sorted(relations.items()):
                for group in rel.field(relation):
                    taken = next((alt for alt in group
                                  if alt in self.packages or alt in provided), None)
                    if taken is None:
                        continue
                    targets = {taken} if taken in self.packages else provided[taken]
                    for target in targets:
                        if target != parent:
                            # Strongest relation first: RELATIONS is in that order.
                            self._parents.setdefault(target, {}).setdefault(parent, relation)

    def parents(self, package: str) -> list[tuple[str, str]]:
        """Installed packages that pull `package` in, strongest relation first, then by name."""
        found = self._parents.get(package, {})
        return sorted(found.items(), key=lambda item: (RELATIONS.index(item[1]), item[0]))

    def root(self, package: str) -> str | None:
        """How this side got `package` when nothing further explains it, else None."""
        if self.name == "vm" and package in self.boot:
            return "VM boot package, installed without Recommends"
        if package in self.requested:
            return "asked for by the roles"
        if self.auto is not None and package not in self.auto:
            return "manually installed: the base image or a role"
        return None


def explain_package(package: str, side: str, *, container_packages: Collection[str],
                    container_relations: Mapping[str, PackageRelations],
                    container_auto: frozenset[str] | None, vm_packages: Collection[str],
                    vm_relations: Mapping[str, PackageRelations],
                    vm_auto: frozenset[str] | None, boot_packages: Collection[str] = (),
                    requested: Collection[str] = ()) -> Why | None:
    """The chain that brought `package` to `side` (where the other side lacks it).

    Args:
        package: A package installed on `side` only.
        side: `container` or `vm`.
        container_packages: The container's installed packages.
        container_relations: Their relations (empty for an old snapshot).
        container_auto: apt's auto-installed marks in the container, None if unknown.
        vm_packages: The VM's installed packages.
        vm_relations: Their relations.
        vm_auto: apt's marks on the VM.
        boot_packages: What the VM has only because it boots (installed without Recommends).
        requested: Package names the roles' apt tasks asked for.

    Returns:
        The chain, or None when the snapshots recorded no relations for that side.
    """
    sides = {
        "container": _Side("container", container_packages, container_relations,
                           container_auto, frozenset(boot_packages), frozenset(requested)),
        "vm": _Side("vm", vm_packages, vm_relations, vm_auto, frozenset(boot_packages),
                    frozenset(requested)),
    }
    here, there = sides[side], sides["vm" if side == "container" else "container"]
    if not here.relations:
        return None
    chain, relations, head = _walk(here, package, stop=lambda name: name in there.packages)
    if head is None:
        chain, relations, _ = _walk(here, package, stop=lambda _name: False)
    else:
        # From the head on up to what explains it on this side.
        upper, upper_relations, _ = _walk(here, head, stop=lambda _name: False)
        chain, relations = chain + upper[1:], relations + upper_relations
    root = here.root(chain[-1]) or "nothing installed needs it"
    return Why(side=side, chain=tuple(chain), relations=tuple(relations), root=root,
               head=head, head_there=_how_there(there, head) if head else "")


def _walk(side: _Side, start: str,
          stop: Callable[[str], bool]) -> tuple[list[str], list[str], str | None]:
    """Breadth first up the reverse relations from `start`.

    Ends at the nearest package `stop` accepts (returned as the third value), else at the
    nearest root of `side`, else at the farthest package reached. A start that is a root
    itself (the roles asked for it) is its own chain.
    """
    previous: dict[str, tuple[str, str] | None] = {start: None}
    if side.root(start) is not None:
        return [start], [], None
    queue = deque([(start, 0)])
    end = start
    while queue:
        name, depth = queue.popleft()
        end = name
        if name != start and stop(name):
            return (*_path(previous, name), name)
        if name != start and side.root(name) is not None:
            break
        if depth >= MAX_CHAIN:
            continue
        for parent, relation in side.parents(name):
            if parent not in previous:
                previous[parent] = (name, relation)
                queue.append((parent, depth + 1))
    return (*_path(previous, end), None)


def _path(previous: Mapping[str, tuple[str, str] | None],
          end: str) -> tuple[list[str], list[str]]:
    """The chain from the start up to `end`, and the relation of each link."""
    chain, relations = [end], []
    step = previous[end]
    while step is not None:
        below, relation = step
        chain.append(below)
        relations.append(relation)
        step = previous[below]
    return chain[::-1], relations[::-1]


def _how_there(side: _Side, head: str) -> str:
    root = side.root(head)
    if root is not None:
        return root
    parents = side.parents(head)
    if parents:
        parent, relation = parents[0]
        return f"pulled in by {parent} ({relation})"
    return "installed"


def requested_from_tasks(tasks: Any) -> frozenset[str]:
    """Package names the roles' apt/package tasks asked for (`name:` as a list or string).

    Args:
        tasks: `TaskResult`s (anything with `action` and `args`).
    """
    names: set[str] = set()
    for task in tasks:
        if task.action not in _APT_ACTIONS:
            continue
        value = task.args.get("name") or task.args.get("pkg") or ()
        for entry in [value] if isinstance(value, str) else value:
            for name in str(entry).split(","):
                # `nginx=1.22*`, `nginx>=1.2`: the name is what comes before the version.
                clean = name.strip().split("=")[0].split(">")[0].split("<")[0].strip()
                if clean and not clean.endswith(".deb"):
                    names.add(clean.split(":")[0])
    return frozenset(names)
