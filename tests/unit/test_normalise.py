"""Layer normalisation (normalise.py) and the reproducibility check's comparison."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from rolebake.errors import InputError
from rolebake.normalise import (
    CREATED_LABEL,
    UnknownOverlay,
    folder_entries,
    is_noise,
    iso,
    new_config,
    normalise_entries,
    normalise_layer,
    read_save,
    source_date_epoch,
    stable_labels,
    write_archive,
)
from rolebake.reproducible import Owners, diff_layers

EPOCH = 1_700_000_000


def layer(entries: list[tuple[str, str, bytes | str, int]], *, uname: str = "root",
          xattrs: dict[str, str] | None = None) -> bytes:
    """A layer tar: (name, kind: f|d|l(hard link)|s(symlink), data or link target, mtime)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, mtime in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = mtime, uname, uname
            info.uid = info.gid = 0
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind in "ls":
                info.type = tarfile.LNKTYPE if kind == "l" else tarfile.SYMTYPE
                info.linkname = str(data)
                tar.addfile(info)
            else:
                body = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(body), 0o644
                if xattrs:
                    info.pax_headers = dict(xattrs)
                info.pax_headers["atime"] = str(mtime)  # moby leaves these out; others may not
                tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def normalised(data: bytes, epoch: int = EPOCH) -> tuple[bytes, str, list[str]]:
    out = io.BytesIO()
    digest, dropped = normalise_layer(io.BytesIO(data), out, epoch)
    return out.getvalue(), digest, dropped


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_the_same_files_in_any_order_at_any_time_give_the_same_layer() -> None:
    one = layer([("etc/", "d", "", EPOCH + 50), ("etc/b.conf", "f", "b", EPOCH + 99),
                 ("etc/a.conf", "f", "a", EPOCH + 7)])
    two = layer([("etc/a.conf", "f", "a", EPOCH + 1000), ("etc/", "d", "", EPOCH + 3),
                 ("etc/b.conf", "f", "b", EPOCH + 1)], uname="builder")
    first, digest, _ = normalised(one)
    second, other, _ = normalised(two)
    assert first == second and digest == other
    assert digest == "sha256:" + hashlib.sha256(first).hexdigest()
    assert [m.name for m in members(first)] == ["etc", "etc/a.conf", "etc/b.conf"]
    assert {(m.mtime, m.uname, m.gname) for m in members(first)} == {(EPOCH, "", "")}
    assert all("atime" not in m.pax_headers for m in members(first))


def test_times_before_the_epoch_stay_and_a_different_file_differs() -> None:
    old = layer([("usr/bin/tool", "f", "v1", 1_000)])
    out, digest, _ = normalised(old)
    assert members(out)[0].mtime == 1_000  # a packaged file keeps its time
    assert normalised(layer([("usr/bin/tool", "f", "v2", 1_000)]))[1] != digest


def test_noise_is_dropped_and_xattrs_are_kept() -> None:
    data = layer([("var/log/dpkg.log", "f", "x", EPOCH), ("var/log/apt/history.log", "f", "x",
                  EPOCH), ("var/cache/ldconfig/aux-cache", "f", "x", EPOCH),
                  ("var/lib/dpkg/status-old", "f", "x", EPOCH),
                  ("var/cache/debconf/config.dat-old", "f", "x", EPOCH),
                  ("usr/bin/ping", "f", "elf", EPOCH)],
                 xattrs={"SCHILY.xattr.security.capability": "\x01\x00"})
    out, _, dropped = normalised(data)
    assert sorted(dropped) == ["/var/cache/debconf/config.dat-old",
                               "/var/cache/ldconfig/aux-cache", "/var/lib/dpkg/status-old",
                               "/var/log/apt/history.log", "/var/log/dpkg.log"]
    (kept,) = members(out)
    assert kept.name == "usr/bin/ping"
    assert kept.pax_headers == {"SCHILY.xattr.security.capability": "\x01\x00"}
    assert is_noise("var/log/dpkg.log") and not is_noise("var/log/nginx/access.log")


def test_a_hard_link_sorted_before_its_file_carries_the_data(tmp_path: Path) -> None:
    # moby wrote z/file first and a/link to it; sorted, a/link comes first.
    data = layer([("z/", "d", "", EPOCH), ("z/file", "f", "payload", EPOCH),
                  ("a/", "d", "", EPOCH), ("a/link", "l", "z/file", EPOCH)])
    out, _, _ = normalised(data)
    found = {m.name: m for m in members(out)}
    assert found["a/link"].isreg() and found["a/link"].size == len("payload")
    assert found["z/file"].islnk() and found["z/file"].linkname == "a/link"
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        tar.extractall(tmp_path, filter="tar")
    assert (tmp_path / "z/file").read_text() == "payload"
    assert (tmp_path / "z/file").stat().st_ino == (tmp_path / "a/link").stat().st_ino


def test_symlinks_keep_their_target() -> None:
    out, _, _ = normalised(layer([("etc/alt", "s", "/usr/bin/x", EPOCH + 5)]))
    (link,) = members(out)
    assert link.issym() and link.linkname == "/usr/bin/x" and link.mtime == EPOCH


def test_the_config_loses_every_per_run_value() -> None:
    committed = {
        "architecture": "amd64", "created": "2026-12-07T21:16:38.867787424Z",
        "container": "4f2c33b4bd23", "container_config": {"Hostname": "4f2c33b4bd23"},
        "docker_version": "20.10.24",
        "config": {"Hostname": "4f2c33b4bd23", "Image": "sha256:parent",
                   "Labels": {"rolebake.build-id": "b1", CREATED_LABEL: "2026-12-07T21:16:38Z",
                              "rolebake.layer": "web"}},
        "history": [{"created": "2020-01-01T00:00:00Z", "comment": "base"},
                    {"created": "2026-12-07T21:16:38Z", "created_by": "sleep infinity"}],
        "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:committed"]},
    }
    body = json.loads(new_config(json.dumps(committed).encode(), diff_id="sha256:new",
                                 epoch=EPOCH, created_by="rolebake web"))
    assert body["created"] == iso(EPOCH) == "2023-11-14T22:13:20Z"
    assert not {"container", "container_config", "docker_version"} & set(body)
    assert body["config"]["Hostname"] == "" and body["config"]["Image"] == ""
    assert body["config"]["Labels"] == {CREATED_LABEL: iso(EPOCH), "rolebake.layer": "web"}
    assert body["history"] == [committed["history"][0], {
        "created": iso(EPOCH), "created_by": "rolebake web", "comment": "rolebake, normalised"}]
    assert body["rootfs"]["diff_ids"] == ["sha256:aa", "sha256:new"]
    again = dict(committed, created="2027-01-01T00:00:00Z", container="other")
    assert new_config(json.dumps(again).encode(), diff_id="sha256:new", epoch=EPOCH,
                      created_by="rolebake web") == new_config(
        json.dumps(committed).encode(), diff_id="sha256:new", epoch=EPOCH,
        created_by="rolebake web")
    assert stable_labels({"rolebake.build-id": "x", "a": "b"}, EPOCH) == {"a": "b"}


def test_an_archive_written_for_load_reads_back_as_a_save(tmp_path: Path) -> None:
    top = tmp_path / "layer.tar"
    top.write_bytes(layer([("etc/x", "f", "x", EPOCH)]))
    config = json.dumps({"config": {}, "rootfs": {"diff_ids": ["sha256:a", "sha256:b"]}})
    archive = tmp_path / "image.tar"
    write_archive(archive, config=config.encode(), layers=["p/layer.tar", "t/layer.tar"],
                  top="t/layer.tar", layer=top)
    names = [m.name for m in members(archive.read_bytes())]
    assert "p/layer.tar" not in names and "t/layer.tar" in names  # the parent is not sent
    # A save: the layer folders' `json` first; the top one's carries the config.
    save = io.BytesIO()
    with tarfile.open(fileobj=save, mode="w") as tar:
        for name, data in (("p/json", b"{}"), ("p/layer.tar", layer([])),
                           ("t/json", b'{"config": {}}'), ("t/layer.tar", top.read_bytes()),
                           ("c.json", config.encode()),
                           ("manifest.json", json.dumps([{"Config": "c.json", "Layers": [
                               "p/layer.tar", "t/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    work = tmp_path / "work"
    work.mkdir()
    saved = read_save(iter([save.getvalue()[:700], save.getvalue()[700:]]), work)
    assert saved.top_path == "t/layer.tar" and saved.config == config.encode()
    assert saved.top_file is not None and saved.top_file.read_bytes() == top.read_bytes()


def test_the_epoch_comes_from_the_option_the_environment_or_git(tmp_path: Path) -> None:
    assert source_date_epoch(tmp_path, "42", environ={"SOURCE_DATE_EPOCH": "7"}) == 42
    assert source_date_epoch(tmp_path, None, environ={"SOURCE_DATE_EPOCH": "7"}) == 7
    assert source_date_epoch(tmp_path, None, environ={}) == 0  # outside git: 1970
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch(tmp_path, None, environ={"SOURCE_DATE_EPOCH": "yesterday"})
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one",
                    "--date", "@1600000000"], check=True,
                   env={"GIT_COMMITTER_DATE": "@1600000123", "PATH": "/usr/bin:/bin"})
    assert source_date_epoch(tmp_path, None, environ={}) == 1600000123


def test_the_check_names_what_differs_and_who_owns_it() -> None:
    first = layer([("etc/ssl/certs/ssl-cert-snakeoil.pem", "f", "key-1", EPOCH),
                   ("usr/share/doc/x", "f", "same", EPOCH), ("etc/motd", "f", "a", EPOCH),
                   ("etc/gone", "f", "", EPOCH)])
    second = layer([("etc/ssl/certs/ssl-cert-snakeoil.pem", "f", "key-2", EPOCH),
                    ("usr/share/doc/x", "f", "same", EPOCH), ("etc/motd", "f", "b", EPOCH)])
    found = diff_layers(io.BytesIO(normalised(first)[0]), io.BytesIO(normalised(second)[0]))
    assert found == [("/etc/gone", ("only in the first build",)), ("/etc/motd", ("content",)),
                     ("/etc/ssl/certs/ssl-cert-snakeoil.pem", ("content",))]
    owners = Owners()
    owners._read_layer(io.BytesIO(layer([
        ("var/lib/dpkg/info/base-files.list", "f", "/.\n/etc\n/etc/motd\n", EPOCH),
        ("var/lib/dpkg/info/ssl-cert.list", "f", "/.\n/usr/sbin/make-ssl-cert\n", EPOCH),
        ("var/lib/dpkg/info/ssl-cert.postinst", "f",
         "make-ssl-cert generate-default-snakeoil\n", EPOCH),
        ("var/lib/dpkg/info/foo:amd64.postinst", "f", "echo $RANDOM > /etc/gone\n", EPOCH)])))
    motd = owners.explain("/etc/motd", ("content",))
    assert (motd.package, motd.random_keys) == ("base-files", False)
    snake = owners.explain("/etc/ssl/certs/ssl-cert-snakeoil.pem", ("content",))
    assert snake.package == "ssl-cert" and snake.random_keys
    assert "random key" in snake.line() and "make-ssl-cert" in snake.line()
    gone = owners.explain("/etc/gone", ("only in the first build",))
    assert gone.package == "foo" and gone.made_by == "foo.postinst (maintainer script)"


def test_bad_epochs_and_flags_are_input_errors_before_any_container(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rolebake.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "web.yml").write_text("from: debian:bookworm\nroles: []\n")
    runner = CliRunner()
    bad = runner.invoke(main, ["--project", str(tmp_path), "build", "web",
                               "--source-date-epoch", "soon"])
    assert bad.exit_code == 2 and "--source-date-epoch: 'soon' is not a whole number" in (
        bad.output), bad.output
    both = runner.invoke(main, ["--project", str(tmp_path), "build", "web",
                                "--check-reproducible", "--push"])
    assert both.exit_code == 2 and "--check-reproducible" in both.output, both.output


def test_a_machine_id_made_at_install_is_emptied() -> None:
    one = layer([("etc/machine-id", "f", "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n", EPOCH + 9)])
    two = layer([("etc/machine-id", "f", "aaaabbbbccccddddeeeeffff00001111\n", EPOCH + 3)])
    first, digest, dropped = normalised(one)
    assert normalised(two)[1] == digest and dropped == ["/etc/machine-id (emptied)"]
    (entry,) = members(first)
    assert entry.isreg() and entry.size == 0 and entry.mode == 0o644


def test_whiteouts_are_the_same_whichever_diff_made_them() -> None:
    # The engine's native overlay diff writes 0600 whiteouts with the deleted file's
    # time; its naive diff writes mode 0 and the time of the diff.
    def whiteouts(mode: int, mtime: int, uid: int) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("etc/.wh.issue", "opt/app/.wh..wh..opq"):
                info = tarfile.TarInfo(name)
                info.mode, info.mtime, info.uid = mode, mtime, uid
                tar.addfile(info)
        return out.getvalue()

    native, native_id, _ = normalised(whiteouts(0o600, EPOCH - 500, 0))
    naive, naive_id, _ = normalised(whiteouts(0, EPOCH + 500, 33))
    assert native == naive and native_id == naive_id
    assert [(m.mode, m.mtime, m.uid) for m in members(native)] == [(0o600, 0, 0)] * 2


def test_a_layer_folder_reads_as_the_engine_tars_it(tmp_path: Path) -> None:
    folder = tmp_path / "diff"
    (folder / "etc" / "app").mkdir(parents=True)
    (folder / "etc" / "app" / "a.conf").write_text("a")
    os.link(folder / "etc" / "app" / "a.conf", folder / "etc" / "b.conf")
    (folder / "etc" / "link").symlink_to("app/a.conf")
    os.mknod(folder / "etc" / "gone", 0o600 | stat.S_IFCHR, 0)  # overlay's whiteout
    os.mkfifo(folder / "etc" / "fifo")
    for path in folder.rglob("*"):
        os.utime(path, (EPOCH + 9, EPOCH + 9), follow_symlinks=False)
    from_folder = io.BytesIO()
    folder_id, _ = normalise_entries(folder_entries(folder), from_folder, EPOCH)
    names = [m.name for m in members(from_folder.getvalue())]
    assert names == ["etc", "etc/.wh.gone", "etc/app", "etc/app/a.conf", "etc/b.conf",
                     "etc/fifo", "etc/link"]
    by_name = {m.name: m for m in members(from_folder.getvalue())}
    assert by_name["etc/b.conf"].islnk() and by_name["etc/b.conf"].linkname == "etc/app/a.conf"
    assert by_name["etc/fifo"].isfifo() and by_name["etc/link"].issym()
    assert by_name["etc/app/a.conf"].size == 1 and by_name["etc/app"].mtime == EPOCH
    # The same bytes as `docker save`'s tar of it: tests/integration/test_normalise_store.py.
    assert folder_id == "sha256:" + hashlib.sha256(from_folder.getvalue()).hexdigest()


def test_a_folder_with_overlay_redirects_is_left_to_save(tmp_path: Path) -> None:
    folder = tmp_path / "diff"
    (folder / "moved").mkdir(parents=True)
    try:
        os.setxattr(folder / "moved", "trusted.overlay.redirect", b"/old")
    except OSError as exc:
        pytest.skip(f"this filesystem takes no trusted xattrs: {exc}")
    with pytest.raises(UnknownOverlay, match=r"trusted\.overlay\.redirect"):
        normalise_entries(folder_entries(folder), io.BytesIO(), EPOCH)
