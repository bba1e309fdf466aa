"""The lent runtime's pure parts: releases, the toolchain choice, apt cache slots, residue."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolebake import aptcache
from rolebake.builder import mount_residue
from rolebake.errors import InputError
from rolebake.provision import pytoolchain
from rolebake.release import RELEASE_LABEL, Release, release_of
from tests.unit.fakes import FakeEngine

BOOKWORM = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""
TRIXIE_TESTING = 'PRETTY_NAME="Debian GNU/Linux trixie/sid"\nNAME="Debian GNU/Linux"\nID=debian\n'
JAMMY = 'NAME="Ubuntu"\nVERSION_ID="22.04"\nVERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\n'
ALPINE = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n'


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CACHE", str(tmp_path / "cache"))  # the slot locks live there
    for name in ("ROLEBAKE_APT_CACHE", "ROLEBAKE_APT_LISTS_MAX_AGE",
                 "ROLEBAKE_PYTHON_TOOLCHAIN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("text", "key", "apt"), [
    (BOOKWORM, "debian-12", True),
    (TRIXIE_TESTING, "debian-trixie", True),
    (JAMMY, "ubuntu-22.04", True),
    (ALPINE, "alpine-3.20.0", False),
])
def test_release_parse(text: str, key: str, apt: bool) -> None:
    release = Release.parse(text)
    assert release is not None
    assert release.key == key and release.uses_apt is apt
    assert Release.from_label(release.label) == release


def test_release_without_id_is_unknown() -> None:
    assert Release.parse("NAME=nothing\n") is None
    assert Release.from_label(None) is None and Release.from_label("junk") is None


def test_release_of_reads_the_file_once_and_prefers_the_label() -> None:
    engine = FakeEngine()
    base = engine.add_image("base:1")
    engine.images_by_id[base.id].files["/etc/os-release"] = BOOKWORM.encode()
    assert release_of(engine, base) == Release.parse(BOOKWORM)
    assert release_of(engine, base) == Release.parse(BOOKWORM)
    assert len(engine.called("read_files")) == 1
    labelled = engine.add_image("child:1", labels={RELEASE_LABEL: "ubuntu:22.04:jammy:debian"})
    assert release_of(engine, labelled) == Release("ubuntu", "22.04", "jammy", ("debian",))
    assert len(engine.called("read_files")) == 1


def test_release_of_is_kept_on_disk_by_image_id(tmp_path: Path) -> None:
    # Another process, the same engine: the image is not read again (no container).
    for _ in range(2):
        engine = FakeEngine()
        base = engine.add_image("base:1")
        engine.images_by_id[base.id].files["/etc/os-release"] = BOOKWORM.encode()
        assert release_of(engine, base, tmp_path / "releases") == Release.parse(BOOKWORM)
    assert len(engine.called("read_files")) == 0
    none = FakeEngine()
    scratch = none.add_image("scratch:1")
    assert release_of(none, scratch, tmp_path / "other") is None
    assert (tmp_path / "other" / scratch.id.replace(":", "-")).read_text() == "none\n"


def test_toolchain_choice() -> None:
    engine = FakeEngine()
    bookworm = Release.parse(BOOKWORM)
    assert bookworm is not None
    made = pytoolchain.choose(engine, bookworm)
    assert made.toolchain == pytoolchain.tag_for(bookworm) and made.notice is None
    assert made.key.startswith("python toolchain debian-12 (")
    alpine = pytoolchain.choose(engine, Release.parse(ALPINE))
    assert alpine.toolchain is None and alpine.key == "apt bootstrap"
    assert "no lent python for alpine" in (alpine.notice or "")
    unknown = pytoolchain.choose(engine, None)
    assert unknown.toolchain is None and "without /etc/os-release" in (unknown.notice or "")


def test_named_toolchain_of_another_release_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    bookworm, jammy = Release.parse(BOOKWORM), Release.parse(JAMMY)
    assert bookworm is not None and jammy is not None
    tool = engine.add_image("my/toolchain:1", labels={pytoolchain.KIND_LABEL: "python",
                                                      RELEASE_LABEL: bookworm.label})
    monkeypatch.setenv("ROLEBAKE_PYTHON_TOOLCHAIN", "my/toolchain:1")
    same = pytoolchain.choose(engine, bookworm)
    assert same.toolchain == tool.id and same.notice is None
    other = pytoolchain.choose(engine, jammy)
    assert other.toolchain is None
    assert other.notice == ("the python toolchain my/toolchain:1 is for debian 12 (bookworm), "
                            "the parent image is ubuntu 22.04 (jammy): python3 bootstrapped")
    monkeypatch.setenv("ROLEBAKE_PYTHON_TOOLCHAIN", "none")
    asked = pytoolchain.choose(engine, bookworm)
    assert asked.toolchain is None and asked.notice is None
    monkeypatch.setenv("ROLEBAKE_PYTHON_TOOLCHAIN", "not/there:1")
    with pytest.raises(InputError, match="no such image on the engine"):
        pytoolchain.choose(engine, bookworm)


def test_apt_cache_slots_are_one_build_each(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    bookworm = Release.parse(BOOKWORM)
    with aptcache.claim(engine, bookworm) as first, aptcache.claim(engine, bookworm) as second:
        assert first is not None and second is not None
        assert (first.slot, second.slot) == (0, 1)
        assert first.lists_volume == "rolebake-apt-debian-12-0-lists"
        assert [m["target"] for m in first.mounts()] == [aptcache.LISTS_DIR,
                                                          aptcache.ARCHIVES_DIR]
        assert first.env() == {"ROLEBAKE_APT_CACHE": "1", "ROLEBAKE_APT_MAX_AGE": "3600"}
    with aptcache.claim(engine, bookworm) as again:
        assert again is not None and again.slot == 0  # freed when the first build ended
    assert engine.volumes_made["rolebake-apt-debian-12-1-archives"] == {
        aptcache.RELEASE_LABEL: "debian-12"}
    assert aptcache.archive_volumes(engine, "debian-12") == [
        "rolebake-apt-debian-12-0-archives", "rolebake-apt-debian-12-1-archives"]
    with aptcache.claim(engine, Release.parse(ALPINE)) as none:
        assert none is None
    monkeypatch.setenv("ROLEBAKE_APT_CACHE", "off")
    with aptcache.claim(engine, bookworm) as off:
        assert off is None


def test_apt_cache_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_APT_CACHE", "rbt-1234-apt")
    monkeypatch.setenv("ROLEBAKE_APT_LISTS_MAX_AGE", "60")
    with aptcache.claim(FakeEngine(), Release.parse(BOOKWORM)) as cache:
        assert cache is not None
        assert cache.archives_volume == "rbt-1234-apt-debian-12-0-archives"
        assert cache.env()["ROLEBAKE_APT_MAX_AGE"] == "60"
    monkeypatch.setenv("ROLEBAKE_APT_LISTS_MAX_AGE", "an hour")
    with pytest.raises(InputError, match="ROLEBAKE_APT_LISTS_MAX_AGE"):
        aptcache.max_age()
    monkeypatch.setenv("ROLEBAKE_APT_CACHE", "/no")
    with pytest.raises(InputError, match="ROLEBAKE_APT_CACHE"):
        aptcache.prefix()


def test_downloads_line() -> None:
    assert aptcache.parse_downloads("x\napt cache: 12 packages downloaded (4100000 bytes)\n") \
        == (12, 4100000)
    assert aptcache.parse_downloads("nothing") is None
    assert aptcache.human(0) == "0 B" and aptcache.human(644500) == "644.5 kB"


def test_mount_residue() -> None:
    changes = [("C", "/mnt"), ("A", "/mnt/rolebake-python"), ("C", "/etc"), ("A", "/etc/x"),
               ("A", "/var/lib/apt/lists"), ("C", "/var/lib/apt/lists")]
    assert mount_residue(changes, ("/mnt", "/var/lib/apt/lists")) == [
        "/mnt/rolebake-python", "/var/lib/apt/lists"]
    assert mount_residue([("C", "/mnt"), ("A", "/etc/x")], ("/mnt",)) == []


def test_clean_removes_toolchain_volumes_whose_image_is_gone() -> None:
    import datetime as dt

    from rolebake.cleanup import find_leftovers, remove_leftovers
    from rolebake.provision.base import lend_volume

    engine = FakeEngine()
    kept = engine.add_image("rolebake-toolchain/python:debian-12-a")
    gone = engine.add_image("rolebake-toolchain/python:debian-12-b")
    for image in (kept, gone):
        mount = lend_volume(engine, image.id, volume="/mnt", at="/mnt", kind="python")
        assert mount["read_only"] and mount["source"].endswith(image.id.split(":")[-1][:12])
    engine.remove_image(gone.id, force=True)
    found = [item for item in find_leftovers(engine, dt.timedelta(0))
             if item.kind == "toolchain volume"]
    assert [item.name for item in found] == [
        "rolebake-toolchain-python-" + gone.id.split(":")[-1][:12]]
    remove_leftovers(engine, found)
    assert list(engine.volumes_made) == [
        "rolebake-toolchain-python-" + kept.id.split(":")[-1][:12]]
