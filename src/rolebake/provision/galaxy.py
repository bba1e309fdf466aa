"""Installing requirements.yml with ansible-galaxy into `.rolebake/requirements/<key>/`.

What is pinned, and the key, come from `requirements`; this runs
ansible-galaxy (the one beside rolebake's python, as for ansible-playbook)
with a private ANSIBLE_HOME, a short Galaxy timeout and no prompts, into a
scratch folder that is renamed into place complete, manifest last. A git
source is cloned by rolebake itself (`--` before the URL, in a scratch
folder) and checked out at the commit that was keyed, not at its ref; the
clone is then installed as a folder, so ansible-galaxy never runs git.
It runs as the build's first step (`ensure`), never in `plan`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from rolebake.errors import InputError
from rolebake.events import EventSink, LogEvent, discard
from rolebake.provision.requirements import (
    CACHE,
    EVENT_LAYER,
    MANIFEST,
    Installed,
    Requirement,
    Requirements,
    base_env,
    git_url,
    local_path,
    read_requirements,
    record_install,
    run_git,
    shown,
    tree_digest,
)
from rolebake.spec import Project
from rolebake.state import scratch_dir, write_private

GALAXY_TIMEOUT_S = 10  # per request to a Galaxy server; there are no retries
INSTALL_TIMEOUT_S = 600


def ensure(project: Project, events: EventSink = discard) -> Requirements | None:
    """Install the project's requirements unless this key is installed already.

    Args:
        project: the project.
        events: progress ("installing requirements ...") goes here.

    Returns:
        The installed requirements, or None when the project has none.

    Raises:
        InputError: see `read_requirements`; or ansible-galaxy could not
            install one (a Galaxy name with no Galaxy reachable, a bad archive).
    """
    found = read_requirements(project)
    if found is None:
        return None
    if found.installed:
        record_install(project, found, _content_of(project))
        return found
    names = ", ".join(entry.label for entry in found.entries) or "nothing"
    events(LogEvent(EVENT_LAYER, f"installing requirements ({names}) ..."))
    base = project.private_dir(CACHE)
    with scratch_dir(project.private_dir("tmp"), "requirements-") as scratch:
        content = scratch / "content"
        _install(project, found, content, scratch)
        manifest = _manifest(found, content)
        write_private(content / MANIFEST, json.dumps(
            {rel: vars(entry) for rel, entry in manifest.items()}, indent=1, sort_keys=True))
        content.chmod(0o700)
        try:
            os.rename(content, found.folder)
        except OSError:
            # Another rolebake installed the same key meanwhile; theirs is as good.
            if not found.installed:
                raise
    for stale in base.iterdir():
        if stale.is_dir() and stale != found.folder and not (stale / MANIFEST).is_file():
            shutil.rmtree(stale, ignore_errors=True)
    record_install(project, found, _content_of(project))
    summary = ", ".join(f"{e.kind} {e.name} {e.version or ''}".rstrip()
                        for e in manifest.values())
    events(LogEvent(EVENT_LAYER, f"requirements installed: {summary or 'nothing'}"))
    return found



def _install(project: Project, found: Requirements, content: Path, scratch: Path) -> None:
    roles = [e for e in found.entries if e.kind == "role"]
    collections = [e for e in found.entries if e.kind == "collection"]
    (content / "roles").mkdir(parents=True)
    (content / "collections").mkdir()
    galaxy_roles = []
    for entry in roles:
        if entry.source in ("dir", "git"):
            # ansible-galaxy installs no role from a folder: copied as it is; a git
            # source is cloned here first, so that only rolebake ever runs git.
            source = _clone(entry, scratch) if entry.source == "git" else \
                local_path(project, entry)
            shutil.copytree(source, content / "roles" / entry.name,
                            symlinks=True, ignore=shutil.ignore_patterns(".git"))
        else:
            galaxy_roles.append(_role_line(project, entry))
    if galaxy_roles:
        listing = scratch / "roles.yml"
        write_private(listing, yaml.safe_dump(galaxy_roles, sort_keys=False))
        _galaxy(project, ["role", "install", "-r", str(listing), "-p",
                          str(content / "roles")], roles, scratch)
    if collections:
        listing = scratch / "collections.yml"
        write_private(listing, yaml.safe_dump(
            {"collections": [_collection_line(project, e, scratch) for e in collections]},
            sort_keys=False))
        offline = all(e.source not in ("galaxy", "galaxy server", "url") for e in collections)
        _galaxy(project, ["collection", "install", "-r", str(listing), "-p",
                          str(content / "collections"), *(["--offline"] if offline else [])],
                collections, scratch)


def _clone(entry: Requirement, scratch: Path) -> Path:
    """A clone of a git source at the commit that was keyed (not its ref), in `scratch`."""
    url, _, subdir = git_url(entry.src).partition("#")
    where = scratch / "git" / hashlib.sha256(f"{entry.kind}\0{entry.name}".encode()).hexdigest()
    where.parent.mkdir(exist_ok=True)
    cloned = run_git(["clone", "--quiet", "--no-checkout", "--", url, str(where)],
                     timeout=INSTALL_TIMEOUT_S)
    if cloned.returncode == 0:
        # The commit is hex (`requirements._git_commit`): never read as an option.
        cloned = run_git(["checkout", "--quiet", "--detach", entry.resolved, "--"], cwd=where)
    if cloned.returncode != 0:
        lines = cloned.stderr.strip().splitlines() or ["git failed"]
        raise InputError(f"requirement {entry.label}: cannot clone {shown(url)}: "
                         f"{shown(lines[-1].removeprefix('fatal:').strip())}",
                         path=entry.path, line=entry.line)
    folder = (where / subdir.strip("/")) if subdir else where
    if not folder.resolve().is_relative_to(where.resolve()) or not folder.is_dir():
        raise InputError(f"requirement {entry.label}: {subdir!r} is not a folder of "
                         f"{shown(url)}", path=entry.path, line=entry.line)
    return folder


def _content_of(project: Project) -> str:
    from rolebake.provision.requirements import declared

    found = declared(project)
    return found.content if found is not None else ""


def _role_line(project: Project, entry: Requirement) -> dict[str, Any]:
    line: dict[str, Any] = {"name": entry.name}
    if entry.source == "tarball":
        line["src"] = str(local_path(project, entry))
    else:
        line["src"] = entry.src
        if entry.version:
            line["version"] = entry.version
    return line


def _collection_line(project: Project, entry: Requirement, scratch: Path) -> dict[str, Any]:
    if entry.source == "git":
        # Cloned here (ansible-galaxy's own clone puts no `--` before the URL).
        return {"name": str(_clone(entry, scratch)), "type": "dir"}
    if entry.source in ("tarball", "dir"):
        return {"name": str(local_path(project, entry)),
                "type": "file" if entry.source == "tarball" else "dir"}
    line: dict[str, Any] = {"name": entry.name}
    if entry.version:
        line["version"] = entry.version
    return line


def _galaxy(project: Project, args: list[str], entries: list[Requirement],
            scratch: Path) -> None:
    argv = [_ansible_galaxy(), *args, "--timeout", str(GALAXY_TIMEOUT_S)]
    config = project.root / "ansible.cfg"
    if not config.is_file():
        config = scratch / "ansible.cfg"
        write_private(config, "# rolebake: the project has no ansible.cfg\n")
    env = {**base_env(), "ANSIBLE_HOME": str(scratch / "home"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_GALAXY_SERVER_TIMEOUT": str(GALAXY_TIMEOUT_S),
           "ANSIBLE_GALAXY_DISPLAY_PROGRESS": "False", "GIT_TERMINAL_PROMPT": "0",
           "ANSIBLE_CONFIG": str(config),
           "ANSIBLE_LOCAL_TEMP": str(scratch / "tmp")}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=project.root, env=env,
                              timeout=INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(f"ansible-galaxy did not finish within {INSTALL_TIMEOUT_S}s",
                         path=entries[0].path) from None
    if done.returncode == 0:
        return
    output = f"{done.stdout}\n{done.stderr}"
    errors = [ln.strip() for ln in output.splitlines()
              if ln.strip().startswith(("[ERROR]", "ERROR!", "[WARNING]: -"))]
    culprit = next((e for e in entries for ln in errors if e.name in ln), None)
    culprit = culprit or next((e for e in entries if e.source in ("galaxy", "galaxy server")),
                              None)
    why = (errors or [ln for ln in output.splitlines() if ln.strip()] or ["failed"])[0]
    why = re.sub(r"^(\[ERROR\]|ERROR!|\[WARNING\]):?\s*-?\s*", "", why)
    where = culprit or entries[0]
    hint = ""
    if where.source in ("galaxy", "galaxy server") and ("galaxy" in output.lower()):
        hint = ("no Galaxy server answered; pin a git URL, a tarball or a folder as `src:` "
                "(roles) or `type: git|file|dir` (collections)")
    raise InputError(f"requirement {where.label}: ansible-galaxy could not install it: "
                     f"{shown(why)}",
                     path=where.path, line=where.line, hint=hint)


def _ansible_galaxy() -> str:
    # The ansible-galaxy installed beside this python, as for ansible-playbook.
    beside = Path(sys.executable).parent / "ansible-galaxy"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-galaxy")
    if found is None:
        raise InputError("ansible-galaxy is not installed; requirements.yml cannot be installed",
                         hint="pip install ansible-core")
    return found


def _manifest(found: Requirements, content: Path) -> dict[str, Installed]:
    """Every installed role and collection, with the version pinned and its tree's digest."""
    pinned = {e.name: e for e in found.entries if e.kind == "role"}
    manifest: dict[str, Installed] = {}
    roles = content / "roles"
    for folder in sorted(p for p in roles.iterdir() if p.is_dir()):
        entry = pinned.get(folder.name)
        version = entry.version if entry is not None else _install_info(folder)
        source = entry.source if entry is not None else "dependency"
        if entry is not None and entry.source == "git":
            version = f"{entry.version or 'HEAD'} ({entry.resolved[:12]})"
        manifest[f"roles/{folder.name}"] = Installed("role", folder.name, version,
                                                     tree_digest(folder), source)
    base = content / "collections" / "ansible_collections"
    for folder in sorted(base.glob("*/*")) if base.is_dir() else []:
        if not folder.is_dir() or folder.name.endswith(".info"):
            continue
        name = f"{folder.parent.name}.{folder.name}"
        manifest[f"collections/ansible_collections/{folder.parent.name}/{folder.name}"] = \
            Installed("collection", name, _collection_version(folder), tree_digest(folder))
    return manifest


def _install_info(folder: Path) -> str:
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        data = yaml.safe_load((folder / "meta" / ".galaxy_install_info").read_text())
        return str(data.get("version") or "")
    return ""


def _collection_version(folder: Path) -> str:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        info = json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))
        return str(info["collection_info"]["version"])
    return ""
