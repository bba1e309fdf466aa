"""Reproducible layers: the committed image rewritten so the same inputs give the same id.

`docker commit` stamps the image with the time of the commit, the build
container's id and hostname, and a layer whose files carry the build's clock.
After the commit step, `normalise_image` rewrites the new (top) layer and the
config, and loads the result back:

- the layer: entries sorted by name, hard links pointing at the first name of
  their group in that order, every time clamped to SOURCE_DATE_EPOCH (moby
  already leaves atime and ctime out of layer tars), owners numeric with empty
  names, only xattrs kept as PAX records, and the per-build noise (`NOISE`:
  dpkg and apt logs, ldconfig's aux-cache, dpkg's and debconf's `-old` files,
  apt's binary caches) dropped, so that the parent's copy shows through, and
  the machine id a package's postinst made at random emptied (`EMPTIED`);
- the config: `created` and the layer's history entry at the epoch, no
  container id, hostname or engine version, no build id label, the new
  layer's diff id last.

The archive loaded holds the new layer, the config and a manifest naming every
layer: the engine's loader (moby 20.10 `tarexport.Load`) looks each chain id
up first and reads a layer file only when it lacks that chain, so the parent
layers are never sent again. The image id is the digest of the config bytes
written here, so it is known before the load, and checked after it.

Podman's compatible API loads differently: layers there are not normalised
(the build says so).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fnmatch
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from rolebake.engine import BUILD_ID_LABEL, Engine
from rolebake.errors import BuildFailed, InputError

# Written during a build, never the same twice, and read by nothing the image runs.
NOISE = (
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/*",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/cache/apt/*.bin",
)
# Random per install, kept as empty files (what Debian's own images ship: systemd
# makes an id when a system boots with an empty one; a container never needs one).
EMPTIED = ("etc/machine-id", "var/lib/dbus/machine-id")
CREATED_LABEL = "org.opencontainers.image.created"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Normalised:
    """What normalising one layer did."""

    image_id: str
    diff_id: str
    dropped: tuple[str, ...] = ()
    seconds: float = 0.0
    existed: bool = False  # an image of that id was there already (an earlier build's)


@dataclass
class Saved:
    """The parts of a `docker save` archive normalising needs (the top layer on disk)."""

    config: bytes = b""
    manifest: list[dict[str, Any]] = field(default_factory=list)
    top_path: str = ""  # the top layer's path inside the archive
    top_file: Path | None = None


def source_date_epoch(root: Path, given: str | None = None,
                      environ: Mapping[str, str] | None = None) -> int:
    """The epoch layers are clamped to: given, else $SOURCE_DATE_EPOCH, else HEAD's commit time.

    A project outside git (or git missing) gets 0, 1970-01-01: still the same
    for every build, which is what matters for the image id.

    Raises:
        InputError: the given value or the environment's is not a whole number of seconds.
    """
    env = os.environ if environ is None else environ
    for where, value in (("--source-date-epoch", given),
                         ("SOURCE_DATE_EPOCH", env.get("SOURCE_DATE_EPOCH"))):
        if value is None or value == "":
            continue
        if not value.strip().isdigit():
            raise InputError(f"{where}: {value!r} is not a whole number of seconds since 1970")
        return int(value.strip())
    try:
        out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%ct", "HEAD"],
                             capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    text = out.stdout.strip()
    return int(text) if out.returncode == 0 and text.isdigit() else 0


def iso(epoch: int) -> str:
    """The epoch as the RFC 3339 time image configs hold."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_noise(name: str) -> bool:
    """Whether a layer entry is per-build noise (`NOISE`), by its path without a leading /."""
    path = name.lstrip("./").lstrip("/")
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in NOISE)


# One layer entry: its header and, for a regular file, how to open its data.
Entry = tuple[tarfile.TarInfo, Callable[[], BinaryIO] | None]
WHITEOUT = ".wh."


def normalise_layer(source: BinaryIO, dest: BinaryIO, epoch: int) -> tuple[str, list[str]]:
    """Write the normalised form of the layer tar `source` (seekable) to `dest`.

    Returns:
        The new layer's diff id (`sha256:` of the tar written) and the noise dropped
        (or emptied: `EMPTIED`).
    """
    with tarfile.open(fileobj=source, mode="r:") as tar:
        def opener(member: tarfile.TarInfo) -> Callable[[], BinaryIO]:
            return lambda: _extracted(tar, member)
        return normalise_entries(((m, opener(m)) for m in tar.getmembers()), dest, epoch)


def normalise_entries(entries: Iterable[Entry], dest: BinaryIO,
                      epoch: int) -> tuple[str, list[str]]:
    """Write the normalised layer tar of `entries` (a tar's, or a layer folder's) to `dest`.

    Returns:
        The new layer's diff id and the noise dropped (or emptied: `EMPTIED`).
    """
    dropped: list[str] = []
    members: dict[str, Entry] = {}
    for member, data in entries:
        if is_noise(member.name):
            dropped.append("/" + member.name)
            continue
        members[member.name] = (member, data)  # a later entry of the same name wins, as on apply
    first = _link_groups({name: member for name, (member, _) in members.items()})
    hashing = _Hashing(dest)
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8") as out:
        for name in sorted(members):
            member, data = members[name]
            linked = member.islnk() and member.linkname in members
            if linked:
                member, data = members[member.linkname]
            head = _header(name, member, epoch)
            canonical = first.get(name, name)
            if name in EMPTIED and member.isreg() and member.size:
                dropped.append(f"/{name} (emptied)")
                head.type, head.size = tarfile.REGTYPE, 0
                out.addfile(head)
            elif canonical != name:
                head.type, head.linkname, head.size = tarfile.LNKTYPE, canonical, 0
                out.addfile(head)
            elif (member.isreg() or linked) and data is not None:
                head.type = tarfile.REGTYPE
                with data() as stream:
                    out.addfile(head, stream)
            else:
                out.addfile(head)
    return "sha256:" + hashing.digest.hexdigest(), dropped


def folder_entries(folder: Path) -> Iterator[Entry]:
    """The entries of an overlay2 layer folder, as the engine's own tar of it has them.

    What moby's overlay2 `Diff` writes: names relative to the folder, children in
    name order; whiteouts (character devices 0:0) as empty `.wh.<name>` files and
    an opaque folder (`trusted.overlay.opaque=y`) as a `.wh..wh..opq` file in it;
    hard links to the first name seen; only `security.capability` as an xattr;
    sockets left out; times to the second.

    Raises:
        UnknownOverlay: the folder holds what a layer the engine applied never does
            (overlay redirects or metacopy): the caller reads the layer through `save`.
    """
    seen: dict[tuple[int, int], str] = {}

    def walk(path: Path, prefix: str) -> Iterator[Entry]:
        with os.scandir(path) as scan:
            children = sorted(scan, key=lambda e: e.name)
        for child in children:
            name = prefix + child.name
            st = child.stat(follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode):
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                yield _whiteout(prefix + WHITEOUT + child.name), None
                continue
            head = tarfile.TarInfo(name)
            head.mode = stat.S_IMODE(st.st_mode)
            head.uid, head.gid, head.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
            capability = _xattr(child.path, "security.capability")
            if capability is not None:
                head.pax_headers = {"SCHILY.xattr.security.capability":
                                    capability.decode("utf-8", "surrogateescape")}
            if stat.S_ISDIR(st.st_mode):
                head.type = tarfile.DIRTYPE
                yield head, None
                overlay = [x for x in os.listxattr(child.path, follow_symlinks=False)
                           if x.startswith("trusted.overlay.")]
                if any(x != "trusted.overlay.opaque" for x in overlay):
                    raise UnknownOverlay(f"{name}: {', '.join(overlay)}")
                if _xattr(child.path, "trusted.overlay.opaque") == b"y":
                    yield _whiteout(f"{name}/{WHITEOUT}{WHITEOUT}.opq"), None
                yield from walk(Path(child.path), name + "/")
            elif stat.S_ISLNK(st.st_mode):
                head.type, head.linkname = tarfile.SYMTYPE, os.readlink(child.path)
                yield head, None
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    head.type, head.linkname = tarfile.LNKTYPE, seen[key]
                    yield head, None
                    continue
                if st.st_nlink > 1:
                    seen[key] = name
                head.type, head.size = tarfile.REGTYPE, st.st_size
                yield head, _opener(child.path)
            else:
                head.type = (tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else
                             tarfile.BLKTYPE if stat.S_ISBLK(st.st_mode) else tarfile.FIFOTYPE)
                if head.type != tarfile.FIFOTYPE:
                    head.devmajor, head.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                yield head, None

    yield from walk(folder, "")


class UnknownOverlay(Exception):
    """A layer folder holds overlay metadata a tar cannot carry."""


def _whiteout(name: str) -> tarfile.TarInfo:
    head = tarfile.TarInfo(name)
    head.type, head.mode = tarfile.REGTYPE, 0o600
    return head


def _opener(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


def _extracted(tar: tarfile.TarFile, member: tarfile.TarInfo) -> BinaryIO:
    stream = tar.extractfile(member)
    assert stream is not None
    return stream  # type: ignore[return-value]


def _link_groups(members: Mapping[str, tarfile.TarInfo]) -> dict[str, str]:
    """{name: the name that holds the data} for every hard link group, first in sorted order.

    Sorting may put a link before the file it names; the first name of the group
    then carries the data and the others link to it.
    """
    groups: dict[str, list[str]] = {}
    for name, member in members.items():
        if member.islnk() and member.linkname in members:
            groups.setdefault(member.linkname, [member.linkname]).append(name)
    first: dict[str, str] = {}
    for names in groups.values():
        head = min(names)
        first.update(dict.fromkeys(names, head))
    return first


def _header(name: str, member: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    head = tarfile.TarInfo(name)
    if name.rpartition("/")[2].startswith(WHITEOUT):
        # A whiteout is a marker: how the engine made it (a delete's time and mode
        # through one diff, 0600 and the parent's owner through another) is noise.
        head.type, head.mode = tarfile.REGTYPE, 0o600
        return head
    head.type = member.type
    head.mode = member.mode
    head.uid, head.gid = member.uid, member.gid
    head.uname = head.gname = ""  # numeric owners only: names depend on the host that made it
    head.mtime = min(int(member.mtime), epoch)
    head.size = member.size if member.isreg() else 0
    head.linkname = member.linkname
    head.devmajor, head.devminor = member.devmajor, member.devminor
    head.pax_headers = {k: v for k, v in sorted(member.pax_headers.items())
                        if k.startswith("SCHILY.xattr.")}
    return head


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what goes through it."""

    def __init__(self, dest: BinaryIO) -> None:
        super().__init__()
        self.dest = dest
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.digest.update(chunk)
        self.dest.write(chunk)
        return len(chunk)


def read_save(stream: Iterable[bytes], workdir: Path) -> Saved:
    """Keep the config, the manifest and the top layer of a `docker save` stream.

    The top layer is the one whose legacy `json` (which comes before its
    `layer.tar` in the archive's sorted order) carries the image's config; the
    other layers stream past without being stored. The manifest (last) confirms it.
    """
    saved = Saved()
    top_dir = ""
    configs: dict[str, bytes] = {}
    with tarfile.open(fileobj=ChunkReader(iter(stream)), mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                continue
            folder, _, base = member.name.rpartition("/")
            if base == "json" and folder:
                legacy = json.loads(_read(tar, member))
                if "config" in legacy:
                    top_dir = folder
            elif base == "layer.tar" and folder and folder == top_dir:
                saved.top_path, saved.top_file = member.name, workdir / "top.tar"
                extracted = tar.extractfile(member)
                assert extracted is not None
                with saved.top_file.open("wb") as out:
                    while chunk := extracted.read(_CHUNK):
                        out.write(chunk)
            elif member.name == "manifest.json":
                saved.manifest = json.loads(_read(tar, member))
            elif not folder and base.endswith(".json"):
                configs[base] = _read(tar, member)
    if len(saved.manifest) != 1:
        raise BuildFailed("the engine saved an archive without one image manifest")
    saved.config = configs.get(str(saved.manifest[0].get("Config")), b"")
    layers = saved.manifest[0].get("Layers") or []
    if not saved.config or not layers or layers[-1] != saved.top_path:
        raise BuildFailed("could not find the new layer in the saved image",
                          hint="the engine's `save` layout is not the one rolebake knows")
    return saved


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    assert extracted is not None
    return extracted.read()


class ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (the engine's streamed save)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        """Always: it is read from."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from the chunks; 0 at their end."""
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


def stable_labels(labels: Mapping[str, str], epoch: int) -> dict[str, str]:
    """The labels without per-run values: no build id (provenance keeps it), created: the epoch."""
    stable = {k: v for k, v in labels.items() if k != BUILD_ID_LABEL}
    if CREATED_LABEL in stable:
        stable[CREATED_LABEL] = iso(epoch)
    return stable


def new_config(config: bytes, *, diff_id: str, epoch: int, created_by: str) -> bytes:
    """The normalised image config: fixed times, no per-run values, the new layer last."""
    body = json.loads(config)
    stamp = iso(epoch)
    body["created"] = stamp
    for key in ("container", "container_config", "docker_version"):
        body.pop(key, None)
    inner = body.get("config") or {}
    inner["Hostname"] = ""  # the build container's, as commit leaves it
    inner["Image"] = ""
    if inner.get("Labels"):
        inner["Labels"] = stable_labels(inner["Labels"], epoch)
    body["config"] = inner
    history = list(body.get("history") or [])
    entry = {"created": stamp, "created_by": created_by, "comment": "rolebake, normalised"}
    if history and not history[-1].get("empty_layer"):
        history[-1] = entry
    else:
        history.append(entry)
    body["history"] = history
    diff_ids = list(body["rootfs"]["diff_ids"])
    diff_ids[-1] = diff_id
    body["rootfs"]["diff_ids"] = diff_ids
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def normalise_image(engine: Engine, image_id: str, *, epoch: int, created_by: str,
                    scratch: Path) -> Normalised:
    """Rewrite the committed image `image_id` into its normalised form; returns the new id.

    The committed image is removed once the normalised one is loaded (it was
    never tagged). On any failure the committed image is left to the caller.

    Args:
        engine: the engine that holds the image.
        image_id: the image the commit step made.
        epoch: SOURCE_DATE_EPOCH.
        created_by: the history entry's text for the new layer.
        scratch: a folder for the temporary files (the top layer, twice).
    """
    started = time.monotonic()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="normalise-") as tmp:
        work = Path(tmp)
        top = top_layer(engine, image_id, work, epoch)
        config = new_config(top.config, diff_id=top.diff_id, epoch=epoch,
                            created_by=created_by)
        new_id = "sha256:" + hashlib.sha256(config).hexdigest()
        archive = work / "image.tar"
        write_archive(archive, config=config, layers=top.names, top=top.names[-1],
                      layer=top.layer)
        top.layer.unlink()
        existed = engine.image(new_id) is not None
        if not existed:
            engine.load(archive)
        if engine.image(new_id) is None:
            raise BuildFailed(f"the engine did not load the normalised image {new_id[:19]}")
    if new_id != image_id:
        with contextlib.suppress(Exception):  # untagged: `rolebake clean` finds it otherwise
            engine.remove_image(image_id)
    return Normalised(new_id, top.diff_id, tuple(top.dropped), time.monotonic() - started,
                      existed)


@dataclass(frozen=True)
class TopLayer:
    """A committed image's top layer, normalised into a file, and what loading it needs."""

    config: bytes  # the committed image's config
    names: list[str]  # a name in the load archive for each layer; the last is `layer`'s
    layer: Path
    diff_id: str
    dropped: list[str]
    read_from: str  # "store": the engine's layer folder on this host; "save": `docker save`


def top_layer(engine: Engine, image_id: str, work: Path, epoch: int, *,
              store: bool = True) -> TopLayer:
    """Normalise the top layer of `image_id` into `work`/layer.tar.

    From the engine's store on this host when it has one (engine/store.py: no
    parent layer is read), else from `docker save` (every layer streams past).
    Both give the same bytes (tests/integration/test_normalise_store.py).
    """
    layer = work / "layer.tar"
    local = engine.local_layer(image_id) if store else None
    if local is not None:
        try:
            with layer.open("wb") as dest:
                diff_id, dropped = normalise_entries(folder_entries(local.folder), dest, epoch)
        except (UnknownOverlay, OSError):
            pass  # `save` below knows the layer as the engine writes it
        else:
            names = [f"{n}/layer.tar" for n in range(len(local.diff_ids))]
            return TopLayer(local.config, names, layer, diff_id, dropped, "store")
    saved = read_save(engine.save(image_id), work)
    assert saved.top_file is not None
    with saved.top_file.open("rb") as source, layer.open("wb") as dest:
        diff_id, dropped = normalise_layer(source, dest, epoch)
    saved.top_file.unlink()
    return TopLayer(saved.config, list(saved.manifest[0]["Layers"]), layer, diff_id, dropped,
                    "save")


def write_archive(path: Path, *, config: bytes, layers: list[str], top: str,
                  layer: Path) -> None:
    """A `docker load` archive: the config, the manifest and only the new layer's file."""
    name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": name, "RepoTags": None, "Layers": layers}]).encode()
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for entry, data in ((name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(entry)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(str(layer), arcname=top)
