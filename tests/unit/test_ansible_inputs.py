"""What Ansible reads for a layer, on fixture trees (no engine): every input is followed,
keyed, and changing it changes the key; paths and links out of the project are refused.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from rolebake.cache import explain_miss, layer_inputs
from rolebake.errors import InputError
from rolebake.load import plan_build
from rolebake.provision import provisioner_class
from rolebake.provision.ansible_inputs import AnsibleInputs, read_inputs
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
        "images/.keep": "",
        "roles/other/tasks/main.yml": "- ansible.builtin.debug: msg=other\n",
    })
    return Project(root.resolve())


def spec(project: Project, name: str = "img", **data: object) -> str:
    data = {"from": "rolebake/debian:bookworm", **data}
    project.spec_path(name).write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def walk(project: Project, *, roles: tuple[str, ...] = (), playbook: str | None = None,
         variables: dict[str, object] | None = None) -> AnsibleInputs:
    return read_inputs(project, roles=roles,
                       playbook=project.root / playbook if playbook else None,
                       variables=variables or {}, where=(project.root / "images/x.yml", 1))


def rel(project: Project, found: AnsibleInputs) -> set[str]:
    return {project.logical(p) for p in found.files}


def key(project: Project, name: str = "img") -> tuple[str, object]:
    layer = plan_build(project, [name]).layer(name)
    found = provisioner_class("ansible")(project, layer).inputs(None)  # type: ignore[arg-type]
    inputs = layer_inputs(project, layer, "sha256:parent", found.files, "ansible-core 9",
                          tools=found.tools, notes=found.notes)
    return inputs.key, inputs


# Roles and what they pull in -------------------------------------------------------------


def test_include_role_and_import_role_are_followed_with_their_entry_points(
        project: Project) -> None:
    write(project.root, {
        "roles/a/tasks/main.yml": """
            - name: pull b in
              ansible.builtin.include_role:
                name: b
                tasks_from: extra
            - block:
                - import_role: name=c
        """,
        "roles/a/handlers/main.yml": """
            - name: restart
              ansible.builtin.import_role:
                name: d
                handlers_from: more
        """,
        "roles/b/tasks/main.yml": "- debug: msg=b-main\n",
        "roles/b/tasks/extra.yml": "- include_tasks: nested.yml\n",
        "roles/b/tasks/nested.yml": "- include_role: {name: e}\n",
        "roles/c/tasks/main.yml": "- debug: msg=c\n",
        "roles/d/handlers/more.yml": "- debug: msg=d\n",
        "roles/e/tasks/main.yml": "- debug: msg=e\n",
    })
    files = rel(project, walk(project, roles=("a",)))
    assert {"roles/b/tasks/extra.yml", "roles/b/tasks/nested.yml", "roles/c/tasks/main.yml",
            "roles/d/handlers/more.yml", "roles/e/tasks/main.yml"} <= files
    assert not any(f.startswith("roles/other/") for f in files)


def test_meta_dependencies_as_names_and_dicts(project: Project) -> None:
    write(project.root, {
        "roles/a/meta/main.yml": """
            dependencies:
              - b
              - role: c
                vars: {x: 1}
              - {name: d}
        """,
        "roles/a/tasks/main.yml": "- debug: msg=a\n",
        "roles/b/tasks/main.yml": "- debug: msg=b\n",
        "roles/c/meta/main.yml": "dependencies: [{role: e}]\n",
        "roles/c/tasks/main.yml": "- debug: msg=c\n",
        "roles/d/defaults/main.yml": "d: 1\n",
        "roles/e/vars/main.yml": "e: 1\n",
    })
    files = rel(project, walk(project, roles=("a",)))
    assert {"roles/b/tasks/main.yml", "roles/c/tasks/main.yml", "roles/d/defaults/main.yml",
            "roles/e/vars/main.yml"} <= files


def test_include_tasks_out_of_the_role_into_the_project(project: Project) -> None:
    write(project.root, {
        "roles/a/tasks/main.yml": "- import_tasks: ../../../shared/common.yml\n",
        "shared/common.yml": "- include_tasks: deeper.yml\n",
        "shared/deeper.yml": "- debug: msg=deep\n",
    })
    files = rel(project, walk(project, roles=("a",)))
    assert {"shared/common.yml", "shared/deeper.yml"} <= files


def test_a_playbook_with_everything_beside_it(project: Project) -> None:
    write(project.root, {
        "playbooks/site.yml": """
            - import_playbook: base.yml
            - hosts: web
              vars_files:
                - vars/web.yml
                - [vars/missing.yml, vars/fallback.yml]
              roles:
                - role: a
              tasks:
                - include_tasks: tasks/extra.yml
                - include_vars: vars/more.yml
        """,
        "playbooks/base.yml": "- hosts: all\n  roles: [b]\n",
        "playbooks/vars/web.yml": "x: 1\n",
        "playbooks/vars/fallback.yml": "y: 1\n",
        "playbooks/vars/more.yml": "z: 1\n",
        "playbooks/tasks/extra.yml": "- debug: msg=x\n",
        "playbooks/group_vars/web.yml": "g: 1\n",
        "playbooks/host_vars/rolebake-build.yml": "h: 1\n",
        "playbooks/library/probe.py": "# a module beside the playbook\n",
        "roles/a/tasks/main.yml": "- debug: msg=a\n",
        "roles/b/tasks/main.yml": "- debug: msg=b\n",
    })
    files = rel(project, walk(project, playbook="playbooks/site.yml"))
    assert {"playbooks/site.yml", "playbooks/base.yml", "playbooks/vars/web.yml",
            "playbooks/vars/fallback.yml", "playbooks/vars/more.yml",
            "playbooks/tasks/extra.yml", "playbooks/group_vars/web.yml",
            "playbooks/host_vars/rolebake-build.yml", "playbooks/library/probe.py",
            "roles/a/tasks/main.yml", "roles/b/tasks/main.yml"} <= files


def test_each_followed_input_changes_the_key_and_is_named(project: Project) -> None:
    write(project.root, {
        "playbooks/site.yml": """
            - import_playbook: base.yml
            - hosts: all
              vars_files: [vars/main.yml]
              roles: [a]
        """,
        "playbooks/base.yml": "- hosts: all\n  tasks: [{debug: {msg: base}}]\n",
        "playbooks/vars/main.yml": "x: 1\n",
        "playbooks/group_vars/all.yml": "g: 1\n",
        "roles/a/tasks/main.yml": "- include_role: {name: b, tasks_from: t}\n",
        "roles/b/tasks/t.yml": "- debug: msg=t\n",
        "ansible.cfg": "[defaults]\nforks = 5\n",
    })
    spec(project, playbook="playbooks/site.yml")
    for changed in ("playbooks/base.yml", "playbooks/vars/main.yml",
                    "playbooks/group_vars/all.yml", "roles/b/tasks/t.yml", "ansible.cfg"):
        before_key, before = key(project)
        path = project.root / changed
        path.write_text(path.read_text() + "# changed\n")
        after_key, after = key(project)
        assert after_key != before_key, changed
        assert f"{changed} changed" in explain_miss(after, before)  # type: ignore[arg-type]
    # An unrelated role is not an input.
    before_key, _ = key(project)
    (project.root / "roles/other/tasks/main.yml").write_text("- debug: msg=touched\n")
    assert key(project)[0] == before_key


# Names known only at run time ------------------------------------------------------------


def test_a_templated_include_keys_the_whole_roles_tree_with_a_note(project: Project) -> None:
    write(project.root, {
        "roles/a/tasks/main.yml": "- debug: msg=a\n- include_tasks: '{{ flavour }}.yml'\n",
    })
    found = walk(project, roles=("a",))
    assert "roles/other/tasks/main.yml" in rel(project, found)
    assert found.notes == ("keyed on the whole roles/ tree: roles/a/tasks/main.yml:2 includes "
                           "'{{ flavour }}.yml', a name known only at run time",)


def test_a_templated_role_name_keys_the_whole_roles_tree(project: Project) -> None:
    write(project.root, {"roles/a/meta/main.yml": "dependencies: ['{{ dep }}_x']\n"})
    found = walk(project, roles=("a",))
    assert "roles/other/tasks/main.yml" in rel(project, found)
    assert "roles/a/meta/main.yml:1 names role '{{ dep }}_x'" in found.notes[0]


def test_a_templated_name_filled_from_the_layers_vars_is_exact(project: Project) -> None:
    write(project.root, {
        "roles/a/tasks/main.yml": "- include_tasks: '{{ flavour }}.yml'\n",
        "roles/a/tasks/debian.yml": "- import_tasks: ../../../shared/{{ flavour }}.yml\n",
        "shared/debian.yml": "- debug: msg=x\n",
    })
    found = walk(project, roles=("a",), variables={"flavour": "debian"})
    assert found.notes == ()
    assert "shared/debian.yml" in rel(project, found)
    assert "roles/other/tasks/main.yml" not in rel(project, found)


def test_a_sensitive_var_never_fills_a_name(project: Project) -> None:
    write(project.root, {"roles/a/tasks/main.yml": "- include_tasks: '{{ token }}.yml'\n"})
    spec(project, roles=["a"], vars={"token": "s3cret"}, sensitive_vars=["token"])
    _, inputs = key(project)
    assert "s3cret" not in inputs.to_label()  # type: ignore[attr-defined]
    assert inputs.notes  # type: ignore[attr-defined]


def test_templated_vars_files_key_the_playbook_folder(project: Project) -> None:
    write(project.root, {
        "playbooks/site.yml": "- hosts: all\n  vars_files: ['vars/{{ env }}.yml']\n",
        "playbooks/vars/prod.yml": "x: 1\n",
        "playbooks/unrelated.txt": "x\n",
    })
    found = walk(project, playbook="playbooks/site.yml")
    assert {"playbooks/vars/prod.yml", "playbooks/unrelated.txt"} <= rel(project, found)
    assert found.notes == ("keyed on the whole playbooks/ folder: playbooks/site.yml:2 loads "
                           "vars file 'vars/{{ env }}.yml', a name known only at run time",)


def test_plan_shows_the_note(project: Project) -> None:
    from rolebake.report import plan_table

    row = {"layer": "img", "parent": "x", "depth": 0, "status": "MISS", "image": None,
           "reasons": ["never built"], "notes": ["keyed on the whole roles/ tree: because"]}
    assert plan_table([row])[-1].strip() == "note: keyed on the whole roles/ tree: because"


# Links and paths -------------------------------------------------------------------------


def test_links_inside_the_project_are_followed_and_hashed_by_content(project: Project) -> None:
    write(project.root, {
        "roles/a/tasks/main.yml": "- template: {src: site.j2, dest: /x}\n",
        "shared/templates/site.j2": "v1\n",
        "shared/motd": "hello\n",
    })
    (project.root / "roles/a/templates").symlink_to("../../shared/templates")
    (project.root / "roles/a/files").mkdir()
    (project.root / "roles/a/files/motd").symlink_to("../../../shared/motd")
    spec(project, roles=["a"])
    before_key, before = key(project)
    assert {"roles/a/templates/site.j2", "roles/a/files/motd"} <= \
        set(before.values["files"])  # type: ignore[attr-defined]
    (project.root / "shared/templates/site.j2").write_text("v2\n")
    after_key, after = key(project)
    assert after_key != before_key
    assert "roles/a/templates/site.j2 changed" in explain_miss(after, before)  # type: ignore
    (project.root / "shared/motd").write_text("changed\n")
    assert "roles/a/files/motd changed" in explain_miss(key(project)[1], after)  # type: ignore


def test_a_link_loop_ends(project: Project) -> None:
    write(project.root, {"roles/a/tasks/main.yml": "- debug: msg=a\n"})
    (project.root / "roles/a/files").mkdir()
    (project.root / "roles/a/files/loop").symlink_to("..")
    assert "roles/a/tasks/main.yml" in rel(project, walk(project, roles=("a",)))


def test_a_link_out_of_the_project_is_refused(project: Project, tmp_path: Path) -> None:
    write(project.root, {"roles/a/tasks/main.yml": "- debug: msg=a\n"})
    (tmp_path / "id_rsa").write_text("secret\n")
    (project.root / "roles/a/files").mkdir()
    (project.root / "roles/a/files/key").symlink_to(tmp_path / "id_rsa")
    with pytest.raises(InputError) as caught:
        walk(project, roles=("a",))
    assert caught.value.path == project.root / "roles/a/files/key"
    assert "outside the project" in caught.value.message


@pytest.mark.parametrize(
    ("files", "where", "message"),
    [
        ({"roles/a/meta/main.yml": "---\ndependencies:\n  - role: /etc/ansible/roles/x\n"},
         "roles/a/meta/main.yml:3", "is an absolute path"),
        ({"roles/a/tasks/main.yml": "- debug: msg=a\n- include_tasks: /etc/tasks.yml\n"},
         "roles/a/tasks/main.yml:2", "is an absolute path"),
        ({"roles/a/tasks/main.yml": "- include_role:\n    name: ../../../../outside\n"},
         "roles/a/tasks/main.yml:1", "outside the project"),
        ({"roles/a/tasks/main.yml": "- import_tasks: ../../../../../outside.yml\n"},
         "roles/a/tasks/main.yml:1", "outside the project"),
        ({"roles/a/tasks/main.yml": "- include_role: {name: b, tasks_from: /etc/x.yml}\n",
          "roles/b/tasks/main.yml": ""},
         "roles/a/tasks/main.yml:1", "is an absolute path"),
    ],
    ids=["absolute-meta-dependency", "absolute-include", "role-path-out", "include-out",
         "absolute-tasks-from"],
)
def test_paths_out_of_the_project_are_refused_at_file_and_line(
        project: Project, files: dict[str, str], where: str, message: str) -> None:
    (project.root.parent / "outside.yml").write_text("- debug: msg=out\n")
    (project.root.parent / "outside").mkdir()
    write(project.root, files)
    with pytest.raises(InputError) as caught:
        walk(project, roles=("a",))
    file, line = where.split(":")
    assert str(caught.value).startswith(f"{project.root / file}:{line}: "), str(caught.value)
    assert message in str(caught.value)


def test_absolute_play_role_and_imported_playbook_are_refused(project: Project) -> None:
    write(project.root, {"playbooks/a.yml": "- hosts: all\n  roles:\n    - /srv/roles/x\n",
                         "playbooks/b.yml": "- import_playbook: /srv/site.yml\n"})
    with pytest.raises(InputError, match=r"a\.yml:3: role '/srv/roles/x' is an absolute path"):
        walk(project, playbook="playbooks/a.yml")
    with pytest.raises(InputError, match=r"b\.yml:1: import_playbook: '/srv/site.yml' is an "):
        walk(project, playbook="playbooks/b.yml")


def test_labels_hold_project_relative_paths_only(project: Project) -> None:
    write(project.root, {"roles/a/tasks/main.yml": "- debug: msg=a\n"})
    spec(project, roles=["a"])
    _, inputs = key(project)
    label = inputs.to_label()  # type: ignore[attr-defined]
    assert str(project.root) not in label
    assert all(not os.path.isabs(f) for f in inputs.values["files"])  # type: ignore


# ansible.cfg and collections ----------------------------------------------------------------


def test_the_project_cfg_and_the_folders_it_names_are_keyed(project: Project) -> None:
    write(project.root, {
        "ansible.cfg": "[defaults]\nlibrary = ./plugins/modules\nfilter_plugins = plugins/f\n",
        "plugins/modules/probe.py": "# module\n",
        "plugins/f/x.py": "# filter\n",
        "roles/a/tasks/main.yml": "- debug: msg=a\n",
    })
    files = rel(project, walk(project, roles=("a",)))
    assert {"ansible.cfg", "plugins/modules/probe.py", "plugins/f/x.py"} <= files


def test_a_cfg_path_out_of_the_project_is_refused(project: Project) -> None:
    write(project.root, {"ansible.cfg": "[defaults]\nforks = 5\n\nlibrary = /usr/share/mods\n",
                         "roles/a/tasks/main.yml": "- debug: msg=a\n"})
    with pytest.raises(InputError, match=r"ansible\.cfg:4: library = /usr/share/mods: .* is "
                                         r"outside the project"):
        walk(project, roles=("a",))


def test_collections_used_are_keyed_by_version(project: Project) -> None:
    write(project.root, {
        "roles/a/meta/main.yml": "collections: [acme.tools]\n",
        "roles/a/tasks/main.yml": """
            - community.general.timezone: {name: UTC}
            - debug: msg="{{ lookup('acme.more.thing', 'x') }}"
        """,
        "roles/a/templates/t.j2": "{{ x | acme.filters.pretty }}\n",
    })
    found = walk(project, roles=("a",))
    assert found.collections["community.docker"] not in ("not installed", "unversioned")
    assert set(found.collections) >= {"community.docker", "community.general", "acme.tools",
                                      "acme.more", "acme.filters"}
    assert found.collections["acme.tools"] == "not installed"


def test_a_collection_beside_the_playbook_is_keyed_by_its_files(project: Project) -> None:
    write(project.root, {
        "playbooks/site.yml": "- hosts: all\n  tasks:\n    - acme.tools.hello: {}\n",
        "playbooks/collections/ansible_collections/acme/tools/galaxy.yml": "version: 1.2.3\n",
        "playbooks/collections/ansible_collections/acme/tools/plugins/modules/hello.py": "#\n",
    })
    found = walk(project, playbook="playbooks/site.yml")
    assert found.collections["acme.tools"] == "1.2.3 (in the project)"
    assert "playbooks/collections/ansible_collections/acme/tools/plugins/modules/hello.py" in \
        rel(project, found)


def test_ansible_yaml_tags_and_repeated_keys_do_not_stop_the_walk(project: Project) -> None:
    write(project.root, {
        "roles/a/tasks/main.yml": """
            - name: vaulted
              debug: {msg: !unsafe "{{ raw }}"}
              when: true
              when: false
            - include_tasks: more.yml
        """,
        "roles/a/tasks/more.yml": "- import_role: {name: b}\n",
        "roles/b/tasks/main.yml": "- debug: msg=b\n",
    })
    assert "roles/b/tasks/main.yml" in rel(project, walk(project, roles=("a",)))


# The same refusals through the CLI: exit 2, one line, before any engine is reached ------------

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/rolebake-test.sock"}


def one_error(project: Project, *args: str) -> str:
    from tests.conftest import run_cli

    result = run_cli(*args, cwd=project.root, env=NO_ENGINE, timeout=120)
    assert result.rc == 2, result.output
    assert "Traceback" not in result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "engine" not in result.output  # stopped before the engine
    return errors[0]


def test_cli_refuses_a_link_out_of_the_project(project: Project, tmp_path: Path) -> None:
    write(project.root, {"roles/a/tasks/main.yml": "- copy: {src: key, dest: /root/key}\n"})
    (tmp_path / "id_rsa").write_text("secret\n")
    (project.root / "roles/a/files").mkdir()
    (project.root / "roles/a/files/key").symlink_to(tmp_path / "id_rsa")
    spec(project, roles=["a"])
    for command in ("build", "plan"):
        error = one_error(project, command, "img")
        assert error.startswith("error: roles/a/files/key: links to "), error
        assert "outside the project" in error


def test_cli_refuses_an_absolute_role_path(project: Project) -> None:
    write(project.root, {"roles/a/meta/main.yml": "---\ndependencies:\n  - role: /srv/roles/x\n",
                         "roles/a/tasks/main.yml": "- debug: msg=a\n"})
    spec(project, roles=["a"])
    error = one_error(project, "build", "img")
    assert error == ("error: roles/a/meta/main.yml:3: role '/srv/roles/x' is an absolute path; "
                     "name a role in roles/ or give a path relative to the playbook"), error


def test_cli_refuses_a_playbook_role_path_out_of_the_project(project: Project) -> None:
    write(project.root, {"playbooks/site.yml": "- hosts: all\n  roles:\n    - ../../elsewhere\n"})
    (project.root.parent / "elsewhere").mkdir()
    spec(project, playbook="playbooks/site.yml")
    error = one_error(project, "build", "img")
    assert error.startswith("error: playbooks/site.yml:3: "), error
    assert "outside the project" in error


def test_a_dangling_link_becomes_a_change_when_its_target_appears(project: Project) -> None:
    write(project.root, {"roles/a/tasks/main.yml": "- copy: {src: later, dest: /x}\n"})
    (project.root / "roles/a/files").mkdir()
    (project.root / "roles/a/files/later").symlink_to("../../../shared/later")
    spec(project, roles=["a"])
    before_key, before = key(project)
    write(project.root, {"shared/later": "now it is here\n"})
    after_key, after = key(project)
    assert after_key != before_key
    assert "roles/a/files/later changed" in explain_miss(after, before)  # type: ignore[arg-type]


def test_becoming_keyed_on_the_whole_tree_is_explained_briefly(project: Project) -> None:
    for n in range(20):
        write(project.root, {f"roles/r{n}/tasks/main.yml": "- debug: msg=x\n"})
    write(project.root, {"roles/a/tasks/main.yml": "- debug: msg=a\n"})
    spec(project, roles=["a"])
    _, before = key(project)
    write(project.root, {"roles/a/tasks/main.yml": "- include_tasks: '{{ x }}.yml'\n"})
    _, after = key(project)
    reasons = explain_miss(after, before)  # type: ignore[arg-type]
    assert reasons[0] == "roles/a/tasks/main.yml changed"
    assert any(r.startswith("... and ") and r.endswith(" more files") for r in reasons)
    assert reasons[-1].startswith("keyed on the whole roles/ tree: roles/a/tasks/main.yml:1")


def test_play_level_content_beside_the_playbook_is_keyed(project: Project) -> None:
    write(project.root, {
        "playbooks/site.yml": """
            - hosts: all
              tasks:
                - ansible.builtin.copy:
                    content: "{{ lookup('file', 'motd.txt') }}"
                    dest: /etc/motd
                - ansible.builtin.template: {src: page.j2, dest: /etc/page}
                - ansible.builtin.copy: {src: "{{ item }}", dest: /etc/}
                  with_fileglob: ["confs/*", "/etc/*", "{{ pattern }}/*"]
            """,
        "playbooks/files/motd.txt": "motd\n",
        "playbooks/templates/page.j2": "page\n",
        "playbooks/confs/a.conf": "a\n",
        "playbooks/confs/sub/not-a-match.conf": "the glob is one level deep\n",
        "playbooks/other.txt": "nobody reads me\n",
    })
    found = rel(project, walk(project, playbook="playbooks/site.yml"))
    assert {"playbooks/files/motd.txt", "playbooks/templates/page.j2",
            "playbooks/confs/a.conf"} <= found
    assert "playbooks/other.txt" not in found
    assert "playbooks/confs/sub/not-a-match.conf" not in found


def test_role_path_and_playbook_dir_are_filled_in(project: Project) -> None:
    write(project.root, {
        "roles/r/tasks/main.yml": """
            - ansible.builtin.include_vars: "{{ role_path }}/../../shared/x.yml"
            - ansible.builtin.include_vars:
                file: "{{ playbook_dir }}/vars/p.yml"
            """,
        "shared/x.yml": "x: 1\n",
        "playbooks/site.yml": "- hosts: all\n  roles: [r]\n",
        "playbooks/vars/p.yml": "p: 1\n",
    })
    found = walk(project, playbook="playbooks/site.yml")
    assert {"shared/x.yml", "playbooks/vars/p.yml"} <= rel(project, found)
    assert found.notes == ()


def test_role_path_that_leaves_the_project_is_refused(project: Project) -> None:
    write(project.root, {"roles/r/tasks/main.yml": """
        - ansible.builtin.include_vars: "{{ role_path }}/../../../outside.yml"
        """})
    (project.root.parent / "outside.yml").write_text("x: 1\n")
    with pytest.raises(InputError, match="outside the project") as caught:
        walk(project, roles=("r",))
    assert "roles/r/tasks/main.yml:1" in caught.value.message
