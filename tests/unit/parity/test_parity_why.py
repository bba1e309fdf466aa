"""Why a package is on one side only: chains from recorded dpkg output, and their class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from parity_recorded import FIXTURES

from rolebake.errors import SnapshotError
from rolebake.parity.diff import Category, ParityReport, Status, diff_snapshots
from rolebake.parity.dpkg import parse_extended_states, parse_relation_field
from rolebake.parity.snapshot import Snapshot, parse_package_records
from rolebake.parity.why import explain_package, requested_from_tasks
from rolebake.provision.base import TaskResult
from rolebake.report.tables import parity_table

BOOT = frozenset({"procps", "libproc2-0", "init-system-helpers"})


def _side(side: str) -> Snapshot:
    records = parse_package_records((FIXTURES / "recommends" / side / "packages.txt").read_text())
    return Snapshot(packages=records.versions, relations=records.relations,
                    auto_installed=records.auto_installed)


def _report(**options: bool) -> ParityReport:
    return diff_snapshots(_side("container"), _side("vm"), vm_only_packages=BOOT,
                          requested_packages={"apache2"}, **options)


def test_relation_fields_keep_names_and_alternatives() -> None:
    assert parse_relation_field("libc6 (>= 2.34), mime-support | mailcap, perl:any") == (
        ("libc6",), ("mime-support", "mailcap"), ("perl",))
    assert parse_relation_field("") == ()


def test_extended_states_marks_only_auto_installed() -> None:
    text = ("Package: a\nArchitecture: amd64\nAuto-Installed: 1\n\n"
            "Package: b\nArchitecture: amd64\nAuto-Installed: 0\n")
    assert parse_extended_states(text) == frozenset({"a"})


def test_records_parse_relations_and_marks() -> None:
    records = parse_package_records((FIXTURES / "recommends/container/packages.txt").read_text())
    assert records.relations["procps"].recommends == (("psmisc",),)
    assert records.relations["procps"].pre_depends == (("init-system-helpers",),)
    assert records.relations["apache2"].provides == ("httpd", "httpd-cgi")
    assert records.auto_installed is not None and "psmisc" in records.auto_installed
    assert "apache2" not in records.auto_installed


def test_old_four_field_output_still_parses() -> None:
    records = parse_package_records("ii \tdpkg\tamd64\t1.21.22\n")
    assert records.versions == {"dpkg": "1.21.22"}
    assert records.relations == {} and records.auto_installed is None


def test_a_line_with_other_field_counts_is_an_error() -> None:
    try:
        parse_package_records("ii \tdpkg\tamd64\t1.21.22\tlibc6\n")
    except SnapshotError as err:
        assert "dpkg-query" in err.message
    else:
        raise AssertionError("five fields were accepted")


def test_recommends_of_a_vm_boot_package_is_its_own_class() -> None:
    report = _report()
    psmisc = next(i for i in report.items if i.category is Category.PACKAGE
                  and i.key == "psmisc")
    assert psmisc.status is Status.RECOMMENDS
    assert psmisc.why is not None
    assert psmisc.why.chain == ("psmisc", "procps", "apache2")
    assert psmisc.why.relations == ("Recommends", "Depends")
    assert psmisc.why.head == "procps"
    assert psmisc.why.root == "asked for by the roles"
    assert "VM boot package, installed without Recommends" in psmisc.why.head_there
    assert psmisc.reason.startswith("in the container: psmisc ← (Recommends) procps ← "
                                    "(Depends) apache2")
    # Still counted unless accepted; the rest of the fixture is equal.
    assert not report.ok and report.differences == (psmisc,)
    accepted = _report(accept_recommends=True)
    assert accepted.ok and len(accepted.recommends) == 1


def test_recommends_in_json_and_table() -> None:
    data = json.loads(json.dumps(_report().to_dict()))
    assert data["summary"]["recommends"] == 1 and data["summary"]["different"] == 1
    assert "install_recommends: false" in data["hints"]["recommends"]
    item = next(i for i in data["items"] if i["key"] == "psmisc")
    assert item["status"] == "recommends"
    assert [link["package"] for link in item["why"]["chain"]] == ["psmisc", "procps", "apache2"]
    assert item["why"]["chain"][0]["pulled_in_by"] == "Recommends"
    assert item["why"]["recommends"] is True
    text = parity_table(_report())
    assert "recommends: in the container: psmisc ← (Recommends) procps" in text
    assert "install_recommends: false" in text
    assert "1 recommends" in text.splitlines()[-1]


def test_a_package_the_roles_asked_for_on_one_side_is_different() -> None:
    # psmisc asked for by name in the container only: not apt's Recommends, a real difference.
    container, vm = _side("container"), _side("vm")
    report = diff_snapshots(container, vm, vm_only_packages=BOOT,
                            requested_packages={"apache2", "psmisc"})
    psmisc = next(i for i in report.items if i.key == "psmisc")
    assert psmisc.status is Status.DIFFERENT
    assert psmisc.why is not None and psmisc.why.chain == ("psmisc",)
    assert "only in the container" in psmisc.reason and "asked for by the roles" in psmisc.reason


def test_depends_through_a_virtual_package_and_the_vm_side() -> None:
    container, vm = _side("container"), _side("vm")
    # The VM side this time: a package only the VM has, pulled in through a Provides.
    vm_rel = dict(vm.relations)
    records = parse_package_records("ii \tmawk\tamd64\t1.3.4\t\t\t\tawk\n")
    vm_rel["mawk"] = records.relations["mawk"]
    apache = vm_rel["apache2"]
    vm_rel["apache2"] = type(apache)(depends=(*apache.depends, ("awk",)),
                                     provides=apache.provides)
    why = explain_package("mawk", "vm", container_packages=container.packages,
                          container_relations=container.relations,
                          container_auto=container.auto_installed,
                          vm_packages={**vm.packages, "mawk": "1.3.4"}, vm_relations=vm_rel,
                          vm_auto=(vm.auto_installed or frozenset()) | {"mawk"},
                          boot_packages=BOOT)
    assert why is not None
    assert why.chain == ("mawk", "apache2") and why.relations == ("Depends",)
    assert not why.recommends
    assert why.head == "apache2" and why.head_there.startswith("manually installed")


def test_no_relations_recorded_gives_no_chain() -> None:
    assert explain_package("x", "container", container_packages={"x"}, container_relations={},
                           container_auto=None, vm_packages=set(), vm_relations={},
                           vm_auto=None) is None


def test_requested_names_from_apt_tasks() -> None:
    tasks = [TaskResult("i", "web", "ansible.builtin.apt", "changed",
                        args={"name": ["apache2", "curl=7.88*"]}),
             TaskResult("j", "web", "apt", "ok", args={"name": "procps,psmisc"}),
             TaskResult("k", "web", "ansible.builtin.copy", "ok", args={"name": "nope"})]
    assert requested_from_tasks(tasks) == {"apache2", "curl", "procps", "psmisc"}


def test_cli_counts_recommends_unless_accepted_and_writes_html(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 5 naming the class and its fix; 0 with --accept-recommends; --json and --html."""
    from click.testing import CliRunner

    from rolebake.cli import main
    from rolebake.engine import DockerEngine
    from rolebake.parity import run as parity_run

    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "roles" / "web" / "tasks").mkdir(parents=True)
    (root / "roles" / "web" / "tasks" / "main.yml").write_text("- debug: msg=hi\n")
    (root / "images" / "web.yml").write_text("from: rolebake/debian:bookworm\nroles: [web]\n")

    def fake_parity(engine: Any, project: Any, image: str, vm_url: str, *, events: Any,
                    secrets: Any, strict_ids: bool = False,
                    accept_recommends: bool = False) -> parity_run.ParityResult:
        return parity_run.ParityResult(image=image, image_id="sha256:" + "0" * 64, vm=vm_url,
                                       report=_report(accept_recommends=accept_recommends),
                                       container_tests=[], vm_tests=[],
                                       steps={"build": (0.0, 50.0), "vm_boot": (0.0, 20.0)})

    monkeypatch.setattr(parity_run, "run_parity", fake_parity)
    monkeypatch.setattr(DockerEngine, "connect", classmethod(lambda cls: None))
    args = ["--project", str(root), "parity", "web", "--vm", "ssh://root@vm.example:22"]
    counted = CliRunner().invoke(main, args)
    assert counted.exit_code == 5, counted.output
    assert "only packages apt installed as Recommends" in counted.stderr
    assert "--accept-recommends" in counted.stderr and "package psmisc" in counted.stderr
    assert "recommends: in the container: psmisc ← (Recommends) procps" in counted.stdout
    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert as_json.exit_code == 5
    data = json.loads(as_json.stdout)
    assert data["status"] == "recommends" and data["state"]["summary"]["recommends"] == 1
    page = tmp_path / "parity.html"
    accepted = CliRunner().invoke(main, [*args, "--accept-recommends", "--html", str(page)])
    assert accepted.exit_code == 0, accepted.output
    assert "1 recommends (accepted: --accept-recommends)" in accepted.stdout
    assert f"wrote {page}" in accepted.stderr
    assert "parity OK" in page.read_text() and "psmisc" in page.read_text()
    missing_dir = CliRunner().invoke(main, [*args, "--html", str(tmp_path / "no" / "x.html")])
    assert missing_dir.exit_code == 2 and "no such directory" in missing_dir.stderr


def test_snapshot_keeps_relations_and_marks_through_json() -> None:
    from parity_recorded import Result

    from rolebake.parity import snapshot as snap

    class Host:
        def run(self, command: str, *args: str, **kwargs: object) -> Result:
            if "dpkg-query -W" in command and "${Recommends}" in command:
                return Result(0, (FIXTURES / "recommends/container/packages.txt").read_text())
            if "getent passwd" in command:
                return Result(0, "root:x:0:0:root:/root:/bin/bash\n@@groups\nroot:x:0:\n")
            return Result(0, "")

    taken = snap.take_snapshot(Host())
    assert taken.relations["procps"].recommends == (("psmisc",),)
    assert taken.auto_installed is not None and "psmisc" in taken.auto_installed
    again = Snapshot.from_dict(json.loads(json.dumps(taken.to_dict())))
    assert again == taken
    # A snapshot stored before relations were kept still loads.
    old = {k: v for k, v in taken.to_dict().items() if k not in ("relations", "auto_installed")}
    loaded = Snapshot.from_dict(old)
    assert loaded.relations == {} and loaded.auto_installed is None
