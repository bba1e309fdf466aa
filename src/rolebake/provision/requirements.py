"""External roles and collections pinned in `requirements.yml`, installed into a project cache.

A team's repository pins the roles and collections it does not keep itself
in `requirements.yml` at its root (or `roles/requirements.yml` and
`collections/requirements.yml`). As the first step of a build (never in
`plan`), rolebake installs them into `.rolebake/requirements/<key>/`, where
the key is a digest of the files and of what each source resolves to now (a
git ref's commit, a tarball's or a folder's bytes): the same pins are
installed once, a moved pin is a new folder. Ansible's roles and collections
paths take that folder for builds and parity, and the layers that use an
installed role or collection key on its content (`ansible_inputs`).

`plan` runs nothing: it reads the files (`declared`) and keys on the last
install made for exactly these files (`installed`, from a record written at
install time); when there is none it says the requirements are not
installed yet.

Sources are URLs or paths, never options (DESIGN.md invariant 7): a source
that starts with `-` once its scheme prefix is taken off is refused at its
line; git gets `--` before every URL, runs in an empty folder of its own (an
empty URL never means the current checkout's remote) and only over the
usual transports. Every source is checked before anything is installed: a
git URL with `git ls-remote`, a tarball or a folder by its path. A source
that cannot be reached is an InputError naming the requirement, before any
container. A requirement given by a Galaxy name only is left to
ansible-galaxy with a short timeout; when Galaxy cannot be reached that too
is an InputError.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.spec import Project
from rolebake.yamlfile import YamlList, YamlMap, load_yaml

FILES = ("requirements.yml", "roles/requirements.yml", "collections/requirements.yml")
CACHE = "requirements"  # .rolebake/requirements/<key>/
MANIFEST = "installed.json"
RECORD = "last-install.json"  # .rolebake/requirements/: which key the files were installed as
EVENT_LAYER = "requirements"  # the name progress lines about requirements go under
GIT_TIMEOUT_S = 30
TARBALL = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
# ansible-galaxy records when it installed a role: not content, and never keyed.
VOLATILE = frozenset({"meta/.galaxy_install_info"})
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_ROLE_KEYS = frozenset({"src", "name", "version", "scm"})
_COLLECTION_KEYS = frozenset({"name", "version", "source", "type", "signatures"})


@dataclass(frozen=True)
class Requirement:
    """One pinned role or collection, as the requirements file gives it."""

    kind: str  # role | collection
    name: str  # the role's folder; a collection's name or its source
    src: str  # URL, path or Galaxy name as written
    version: str  # as pinned ("" when not)
    source: str  # git | tarball | dir | url | galaxy
    path: Path  # the requirements file
    line: int
    resolved: str = ""  # what the source is now: a commit, a digest of the bytes

    @property
    def label(self) -> str:
        """How messages name it: `role web_base` or `collection ns.name`."""
        return f"{self.kind} {shown(self.name)}"


@dataclass(frozen=True)
class Installed:
    """One installed role or collection: its version and a digest of its whole tree."""

    kind: str
    name: str
    version: str
    digest: str
    source: str = ""

    @property
    def tool(self) -> str:
        """Its name among a layer's key inputs (tools)."""
        return f"requirement {self.kind} {self.name}"

    @property
    def value(self) -> str:
        """Its value among a layer's key inputs: version and content."""
        return f"{self.version or 'unversioned'} content:{self.digest[:24]}"


@dataclass(frozen=True)
class Requirements:
    """The project's requirements files, their key and where they are installed."""

    files: tuple[Path, ...]
    entries: tuple[Requirement, ...]
    key: str
    folder: Path  # .rolebake/requirements/<key>

    @property
    def roles_dir(self) -> Path:
        """Where the roles are installed (the last entry of Ansible's roles path)."""
        return self.folder / "roles"

    @property
    def collections_dir(self) -> Path:
        """Where the collections are installed (first on Ansible's collections path)."""
        return self.folder / "collections"

    @property
    def installed(self) -> bool:
        """Tell whether this key's folder is complete (its manifest is written last)."""
        return (self.folder / MANIFEST).is_file()

    def manifest(self) -> dict[str, Installed]:
        """Each installed role or collection by its folder relative to `folder`."""
        try:
            data = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {rel: Installed(**entry) for rel, entry in data.items()}

    def owner(self, path: Path) -> str | None:
        """The manifest entry (`roles/x`, `collections/ansible_collections/ns/n`) of a path."""
        try:
            parts = Path(os.path.normpath(path)).relative_to(self.folder).parts
        except ValueError:
            return None
        if parts[:1] == ("roles",) and len(parts) >= 2:
            return "/".join(parts[:2])
        if parts[:2] == ("collections", "ansible_collections") and len(parts) >= 4:
            return "/".join(parts[:4])
        return "/".join(parts)


@dataclass(frozen=True)
class Declared:
    """The project's requirements files as written: parsed and checked, nothing resolved."""

    files: tuple[Path, ...]
    entries: tuple[Requirement, ...]
    content: str  # digest of the files

    def names(self, kind: str = "role") -> frozenset[str]:
        """The names the files give roles (or collections) of `kind`."""
        return frozenset(e.name for e in self.entries if e.kind == kind)


_DECLARED: dict[tuple[str, str], Declared] = {}
_RESOLVED: dict[tuple[str, str], Requirements | None] = {}


def declared(project: Project) -> Declared | None:
    """The project's requirements files, parsed and checked; None without one. Runs nothing.

    Raises:
        InputError: a file that is not a requirements file, or an entry rolebake
            cannot install (an option for a source among them); file and line.
    """
    files = tuple(project.root / name for name in FILES if (project.root / name).is_file())
    if not files:
        return None
    content = hashlib.sha256()
    for path in files:
        content.update(project.relative(path).encode() + b"\0" + path.read_bytes() + b"\0")
    memo = (str(project.root), content.hexdigest())
    if memo not in _DECLARED:
        entries = tuple(entry for path in files for entry in parse(path))
        _DECLARED[memo] = Declared(files, entries, content.hexdigest())
    return _DECLARED[memo]


def read_requirements(project: Project) -> Requirements | None:
    """The project's requirements with their key; None when it has no requirements file.

    Sources are resolved (a git ref to its commit, with `git ls-remote`) once
    per process and content: only the build's install step calls this.

    Raises:
        InputError: a file that is not a requirements file, an entry rolebake
            cannot install, or a source that cannot be reached; file and line.
    """
    found = declared(project)
    if found is None:
        return None
    memo = (str(project.root), found.content)
    if memo not in _RESOLVED:
        entries = tuple(_resolve(project, entry) for entry in found.entries)
        _RESOLVED[memo] = _keyed(project, found.files, entries, found.content)
    return _RESOLVED[memo]


def installed(project: Project) -> Requirements | None:
    """The last install made for the project's requirements files as they are, else None.

    Nothing is run: the record the install step wrote (`record_install`) names
    the key the same files were installed as. Files changed since, or never
    installed: None (`plan` says so; the build installs them first).
    """
    found = declared(project)
    if found is None:
        return None
    try:
        record = json.loads((project.state_dir / CACHE / RECORD).read_text(encoding="utf-8"))
        key = str(record[found.content])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        return None
    done = Requirements(files=found.files, entries=found.entries, key=key,
                        folder=project.state_dir / CACHE / key)
    return done if done.installed else None


def pending_roles(project: Project) -> dict[str, str]:
    """Roles the requirements files give that are not installed yet, {name: pinned version}."""
    found = declared(project)
    if found is None or installed(project) is not None:
        return {}
    return {e.name: e.version for e in found.entries if e.kind == "role"}


def record_install(project: Project, found: Requirements, content: str) -> None:
    """Note that the files with digest `content` are installed as `found.key` (for `plan`)."""
    from rolebake.state import write_private

    path = project.private_dir(CACHE) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            record = {}
    except (OSError, ValueError):
        record = {}
    record[content] = found.key
    write_private(path, json.dumps(dict(list(record.items())[-20:]), indent=1))


# Parsing ----------------------------------------------------------------------------------


def parse(path: Path) -> list[Requirement]:
    """The entries of one requirements file, each checked for what rolebake can install.

    Raises:
        InputError: not a list or a mapping of `roles:`/`collections:`, an
            entry without a source, an unknown key; at its line.
    """
    data = load_yaml(path)
    if data is None:
        return []
    if isinstance(data, list):
        sections: dict[str, Any] = {"roles": data}
        lines = {"roles": 1}
    elif isinstance(data, dict):
        unknown = sorted(str(k) for k in data if k not in ("roles", "collections"))
        if unknown:
            raise InputError(f"unknown key {unknown[0]!r}; a requirements file has `roles:` "
                             "and `collections:`", path=path, line=_line(data, unknown[0]))
        sections = dict(data)
        lines = {key: _line(data, key) for key in data}
    else:
        raise InputError("a requirements file is a list of roles or a mapping with `roles:` "
                         "and `collections:`", path=path, line=1)
    found: list[Requirement] = []
    for kind, key in (("role", "roles"), ("collection", "collections")):
        items = sections.get(key) or []
        if not isinstance(items, list):
            raise InputError(f"`{key}:` must be a list", path=path, line=lines.get(key))
        for index, item in enumerate(items):
            line = items.line_of(index) if isinstance(items, YamlList) else lines.get(key, 1)
            found.append((_role if kind == "role" else _collection)(item, path, line))
    return found


def _role(item: Any, path: Path, line: int) -> Requirement:
    if isinstance(item, dict):
        if "include" in item:
            raise InputError("`include:` of another requirements file is not supported; list "
                             "the roles here", path=path, line=line)
        unknown = sorted(str(k) for k in item if k not in _ROLE_KEYS)
        if unknown:
            raise InputError(f"unknown key {unknown[0]!r} in a role requirement (known: "
                             f"{', '.join(sorted(_ROLE_KEYS))})", path=path, line=line)
        if not item.get("src") and not item.get("name"):
            raise InputError("a role requirement needs `src:` (or a Galaxy `name:`)",
                             path=path, line=line)
    elif not isinstance(item, str) or not item.strip():
        raise InputError("a role requirement is a name, a URL or a mapping with `src:`",
                         path=path, line=line)
    parsed = _role_fields(item)
    src = str(parsed.get("src") or parsed.get("name") or "")
    version = str(parsed.get("version") or "")
    _not_an_option(src, "src", path, line)
    _not_an_option(version, "version", path, line)
    _not_an_option(str(parsed.get("name") or ""), "name", path, line)
    scm = parsed.get("scm")
    explicit = item.get("name") if isinstance(item, dict) else None
    if scm == "git" or src.startswith("git+"):
        source = "git"
    elif scm:
        raise InputError(f"scm {scm!r} is not supported; rolebake installs git, a tarball or "
                         "a folder", path=path, line=line)
    elif src.startswith(("http://", "https://")):
        source = "url"
    elif src.endswith(TARBALL):
        source = "tarball"
    elif src.startswith(("/", "./", "../", "file://")) or "/" in src:
        source = "dir"
    else:
        source = "galaxy"
    name = str(explicit or parsed.get("name") or src)
    if source in ("tarball", "dir") and not explicit:
        name = _stem(src)
    if not name or "/" in name or name in (".", ".."):
        raise InputError(f"cannot tell the role's name from {src!r}; give `name:`",
                         path=path, line=line)
    return Requirement("role", name, src, version, source, path, line)


def _collection(item: Any, path: Path, line: int) -> Requirement:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InputError("a collection requirement is a name or a mapping with `name:`",
                         path=path, line=line)
    unknown = sorted(str(k) for k in item if k not in _COLLECTION_KEYS)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in a collection requirement (known: "
                         f"{', '.join(sorted(_COLLECTION_KEYS))})", path=path, line=line)
    name = str(item["name"])
    kind = str(item.get("type") or "")
    version = str(item.get("version") or "")
    _not_an_option(name, "name", path, line)
    _not_an_option(version, "version", path, line)
    _not_an_option(str(item.get("source") or ""), "source", path, line)
    if kind == "git" or name.startswith("git+"):
        source = "git"
    elif kind in ("file", "dir", "url", "galaxy"):
        source = {"file": "tarball"}.get(kind, kind)
    elif kind:
        raise InputError(f"collection type {kind!r} is not supported (git, file, dir, url, "
                         "galaxy)", path=path, line=line)
    elif name.startswith(("http://", "https://")):
        source = "url"
    elif name.endswith(TARBALL):
        source = "tarball"
    elif name.startswith(("/", "./", "../")):
        source = "dir"
    else:
        source = "galaxy"
    if source == "galaxy" and item.get("source"):
        source = "galaxy server"
    return Requirement("collection", name, name, version, source, path, line)


def _not_an_option(text: str, key: str, path: Path, line: int) -> None:
    """Refuse a value that a program would read as an option (DESIGN.md invariant 7).

    Looked at once its scheme prefix (`git+`, `scheme://`, `git@`, `user@`) is
    off, as git sees it: `git+--upload-pack=CMD` is an option to git.
    """
    rest = text.strip()
    rest = rest.removeprefix("git+")
    if "://" in rest:
        rest = rest.split("://", 1)[1]
        host = rest.split("/", 1)[0]
        if "@" in host:
            rest = rest[rest.index("@") + 1:]
    elif "@" in rest.split(":", 1)[0]:
        rest = rest.split("@", 1)[1]  # git@host:team/role.git
    if text.strip().startswith("-") or rest.startswith("-"):
        raise InputError(f"`{key}:` {shown(text)!r} looks like a command-line option; a "
                         "requirement's source is a URL, a path or a Galaxy name",
                         path=path, line=line)


def _role_fields(item: str | dict[str, Any]) -> dict[str, Any]:
    """src, scm, version and name the way Ansible's RoleRequirement reads them.

    (Ansible's own parser is not imported: importing it takes over this
    process's stdout for Ansible's display.)
    """
    if isinstance(item, str):
        parts = [part.strip() for part in item.split(",")] + ["", ""]
        fields: dict[str, Any] = {"src": parts[0], "version": parts[1], "name": parts[2]}
    else:
        fields = {k: (str(v) if v is not None else "") for k, v in item.items()}
        fields["src"] = fields.get("src") or fields.get("name", "")
    src = fields["src"]
    if "+" in src and "://" in src and not fields.get("scm"):
        fields["scm"], _, fields["src"] = src.partition("+")
    if not fields.get("name"):
        src = fields["src"]
        fields["name"] = _stem(src) if "://" in src or "@" in src else src
    return fields


def _stem(src: str) -> str:
    base = src.rstrip("/").rsplit("/", 1)[-1]
    for suffix in TARBALL:
        base = base.removesuffix(suffix)
    return base.removesuffix(".git")


def _line(data: Any, key: Any) -> int:
    return data.line_of(key) if isinstance(data, YamlMap) else 1


# Resolving and keying ------------------------------------------------------------------------


def _resolve(project: Project, entry: Requirement) -> Requirement:
    """The entry with what its source is now; an unreachable source is an InputError."""
    if entry.source == "git":
        return _with(entry, _git_commit(entry))
    if entry.source in ("tarball", "dir"):
        local = local_path(project, entry)
        if not local.exists():
            raise InputError(f"requirement {entry.label}: {entry.src} does not exist",
                             path=entry.path, line=entry.line)
        if entry.source == "tarball" and not local.is_file():
            raise InputError(f"requirement {entry.label}: {entry.src} is not a file",
                             path=entry.path, line=entry.line)
        if entry.source == "dir" and not local.is_dir():
            raise InputError(f"requirement {entry.label}: {entry.src} is not a folder (a "
                             "tarball ends in .tar.gz or .tgz)", path=entry.path, line=entry.line)
        return _with(entry, tree_digest(local))
    return entry


def _with(entry: Requirement, resolved: str) -> Requirement:
    return Requirement(entry.kind, entry.name, entry.src, entry.version, entry.source,
                       entry.path, entry.line, resolved)


def local_path(project: Project, entry: Requirement) -> Path:
    """A tarball's or folder's path; a relative one is from the project root (galaxy's cwd)."""
    text = entry.src.removeprefix("file://")
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else project.root / path


def shown(text: str) -> str:
    """`text` with the credentials of any URL in it (`https://user:token@host`) hidden."""
    return _USERINFO.sub(r"\1***@", text)


def git_url(src: str) -> str:
    """The URL git is given: no `git+` prefix, no `,version` suffix."""
    url = src.removeprefix("git+")
    return url.split(",", 1)[0]


def git_env() -> dict[str, str]:
    """The environment git runs with: no prompts, batch ssh, the usual transports only.

    `ext::` (runs a command) and other transports a URL could name are off;
    GIT_CEILING_DIRECTORIES keeps git from finding a repository above its
    neutral working folder.
    """
    return {**base_env(), "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
            "GIT_CEILING_DIRECTORIES": tempfile.gettempdir(),
            "GIT_CONFIG_NOSYSTEM": "1"}


GIT_PROTOCOLS = "https:http:ssh:git:file"


def run_git(args: list[str], *, timeout: float = GIT_TIMEOUT_S,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `git ARGS` in `cwd`, or in an empty private folder of its own (never a checkout).

    The caller puts `--` before every URL in `args`.
    """
    with tempfile.TemporaryDirectory(prefix="rolebake-git-") as neutral:
        return subprocess.run(["git", "-c", "protocol.ext.allow=never", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env=git_env(), cwd=cwd or neutral, check=False)


def _git_commit(entry: Requirement) -> str:
    """The commit the pinned version names now, from `git ls-remote` (no clone)."""
    url = git_url(entry.src)
    if not url.strip():
        raise InputError(f"requirement {entry.label}: the git URL is empty",
                         path=entry.path, line=entry.line)
    try:
        done = run_git(["ls-remote", "--", url])
    except FileNotFoundError:
        raise InputError(f"requirement {entry.label}: git is not installed",
                         path=entry.path, line=entry.line) from None
    except subprocess.TimeoutExpired:
        raise InputError(f"requirement {entry.label}: {shown(url)} did not answer within "
                         f"{GIT_TIMEOUT_S}s", path=entry.path, line=entry.line) from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["git ls-remote failed"]
        why = next((ln for ln in lines if ln.startswith("fatal:")), lines[-1])
        why = why.removeprefix("fatal:").strip()
        raise InputError(f"requirement {entry.label}: cannot reach {shown(url)}: {shown(why)}",
                         path=entry.path, line=entry.line)
    refs: dict[str, str] = {}
    for line in done.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    version = entry.version or "HEAD"
    for ref in (f"refs/tags/{version}^{{}}", f"refs/tags/{version}", f"refs/heads/{version}",
                version):
        if ref in refs:
            return refs[ref]
    if _SHA.match(version):
        return version  # a commit: git checks it out as it is (hex only: never an option)
    raise InputError(f"requirement {entry.label}: {version!r} is not a tag or branch of "
                     f"{shown(url)}",
                     path=entry.path, line=entry.line)


def _keyed(project: Project, files: tuple[Path, ...], entries: tuple[Requirement, ...],
           content: str) -> Requirements:
    from ansible.release import __version__ as core

    digest = hashlib.sha256(json.dumps({
        "files": content, "ansible-core": core,
        "resolved": [[e.kind, e.name, e.resolved] for e in entries],
    }, sort_keys=True).encode()).hexdigest()[:32]
    folder = project.state_dir / CACHE / digest
    return Requirements(files=files, entries=entries, key=digest, folder=folder)


def tree_digest(root: Path) -> str:
    """sha256 over every file below `root`: relative path, mode and bytes (links as text)."""
    digest = hashlib.sha256()
    if root.is_file():
        with root.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel in VOLATILE:
                continue
            digest.update(rel.encode() + b"\0")
            if path.is_symlink():
                digest.update(b"link\0" + os.readlink(path).encode() + b"\0")
                continue
            digest.update(f"{path.stat().st_mode & 0o7777:o}\0".encode())
            with path.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


def used(found: Requirements, owners: Mapping[str, None]) -> dict[str, str]:
    """The key inputs (tools) of the installed roles and collections a layer uses."""
    manifest = found.manifest()
    return {entry.tool: entry.value for rel, entry in manifest.items() if rel in owners}


def base_env() -> dict[str, str]:
    """The few host variables git and ansible-galaxy get (where programs and home are)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "http_proxy",
            "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    return env
