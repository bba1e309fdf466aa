"""Observed inputs without an engine: the audit hook in a real Python process, sorting its
reads, the hole and host-file checks, and how a build's record folds into the next key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rolebake.cache import layer_inputs, with_recorded
from rolebake.errors import InputError
from rolebake.load import plan_build
from rolebake.provision import ansible_observed, observed
from rolebake.provision.agent import PLUGINS
from rolebake.provision.ansible_spec import settings_of
from rolebake.provision.observed import Observed, Read, Recorded
from rolebake.spec import Project


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "project"
    write(root, {
        "images/img.yml": "from: rolebake/debian:bookworm\nplaybook: playbooks/site.yml\n",
        "playbooks/site.yml": "- hosts: all\n  tasks:\n    - ansible.builtin.debug: msg=hi\n",
        "playbooks/beside.txt": "beside\n",
        "playbooks/files/motd.txt": "motd\n",
        "playbooks/confs/a.conf": "a\n",
        "shared/x.yml": "x: 1\n",
    })
    return Project(root.resolve())


SITE = "playbooks/site.yml"


# The hook, in a real Python process -----------------------------------------------------


def test_the_hook_records_first_reads_and_listings_with_the_task_and_skips_the_rest(
        project: Project, tmp_path: Path) -> None:
    out, skipped = tmp_path / "observed.jsonl", tmp_path / "scratch"
    skipped.mkdir()
    (skipped / "private.txt").write_text("x")
    script = textwrap.dedent(f"""
        import os, sys
        state = sys.modules["_rolebake_observe"]
        state.task = "{project.root}/{SITE}:3"
        for _ in range(3):
            open("{project.root}/playbooks/beside.txt").read()
        open("{skipped}/private.txt").read()
        open("{project.root}/playbooks/written.txt", "w").write("out")
        os.listdir("{project.root}/playbooks/confs")
        if os.fork() == 0:  # a forked worker inherits the hook and the task
            state.task = "{project.root}/{SITE}:9"
            open("{project.root}/shared/x.yml").read()
            os._exit(0)
        os.wait()
        import json  # Python's own files are skipped
    """)
    env = {**os.environ, **ansible_observed.environment(project, skipped),
           "ROLEBAKE_OBSERVE_FILE": str(out)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    reads = ansible_observed.read_record(out.parent if out.name == ansible_observed.RECORD
                                         else _as_record(out))
    seen = {(r.kind, project.logical(Path(r.path)), r.task.rsplit(":", 1)[-1]) for r in reads}
    assert seen == {("read", "playbooks/beside.txt", "3"), ("list", "playbooks/confs", "3"),
                    ("read", "shared/x.yml", "9")}, seen
    # Three opens of one file by one task: one line.
    assert len(reads) == 3


def _as_record(path: Path) -> Path:
    folder = path.parent / "record"
    folder.mkdir()
    (folder / ansible_observed.RECORD).write_text(path.read_text())
    return folder


def test_the_recorder_comes_first_on_the_python_path_ansible_had(project: Project,
                                                                 tmp_path: Path) -> None:
    env = ansible_observed.environment(project, tmp_path, "/opt/collections")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PLUGINS / "observe"), "/opt/collections"]
    assert str(tmp_path.resolve()) in env["ROLEBAKE_OBSERVE_SKIP"].split(os.pathsep)


# Sorting reads ------------------------------------------------------------------------------


def test_reads_are_sorted_into_project_files_listings_and_host_files(project: Project) -> None:
    root = project.root
    found = observed.sort_reads(project, [
        Read("read", f"{root}/playbooks/beside.txt", f"{root}/{SITE}:3"),
        Read("read", f"{root}/playbooks/beside.txt", f"{root}/{SITE}:7"),  # first task kept
        Read("read", f"{root}/playbooks", ""),  # a folder opened: not a file read
        Read("list", f"{root}/playbooks/confs", f"{root}/{SITE}:5"),
        Read("list", f"{root}/playbooks/files/confs", f"{root}/{SITE}:5"),  # looked, missing
        Read("read", f"{root}/.rolebake/state.json", ""),
        Read("read", "/etc/hostname", f"{root}/{SITE}:9"),
        Read("read", "/etc/localtime", ""),  # the host's plumbing
        Read("list", "/etc", ""),
        Read("read", f"{root}/gone.txt", ""),
    ])
    assert found.files == {"playbooks/beside.txt": f"{SITE}:3"}
    assert found.lists == {"playbooks/confs": f"{SITE}:5", "playbooks/files/confs": f"{SITE}:5"}
    assert found.outside == {"/etc/hostname": f"{SITE}:9"}


# The checks ---------------------------------------------------------------------------------


def check(project: Project, seen: Observed, *, keyed: tuple[str, ...] = (SITE,),
          declared: tuple[str, ...] = (), record: bool = False) -> list[str]:
    return observed.check(project, seen, keyed=keyed, declared=declared, record=record,
                          where=(project.spec_path("img"), 4))


def test_a_cache_hole_names_the_file_and_the_task_that_read_it(project: Project) -> None:
    seen = Observed(files={SITE: "", "playbooks/beside.txt": f"{SITE}:3",
                           "shared/x.yml": f"{SITE}:8"})
    with pytest.raises(InputError) as caught:
        check(project, seen)
    assert caught.value.exit_code == 2
    assert caught.value.message.endswith(f"/{SITE}:3: cache hole: playbooks/beside.txt is read by "
                                         "this task but is not in the cache key (and 1 more "
                                         "file(s))")
    assert "--record-inputs" in caught.value.hint
    # Asked to record: no error, and the holes are what gets keyed.
    assert check(project, seen, record=True) == ["playbooks/beside.txt", "shared/x.yml"]


def test_a_file_keyed_under_a_link_is_no_hole(project: Project) -> None:
    (project.root / "playbooks/files/linked.txt").symlink_to("../../shared/x.yml")
    seen = Observed(files={"shared/x.yml": f"{SITE}:3"})
    assert check(project, seen, keyed=("playbooks/files/linked.txt",)) == []


def test_a_read_before_any_task_points_at_the_spec(project: Project) -> None:
    with pytest.raises(InputError) as caught:
        check(project, Observed(files={"playbooks/beside.txt": ""}))
    assert caught.value.message.endswith(
        "img.yml:4: cache hole: playbooks/beside.txt is read while Ansible loaded the playbook "
        "but is not in the cache key")


def test_a_host_file_is_refused_unless_declared(project: Project, tmp_path: Path) -> None:
    folder = tmp_path / "shared-configs"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "c.conf").write_text("c")
    seen = Observed(outside={"/etc/hostname": f"{SITE}:9", str(folder / "sub/c.conf"): ""})
    with pytest.raises(InputError) as caught:
        check(project, seen, declared=(str(folder),))
    assert caught.value.message.endswith(
        f"/{SITE}:9: /etc/hostname is read from outside the project by this task; rolebake "
        "reads nothing from outside the project unless the spec declares it")
    assert "`inputs: [/etc/hostname]`" in caught.value.hint
    assert check(project, seen, declared=("/etc/hostname", str(folder))) == []


def test_the_spec_declares_absolute_existing_host_paths(project: Project,
                                                           tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    spec = project.spec_path("img")
    base = spec.read_text()
    spec.write_text(base + f"inputs: [{outside}]\nrecord_inputs: true\n")
    layer = plan_build(project, ["img"]).layer("img")
    assert (settings_of(layer).inputs, settings_of(layer).record_inputs) == ((str(outside),), True)
    for given, message in ((["relative.txt"], "'relative.txt' is not an absolute path"),
                           ([str(tmp_path / "nope")], "does not exist")):
        spec.write_text(base + yaml.safe_dump({"inputs": given}))
        with pytest.raises(InputError, match=message) as caught:
            plan_build(project, ["img"])
        assert "img.yml:4: inputs[0]" in caught.value.message
    spec.write_text("from: rolebake/debian:bookworm\nprovisioner: chef-solo\n"
                    "inputs: [/etc/hostname]\n")
    with pytest.raises(InputError, match="`inputs:` is a key of the ansible provisioner"):
        plan_build(project, ["img"])


def test_a_declared_host_file_is_keyed_by_content(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    first = ansible_observed.declared_digests([str(outside), str(tmp_path)])
    outside.write_text("two")
    second = ansible_observed.declared_digests([str(outside), str(tmp_path)])
    assert first.keys() == {f"outside input {outside}", f"outside input {tmp_path}"}
    assert all(first[name] != second[name] for name in first)


# The record and the key ---------------------------------------------------------------------


def inputs_now(project: Project) -> object:
    layer = plan_build(project, ["img"]).layer("img")
    static = layer_inputs(project, layer, "sha256:parent", [project.root / SITE], "ansible 9")
    return layer, with_recorded(project, static, observed.load(project, layer))


def test_a_record_of_files_the_key_has_leaves_the_key_as_it_was(project: Project) -> None:
    layer, before = inputs_now(project)
    observed.save(project, layer, Observed(files={SITE: ""}))
    _, after = inputs_now(project)
    assert after.key == before.key and after.recorded == (SITE,)
    mode = (project.state_dir / "inputs").stat().st_mode & 0o777
    assert mode == 0o700


def test_a_recorded_file_the_static_walk_misses_moves_the_key(project: Project) -> None:
    layer, before = inputs_now(project)
    observed.save(project, layer, Observed(files={"playbooks/beside.txt": f"{SITE}:3"},
                                           lists={"playbooks/confs": f"{SITE}:5"}))
    _, recorded = inputs_now(project)
    assert recorded.key != before.key
    assert set(recorded.values["observed"]) == {"playbooks/beside.txt", "playbooks/confs/"}
    (project.root / "playbooks/beside.txt").write_text("changed\n")
    _, changed = inputs_now(project)
    assert changed.key != recorded.key
    from rolebake.cache import explain_miss
    assert explain_miss(changed, recorded) == (
        "playbooks/beside.txt changed (recorded by the last build)",)
    (project.root / "playbooks/confs/b.conf").write_text("b\n")
    _, listed = inputs_now(project)
    assert listed.key != changed.key
    assert explain_miss(listed, changed) == (
        "playbooks/confs/ changed (recorded by the last build)",)


def test_an_unreadable_record_is_no_record(project: Project) -> None:
    layer, before = inputs_now(project)
    path = observed.record_path(project, layer)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert observed.load(project, layer) == Recorded()
    path.write_text(json.dumps({"files": ["../outside", 3], "lists": "x"}))
    _, after = inputs_now(project)
    assert after.key == before.key


def test_files_only_unapplied_plays_use_are_dropped_when_read_at_load_time() -> None:
    seen = Observed(files={"roles/app/defaults/main.yml": "", "roles/app/files/x": "p.yml:3",
                           "roles/common/tasks/main.yml": ""}, lists={"confs": "p.yml:4"})
    kept = observed.drop_loaded(seen, ["roles/app/defaults/main.yml", "roles/app/files/x"])
    # A read by a running task stays whatever the file is: only loading is forgiven.
    assert kept.files == {"roles/app/files/x": "p.yml:3", "roles/common/tasks/main.yml": ""}
    assert kept.lists == seen.lists


def test_credential_files_the_cfg_names_are_neither_keyed_nor_refused(project: Project,
                                                                       tmp_path: Path) -> None:
    (project.root / "ansible.cfg").write_text(
        "[defaults]\nvault_password_file = .vault-pass\nprivate_key_file = /keys/id\n")
    (project.root / ".vault-pass").write_text("secret\n")
    data = tmp_path / "run"
    data.mkdir()
    lines = [{"kind": "read", "path": str(project.root / ".vault-pass"), "task": ""},
             {"kind": "read", "path": "/keys/id", "task": ""},
             {"kind": "read", "path": str(project.root / SITE), "task": ""}]
    (data / ansible_observed.RECORD).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [r.path for r in ansible_observed.read_record(data, project)] == [
        str(project.root / SITE)]


def test_byte_code_beside_a_project_plugin_is_no_input(project: Project) -> None:
    plugins = project.root / "playbooks/filter_plugins"
    (plugins / "__pycache__").mkdir(parents=True)
    (plugins / "mine.py").write_text("")
    (plugins / "__pycache__/mine.cpython-311.pyc").write_bytes(b"")
    found = observed.sort_reads(project, [
        Read("read", str(plugins / "__pycache__/mine.cpython-311.pyc"), ""),
        Read("read", str(plugins / "mine.py"), ""),
        Read("list", str(plugins / "__pycache__"), "")])
    assert found.files == {"playbooks/filter_plugins/mine.py": ""} and found.lists == {}
    # Python making __pycache__ there does not change what the folder lists.
    with_cache = observed.listing_digest(plugins)
    (plugins / "__pycache__/mine.cpython-311.pyc").unlink()
    (plugins / "__pycache__").rmdir()
    assert observed.listing_digest(plugins) == with_cache
    (plugins / "other.py").write_text("")
    assert observed.listing_digest(plugins) != with_cache
