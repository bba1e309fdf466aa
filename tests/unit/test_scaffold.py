"""`rolebake scaffold-tests`: task results in, testinfra source out (no engine).

The fixtures under fixtures/scaffold/ are recordings `rolebake scaffold-tests`
kept of real provisioning runs of the example images (base, web, app): the
provisioner's task results as Ansible reported them, and the sha256 of the
files copied verbatim, measured in the image.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from rolebake.provision.base import TaskResult
from rolebake.scaffold import Recording, facts_from, render

FIXTURES = Path(__file__).parent / "fixtures" / "scaffold"


def recording(name: str) -> Recording:
    return Recording.from_dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def test_functions(source: str) -> dict[str, str]:
    """Each top-level function's source, by name (and the file parses as Python)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found[node.name] = "\n".join(lines[first - 1:node.end_lineno])
    return found


test_functions.__test__ = False  # type: ignore[attr-defined]


def test_base_packages_files_users_and_groups() -> None:
    source = render(recording("base"))
    functions = test_functions(source)
    assert '"ca-certificates",' in functions["test_package_installed"]
    assert '"less",' in source
    timezone = functions["test_file_etc_timezone"]
    assert "assert f.is_file" in timezone and "assert f.mode == 0o644" in timezone
    assert 'assert f.user == "root"' in timezone and 'assert f.group == "root"' in timezone
    digest = recording("base").digests["/etc/timezone"]
    assert f'assert f.sha256sum == "{digest}"' in timezone
    link = functions["test_file_etc_localtime"]
    assert "assert f.is_symlink" in link
    assert '== "/usr/share/zoneinfo/Europe/Amsterdam"' in link
    # The later `file` task on the home directory decides what is checked there.
    home = functions["test_file_home_ops"]
    assert "is_directory" in home and "0o750" in home and 'f.user == "ops"' in home
    user = functions["test_user_ops"]
    assert "assert user.uid == 1000" in user and 'user.shell == "/bin/bash"' in user
    assert 'user.group == "ops"' in user and 'user.home == "/home/ops"' in user
    assert "assert group.gid == 1000" in functions["test_group_ops"]


def test_templates_get_no_content_hash() -> None:
    # A template's text may depend on facts of the host it was rendered on.
    functions = test_functions(render(recording("base")))
    assert "sha256sum" not in functions["test_file_etc_motd"]
    assert "f.mode == 0o644" in functions["test_file_etc_motd"]


def test_web_links_absent_files_and_enabled_services() -> None:
    functions = test_functions(render(recording("web")))
    enabled = functions["test_file_etc_nginx_sites_enabled_site_conf"]
    assert '"/etc/nginx/sites-available/site.conf"' in enabled and "is_symlink" in enabled
    assert "assert not f.exists" in functions["test_file_etc_nginx_sites_enabled_default"]
    # Only the task with `enabled: true` counts, not the handler that reloads nginx.
    assert '"nginx",  # task: Enable and start nginx' in render(recording("web"))
    assert "_enabled_at_boot" in functions


def test_app_system_user_copied_code_and_systemd_unit() -> None:
    source = render(recording("app"))
    functions = test_functions(source)
    assert '"gunicorn",' in source and '"systemd",' in source
    code = functions["test_file_opt_app_wsgi_py"]
    assert "f.sha256sum ==" in code  # copied from the role's files/: static content
    config = functions["test_file_etc_app_config_json"]
    assert "0o640" in config and 'f.group == "app"' in config and "sha256sum" not in config
    assert '"app.service",  # task: Enable and start the app service' in source
    assert 'user.shell == "/usr/sbin/nologin"' in functions["test_user_app"]


def test_render_is_pure() -> None:
    assert render(recording("app")) == render(recording("app"))


def test_recording_round_trips_through_json() -> None:
    original = recording("web")
    again = Recording.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original


def task(name: str, action: str, args: dict[str, Any] | None = None,
         result: dict[str, Any] | None = None, status: str = "changed") -> TaskResult:
    return TaskResult(name=name, role="r", action=action, status=status, args=args or {},
                      result=result or {})


def test_loops_versions_and_removed_packages() -> None:
    # A looped task reports one result per item under `results`.
    looped = task("Users", "ansible.builtin.user", result={"results": [
        {"name": "a", "uid": 2001, "shell": "/bin/sh", "home": "/home/a",
         "invocation": {"module_args": {"name": "a", "state": "present"}}},
        {"skipped": True, "item": "b"},
        {"name": "c", "invocation": {"module_args": {"name": "c", "state": "absent"}}},
    ]})
    facts = facts_from([
        looped,
        task("Pkgs", "apt", {"name": ["curl=7.88*", "vim-tiny"], "state": "latest"}),
        task("Drop", "ansible.builtin.package", {"name": "vim-tiny", "state": "absent"}),
        task("Deb", "apt", {"deb": "/tmp/x.deb"}),
        task("Failed", "apt", {"name": ["nope"]}, status="failed"),
        task("Skipped", "apt", {"name": ["nope2"]}, status="skipped"),
    ])
    assert facts.packages == {"curl": True, "vim-tiny": False}
    assert facts.users["a"].uid == 2001 and facts.users["a"].present
    assert not facts.users["c"].present and "b" not in facts.users
    source = render(Recording(image="x", provisioner="ansible", tasks=(
        looped, task("Drop", "apt", {"name": "vim-tiny", "state": "absent"}))))
    functions = test_functions(source)
    assert "assert not host.package(name).is_installed" in functions["test_package_removed"]
    assert "assert not user.exists" in functions["test_user_c"]


def test_lineinfile_file_modes_and_later_tasks_win() -> None:
    tasks = [
        task("Copy", "copy", {"dest": "/etc/a.conf", "mode": "644"},
             {"dest": "/etc/a.conf", "state": "file", "mode": "0644", "owner": "root"}),
        task("Line", "lineinfile", {"path": "/etc/a.conf", "line": "x = 1"},
             {"msg": "line added"}),
        task("Chmod", "file", {"path": "/etc/a.conf", "mode": "0600"},
             {"path": "/etc/a.conf", "state": "file", "mode": "0600", "owner": "root"}),
        task("Gone", "file", {"path": "/etc/b", "state": "absent"},
             {"path": "/etc/b", "state": "absent"}),
        task("Relative", "copy", {"dest": "relative"}, {"dest": "relative"}),
    ]
    facts = facts_from(tasks)
    a = facts.files["/etc/a.conf"]
    assert a.mode == "0600" and a.lines == ["x = 1"] and not a.static
    assert facts.files["/etc/b"].kind == "absent"
    assert "relative" not in facts.files
    source = render(Recording(image="x", provisioner="ansible", tasks=tuple(tasks),
                              digests={"/etc/a.conf": "0" * 64}))
    function = test_functions(source)["test_file_etc_a_conf"]
    assert '"x = 1" in f.content_string.splitlines()' in function
    assert "0o600" in function and "sha256sum" not in function  # edited after the copy


def test_chef_resources() -> None:
    tasks = (
        TaskResult(name="apt_package[nginx]", role="web::default", action="install",
                   status="changed"),
        TaskResult(name="template[/etc/nginx/sites-available/site.conf]", role="web::default",
                   action="create", status="changed"),
        TaskResult(name="directory[/var/www/site]", role="web::default", action="create",
                   status="ok"),
        TaskResult(name="service[nginx]", role="web::default", action="enable", status="ok"),
        TaskResult(name="user[ops]", role="base::default", action="create", status="changed"),
    )
    source = render(Recording(image="web-chef", provisioner="chef-solo", tasks=tasks))
    functions = test_functions(source)
    assert '"nginx",' in functions["test_package_installed"]
    assert "is_directory" in functions["test_file_var_www_site"]
    assert "is_file" in functions["test_file_etc_nginx_sites_available_site_conf"]
    assert '"nginx",  # task: service[nginx]' in source
    assert "assert user.exists" in functions["test_user_ops"]


def test_nothing_recorded_gives_a_skipping_suite() -> None:
    source = render(Recording(image="x", provisioner="ansible", tasks=(
        task("Facts", "gather_facts", status="ok"),)))
    assert "pytest.skip(" in test_functions(source)["test_nothing_recorded"]


@pytest.mark.parametrize("name", ["base", "web", "app"])
def test_generated_files_are_valid_python_with_unique_names(name: str) -> None:
    source = render(recording(name))
    tree = ast.parse(source)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(names) == len(set(names))
    compile(source, f"test_{name}.py", "exec")


# Content rendered from facts or the host is never pinned --------------------------------------

ROLE_TASKS = """\
---
- name: Write the hostname banner
  ansible.builtin.copy:
    dest: /etc/banner
    content: "Welcome to {{ ansible_hostname }} ({{ ansible_processor_vcpus }} cpus)\\n"
    mode: "0644"

- name: Write the fixed notice
  ansible.builtin.copy:
    dest: /etc/notice
    content: "Managed for {{ site_name }}\\n"
    mode: "0644"

- name: Write a free-form one
  copy: content="{{ ansible_fqdn }}" dest=/etc/fqdn

- name: Copy a file of the role
  ansible.builtin.copy:
    src: motd
    dest: /etc/motd

- block:
    - name: Mark the host
      ansible.builtin.lineinfile:
        path: /etc/notice
        line: "host {{ inventory_hostname }}"
  when: true

- name: Write pages
  ansible.builtin.copy:
    dest: "/srv/{{ item }}.html"
    content: "<h1>{{ item }} on {{ site_name }}</h1>\\n"
  loop: [a, b]

- name: Write the date
  ansible.builtin.copy:
    dest: /etc/built
    content: "{{ lookup('pipe', 'date') }} {% set x = 1 %}{{ x }}\\n"

- name: Write a default
  ansible.builtin.copy:
    dest: /etc/port
    content: "{{ web_port }}\\n"
"""


def copy_result(dest: str) -> dict[str, Any]:
    return {"dest": dest, "mode": "0644", "owner": "root", "group": "root", "state": "file"}


def role_tasks(tmp_path: Path) -> list[TaskResult]:
    """Task results as Ansible reports them for ROLE_TASKS, each with its `file:line`."""
    tasks = tmp_path / "roles" / "site" / "tasks" / "main.yml"
    tasks.parent.mkdir(parents=True)
    tasks.write_text(ROLE_TASKS)
    lines = ROLE_TASKS.splitlines()

    def at(name: str) -> str:
        number = next(i for i, text in enumerate(lines, 1) if text.endswith(f"name: {name}"))
        return f"{tasks}:{number}"

    def task(name: str, action: str, result: dict[str, Any]) -> TaskResult:
        return TaskResult(name=name, role="site", action=action, status="changed",
                          args={"dest": result.get("dest") or result.get("path")},
                          result=result, path=at(name))

    loop = {"results": [{**copy_result(f"/srv/{x}.html"), "item": x,
                         "invocation": {"module_args": {"dest": f"/srv/{x}.html"}}}
                        for x in ("a", "b")]}
    return [
        task("Write the hostname banner", "ansible.builtin.copy", copy_result("/etc/banner")),
        task("Write the fixed notice", "ansible.builtin.copy", copy_result("/etc/notice")),
        task("Write a free-form one", "copy", copy_result("/etc/fqdn")),
        task("Copy a file of the role", "ansible.builtin.copy", copy_result("/etc/motd")),
        task("Mark the host", "ansible.builtin.lineinfile",
             {"path": "/etc/notice", "changed": True}),
        task("Write pages", "ansible.builtin.copy", loop),
        task("Write the date", "ansible.builtin.copy", copy_result("/etc/built")),
        task("Write a default", "ansible.builtin.copy", copy_result("/etc/port")),
    ]


def test_content_from_facts_lookups_or_role_vars_is_host_bound(tmp_path: Path) -> None:
    from rolebake.scaffold.hostbound import host_bound_paths

    tasks = role_tasks(tmp_path)
    bound = host_bound_paths(tasks, {"site_name": "shop", "greeting": "hi {{ ansible_fqdn }}"})
    # The fixed notice becomes host-bound once a line naming the host is added to it.
    assert bound == ["/etc/banner", "/etc/notice", "/etc/fqdn", "/etc/built", "/etc/port"]
    # Without the lineinfile, the notice names only a spec var: fixed. A spec var whose
    # value is itself a template is not.
    without = [t for t in tasks if t.name != "Mark the host"]
    assert "/etc/notice" not in host_bound_paths(without, {"site_name": "shop"})
    assert "/etc/notice" in host_bound_paths(without, {"site_name": "{{ ansible_fqdn }}"})
    # A task that cannot be read as written is taken to depend on the host.
    lost = [TaskResult(name=t.name, role=t.role, action=t.action, status=t.status,
                       args=t.args, result=t.result) for t in without]
    assert "/etc/notice" in host_bound_paths(lost, {"site_name": "shop"})


def test_a_host_bound_file_keeps_its_mode_and_owner_checks_only(tmp_path: Path) -> None:
    tasks = role_tasks(tmp_path)
    digests = {"/etc/banner": "ab" * 32, "/etc/motd": "cd" * 32}
    found = Recording(image="site", provisioner="ansible", tasks=tuple(tasks),
                      digests=digests, host_bound=("/etc/banner", "/etc/notice"))
    again = Recording.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again.host_bound == ("/etc/banner", "/etc/notice")
    assert "path" not in found.to_dict()["tasks"][0]  # a host path, of no use in the record
    functions = test_functions(render(again))
    banner = functions["test_file_etc_banner"]
    assert "sha256sum" not in banner and "not pinned" in banner
    assert "f.mode == 0o644" in banner and 'f.user == "root"' in banner
    notice = functions["test_file_etc_notice"]
    assert "host " not in notice and "content_string" not in notice
    assert f'f.sha256sum == "{"cd" * 32}"' in functions["test_file_etc_motd"]
