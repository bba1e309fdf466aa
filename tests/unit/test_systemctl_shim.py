"""rolebake's lent systemctl, run here on unit files in a folder of the test's own.

The links `enable` writes are those real systemctl writes; aliases, masks and
drop-ins resolve as systemd resolves them; start/stop run real processes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from rolebake.provision import pytoolchain
from rolebake.scripts import script
from rolebake.scripts import systemctl as shim
from rolebake.scripts import systemd_units as units


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    etc = tmp_path / "etc/systemd/system"
    lib = tmp_path / "lib/systemd/system"
    etc.mkdir(parents=True)
    lib.mkdir(parents=True)
    monkeypatch.setattr(units, "SEARCH", (str(etc), str(lib)))
    monkeypatch.setattr(units, "CONFIG", str(etc))
    monkeypatch.setattr(units, "STATE", str(tmp_path / "state"))
    # Never this machine's own /run: the test's folder stands for it.
    monkeypatch.setattr(units, "TMPFILES", (str(tmp_path / "usr/lib/tmpfiles.d"),
                                            str(tmp_path / "etc/tmpfiles.d")))
    monkeypatch.setattr(units, "RUNTIME", (str(tmp_path / "run") + "/",))
    return tmp_path


def systemctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = shim.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


DB = """\
[Unit]
Description=a database
[Service]
ExecStart=/bin/sleep 300
[Install]
WantedBy=multi-user.target
Alias=db-alias.service
"""


def test_enable_writes_the_links_systemctl_writes(root: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (root / "lib/systemd/system/db.service").write_text(DB)
    rc, _, _ = systemctl(capsys, "is-enabled", "db")
    assert rc == 1
    assert systemctl(capsys, "enable", "db")[0] == 0
    wants = root / "etc/systemd/system/multi-user.target.wants/db.service"
    alias = root / "etc/systemd/system/db-alias.service"
    assert os.readlink(wants) == str(root / "lib/systemd/system/db.service")
    assert os.readlink(alias) == str(root / "lib/systemd/system/db.service")
    assert systemctl(capsys, "is-enabled", "db") == (0, "enabled\n", "")
    # The alias names the unit now, as on a server.
    assert systemctl(capsys, "is-enabled", "db-alias")[1] == "alias\n"
    assert "Id=db.service" in systemctl(capsys, "show", "db-alias")[1]
    assert systemctl(capsys, "disable", "db")[0] == 0
    assert not os.path.lexists(wants) and not os.path.lexists(alias)
    assert systemctl(capsys, "is-enabled", "db")[:2] == (1, "disabled\n")


def test_masks_overrides_and_drop_ins_resolve_as_in_systemd(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "lib/systemd/system/db.service").write_text(DB)
    # /etc/systemd/system overrides the package's unit; a drop-in resets ExecStart=.
    (root / "etc/systemd/system/db.service").write_text(DB.replace("a database", "local"))
    dropin = root / "etc/systemd/system/db.service.d"
    dropin.mkdir()
    (dropin / "override.conf").write_text("[Service]\nExecStart=\nExecStart=/bin/true x\n")
    unit = units.Unit("db")
    assert unit.path == str(root / "etc/systemd/system/db.service")
    assert unit.get("Unit", "Description") == "local"
    assert unit.all("Service", "ExecStart") == ["/bin/true x"]
    # As systemctl: a unit file of the admin's own is not masked over.
    assert "already exists" in systemctl(capsys, "mask", "db")[2]
    (root / "etc/systemd/system/db.service").unlink()
    assert systemctl(capsys, "mask", "db")[0] == 0
    _, out, _ = systemctl(capsys, "show", "db")
    assert "LoadState=masked" in out
    assert systemctl(capsys, "start", "db")[0] == 1
    assert systemctl(capsys, "is-enabled", "db")[1] == "masked\n"


def test_unknown_units_look_as_systemctl_shows_them(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = systemctl(capsys, "show", "nothing")
    assert rc == 0 and "LoadState=not-found" in out and "ActiveState=inactive" in out
    assert systemctl(capsys, "start", "nothing")[0] == 5
    assert systemctl(capsys, "daemon-reload") == (0, "", "")
    rc, _, err = systemctl(capsys, "isolate", "rescue.target")
    assert rc == 1 and units.NOT_SERVED in err


def test_a_simple_unit_starts_and_stops(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/systemd/system/sleeper.service").write_text(
        "[Service]\nEnvironment=SECONDS_TO_SLEEP=300\nExecStart=/bin/sleep ${SECONDS_TO_SLEEP}\n")
    assert systemctl(capsys, "start", "sleeper")[0] == 0
    try:
        assert systemctl(capsys, "is-active", "sleeper") == (0, "active\n", "")
        _, out, _ = systemctl(capsys, "show", "sleeper", "-p", "MainPID", "--value")
        pid = int(out)
        assert units.alive(pid)
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"/bin/sleep\x00300\x00"
    finally:
        assert systemctl(capsys, "stop", "sleeper")[0] == 0
    assert not units.alive(pid)
    assert systemctl(capsys, "is-active", "sleeper")[:2] == (3, "inactive\n")


def test_forking_and_oneshot_units(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pidfile = root / "forker.pid"
    (root / "etc/systemd/system/forker.service").write_text(
        f"[Service]\nType=forking\nPIDFile={pidfile}\n"
        f"ExecStart=/bin/sh -c 'sleep 300 & echo $! > {pidfile}'\n")
    marker = root / "once"
    (root / "etc/systemd/system/once.service").write_text(
        f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/touch {marker}\n")
    assert systemctl(capsys, "start", "forker", "once")[0] == 0
    pid = int(pidfile.read_text())
    assert units.alive(pid) and marker.exists()
    assert systemctl(capsys, "is-active", "forker", "once")[1] == "active\nactive\n"
    assert systemctl(capsys, "restart", "forker")[0] == 0
    assert not units.alive(pid)
    assert systemctl(capsys, "stop", "forker", "once")[0] == 0
    assert not units.alive(int(pidfile.read_text()))


def test_a_notify_unit_is_started_when_it_says_ready(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = root / "notifier.py"
    daemon.write_text(
        "import os, socket, time\n"
        "time.sleep(0.5)\n"
        "open(os.environ['READY_FILE'], 'w').close()\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(300)\n")
    ready = root / "ready"
    (root / "etc/systemd/system/notifier.service").write_text(
        f"[Service]\nType=notify\nEnvironment=READY_FILE={ready}\n"
        f"ExecStart={sys.executable} {daemon}\n")
    begun = time.monotonic()
    try:
        assert systemctl(capsys, "start", "notifier")[0] == 0
        assert ready.exists() and time.monotonic() - begun >= 0.5
    finally:
        systemctl(capsys, "stop", "notifier")


def test_a_failing_start_fails_with_the_units_output(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/systemd/system/broken.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo no config here; exit 3'\n")
    rc, _, err = systemctl(capsys, "start", "broken")
    assert rc == 1 and "no config here" in err
    assert systemctl(capsys, "is-active", "broken")[1] == "failed\n"


def test_the_toolchain_carries_it_and_its_recipe_keys_it(tmp_path: Path) -> None:
    import tarfile

    tarball = tmp_path / "toolchain.tar"
    with tarfile.open(tarball, "w"):
        pass
    pytoolchain.add_systemctl(tarball)
    with tarfile.open(tarball) as tar:
        entry = tar.getmember(f".{pytoolchain.SYSTEMCTL}")
        assert entry.mode == 0o755
        handle = tar.extractfile(entry)
        assert handle is not None
        assert handle.readline().decode().startswith(f"#!{pytoolchain.INTERPRETER} ")
        assert tar.getmember(f".{pytoolchain.SYSTEMCTL_DIR}/systemd_units.py")
    # prepare.sh looks for it there.
    assert pytoolchain.SYSTEMCTL in script("prepare.sh")


def test_it_is_last_on_the_modules_path_after_the_images_own() -> None:
    from rolebake.provision.ansible import CONTAINER_ENV, DEFAULT_PATH, container_env

    env = container_env({"Env": ["LANG=C.UTF-8", "PATH=/opt/app/bin:/usr/bin:/bin"]})
    assert env["PATH"] == f"/opt/app/bin:/usr/bin:/bin:{pytoolchain.SYSTEMCTL_DIR}"
    assert env["SYSTEMD_OFFLINE"] == CONTAINER_ENV["SYSTEMD_OFFLINE"]  # for a real systemctl
    assert container_env({})["PATH"] == f"{DEFAULT_PATH}:{pytoolchain.SYSTEMCTL_DIR}"
    # No python on PATH with it: the folder holds systemctl alone (and its module).
    assert os.path.dirname(pytoolchain.INTERPRETER) != pytoolchain.SYSTEMCTL_DIR


def test_a_start_makes_what_a_boot_makes_under_run(root: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # MariaDB's ExecStartPre= writes into /run/mysqld, which systemd-tmpfiles makes at boot.
    run = root / "run"
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d/db.conf").write_text(
        f"d {run}/db 0750 root root -\nd {run}/gone 0755 - - -\nd /var/lib/db 0755 - - -\n")
    (root / "etc/tmpfiles.d").mkdir(parents=True)
    (root / "etc/tmpfiles.d/db.conf").write_text(f"d {run}/mysqld 0700 - - -\n")  # overrides
    (root / "etc/systemd/system/db.service").write_text(
        f"[Service]\nType=oneshot\nExecStartPre=/bin/touch {run}/mysqld/started\n"
        "ExecStart=/bin/true\n")
    assert systemctl(capsys, "start", "db")[0] == 0
    assert (run / "mysqld/started").exists()
    assert (run / "mysqld").stat().st_mode & 0o777 == 0o700
    assert not (run / "db").exists() and not (run / "gone").exists()
