"""`rolebake build --check-reproducible IMAGE`: build twice, list each file that differs.

Both builds rebuild every layer (`--no-cache`, without verification, so no
cache tag moves) into throwaway tags (`rolebake-check/<layer>:<run>-<token>`),
normalised to the same SOURCE_DATE_EPOCH. Where a layer's two image ids
differ, the two normalised layers are compared entry by entry (type, mode,
owner, time, link, content digest, xattrs), and each file that differs is named
with the Debian package that owns it: dpkg's `info/*.list` files read from the
image's layers (as `dpkg -S` would, without running anything), else the
maintainer script that writes it. A maintainer script that makes random keys
(ssl-cert's snakeoil certificate and key, OpenSSH's host keys) is named as such:
no normalisation makes those the same; remove them in the role, or make them
at start-up.

The throwaway tags are removed at the end (the images with them, unless
another tag names them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import re
import tarfile
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rolebake.builder import Builder, BuildOptions
from rolebake.engine import Engine
from rolebake.errors import RolebakeError
from rolebake.events import EventSink
from rolebake.normalise import ChunkReader, read_save
from rolebake.plan import BuildPlan
from rolebake.spec import Project

CHECK_REPOSITORY = "rolebake-check"
DPKG_INFO = "var/lib/dpkg/info/"
MAINTAINER_SCRIPTS = ("postinst", "preinst", "config", "triggers")
# Files that maintainer scripts make, which no package lists: (glob, package, what makes it).
GENERATED = (
    ("/etc/ssl/certs/ssl-cert-snakeoil.pem", "ssl-cert",
     "make-ssl-cert generate-default-snakeoil in ssl-cert's postinst"),
    ("/etc/ssl/private/ssl-cert-snakeoil.key", "ssl-cert",
     "make-ssl-cert generate-default-snakeoil in ssl-cert's postinst"),
    ("/etc/ssh/ssh_host_*", "openssh-server", "ssh-keygen -A in openssh-server's postinst"),
)
# What a maintainer script runs when it makes a random key or certificate.
RANDOM_KEYS = re.compile(r"make-ssl-cert|ssh-keygen|openssl\s+(req|genrsa|genpkey)")


class NotReproducible(RolebakeError):
    """Two builds of the same inputs differ (exit 5: differences found, as parity)."""

    exit_code = 5


@dataclass(frozen=True)
class FileDifference:
    """One layer entry that differs between the two builds."""

    path: str
    what: tuple[str, ...]  # which fields: content, mode, owner, mtime, link, type, only in …
    package: str | None = None
    made_by: str | None = None  # the maintainer script that writes it, when no list has it
    random_keys: bool = False  # that script makes random keys: never the same twice

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"path": self.path, "differs": list(self.what), "package": self.package,
                "made_by": self.made_by, "random_keys": self.random_keys}

    def line(self) -> str:
        """One line for people."""
        owner = f"  [{self.package}]" if self.package else "  [no package]"
        note = ""
        if self.random_keys:
            note = f"  random key: {self.made_by or 'made by a maintainer script'}"
        elif self.made_by:
            note = f"  made by {self.made_by}"
        return f"  {self.path}  ({', '.join(self.what)}){owner}{note}"


@dataclass
class LayerCheck:
    """One layer's two image ids and, when they differ, what differs."""

    layer: str
    first: str
    second: str
    files: list[FileDifference] = field(default_factory=list)
    config: list[str] = field(default_factory=list)  # config keys that differ

    @property
    def same(self) -> bool:
        """Whether both builds gave the same image id."""
        return self.first == self.second

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"layer": self.layer, "first": self.first, "second": self.second,
                "same": self.same, "files": [f.to_dict() for f in self.files],
                "config": list(self.config)}


@dataclass
class CheckReport:
    """Both builds, layer by layer."""

    epoch: int
    layers: list[LayerCheck] = field(default_factory=list)

    @property
    def reproducible(self) -> bool:
        """Whether every layer came out the same."""
        return all(layer.same for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json."""
        return {"source_date_epoch": self.epoch, "reproducible": self.reproducible,
                "layers": [layer.to_dict() for layer in self.layers]}

    def lines(self) -> list[str]:
        """The report for people."""
        out = [f"SOURCE_DATE_EPOCH={self.epoch}"]
        for layer in self.layers:
            if layer.same:
                out.append(f"{layer.layer}: reproducible ({layer.first.split(':')[-1][:12]})")
                continue
            out.append(f"{layer.layer}: differs ({layer.first.split(':')[-1][:12]} vs "
                       f"{layer.second.split(':')[-1][:12]}): {len(layer.files)} file(s)")
            out.extend(f.line() for f in layer.files)
            if layer.config:
                out.append(f"  image config: {', '.join(layer.config)}")
            if not layer.files and not layer.config:
                out.append("  (the layer is the same: it differs through its parent)")
        return out


def check(engine: Engine, project: Project, plan: BuildPlan, options: BuildOptions,
          events: EventSink, *, scratch: Path | None = None) -> CheckReport:
    """Build `plan` twice from scratch into throwaway tags and compare the images.

    Args:
        engine: the engine to build on.
        project: the project.
        plan: what `build` would build (every layer is rebuilt, twice).
        options: the build's options; its epoch (never None here) is kept,
            caching, verification, pushing and attesting are turned off.
        events: progress.
        scratch: a folder for the compared layers (the project's `tmp` by default).

    Raises:
        RolebakeError: either build failed (its own error).
    """
    assert options.source_date_epoch is not None
    token = uuid.uuid4().hex[:8]
    quiet = dataclasses.replace(options, no_cache=True, verify=False, push=False,
                                cache_repo=None, attest_dir=None, keep_failed=False)
    runs: list[dict[str, str]] = []
    made: list[str] = []
    try:
        for run in ("1", "2"):
            layers = tuple(dataclasses.replace(
                layer, tags=(f"{CHECK_REPOSITORY}/{layer.file_stem}:{run}-{token}",))
                for layer in plan.layers)
            made += [t for layer in layers for t in layer.tags]
            report = Builder(engine, project, events, quiet).build(
                dataclasses.replace(plan, layers=layers))
            if report.error is not None:
                raise report.error
            runs.append({lid: str(r.image_id) for lid, r in report.results.items()})
        result = CheckReport(epoch=options.source_date_epoch)
        where = scratch or project.private_dir("tmp")
        owners: Owners | None = None
        for layer in plan.layers:
            found = LayerCheck(layer.id, runs[0][layer.id], runs[1][layer.id])
            result.layers.append(found)
            if found.same:
                continue
            if owners is None:
                owners = Owners.of(engine.save(found.first))
            found.files, found.config = compare_images(engine, found.first, found.second,
                                                       owners, where)
        return result
    finally:
        for ref in reversed(made):  # children first: a parent with children stays otherwise
            with contextlib.suppress(Exception):
                engine.remove_image(ref)


def compare_images(engine: Engine, first: str, second: str, owners: Owners,
                   scratch: Path) -> tuple[list[FileDifference], list[str]]:
    """The files of the two images' top layers that differ, and the config keys that do."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="check-") as tmp:
        a_dir, b_dir = Path(tmp) / "a", Path(tmp) / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        a = read_save(engine.save(first), a_dir)
        b = read_save(engine.save(second), b_dir)
        assert a.top_file is not None and b.top_file is not None
        with a.top_file.open("rb") as fa, b.top_file.open("rb") as fb:
            paths = diff_layers(fa, fb)
    ca, cb = json.loads(a.config), json.loads(b.config)
    keys = []
    for key in sorted(set(ca) | set(cb)):
        if key == "rootfs":
            if ca[key]["diff_ids"][:-1] != cb[key]["diff_ids"][:-1]:
                keys.append("parent layers")
        elif ca.get(key) != cb.get(key):
            keys.append(key)
    return [owners.explain(path, what) for path, what in paths], keys


def entries(layer: IO[bytes]) -> dict[str, tuple[Any, ...]]:
    """{path: (type, mode, owner, mtime, link, content digest, xattrs)} of a layer tar."""
    found: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(fileobj=layer, mode="r|") as tar:
        for member in tar:
            digest = ""
            if member.isreg():
                data = tar.extractfile(member)
                assert data is not None
                digest = hashlib.file_digest(data, "sha256").hexdigest()  # type: ignore[arg-type]
            xattrs = tuple(sorted((k, v) for k, v in member.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.")))
            found["/" + member.name.lstrip("./")] = (
                member.type, member.mode, (member.uid, member.gid), int(member.mtime),
                member.linkname, digest, xattrs)
    return found


FIELDS = ("type", "mode", "owner", "mtime", "link", "content", "xattrs")


def diff_layers(first: IO[bytes], second: IO[bytes]) -> list[tuple[str, tuple[str, ...]]]:
    """Each path whose entry differs between two layer tars, with the fields that do."""
    a, b = entries(first), entries(second)
    out: list[tuple[str, tuple[str, ...]]] = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            out.append((path, ("only in the first build",)))
        elif path not in a:
            out.append((path, ("only in the second build",)))
        elif a[path] != b[path]:
            out.append((path, tuple(n for n, x, y in zip(FIELDS, a[path], b[path], strict=True)
                                    if x != y)))
    return out


@dataclass
class Owners:
    """Which package owns a path: dpkg's lists and maintainer scripts, read from the layers."""

    files: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)  # "<package>.<script>": its text

    @classmethod
    def of(cls, saved: Iterable[bytes]) -> Owners:
        """Read every layer of a `docker save` stream for dpkg's info files."""
        owners = cls()
        with tarfile.open(fileobj=ChunkReader(iter(saved)), mode="r|") as outer:
            for member in outer:
                if not member.name.endswith("/layer.tar"):
                    continue
                inner = outer.extractfile(member)
                assert inner is not None
                owners._read_layer(inner)
        return owners

    def _read_layer(self, layer: IO[bytes]) -> None:
        with tarfile.open(fileobj=layer, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if not (member.isreg() and name.startswith(DPKG_INFO)):
                    continue
                base = name[len(DPKG_INFO):]
                package, _, kind = base.rpartition(".")
                package = package.split(":")[0]  # libc6:amd64.list
                data = tar.extractfile(member)
                assert data is not None
                if kind == "list":
                    for line in data.read().decode("utf-8", "replace").splitlines():
                        if line and line != "/.":
                            self.files.setdefault(line, package)
                elif kind in MAINTAINER_SCRIPTS:
                    self.scripts[f"{package}.{kind}"] = data.read().decode("utf-8", "replace")

    def explain(self, path: str, what: tuple[str, ...]) -> FileDifference:
        """The difference at `path`, with its owner and, for a generated file, its maker."""
        package = self.files.get(path)
        made_by: str | None = None
        for pattern, owner, maker in GENERATED:
            if fnmatch.fnmatchcase(path, pattern):
                package, made_by = package or owner, maker
                return FileDifference(path, what, package, made_by, random_keys=True)
        if package is None:
            for name, text in self.scripts.items():
                if path in text:
                    package, made_by = name.rsplit(".", 1)[0], f"{name} (maintainer script)"
                    break
        random_keys = bool(made_by) and any(
            RANDOM_KEYS.search(text) for name, text in self.scripts.items()
            if package and name.startswith(package + "."))
        return FileDifference(path, what, package, made_by, random_keys)
