"""`rolebake init`: image specs proposed from an existing Ansible repository.

Reads the site playbook and the inventory the way a build does
(`provision.ansible_inventory`) and proposes one image per group a play
targets, each a host of that group (`groups: [web]`); when plays target
`all`, a base image applies those first and every group image is built
`from:` it, so it adds only its own plays. Each image gets a starting
testinfra suite; nothing is overwritten. The project is named in
`rolebake.yml` (after its folder, unless it is named already) and its
images are tagged `<project>/<image>:latest`, so two repositories with the
same groups do not share tags on one engine; `.rolebake/` goes into
`.gitignore`.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rolebake.errors import InputError
from rolebake.project_config import CONFIG_FILE
from rolebake.provision import ansible_inventory
from rolebake.spec import SPEC_NAME_RE, Project

PLAYBOOKS = ("site.yml", "playbooks/site.yml", "site.yaml", "playbooks/site.yaml",
             "playbook.yml", "main.yml")
DEFAULT_FROM = "rolebake/debian:bookworm"
_PLAIN_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Proposal:
    """One image spec `rolebake init` writes, with its starting suite."""

    name: str
    parent: str
    group: str  # `all` for the base image
    plays: tuple[str, ...]  # names of the plays it applies

    def spec_path(self, project: Project) -> Path:
        """images/<name>.yml."""
        return project.spec_path(self.name)

    def suite_path(self, project: Project) -> Path:
        """tests/images/<name>/test_<name>.py."""
        stem = self.name.replace("-", "_").replace(".", "_")
        return project.root / "tests" / "images" / self.name / f"test_{stem}.py"


def find_playbook(project: Project, given: Path | None) -> Path:
    """The site playbook: the one given, else the first of PLAYBOOKS in the project.

    Raises:
        InputError: none found, or one outside the project.
    """
    if given is not None:
        path = given if given.is_absolute() else project.root / given
        if not path.is_file():
            raise InputError("no such playbook", path=path)
        if not project.inside(path):
            raise InputError("the playbook is outside the project", path=path)
        return path
    for name in PLAYBOOKS:
        if (project.root / name).is_file():
            return project.root / name
    raise InputError(f"no site playbook found (looked for {', '.join(PLAYBOOKS)})",
                     path=project.root, hint="name it with --playbook PATH")


def propose(playbook: Path, base_from: str = DEFAULT_FROM) -> list[Proposal]:
    """One image per group a play targets, on a base image of the `all` plays when there are.

    Plays whose `hosts:` is a pattern rather than plain group names (`web:&prod`,
    `~re`, a template) give no image of their own; the images they match still
    apply them when built.
    """
    plays = ansible_inventory.plays(playbook)
    if not plays:
        raise InputError("the playbook has no plays", path=playbook)
    everyone = [p.name for p in plays if ansible_inventory.split_pattern(p.hosts) in (["all"],
                                                                                       ["*"])]
    groups: dict[str, list[str]] = {}
    for play in plays:
        for term in ansible_inventory.split_pattern(play.hosts) or []:
            if _PLAIN_GROUP.fullmatch(term) and term not in ("all", "ungrouped"):
                groups.setdefault(term, []).append(play.name)
    names = {group: _spec_name(group) for group in groups}
    proposals: list[Proposal] = []
    parent = base_from
    if everyone:
        base = "base" if "base" not in names.values() else "all"
        proposals.append(Proposal(base, base_from, "all", tuple(everyone)))
        parent = base
    for group, group_plays in groups.items():
        proposals.append(Proposal(names[group], parent, group, tuple(group_plays)))
    return proposals


def _spec_name(group: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-") or "group"
    if not SPEC_NAME_RE.fullmatch(name):
        name = f"group-{name}"[:100].rstrip("-")
    return name


def spec_text(project: Project, proposal: Proposal, playbook: Path,
              inventory: Path | None) -> str:
    """The YAML of one proposed spec, with what to check by hand as comments."""
    where = project.relative(playbook)
    lines = [f"# Written by `rolebake init` from {where}: an image as a host of "
             + ("no group but `all`." if proposal.group == "all"
                else f"group `{proposal.group}`."),
             "# Plays it applies: " + "; ".join(proposal.plays) + ".",
             f"from: {proposal.parent}",
             f"playbook: {where}",
             f"groups: [{proposal.group}]"]
    if inventory is not None:
        lines.append(f"inventory: {project.relative(inventory)}")
    if proposal.group != "all":
        lines += ["# Check by hand: the service's foreground command, its ports, and when",
                  "# it is ready for the tests, e.g.",
                  "# config:",
                  '#   cmd: ["nginx", "-g", "daemon off;"]',
                  "#   expose: [8080]",
                  "# ready: {port: 8080, timeout: 30}"]
    lines.append(f'tags: ["{project.name}/{proposal.name}:latest"]')
    return "\n".join(lines) + "\n"


def suite_text(proposal: Proposal) -> str:
    """A starting testinfra suite: true of any image; `scaffold-tests` writes real checks."""
    return f'''"""Image `{proposal.name}`: a starting suite written by `rolebake init`.

Replace it with checks of what the plays did: after the first build,
`rolebake scaffold-tests {proposal.name}` writes them from the task results.
"""


def test_image_has_an_os(host):
    assert host.file("/etc/os-release").exists
'''


def write(project: Project, proposals: list[Proposal], playbook: Path,
          inventory: Path | None) -> list[Path]:
    """Write every spec and suite; nothing at all when any of them exists or sits behind a link.

    Raises:
        InputError: a folder on the way that is a link out of the project, or a file
            that is a link (the first one named); files that exist (all named).
    """
    files: dict[Path, str] = {}
    for proposal in proposals:
        files[proposal.spec_path(project)] = spec_text(project, proposal, playbook, inventory)
        files[proposal.suite_path(project)] = suite_text(proposal)
    refuse_links(project, proposals)
    there = [project.relative(path) for path in files if path.exists() or path.is_symlink()]
    if there:
        raise InputError(f"not overwriting what exists: {', '.join(there)}",
                         hint="move them away, or write those specs by hand")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL and O_NOFOLLOW: a link (or file) put there since the checks is never written.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
    return list(files)


def refuse_links(project: Project, proposals: list[Proposal]) -> None:
    """Refuse, before anything is said or written, files to write behind a link.

    A file that is a link is refused; so is a folder on its way that links out
    of the project (`images -> /etc` would make init write anywhere the user
    can). A link inside the project (`tests -> qa/tests`) is written through.

    Raises:
        InputError: naming the first such link.
    """
    for proposal in proposals:
        _refuse_links(project, proposal.spec_path(project))
        _refuse_links(project, proposal.suite_path(project))


def _refuse_links(project: Project, path: Path) -> None:
    current = project.root
    for part in path.relative_to(project.root).parts:
        current = current / part
        if not current.is_symlink():
            continue
        target = os.readlink(current)
        if current == path:
            raise InputError(f"is a link (to {target}); rolebake init writes no file through "
                             "a link", path=current)
        if not project.inside(current) or not current.exists():
            where = "to nothing" if project.inside(current) else "out of the project"
            raise InputError(f"is a link {where} (to {target}); rolebake init writes nothing "
                             "through it", path=current)


def write_identity(project: Project) -> Path | None:
    """Name the project in rolebake.yml (as its folder is named), unless a file is there.

    Written, not left to be derived: a clone in a folder of another name (a CI
    checkout) then stays the same project, with the same tags and cache.

    Returns:
        The file written, or None when one was there.
    """
    path = project.root / CONFIG_FILE
    if path.exists() or path.is_symlink():
        return None
    text = ("# The project's name on a shared container engine: its default tags, cache\n"
            "# tags and build locks carry it (see docs/projects.md).\n"
            f"project: {project.name}\n")
    try:
        # As for the specs: a file or link put there meanwhile is never written through.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    return path


STATE_IGNORE = ".rolebake/"
_IGNORED = {".rolebake", ".rolebake/", "/.rolebake", "/.rolebake/", ".rolebake/*",
            "/.rolebake/*", ".rolebake/**", "/.rolebake/**"}


def ignore_state(project: Project) -> Path | None:
    """Add `.rolebake/` to the project's .gitignore (made if missing), unless it is there.

    rolebake's state (logs, scratch, the sensitive-value salt) must never be
    committed by a `git add -A`.

    Returns:
        The .gitignore changed, or None when it already ignored the folder or is a
        link (not written through).
    """
    path = project.root / ".gitignore"
    if path.is_symlink() or _git_ignores(project.root, ".rolebake/"):
        return None
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    if any(line.strip() in _IGNORED for line in text.splitlines()):
        return None
    added = ("\n" if text and not text.endswith("\n") else "") + (
        "# rolebake's logs, scratch and salt\n" + STATE_IGNORE + "\n")
    try:
        # Appended, never through a link (one put there since the check included).
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError:
        return None
    with os.fdopen(handle, "a", encoding="utf-8") as out:
        out.write(added)
    return path


def _git_ignores(root: Path, path: str) -> bool:
    """Whether git already ignores `path` (a parent's .gitignore, info/exclude, the global one)."""
    try:
        found = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--", path],
                               capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False  # no git: the project's own .gitignore is all there is to look at
    return found.returncode == 0


def check(project: Project, playbook: Path, given: Path | None,
          proposals: list[Proposal]) -> list[str]:
    """What the user should know about the inventory before building: notices, one a line.

    Raises:
        InputError: an inventory that cannot be read, or one given that is not there.
    """
    if given is not None and not given.exists():
        raise InputError("no such inventory", path=given)
    sources = ansible_inventory.inventory_sources(project, given, playbook)
    inventory = ansible_inventory.read_inventory(project, sources)
    path = inventory.path
    if path is None:
        return ["notice: no inventory found; the images join only the groups their specs "
                "name, and no group_vars beside an inventory apply"]
    lines = [f"inventory: {project.relative(path)}"]
    known = set(inventory.groups)
    for proposal in proposals:
        if proposal.group not in known:
            lines.append(f"notice: group {proposal.group!r} is not in the inventory; image "
                         f"{proposal.name!r} joins it all the same")
    targeted = {p.group for p in proposals}
    idle = sorted(set(inventory.groups) - targeted - {"all", "ungrouped"})
    if idle:
        lines.append(f"no play targets group(s) {', '.join(idle)}: no image for them")
    return lines
