"""What dpkg and apt record about why a package is installed: its relations and apt's marks.

The snapshot's package script prints, per installed package, its Depends, Pre-Depends,
Recommends and Provides as dpkg-query gives them, then apt's `extended_states` (where apt
keeps its "automatically installed" marks). This module parses both; `why.py` walks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rolebake.errors import SnapshotError

__all__ = [
    "RELATIONS",
    "PackageRecords",
    "PackageRelations",
    "parse_extended_states",
    "parse_package_records",
    "parse_packages",
    "parse_relation_field",
]

# The fields that make apt install another package, strongest first.
RELATIONS = ("Pre-Depends", "Depends", "Recommends")


@dataclass(frozen=True)
class PackageRelations:
    """One installed package's relations, each a tuple of alternatives groups.

    Attributes:
        depends: `Depends`, each entry the alternatives of one `a | b` group (names only).
        pre_depends: `Pre-Depends`, same shape.
        recommends: `Recommends`, same shape.
        provides: Virtual package names it provides.
    """

    depends: tuple[tuple[str, ...], ...] = ()
    pre_depends: tuple[tuple[str, ...], ...] = ()
    recommends: tuple[tuple[str, ...], ...] = ()
    provides: tuple[str, ...] = ()

    def field(self, relation: str) -> tuple[tuple[str, ...], ...]:
        """The groups of one of RELATIONS."""
        return {"Pre-Depends": self.pre_depends, "Depends": self.depends,
                "Recommends": self.recommends}[relation]

    @classmethod
    def parse(cls, depends: str, pre_depends: str, recommends: str,
              provides: str) -> PackageRelations:
        """From the four dpkg-query fields as printed."""
        return cls(
            depends=parse_relation_field(depends),
            pre_depends=parse_relation_field(pre_depends),
            recommends=parse_relation_field(recommends),
            provides=tuple(g[0] for g in parse_relation_field(provides)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (groups as lists)."""
        return {
            "depends": [list(g) for g in self.depends],
            "pre_depends": [list(g) for g in self.pre_depends],
            "recommends": [list(g) for g in self.recommends],
            "provides": list(self.provides),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PackageRelations:
        """Inverse of `to_dict`."""
        return cls(
            depends=tuple(tuple(g) for g in data.get("depends", ())),
            pre_depends=tuple(tuple(g) for g in data.get("pre_depends", ())),
            recommends=tuple(tuple(g) for g in data.get("recommends", ())),
            provides=tuple(data.get("provides", ())),
        )


def parse_relation_field(text: str) -> tuple[tuple[str, ...], ...]:
    """Parse a relation field into groups of alternatives, names only.

    `libc6 (>= 2.34), debconf | debconf-2.0, perl:any` gives ((libc6,), (debconf,
    debconf-2.0), (perl,)): versions and architecture qualifiers are dropped.
    """
    groups = []
    for group in text.split(","):
        names = []
        for alternative in group.split("|"):
            name = alternative.strip().split(" ")[0].split("(")[0].split(":")[0]
            if name:
                names.append(name)
        if names:
            groups.append(tuple(names))
    return tuple(groups)


def parse_extended_states(text: str) -> frozenset[str]:
    """Packages apt marked as automatically installed, from /var/lib/apt/extended_states.

    The file holds deb822 stanzas (`Package:`, `Architecture:`, `Auto-Installed: 1`); a
    package it does not list as auto-installed counts as manually installed.
    """
    auto: set[str] = set()
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key.strip().lower()] = value.strip()
        if fields.get("auto-installed") == "1" and fields.get("package"):
            auto.add(fields["package"])
    return frozenset(auto)


@dataclass(frozen=True)
class PackageRecords:
    """What PACKAGES_SCRIPT reports (see Snapshot for the fields)."""

    versions: dict[str, str]
    relations: dict[str, PackageRelations]
    auto_installed: frozenset[str] | None


def parse_packages(output: str) -> dict[str, str]:
    """Parse PACKAGES_SCRIPT output into package → version (see parse_package_records)."""
    return parse_package_records(output).versions


def parse_package_records(output: str) -> PackageRecords:
    """Parse PACKAGES_SCRIPT output: versions, relations and apt's auto marks.

    Packages dpkg only remembers (removed with config files left, or never installed)
    are left out; a half-installed or otherwise broken one keeps its state in brackets
    so that it shows up as a difference. Output recorded before relations were kept has
    four fields a line and no extended_states section: relations stay empty, marks None.

    Raises:
        SnapshotError: A line does not have four or eight fields.
    """
    listing, sep, states = output.partition("@@extended_states\n")
    packages: dict[str, str] = {}
    relations: dict[str, PackageRelations] = {}
    for line in listing.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (4, 8):
            raise SnapshotError("unexpected dpkg-query output", details=line)
        status, name, arch, version = fields[:4]
        if len(status) < 2 or status[1] in ("n", "c"):
            continue
        if status.strip() != "ii":
            version = f"{version} [{status.strip()}]"
        # Multi-arch duplicates (libc6:amd64 and libc6:i386) must not overwrite each other.
        key = f"{name}:{arch}" if name in packages else name
        packages[key] = version
        if len(fields) == 8:
            relations[key] = PackageRelations.parse(*fields[4:])
    auto = parse_extended_states(states) if sep else None
    return PackageRecords(versions=packages, relations=relations, auto_installed=auto)
