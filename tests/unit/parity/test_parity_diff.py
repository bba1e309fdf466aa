"""Classification of container/VM differences and the table the CLI prints."""

from __future__ import annotations

import json
from dataclasses import replace

from rolebake.parity.diff import (
    Category,
    ParityItem,
    ParityReport,
    Status,
    diff_snapshots,
)
from rolebake.parity.snapshot import Group, PathState, Service, Snapshot, User
from rolebake.report.tables import parity_table as render_table


def _item(report: ParityReport, category: Category, key: str) -> ParityItem:
    matches = [i for i in report.items if i.category is category and i.key == key]
    assert len(matches) == 1, (category, key, matches)
    return matches[0]


def _base(**changes: object) -> Snapshot:
    snapshot = Snapshot(
        packages={"dpkg": "1.21.22", "nginx": "1.22.1-9"},
        users={"root": User("root", 0, 0, "/root", "/bin/bash")},
        groups={"root": Group("root", 0)},
        services={"nginx.service": Service("nginx.service", ("multi-user.target.wants",), "nginx")},
        paths={"/etc/nginx/nginx.conf": PathState("/etc/nginx/nginx.conf", "file", "644", "root",
                                                  "root", "ab" * 32)},
        facts={"kernel": "6.1.0-host", "hostname": "abc123", "os": "Debian 12", "init": "sh"},
        running_services=None,
    )  # fmt: skip
    return replace(snapshot, **changes)


def test_identical_snapshots_are_all_equal() -> None:
    report = diff_snapshots(_base(), _base())
    assert report.ok
    assert report.differences == () and report.expected == ()
    assert report.equal_count == len(report.items)


def test_recorded_container_and_vm(container_snapshot: Snapshot, vm_snapshot: Snapshot) -> None:
    added = set(vm_snapshot.packages) - set(container_snapshot.packages)
    report = diff_snapshots(
        container_snapshot,
        vm_snapshot,
        vm_only_packages=added,
        vm_only_users={"sshd", "messagebus", "systemd-network"},
        vm_only_groups=set(vm_snapshot.groups) - set(container_snapshot.groups),
    )
    # Nothing is dropped: every key of every category is one item.
    for category, c, v in (
        (Category.PACKAGE, container_snapshot.packages, vm_snapshot.packages),
        (Category.USER, container_snapshot.users, vm_snapshot.users),
        (Category.GROUP, container_snapshot.groups, vm_snapshot.groups),
        (Category.SERVICE, container_snapshot.services, vm_snapshot.services),
        (Category.PATH, container_snapshot.paths, vm_snapshot.paths),
        (Category.FACT, container_snapshot.facts, vm_snapshot.facts),
    ):
        keys = {i.key for i in report.items if i.category is category}
        assert keys == set(c) | set(v), category

    assert _item(report, Category.FACT, "kernel").status is Status.EXPECTED
    assert _item(report, Category.FACT, "os").status is Status.EQUAL
    assert _item(report, Category.PACKAGE, "openssh-server").status is Status.EXPECTED
    assert _item(report, Category.PACKAGE, "dpkg").status is Status.EQUAL
    ssh = _item(report, Category.SERVICE, "ssh.service")
    assert ssh.status is Status.EXPECTED and "openssh-server" in ssh.reason
    # The container's own services get a row each; what else the VM runs, one row.
    assert _item(report, Category.RUNNING, "e2scrub_reap.service").status is Status.EXPECTED
    other = _item(report, Category.RUNNING, "(other running services)")
    assert other.status is Status.EXPECTED and "ssh.service" in (other.vm or "")
    assert _item(report, Category.USER, "sshd").status is Status.EXPECTED
    assert _item(report, Category.PATH, "/boot").status is Status.EQUAL
    assert _item(report, Category.PATH, "/etc/hosts").status is Status.EXPECTED
    # A file the roles manage that only one side has is a real difference, whatever
    # put it there; so is /etc/passwd, which the VM's extra users changed.
    assert _item(report, Category.PATH, "/etc/ssh/sshd_config").status is Status.DIFFERENT
    assert _item(report, Category.PATH, "/etc/passwd").status is Status.DIFFERENT
    assert {i.key for i in report.differences} == {"/etc/ssh/sshd_config", "/etc/passwd"}
    assert _item(report, Category.PATH, "/etc/ssh/sshd_config").reason == "absent in the container"
    assert not report.ok


def test_without_vm_only_packages_they_are_differences(
    container_snapshot: Snapshot, vm_snapshot: Snapshot
) -> None:
    report = diff_snapshots(container_snapshot, vm_snapshot)
    assert _item(report, Category.PACKAGE, "openssh-server").status is Status.DIFFERENT
    assert _item(report, Category.SERVICE, "ssh.service").status is Status.DIFFERENT


def test_package_version_and_presence() -> None:
    vm = _base(packages={"dpkg": "1.21.22", "nginx": "1.22.1-10", "linux-image-amd64": "6.1"})
    container = _base(packages={"dpkg": "1.21.22", "nginx": "1.22.1-9", "curl": "7.88"})
    report = diff_snapshots(container, vm, vm_only_packages={"linux-image-amd64"})
    nginx = _item(report, Category.PACKAGE, "nginx")
    assert (nginx.status, nginx.container, nginx.vm) == (Status.DIFFERENT, "1.22.1-9", "1.22.1-10")
    curl = _item(report, Category.PACKAGE, "curl")
    assert (curl.status, curl.reason, curl.vm) == (Status.DIFFERENT, "only in the container", None)
    assert _item(report, Category.PACKAGE, "linux-image-amd64").status is Status.EXPECTED


def test_vm_only_package_missing_in_vm_is_still_a_difference() -> None:
    # The explanation covers "the VM has more", never "the VM lacks something".
    container = _base(packages={"dpkg": "1", "python3": "3.11"})
    report = diff_snapshots(container, _base(packages={"dpkg": "1"}), vm_only_packages={"python3"})
    assert _item(report, Category.PACKAGE, "python3").status is Status.DIFFERENT


def test_users_and_groups() -> None:
    vm = _base(
        users={
            "root": User("root", 0, 0, "/root", "/bin/bash"),
            "app": User("app", 997, 997, "/srv/app", "/usr/sbin/nologin"),
            "sshd": User("sshd", 100, 65534, "/run/sshd", "/usr/sbin/nologin"),
        },
        groups={"root": Group("root", 0), "_ssh": Group("_ssh", 101)},
    )
    container = _base(
        users={
            "root": User("root", 0, 0, "/root", "/bin/bash"),
            "app": User("app", 999, 999, "/srv/app", "/usr/sbin/nologin"),
        }
    )
    report = diff_snapshots(container, vm, vm_only_users={"sshd"}, vm_only_groups={"_ssh"})
    app = _item(report, Category.USER, "app")
    # A system id handed out in another order is its own class (test_parity_sysids.py);
    # a regular uid is a difference.
    assert app.status is Status.IDS_SHIFTED and "uid=999" in (app.container or "")
    regular = diff_snapshots(
        replace(container, users={"app": User("app", 1001, 1001, "/srv/app", "/bin/sh")}),
        replace(vm, users={"app": User("app", 1002, 1001, "/srv/app", "/bin/sh")}))
    assert _item(regular, Category.USER, "app").status is Status.DIFFERENT
    assert _item(report, Category.USER, "sshd").status is Status.EXPECTED
    assert _item(report, Category.GROUP, "_ssh").status is Status.EXPECTED


def test_services_enabled_and_running() -> None:
    vm = _base(
        services={
            "nginx.service": Service("nginx.service", ("multi-user.target.wants",), "nginx"),
            "getty@tty1.service": Service("getty@tty1.service", ("getty.target.wants",), "systemd"),
        },
        running_services=("nginx.service", "systemd-journald.service"),
        failed_units=(),
    )
    report = diff_snapshots(_base(), vm, vm_only_packages={"systemd"})
    assert report.ok
    assert _item(report, Category.SERVICE, "nginx.service").status is Status.EQUAL
    assert _item(report, Category.SERVICE, "getty@tty1.service").status is Status.EXPECTED
    running = _item(report, Category.RUNNING, "nginx.service")
    assert running.status is Status.EXPECTED
    assert (running.container, running.vm) == ("unknown (no init)", "running")
    other = _item(report, Category.RUNNING, "(other running services)")
    assert other.vm == "systemd-journald.service" and other.status is Status.EXPECTED
    failed = _item(report, Category.RUNNING, "(other failed units)")
    assert (failed.vm, failed.status) == ("none", Status.EXPECTED)


def test_failed_service_on_the_vm_is_a_difference() -> None:
    vm = _base(running_services=(), failed_units=("nginx.service", "app.timer"))
    report = diff_snapshots(_base(), vm)
    nginx = _item(report, Category.RUNNING, "nginx.service")
    assert (nginx.vm, nginx.status, nginx.reason) == (
        "failed",
        Status.DIFFERENT,
        "failed on the VM",
    )
    other = _item(report, Category.RUNNING, "(other failed units)")
    assert (other.vm, other.status) == ("app.timer", Status.DIFFERENT)


def test_running_with_init_on_both_sides() -> None:
    container = _base(running_services=("nginx.service",), failed_units=())
    vm = _base(running_services=(), failed_units=())
    report = diff_snapshots(container, vm)
    item = _item(report, Category.RUNNING, "nginx.service")
    assert (item.container, item.vm, item.status) == ("running", "not running", Status.EXPECTED)
    report = diff_snapshots(container, container)
    assert report.ok and report.expected == ()


def test_service_enabled_differently_is_a_difference() -> None:
    vm = _base(services={"nginx.service": Service("nginx.service", ("graphical.target.wants",))})
    report = diff_snapshots(_base(), vm)
    assert _item(report, Category.SERVICE, "nginx.service").status is Status.DIFFERENT
    # A service disabled on the VM but enabled in the container.
    report = diff_snapshots(_base(), _base(services={}))
    assert _item(report, Category.SERVICE, "nginx.service").reason == "only in the container"


def test_paths() -> None:
    conf = "/etc/nginx/nginx.conf"
    vm = _base(
        paths={
            conf: PathState(conf, "file", "600", "root", "root", "cd" * 32),
            "/boot/grub": PathState("/boot/grub", "directory", "755", "root", "root"),
            "/etc/resolv.conf": PathState("/etc/resolv.conf", "file", "644", "root", "root", "1"),
            "/etc/gone": PathState("/etc/gone", "absent"),
        }
    )
    container = _base(
        paths={
            conf: PathState(conf, "file", "644", "root", "root", "ab" * 32),
            "/boot/grub": PathState("/boot/grub", "absent"),
            "/etc/resolv.conf": PathState("/etc/resolv.conf", "file", "644", "root", "root", "2"),
            "/etc/gone": PathState("/etc/gone", "absent"),
        }
    )
    report = diff_snapshots(container, vm)
    item = _item(report, Category.PATH, conf)
    assert item.status is Status.DIFFERENT and item.container and item.vm
    assert "600" in item.vm and "644" in item.container
    assert item.reason == "mode, sha256 differ"
    # A managed path absent on both sides is compared, and equal.
    assert _item(report, Category.PATH, "/etc/gone").status is Status.EQUAL
    assert _item(report, Category.PATH, "/etc/resolv.conf").status is Status.EXPECTED
    # /boot only exists on a booted machine.
    grub = _item(report, Category.PATH, "/boot/grub")
    assert (grub.container, grub.status) == ("absent", Status.EXPECTED)
    # The other way round it is a difference: the explanation only covers what the VM adds.
    report = diff_snapshots(vm, container)
    assert _item(report, Category.PATH, "/boot/grub").status is Status.DIFFERENT


def test_facts() -> None:
    vm = _base(facts={"kernel": "6.1.0-cloud", "hostname": "rolebake-vm", "os": "Debian 13",
                      "init": "systemd", "machine_id": "abc"})  # fmt: skip
    report = diff_snapshots(_base(), vm)
    assert _item(report, Category.FACT, "os").status is Status.DIFFERENT
    for key in ("kernel", "hostname", "init", "machine_id"):
        assert _item(report, Category.FACT, key).status is Status.EXPECTED, key


def test_to_dict_is_json_and_complete(container_snapshot: Snapshot, vm_snapshot: Snapshot) -> None:
    report = diff_snapshots(container_snapshot, vm_snapshot)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert len(data["items"]) == len(report.items)
    assert data["summary"] == {
        "equal": report.equal_count,
        "expected": len(report.expected),
        "ids_shifted": 0,
        "recommends": 0,
        "different": len(report.differences),
    }
    assert {i["status"] for i in data["items"]} <= {"equal", "expected", "different"}


def test_render_table() -> None:
    vm = _base(packages={"dpkg": "1.21.22", "nginx": "1.22.1-10"}, facts={"kernel": "6.1.0-cloud"})
    report = diff_snapshots(_base(facts={"kernel": "6.1.0-host"}), vm)
    text = render_table(report)
    lines = text.splitlines()
    assert lines[0].split() == ["RESOURCE", "CONTAINER", "VM", "STATUS"]
    assert any(line.startswith("package nginx") and "different: differs" in line for line in lines)
    assert any(line.startswith("fact kernel") and "expected" in line for line in lines)
    assert "package dpkg" not in text
    assert lines[-1].startswith("parity FAILED: ")
    assert "1 different" in lines[-1]
    assert "package dpkg" in render_table(report, show_equal=True)


def test_render_table_shortens_long_values_and_ok_summary() -> None:
    long_value = "x" * 500
    report = diff_snapshots(_base(facts={"kernel": "a"}), _base(facts={"kernel": long_value}))
    text = render_table(report, width=100)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "…" in text
    assert text.splitlines()[-1].startswith("parity OK: ")
    assert render_table(diff_snapshots(_base(), _base())).startswith("parity OK: ")
