"""Ansible's python, lent: one toolchain image per distribution release, made from its own packages.

A build container needs a python with `apt_pkg` for Ansible's modules. Instead
of installing python3 and python3-apt into every layer and purging them again,
rolebake makes, once per release and rolebake version, a toolchain image
holding that release's python3 and python3-apt relocated under one folder
(scripts/make-python-toolchain.sh), and lends it to build containers read-only,
the way the Chef toolchain is lent (base.lend_volume). Nothing of it can reach
a layer: the volume is mounted on /mnt itself, a folder every Debian image
has, because the engine makes the mount point of a volume in the layer when
Ansible copies a file in (the archive API mounts the container's volumes on
its filesystem, below any tmpfs), and one that exists already leaves nothing.

`apt_pkg` links against the release's libapt-pkg, so the toolchain only runs on
its own release (Ansible Container's conductor had the same rule). When the
parent image is of another release than a named toolchain, or has no apt, the
provisioner falls back to the apt bootstrap, with a one-line notice.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake import __version__, aptcache
from rolebake.engine import ROLE_LABEL, Engine, ImageInfo
from rolebake.errors import BuildFailed, InputError
from rolebake.events import EventSink, LogEvent
from rolebake.locks import exclusive
from rolebake.provision.base import SCRATCH, lend_volume
from rolebake.release import RELEASE_LABEL, Release
from rolebake.rootfs import cache_dir
from rolebake.scripts import script

TOOLCHAIN_ENV = "ROLEBAKE_PYTHON_TOOLCHAIN"  # unset: made per release | none | an image
VOLUME = SCRATCH  # what the toolchain image declares, and where it is lent
PREFIX = f"{VOLUME}/rolebake-python"
FORMAT = 2  # how the image is laid out; part of the recipe
INTERPRETER = f"{PREFIX}/bin/python3"
# rolebake's systemctl (scripts/systemctl.py) in a folder of its own: on PATH for
# Ansible's modules, after the image's folders, without the lent python3 beside it.
SYSTEMCTL_DIR = f"{PREFIX}/systemd"
SYSTEMCTL = f"{SYSTEMCTL_DIR}/systemctl"
_SYSTEMCTL_FILES = {"systemctl": "systemctl.py", "systemd_units.py": "systemd_units.py"}
REPOSITORY = "rolebake-toolchain/python"
KIND_LABEL = "rolebake.toolchain"
RECIPE_LABEL = "rolebake.toolchain.recipe"
PACKAGES_LABEL = "rolebake.toolchain.packages"


@dataclass(frozen=True)
class Runtime:
    """How Ansible will get its python in one layer's build container."""

    release: Release | None
    toolchain: str | None = None  # the image (ref or id) to lend; None: apt bootstrap
    notice: str | None = None  # why the apt bootstrap, when it was not asked for

    @property
    def key(self) -> str:
        """The cache-key input: which runtime, for which release, made by which recipe."""
        if self.toolchain is None:
            return "apt bootstrap"
        assert self.release is not None
        return f"python toolchain {self.release.key} ({recipe()})"


def recipe() -> str:
    """What decides a toolchain's making: rolebake's version, the maker script, the layout."""
    hashed = hashlib.sha256(script("make-python-toolchain.sh").encode())
    for source in _SYSTEMCTL_FILES.values():
        hashed.update(b"\0" + script(source).encode())
    return f"{__version__}+maker.{hashed.hexdigest()[:12]}+format.{FORMAT}"


def add_systemctl(tarball: Path) -> None:
    """Put rolebake's systemctl into a toolchain's tarball, run by the lent python.

    It is lent with the python, read-only, and so never reaches a layer.
    """
    with tarfile.open(tarball, "a") as tar:
        folder = tarfile.TarInfo(f".{SYSTEMCTL_DIR}")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, source in _SYSTEMCTL_FILES.items():
            text = script(source)
            if name == "systemctl":
                # -I: no PYTHON* variables, no user site; -B: the mount is read-only.
                text = f"#!{INTERPRETER} -IB\n" + text
            data = text.encode()
            info = tarfile.TarInfo(f".{SYSTEMCTL_DIR}/{name}")
            info.size, info.mode = len(data), 0o755 if name == "systemctl" else 0o644
            tar.addfile(info, io.BytesIO(data))


def tag_for(release: Release) -> str:
    """`rolebake-toolchain/python:debian-12-<recipe digest>`."""
    digest = hashlib.sha256(recipe().encode()).hexdigest()[:12]
    return f"{REPOSITORY}:{release.key}-{digest}"


def choose(engine: Engine, release: Release | None) -> Runtime:
    """Decide, before any container, whether a layer on `release` gets the lent python.

    Raises:
        InputError: $ROLEBAKE_PYTHON_TOOLCHAIN names an image that is not on the
            engine or is not a rolebake python toolchain.
    """
    setting = os.environ.get(TOOLCHAIN_ENV, "").strip()
    if setting.lower() in ("none", "off", "apt"):
        return Runtime(release)
    if release is None or not release.uses_apt:
        what = f"{release}" if release else "an image without /etc/os-release"
        return Runtime(release, notice=f"no lent python for {what} (the toolchain is made "
                                       "from Debian-family packages): python3 bootstrapped")
    if not setting:
        return Runtime(release, toolchain=tag_for(release))
    info = engine.image(setting)
    if info is None or info.labels.get(KIND_LABEL) != "python":
        raise InputError(f"{TOOLCHAIN_ENV}={setting}: " + (
            "no such image on the engine" if info is None
            else "not a rolebake python toolchain image"),
            hint="unset it to let rolebake make one per release, or set it to `none`")
    made_for = Release.from_label(info.labels.get(RELEASE_LABEL))
    if made_for is None or made_for.key != release.key:
        return Runtime(release, notice=f"the python toolchain {setting} is for {made_for}, the "
                                       f"parent image is {release}: python3 bootstrapped")
    return Runtime(release, toolchain=info.id)


def lent_mount(engine: Engine, release: Release | None,
               labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The mount lending `release`'s python to a container, when its toolchain exists.

    For containers rolebake runs commands in besides the build's (verification):
    never makes a toolchain, and None whenever the build would not lend one.
    """
    try:
        runtime = choose(engine, release)
    except InputError:
        return None
    if runtime.toolchain is None:
        return None
    toolchain = engine.image(runtime.toolchain)
    if toolchain is None:
        return None
    return lend_volume(engine, toolchain.id, volume=VOLUME, at=VOLUME, kind="python",
                       build_labels=labels)


def ensure(engine: Engine, runtime: Runtime, parent: ImageInfo, events: EventSink,
           layer: str) -> ImageInfo:
    """The toolchain image `runtime` names, made from `parent` first when it is not there.

    Raises:
        BuildFailed: the toolchain could not be made (no package mirror, no python3-apt).
    """
    assert runtime.toolchain is not None and runtime.release is not None
    found = engine.image(runtime.toolchain)
    if found is not None:
        return found
    release = runtime.release
    with exclusive(cache_dir() / "locks" / f"toolchain-{release.key}.lock",
                   on_busy=lambda: events(LogEvent(layer, "waiting for another build making "
                                                          "the python toolchain"))):
        found = engine.image(runtime.toolchain)
        if found is not None:
            return found
        events(LogEvent(layer, f"making the python toolchain for {release} (once per release "
                               "and rolebake version)"))
        return _make(engine, runtime.toolchain, release, parent, events, layer)


def _make(engine: Engine, ref: str, release: Release, parent: ImageInfo, events: EventSink,
          layer: str) -> ImageInfo:
    name = f"rolebake-toolchain-{release.key}-{uuid.uuid4().hex[:8]}"
    with aptcache.claim(engine, release) as apt, \
            tempfile.TemporaryDirectory(prefix="rolebake-toolchain-") as tmp:
        env = apt.env() if apt is not None else {}
        with engine.container(parent.id, name=name, labels={ROLE_LABEL: "build"},
                              mounts=apt.mounts() if apt is not None else ()) as container:
            prepared = engine.shell(container, script("prepare.sh"), env=env)
            made = engine.shell(container, script("make-python-toolchain.sh"), PREFIX, env=env)
            if prepared.rc != 0 or made.rc != 0:
                raise BuildFailed(
                    f"could not make the python toolchain for {release} from {parent.short_id}",
                    details=(prepared.tail() + "\n" + made.tail()).strip(),
                    hint=f"set {TOOLCHAIN_ENV}=none to install python3 with apt in each "
                         "layer instead")
            tarball = Path(tmp) / "toolchain.tar"
            engine.copy_out(container, "/tmp/rolebake-toolchain.tar", tarball)
            add_systemctl(tarball)
        lines = made.output.splitlines()
        packages = next((ln.split(":", 1)[1].strip() for ln in lines
                         if ln.startswith("packages:")), "")
        image = engine.import_rootfs(tarball, ref, [
            f"VOLUME {VOLUME}",
            f"LABEL {ROLE_LABEL}=toolchain",
            f"LABEL {KIND_LABEL}=python",
            f"LABEL {RELEASE_LABEL}={release.label}",
            f"LABEL {RECIPE_LABEL}={recipe()}",
            f'LABEL {PACKAGES_LABEL}="{packages}"',
        ])
    size = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("size:")), "")
    events(LogEvent(layer, f"python toolchain {ref} is {image.short_id} ({packages}; {size})"))
    return image

