"""Shifted dynamic system ids: their own class, a difference only with --strict-ids."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from parity_recorded import RECORDED_PATHS, SYSUSERS_PATHS, RecordedHost, SysusersHost

from rolebake.parity import snapshot as snap
from rolebake.parity.diff import IDS_SHIFTED_HINT, Category, ParityReport, Status, diff_snapshots
from rolebake.parity.snapshot import Group, PathState, Snapshot, User
from rolebake.parity.sysids import DEBIAN_DEFAULT, SystemIds, parse_system_ids
from rolebake.report.tables import parity_table


def _sysusers(side: str) -> Snapshot:
    return snap.take_snapshot(SysusersHost(side), SYSUSERS_PATHS)


def _status(report: ParityReport, category: Category, key: str) -> tuple[Status, str]:
    [item] = [i for i in report.items if i.category is category and i.key == key]
    return item.status, item.reason


def test_recorded_system_users_are_shifted_not_different() -> None:
    container, vm = _sysusers("container"), _sysusers("vm")
    report = diff_snapshots(container, vm, vm_only_users={"messagebus", "sshd", "systemd-network"},
                            vm_only_groups=set(vm.groups) - set(container.groups))
    # adduser --system (a package's postinst): 100/101 here, 102/103 after dbus and sshd.
    status, reason = _status(report, Category.USER, "memcache")
    assert status is Status.IDS_SHIFTED
    assert reason.startswith("uid 100 -> 102, gid 101 -> 103")
    assert "the VM made messagebus, sshd first" in reason and "pin the id" in reason
    assert _status(report, Category.GROUP, "memcache")[0] is Status.IDS_SHIFTED
    # useradd --system (Ansible's modules) counts down: the group lost 999 to systemd-journal.
    status, reason = _status(report, Category.USER, "rbsvc")
    assert (status, reason.split(";")[0]) == (Status.IDS_SHIFTED, "gid 999 -> 997")
    assert "systemd-journal" in _status(report, Category.GROUP, "rbsvc")[1]
    # Files the roles made keep the same names but other numbers: the same class.
    for path, what in (("/var/log/memcache", "owner memcache 100 -> 102"),
                       ("/var/lib/rbsvc", "group rbsvc 999 -> 997"),
                       ("/etc/rbsvc.conf", "group rbsvc 999 -> 997")):
        status, reason = _status(report, Category.PATH, path)
        assert status is Status.IDS_SHIFTED and what in reason, (path, reason)
    assert report.ok and not report.differences
    assert len(report.ids_shifted) == 7

    strict = diff_snapshots(container, vm, vm_only_users={"messagebus", "sshd", "systemd-network"},
                            vm_only_groups=set(vm.groups) - set(container.groups),
                            strict_ids=True)
    assert not strict.ok
    assert {i.key for i in strict.differences} == {i.key for i in report.ids_shifted}


def test_table_and_json_show_the_class() -> None:
    report = diff_snapshots(_sysusers("container"), _sysusers("vm"))
    table = parity_table(report, width=200)
    memcache = next(line for line in table.splitlines() if line.startswith("user memcache"))
    assert "uid=100 gid=101" in memcache and "uid=102 gid=103" in memcache
    assert "ids-shifted: uid 100 -> 102" in memcache
    assert "memcache(100):memcache(101)" in table
    assert f"ids-shifted: {IDS_SHIFTED_HINT}" in table
    assert table.splitlines()[-1].startswith("parity ") and "7 ids shifted" in table
    data = json.loads(json.dumps(report.to_dict()))
    assert data["summary"]["ids_shifted"] == 7 and data["strict_ids"] is False
    assert data["hints"]["ids-shifted"] == IDS_SHIFTED_HINT
    assert {i["key"] for i in data["items"] if i["status"] == "ids-shifted"} >= {"memcache"}
    strict = replace(report, strict_ids=True)
    assert "(--strict-ids)" in parity_table(strict) and "parity FAILED" in parity_table(strict)


def _users(**users: tuple[int, int]) -> dict[str, User]:
    return {n: User(n, uid, gid, f"/var/lib/{n}", "/usr/sbin/nologin")
            for n, (uid, gid) in users.items()}


@pytest.mark.parametrize(("container", "vm", "why"), [
    # A regular user (1000 and up) with another id is a role's doing.
    (_users(app=(1000, 1000)), _users(app=(1001, 1000)), "regular uid"),
    # A fixed id (Debian's static 0-99) never moves by allocation order.
    (_users(app=(33, 33)), _users(app=(101, 33)), "static uid"),
    # Another home is a real difference even when the ids shifted too.
    (_users(app=(100, 65534)),
     {"app": User("app", 102, 65534, "/srv/app", "/usr/sbin/nologin")}, "home too"),
])
def test_what_is_not_a_shift(container: dict[str, User], vm: dict[str, User], why: str) -> None:
    report = diff_snapshots(Snapshot(users=container), Snapshot(users=vm))
    assert _status(report, Category.USER, "app")[0] is Status.DIFFERENT, why


def test_owner_shift_must_match_the_users_shift() -> None:
    def side(uid: int, owner_uid: int) -> Snapshot:
        return Snapshot(users=_users(svc=(uid, 65534)), paths={
            "/srv/data": PathState("/srv/data", "directory", "750", "svc", "root",
                                   uid=owner_uid, gid=0)})

    ok = diff_snapshots(side(100, 100), side(102, 102))
    assert _status(ok, Category.PATH, "/srv/data")[0] is Status.IDS_SHIFTED
    # The name says svc on both, but the VM's number is not svc's: something else is wrong.
    odd = diff_snapshots(side(100, 100), side(102, 105))
    assert _status(odd, Category.PATH, "/srv/data")[0] is Status.DIFFERENT
    # A group whose members differ is a difference whatever its gid did.
    members = diff_snapshots(Snapshot(groups={"g": Group("g", 100, ("a",))}),
                             Snapshot(groups={"g": Group("g", 102, ("b",))}))
    assert _status(members, Category.GROUP, "g")[0] is Status.DIFFERENT


def test_the_range_comes_from_the_machine() -> None:
    container = Snapshot(users=_users(svc=(150, 65534)),
                         system_ids=SystemIds(100, 199, 100, 199, "login.defs"))
    vm = replace(container, users=_users(svc=(250, 65534)))
    # 250 is past this machine's SYS_UID_MAX: not handed out dynamically.
    assert _status(diff_snapshots(container, vm), Category.USER, "svc")[0] is Status.DIFFERENT
    assert _status(diff_snapshots(Snapshot(users=_users(svc=(150, 65534))),
                                  Snapshot(users=_users(svc=(250, 65534)))),
                   Category.USER, "svc")[0] is Status.IDS_SHIFTED


def test_parse_system_ids() -> None:
    assert parse_system_ids("") == DEBIAN_DEFAULT
    ids = parse_system_ids("SYS_UID_MIN 201\nSYS_UID_MAX 499\nFIRST_SYSTEM_UID 150\n"
                           "LAST_SYSTEM_GID 300\nnot a setting\n")
    assert (ids.uid_min, ids.uid_max, ids.gid_min, ids.gid_max) == (150, 499, 100, 300)
    assert ids.source == "login.defs, adduser.conf"


def test_old_recordings_still_parse() -> None:
    # Accounts without the id section, paths without numeric ids (recorded before).
    old = snap.take_snapshot(RecordedHost("container"), RECORDED_PATHS)
    assert old.system_ids == DEBIAN_DEFAULT
    assert old.paths["/etc/hosts"].uid is None
    again = Snapshot.from_dict(json.loads(json.dumps(_sysusers("vm").to_dict())))
    assert again == _sysusers("vm")
    assert Snapshot.from_dict({**old.to_dict(), "system_ids": None}).system_ids == DEBIAN_DEFAULT


def test_cli_passes_without_strict_ids_and_exits_5_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rolebake parity` lists the class and passes; `--strict-ids` makes it exit 5."""
    from click.testing import CliRunner

    from rolebake.cli import main
    from rolebake.engine import DockerEngine
    from rolebake.parity import run as parity_run

    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "roles" / "svc" / "tasks").mkdir(parents=True)
    (root / "roles" / "svc" / "tasks" / "main.yml").write_text("- debug: msg=hi\n")
    (root / "images" / "svc.yml").write_text("from: rolebake/debian:bookworm\nroles: [svc]\n")
    container, vm = _sysusers("container"), _sysusers("vm")

    def fake_parity(engine: Any, project: Any, image: str, vm_url: str, *, events: Any,
                    secrets: Any, strict_ids: bool = False,
                    accept_recommends: bool = False) -> parity_run.ParityResult:
        report = diff_snapshots(container, vm, strict_ids=strict_ids,
                                vm_only_users=set(vm.users) - set(container.users),
                                vm_only_groups=set(vm.groups) - set(container.groups))
        return parity_run.ParityResult(image=image, image_id="sha256:" + "0" * 64, vm=vm_url,
                                       report=report, container_tests=[], vm_tests=[])

    monkeypatch.setattr(parity_run, "run_parity", fake_parity)
    monkeypatch.setattr(DockerEngine, "connect", classmethod(lambda cls: None))
    args = ["--project", str(root), "parity", "svc", "--vm", "ssh://root@vm.example:22"]
    loose = CliRunner().invoke(main, args)
    assert loose.exit_code == 0, loose.output
    assert "ids-shifted: uid 100 -> 102" in loose.stdout
    assert "0 difference(s), " in loose.stdout and " 7 ids shifted, " in loose.stdout
    assert "pin the uid/gid in the role" in loose.stdout
    strict = CliRunner().invoke(main, [*args, "--strict-ids"])
    assert strict.exit_code == 5, strict.output
    assert "error: svc and the VM differ: 7 resource(s), 0 test(s)" in strict.stderr
    assert "user memcache" in strict.stderr and "(--strict-ids)" in strict.stdout
