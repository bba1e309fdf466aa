"""Snapshot parsing from recorded output, and the path script run for real in a local shell."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from parity_recorded import RECORDED_PATHS, RecordedHost, recorded

from rolebake.errors import SnapshotError
from rolebake.parity import snapshot as snap
from rolebake.parity.snapshot import PathState, Service, Snapshot


def test_packages_from_recorded_output() -> None:
    container = snap.parse_packages(recorded("container", "packages"))
    vm = snap.parse_packages(recorded("vm", "packages"))
    assert len(container) == 88
    assert "dpkg" in container and "openssh-server" not in container
    assert vm["openssh-server"].startswith("1:9.2p1")
    # The VM started from the same rootfs: every base package is there, same version.
    assert {k: vm[k] for k in container} == container


def test_packages_states_and_multiarch() -> None:
    output = (
        "ii \tfoo\tamd64\t1.0\n"
        "rc \told\tamd64\t0.9\n"  # removed, config files left: not installed
        "un \tnever\tamd64\t\n"
        "iU \thalf\tall\t2.0\n"  # unpacked, not configured: must show up as different
        "ii \tlibc6\tamd64\t2.36\n"
        "ii \tlibc6\ti386\t2.36\n"
    )
    assert snap.parse_packages(output) == {
        "foo": "1.0",
        "half": "2.0 [iU]",
        "libc6": "2.36",
        "libc6:i386": "2.36",
    }


def test_packages_malformed_line_is_an_error() -> None:
    with pytest.raises(SnapshotError, match="dpkg-query") as err:
        snap.parse_packages("dpkg-query: error: something\n")
    assert "something" in err.value.details


def test_accounts_from_recorded_output() -> None:
    users, groups = snap.parse_accounts(recorded("vm", "accounts"))
    assert users["root"] == snap.User("root", 0, 0, "/root", "/bin/bash")
    assert users["sshd"].shell == "/usr/sbin/nologin"
    assert groups["root"].gid == 0 and groups["root"].members == ()
    c_users, c_groups = snap.parse_accounts(recorded("container", "accounts"))
    assert set(users) - set(c_users) == {"sshd", "messagebus", "systemd-network"}
    assert "systemd-journal" in set(groups) - set(c_groups)


def test_accounts_members_and_errors() -> None:
    _, groups = snap.parse_accounts("root:x:0:0:root:/root:/bin/sh\n@@groups\nadm:x:4:a,b\n")
    assert groups["adm"].members == ("a", "b")
    with pytest.raises(SnapshotError, match="no group section"):
        snap.parse_accounts("root:x:0:0:root:/root:/bin/sh\n")
    with pytest.raises(SnapshotError, match="passwd"):
        snap.parse_accounts("root:x:zero:0:root:/root:/bin/sh\n@@groups\n")


def test_services_from_recorded_vm_output() -> None:
    services = snap.parse_services(recorded("vm", "services"))
    assert services["ssh.service"] == Service(
        "ssh.service", ("multi-user.target.wants",), "openssh-server"
    )
    # Vendor wiring, seen under /lib and /usr/lib on merged /usr, counted once.
    journald = services["systemd-journald.service"]
    assert journald.enabled_by == ("static:sysinit.target.wants",)
    assert journald.package == "systemd"
    assert services["systemd-networkd.service"].package == "systemd"


def test_services_without_systemd_come_from_symlinks() -> None:
    services = snap.parse_services(recorded("container", "services"))
    assert services["apt-daily.timer"] == Service(
        "apt-daily.timer", ("timers.target.wants",), "apt"
    )
    assert services["hwclock.sh.sysv"] == Service("hwclock.sh.sysv", ("rcS.d",), "util-linux-extra")
    assert "ssh.service" not in services


def test_services_link_and_target_must_pair_up() -> None:
    with pytest.raises(SnapshotError, match="1 links but 0 targets"):
        snap.parse_services("L\t/etc/systemd/system/multi-user.target.wants/a.service\n")
    with pytest.raises(SnapshotError, match="unexpected"):
        snap.parse_services("garbage\n")


def test_service_owner_under_either_usr_spelling() -> None:
    output = (
        "L\t/etc/systemd/system/multi-user.target.wants/nginx.service\n"
        "T\t/usr/lib/systemd/system/nginx.service\n"
        "O\tnginx-common: /lib/systemd/system/nginx.service\n"
        "O\tdiversion by foo from: /lib/systemd/system/nginx.service\n"
    )
    assert snap.parse_services(output)["nginx.service"].package == "nginx-common"


def test_facts_and_running_services() -> None:
    vm = snap.parse_facts(recorded("vm", "facts"))
    assert vm.facts["init"] == "systemd" and vm.facts["hostname"] == "rolebake-vm"
    assert vm.running_services is not None and "ssh.service" in vm.running_services
    assert vm.failed_units == ()
    container = snap.parse_facts(recorded("container", "facts"))
    assert container.running_services is None and container.failed_units is None
    assert container.facts["os"] == vm.facts["os"] == "Debian GNU/Linux 12 (bookworm)"


def test_failed_units() -> None:
    facts = snap.parse_facts("kernel\t6.1\nrunning\tssh.service\nfailed\tnginx.service\n")
    assert facts.failed_units == ("nginx.service",)
    assert facts.running_services == ("ssh.service",)
    with pytest.raises(SnapshotError, match="facts"):
        snap.parse_facts("no tab here\n")


def test_paths_from_recorded_output() -> None:
    states = snap.parse_paths(recorded("vm", "paths"), RECORDED_PATHS)
    assert states["/bin"] == PathState("/bin", "link", "777", "root", "root", None, "usr/bin")
    assert states["/boot"].type == "directory" and states["/boot"].sha256 is None
    assert not states["/etc/nope"].exists
    assert states["/etc/ssh/sshd_config"].sha256 is not None
    assert len(states["/etc/ssh/sshd_config"].sha256 or "") == 64


def test_paths_missing_answer_is_an_error() -> None:
    with pytest.raises(SnapshotError, match="no state reported"):
        snap.parse_paths("0\tabsent\n", ["/a", "/b"])
    with pytest.raises(SnapshotError, match="unexpected path listing"):
        snap.parse_paths("7\tabsent\n", ["/a"])


def test_take_snapshot_round_trips_through_json(vm_snapshot: Snapshot) -> None:
    data = json.loads(json.dumps(vm_snapshot.to_dict()))
    assert Snapshot.from_dict(data) == vm_snapshot
    assert data["services"]["ssh.service"]["package"] == "openssh-server"


def test_take_snapshot_uses_five_commands() -> None:
    host = RecordedHost("vm")
    snap.take_snapshot(host, RECORDED_PATHS)
    assert len(host.commands) == 5


def test_take_snapshot_without_paths_skips_the_path_command() -> None:
    host = RecordedHost("container")
    snapshot = snap.take_snapshot(host)
    assert len(host.commands) == 4 and snapshot.paths == {}


def test_take_snapshot_reports_failing_command() -> None:
    with pytest.raises(SnapshotError, match="installed packages failed") as err:
        snap.take_snapshot(RecordedHost("container", fail="packages"))
    assert "dpkg-query: not found" in err.value.details


def test_take_snapshot_rejects_relative_paths() -> None:
    with pytest.raises(SnapshotError, match="absolute"):
        snap.take_snapshot(RecordedHost("vm"), ["etc/passwd"])


def test_from_dict_rejects_other_formats() -> None:
    with pytest.raises(SnapshotError, match="format"):
        Snapshot.from_dict({"format": 99})


class LocalShell:
    """Runs commands with the local /bin/sh, as testinfra's backends do remotely."""

    def run(self, command: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        done.rc = done.returncode  # type: ignore[attr-defined]
        return done


def test_path_script_for_real_with_awkward_names(tmp_path: Path) -> None:
    plain = tmp_path / "it's a file"
    plain.write_bytes(b"hello\n")
    plain.chmod(0o640)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret")
    secret.chmod(0o600)
    link = tmp_path / "link; rm -rf /"
    link.symlink_to("it's a file")
    paths = [str(plain), str(secret), str(link), str(tmp_path), str(tmp_path / "gone")]
    output = LocalShell().run(shlex.join(["sh", "-c", snap.PATHS_SCRIPT, "x", *paths])).stdout
    states = snap.parse_paths(output, paths)
    assert states[str(plain)].sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert states[str(plain)].mode == "640"
    if os.geteuid() == 0:
        assert states[str(secret)].sha256 == hashlib.sha256(b"s3cret").hexdigest()
    assert states[str(link)].type == "link"
    assert states[str(link)].link_target == "it's a file"
    assert states[str(tmp_path)].type == "directory"
    assert states[str(tmp_path / "gone")].type == "absent"
