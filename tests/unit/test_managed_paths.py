"""What a layer's file tasks managed travels with its image, so `rolebake parity` compares
those paths even when the layer comes from the cache (a container-only branch included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolebake.builder import Builder, BuildOptions
from rolebake.engine.images import commit_changes
from rolebake.events import Event, LogEvent
from rolebake.image import MANAGED_LABEL, managed_from_labels, managed_label, provenance
from rolebake.load import plan_build
from rolebake.parity.run import _managed
from rolebake.provision.base import ProvisionResult, TaskResult, managed_paths
from rolebake.spec import Project
from tests.unit.fakes import FakeEngine, ProvisionerControl
from tests.unit.test_builder import make_project, spec_from

pytestmark = pytest.mark.usefixtures("fake_provisioner")


def task(action: str, status: str = "changed", **args: str) -> TaskResult:
    return TaskResult(name=action, role="web", action=action, status=status, args=args)


def test_file_tasks_that_ran_name_their_paths_once_in_task_order() -> None:
    tasks = [
        task("ansible.builtin.template", dest="/etc/nginx/site.conf"),
        task("ansible.builtin.file", "ok", path="/var/www/site"),
        task("ansible.builtin.copy", "skipped", dest="/etc/container-only"),
        task("ansible.builtin.lineinfile", "failed", path="/etc/broken"),
        task("ansible.builtin.apt", name="nginx"),
        task("copy", dest="relative/path"),
        task("ansible.builtin.template", "ok", dest="/etc/nginx/site.conf"),
        # A role that passes `dest` through a variable: the result names it.
        TaskResult(name="templated", role="web", action="ansible.builtin.copy",
                   status="changed", result={"dest": "/etc/motd"}),
    ]
    assert managed_paths(tasks) == ["/etc/nginx/site.conf", "/var/www/site", "/etc/motd"]
    assert ProvisionResult(tasks=tuple(tasks)).managed_paths() == managed_paths(tasks)


def test_the_label_reads_back_and_holds_no_line_break() -> None:
    paths = ["/etc/a b", '/etc/"quoted"', "/etc/new\nline", "/etc/ü"]
    text = managed_label(paths)
    assert "\n" not in text
    assert managed_from_labels({MANAGED_LABEL: text}) == paths
    # Podman's commit takes labels as instructions: this one goes through.
    assert any(change.startswith(f'LABEL "{MANAGED_LABEL}"=')
               for change in commit_changes({"Labels": {MANAGED_LABEL: text}}))
    # Not part of the provenance `inspect` shows.
    assert MANAGED_LABEL not in provenance({MANAGED_LABEL: text, "rolebake.layer": "web"})


@pytest.mark.parametrize("text", ["", "not json", '{"a": 1}', '["/etc", 3]'])
def test_an_unreadable_label_records_nothing(text: str) -> None:
    assert managed_from_labels({MANAGED_LABEL: text}) is None
    assert managed_from_labels({}) is None


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", base=spec_from("debian:bookworm", "common"),
                        web=spec_from("base", "web"))


def test_each_committed_layer_records_its_own_file_tasks_and_parity_reads_them_from_the_cache(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    fake_provisioner.tasks = (
        task("ansible.builtin.apt", name="nginx"),
        task("ansible.builtin.copy", dest="/etc/profile.d/container-only.sh"),
        task("ansible.builtin.template", "skipped", dest="/etc/vm-only.conf"),
        task("ansible.builtin.file", path="/etc/passwd"),
    )
    plan = plan_build(project, ["web"])
    first = Builder(engine, project, lambda _: None, BuildOptions()).build(plan)
    assert first.error is None
    for layer in ("base", "web"):
        image_id = first.results[layer].image_id
        assert image_id is not None
        labels = engine.images_by_id[image_id].labels
        assert managed_from_labels(labels) == ["/etc/profile.d/container-only.sh",
                                               "/etc/passwd"]

    # Again: both layers are cache hits, so no task ran in a container this time.
    again = Builder(engine, project, lambda _: None, BuildOptions()).build(plan)
    assert all(again.results[layer].cached for layer in ("base", "web"))
    events: list[Event] = []
    vm_tasks = [task("ansible.builtin.template", dest="/etc/vm-only.conf")]
    # The container's paths still come first, from the labels; the VM's follow; the
    # account files that always differ are compared as accounts, not as files.
    assert _managed(engine, plan, again, vm_tasks, events.append) == [
        "/etc/profile.d/container-only.sh", "/etc/vm-only.conf"]
    assert events == []


def test_an_image_without_the_label_leaves_the_vms_view_and_says_so(
        engine: FakeEngine, project: Project) -> None:
    plan = plan_build(project, ["web"])
    report = Builder(engine, project, lambda _: None, BuildOptions()).build(plan)
    web = report.results["web"].image_id
    assert web is not None
    del engine.images_by_id[web].labels[MANAGED_LABEL]  # as an older rolebake committed it
    events: list[Event] = []
    vm_tasks = [task("ansible.builtin.copy", dest="/etc/from-the-vm")]
    assert _managed(engine, plan, report, vm_tasks, events.append) == ["/etc/from-the-vm"]
    notices = [e for e in events if isinstance(e, LogEvent)]
    assert [(e.layer, "records no managed paths" in e.message) for e in notices] == [
        ("web", True)]
