"""The no-op path's shortcuts give exactly the answers of the slow path they replace."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rolebake.cache import layer_inputs
from rolebake.load import plan_build
from rolebake.provision import ansible_inventory as inv
from rolebake.provision import collection_versions as cv
from rolebake.provision import inventory_answers as answers
from rolebake.provision import names_kept, provisioner_class
from rolebake.spec import Project
from tests.conftest import REPO
from tests.unit.example_copy import example_copy  # noqa: F401 (the `project` fixture)

# The pattern as it was before the lookahead and the prefilter: the reference.
_REFERENCE = re.compile(
    r"(?:\|\s*|\b(?:lookup|query|q)\(\s*['\"])"
    r"([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z_][a-z0-9_]*")


def reference(text: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(text)
            if m.group(1) not in ("ansible.builtin", "ansible.legacy")}


TRICKY = [
    "", "plain text, no filter", "{{ x | acme.tools.shout }}", "{{ x|acme.tools.shout }}",
    "{{ x |\n\t acme.tools.shout }}", "{{ lookup('acme.tools.x') }}",
    '{{ query( "acme.tools.x", 1) }}', "{{ q('acme.tools.x') }}", "{{ xq('acme.tools.x') }}",
    "{{ seq('acme.tools.x') }}", "{{ lookup ('acme.tools.x') }}", "| a.b.lookup('x.y.z')",
    "{{ x | ansible.builtin.to_json }}", "{{ x | ansible.legacy.foo | c.d.e }}",
    "| Acme.tools.x", "| acme.Tools.x", "| acme.tools", "| acme.tools.", "| acme.tools.9x",
    "| a.b.c | a.b.c | e.f.g", "||a.b.c", "|\u00a0a.b.c", "lookup(\u00a0'a.b.c')",
    "q(q('a.b.c'))", "lookup('q(\"a.b.c\")')", "x = y | z  # python", "def q(x): return x",
    "é | ü.b.c | a.b.c", "lookup('a.b.c", "query('a_1.b_2._c')",
]


@pytest.mark.parametrize("text", TRICKY)
def test_named_in_text_matches_the_reference(text: str) -> None:
    assert cv.named_in_text(text) == reference(text)


def test_named_in_text_matches_the_reference_on_random_text() -> None:
    pieces = ["|", " ", "\n", "lookup(", "query(", "q(", "'", '"', "a", "b.", "c.d", ".e",
              "x", "_", "9", "A", "é", "(", "ansible.builtin.", "qq", "\u00a0"]
    rng = random.Random(19)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert cv.named_in_text(text) == reference(text), text


def test_named_in_file_matches_the_reference_on_installed_files() -> None:
    # Real files of every kind: the collections and the ansible package rolebake runs with.
    root = next(Path(p) for p in sys.path if (Path(p) / "ansible_collections").is_dir())
    files = sorted(p for p in (root / "ansible_collections" / "community" / "docker").rglob("*")
                   if p.is_file())[:400]
    assert files
    for path in files:
        text = path.read_bytes()[:cv.SCAN_LIMIT].decode("utf-8", errors="replace")
        assert cv.named_in_file(path) == reference(text), path


# Ansible's inventory answers kept on disk (provision/inventory_answers.py) -------------------



def layer_key(project: Project, layer_id: str) -> str:
    layer = plan_build(project, [layer_id]).layer(layer_id)
    found = provisioner_class("ansible")(project, layer).inputs(None)  # type: ignore[arg-type]
    return layer_inputs(project, layer, "sha256:parent", found.files, "ansible-core 9",
                        tools=found.tools, notes=found.notes, plays=found.plays).key


def kept(project: Project) -> list[Path]:
    folder = project.root / ".rolebake" / answers.FOLDER
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def ansible_never_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("Ansible was asked")

    for name in ("_read", "_groups", "_verdicts", "split_pattern"):
        monkeypatch.setattr(inv, name, refuse)


def test_the_layer_key_is_the_same_with_kept_answers_as_without(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as never_kept:  # the path before kept answers existed
        never_kept.setattr(answers, "inputs_key", lambda *args: None)
        never_kept.setattr(names_kept.KeptNames, "names", lambda self, path: cv.named_in_file(path))
        asked = {name: layer_key(project, name) for name in ("base", "web", "app")}
        assert not kept(project)
    monkeypatch.setattr(names_kept, "RACY_S", -60.0)  # the copied files' names are kept too
    cold = {name: layer_key(project, name) for name in ("base", "web", "app")}
    assert kept(project) and (project.root / ".rolebake" / "answers" / names_kept.FILE).is_file()
    ansible_never_asked(monkeypatch)
    monkeypatch.setattr(names_kept, "named_in_file", lambda path: {"never.scanned"})
    warm = {name: layer_key(project, name) for name in ("base", "web", "app")}
    assert asked == cold == warm
    member = inv.membership(project, spec_of(project, "web"))
    assert member is not None and member.groups == ("all", "web")


def spec_of(project: Project, name: str):  # type: ignore[no-untyped-def]
    return plan_build(project, [name]).layer(name).spec


def test_editing_the_inventory_is_seen_even_with_the_same_size_and_mtime(
        project: Project) -> None:
    inventory = project.root / "playbooks" / "inventory.ini"
    before = inv.membership(project, spec_of(project, "web"))
    assert before is not None and "prod" not in before.groups and kept(project)
    stamp = inventory.stat()
    text = inventory.read_text()
    edited = text.replace("[all:vars]\n", "[prod:children]\nweb\n[all:vars]\n")
    longer = len(edited) - len(text)
    edited = edited[:2] + edited[2 + longer:]  # same size: the first comment line shortened
    assert len(edited) == len(text)
    inventory.write_text(edited)
    os.utime(inventory, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same mtime
    inv._read.cache_clear()
    inv._groups.cache_clear()
    after = inv.membership(project, spec_of(project, "web"))
    assert after is not None and "prod" in after.groups


def test_an_edit_in_an_inventory_folder_is_seen(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    folder.mkdir()
    (folder / "a.ini").write_text("[web]\nweb1\n")
    project = Project(tmp_path)
    assert inv.read_inventory(project, folder).hosts == {"web1"}
    (folder / "b.yml").write_text("all:\n  hosts:\n    db1:\n")
    assert inv.read_inventory(project, folder).hosts == {"web1", "db1"}
    (folder / "a.ini").write_text("[web]\nweb2\n")
    assert inv.read_inventory(project, folder).hosts == {"web2", "db1"}


def test_a_corrupt_or_partial_kept_answer_is_ignored_and_asked_again(
        project: Project) -> None:
    expected = layer_key(project, "web")
    files = kept(project)
    assert files
    for index, path in enumerate(files):
        text = path.read_text()
        path.write_text(["", text[: len(text) // 2], "[1, 2]", "null",
                         text.replace('"key": "', '"key": "x')][index % 5])
    assert layer_key(project, "web") == expected
    for path in kept(project):
        json.loads(path.read_text())  # written whole again
    member = inv.membership(project, spec_of(project, "web"))
    assert member is not None and member.groups == ("all", "web")


def test_a_script_inventory_is_never_kept(tmp_path: Path) -> None:
    script = tmp_path / "hosts.py"
    script.write_text("#!/bin/sh\necho '{\"db\": {\"hosts\": [\"db1\"]}}'\n")
    script.chmod(0o755)
    (tmp_path / "ansible.cfg").write_text("[inventory]\nenable_plugins = script, ini\n")
    project = Project(tmp_path)
    assert answers.inputs_key(project, (script,), inv.QUIET) is None
    assert "db1" in inv.read_inventory(project, script).hosts
    assert not kept(project)


@pytest.mark.parametrize("cfg", ["[inventory]\nenable_plugins = constructed, ini\n",
                                 "[inventory]\nenable_plugins = auto, ini\n"])
def test_an_inventory_a_plugin_may_answer_from_elsewhere_is_never_kept(
        tmp_path: Path, cfg: str) -> None:
    (tmp_path / "hosts.ini").write_text("[web]\nweb1\n")
    (tmp_path / "ansible.cfg").write_text(cfg)
    project = Project(tmp_path)
    assert answers.inputs_key(project, (tmp_path / "hosts.ini",), inv.QUIET) is None
    assert "web1" in inv.read_inventory(project, tmp_path / "hosts.ini").hosts
    assert not kept(project)


def test_an_executable_or_odd_inventory_file_is_never_kept(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text("[web]\nweb1\n")
    project = Project(tmp_path)
    assert answers.inputs_key(project, (tmp_path / "hosts.ini",), inv.QUIET) is not None
    (tmp_path / "hosts.ini").chmod(0o755)
    assert answers.inputs_key(project, (tmp_path / "hosts.ini",), inv.QUIET) is None
    os.mkfifo(tmp_path / "fifo")
    assert answers.inputs_key(project, (tmp_path / "fifo",), inv.QUIET) is None


def test_the_cfg_and_the_question_are_part_of_the_key(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text("[web]\nweb1\n")
    project = Project(tmp_path)
    sources = (tmp_path / "hosts.ini",)
    first = answers.inputs_key(project, sources, inv.QUIET)
    (tmp_path / "ansible.cfg").write_text("[defaults]\nforks = 3\n")
    second = answers.inputs_key(project, sources, inv.QUIET)
    assert first is not None and second is not None and first != second
    answers.keep(project, second, ["groups", "h", "web"], ["all", "web"])
    assert answers.recall(project, second, ["groups", "h", "web"]) == ["all", "web"]
    assert answers.recall(project, second, ["groups", "h", "db"]) is None
    assert answers.recall(project, first, ["groups", "h", "web"]) is None


# Collection names per file, kept between runs (provision/names_kept.py) -----------------------

def test_kept_names_see_a_template_edit_at_the_same_size_and_mtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names_kept, "RACY_S", -60.0)  # keep even a file written just now
    template = tmp_path / "index.html.j2"
    template.write_text("{{ x | acme.tools.shout }}\n")
    first = names_kept.KeptNames(Project(tmp_path))
    assert first.names(template) == {"acme.tools"}
    first.save()
    stamp = template.stat()
    time.sleep(0.05)  # the edit's ctime a clock tick later
    template.write_text("{{ x | other.ones.shout }}\n")  # same size
    os.utime(template, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same mtime
    again = names_kept.KeptNames(Project(tmp_path))
    assert str(template) in again.entries  # read back from disk
    assert again.names(template) == {"other.ones"} == cv.named_in_file(template)


def test_kept_names_are_used_and_not_kept_while_racy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = tmp_path / "t.j2"
    template.write_text("{{ lookup('acme.tools.x') }}\n")
    kept = names_kept.KeptNames(Project(tmp_path))
    assert kept.names(template) == {"acme.tools"}
    assert not kept.entries  # written just now: racily clean, scanned again next time
    monkeypatch.setattr(names_kept, "RACY_S", -60.0)
    kept.names(template)
    kept.save()
    monkeypatch.setattr(names_kept, "named_in_file", lambda path: {"never.asked"})
    assert names_kept.KeptNames(Project(tmp_path)).names(template) == {"acme.tools"}


def test_a_corrupt_names_file_is_ignored_and_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names_kept, "RACY_S", -60.0)
    template = tmp_path / "t.j2"
    template.write_text("{{ x | acme.tools.y }}\n")
    path = tmp_path / ".rolebake" / "answers" / names_kept.FILE
    path.parent.mkdir(parents=True)
    for text in ("", '{"format": "rolebake-collection-names/1", "entr', "[]",
                 json.dumps({"format": names_kept.FORMAT, "entries": {str(template): "x"}})):
        path.write_text(text)
        kept = names_kept.KeptNames(Project(tmp_path))
        assert kept.names(template) == {"acme.tools"}
        kept.save()
        assert json.loads(path.read_text())["format"] == names_kept.FORMAT


def test_a_second_plan_asks_ansible_nothing(project: Project) -> None:
    # A fresh interpreter each time: this one has imported ansible-core already.
    code = f"""
import json, sys
from pathlib import Path
from rolebake.load import plan_build
from rolebake.provision import provisioner_class
from rolebake.provision import names_kept
from rolebake.spec import Project
names_kept.RACY_S = -60.0
project = Project(Path({str(project.root)!r}))
layer = plan_build(project, ["web"]).layer("web")
print(provisioner_class("ansible")(project, layer).inputs(None).tools["inventory host"])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("ansible."))))
"""
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=REPO).stdout.splitlines() for _ in range(2)]
    assert runs[0][-2] == runs[1][-2] == "rolebake-web in all, web"
    assert "ansible.inventory.manager" in json.loads(runs[0][-1])
    second = set(json.loads(runs[1][-1]))
    assert not second & {"ansible.inventory.manager", "ansible.constants", "ansible.utils.display"}
