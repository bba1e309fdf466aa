"""requirements.yml on a real engine: a role pinned in a local git repository is
installed by the build (never by `plan`), built into an image, and moving the pin is a
cache miss that names it. A source that is an option in disguise runs nothing.

The role's repository lives outside the project and is reached over
`git+file://`, as a team's role repository would be over https. A source that
cannot be reached, or a Galaxy name with no Galaxy server, is exit 2 naming the
requirement, before any container.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import add_spec, dedent, spec_images

pytestmark = pytest.mark.integration

ROLE_TASKS = """\
---
- name: Say which version of the role ran
  ansible.builtin.copy:
    dest: /etc/req-role-version
    content: "{version}\\n"
    mode: "0644"
"""

SUITE = """\
def test_req_role_version(host):
    assert host.file("/etc/req-role-version").content_string.strip() in ("v1", "v2")
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def role_repository(folder: Path) -> Path:
    """A git repository holding one role, tagged v1 and v2 (each writes its version)."""
    folder.mkdir(parents=True)
    _git(folder, "init", "-q")
    (folder / "meta").mkdir()
    (folder / "meta" / "main.yml").write_text(
        "galaxy_info: {author: rolebake, description: test, license: MIT}\ndependencies: []\n")
    (folder / "tasks").mkdir()
    for version in ("v1", "v2"):
        (folder / "tasks" / "main.yml").write_text(ROLE_TASKS.format(version=version))
        _git(folder, "add", "-A")
        _git(folder, "commit", "-q", "-m", version)
        _git(folder, "tag", version)
    return folder


def pin(project: TestProject, src: str, version: str) -> None:
    (project.root / "requirements.yml").write_text(dedent(f"""
        ---
        roles:
          - name: reqrole
            src: {src}
            version: {version}
        """))


def file_in(project: TestProject, ref: str) -> str:
    out = project.client.containers.run(ref, ["cat", "/etc/req-role-version"], remove=True)
    return bytes(out).decode().strip()


def test_pinned_role_is_built_and_a_new_pin_is_a_miss(project: TestProject, tmp_path: Path,
                                                      engine: docker.DockerClient) -> None:
    repo = role_repository(tmp_path / "reqrole")
    name = add_spec(project, f"req{project.token}", roles=("reqrole",), suite=SUITE)
    pin(project, f"git+file://{repo}", "v1")

    planned = run_cli("plan", name, cwd=project.root)
    assert planned.rc == 0, planned.output
    assert "installing requirements" not in planned.stderr  # plan installs nothing
    assert "requirements.yml is not installed yet" in planned.stdout, planned.output
    assert not (project.root / ".rolebake" / "requirements").exists()

    first = run_cli("build", name, cwd=project.root)
    assert first.rc == 0, first.output
    assert "installing requirements" in first.stderr
    assert file_in(project, project.tag(name)) == "v1"
    assert not (project.root / "roles" / "reqrole").exists()  # installed in .rolebake only

    again = run_cli("plan", name, cwd=project.root)
    assert again.rc == 0 and "[HIT]" in again.stdout, again.output
    assert "requirement role reqrole: v1" in again.stdout  # from the record of the install

    pin(project, f"git+file://{repo}", "v2")
    moved = run_cli("plan", name, cwd=project.root)
    assert moved.rc == 0, moved.output
    assert "[MISS]" in moved.stdout, moved.output
    assert "requirements.yml is not installed yet" in moved.stdout, moved.output
    reason = next(line for line in moved.stdout.splitlines()
                  if "requirement role reqrole changed" in line)
    assert "v1" in reason and "v2 (not installed yet)" in reason, moved.stdout

    second = run_cli("build", name, cwd=project.root)
    assert second.rc == 0, second.output
    assert file_in(project, project.tag(name)) == "v2"
    settled = run_cli("plan", name, cwd=project.root)
    assert "[HIT]" in settled.stdout, settled.output


@pytest.mark.parametrize("src, version, expect", [
    ("git+file://{tmp}/nowhere", "v1", "cannot reach"),
    ("{tmp}/missing-role.tar.gz", "", "does not exist"),
    ("rolebake_test.no_such_role", "1.0.0", "ansible-galaxy could not install it"),
])
def test_unreachable_source_is_bad_input_before_any_container(
        project: TestProject, tmp_path: Path, src: str, version: str, expect: str) -> None:
    name = add_spec(project, f"req{project.token}", roles=("reqrole",), suite=SUITE)
    line = f"version: {version}" if version else ""
    (project.root / "requirements.yml").write_text(dedent(f"""
        ---
        roles:
          - name: reqrole
            src: {src.format(tmp=tmp_path)}
            {line}
        """))
    started = time.monotonic()
    result = run_cli("build", name, cwd=project.root, timeout=120)
    assert result.rc == 2, result.output
    assert time.monotonic() - started < 60, "an unreachable source must fail fast"
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: requirements.yml:3: requirement role reqrole"), errors
    assert expect in errors[0], errors
    assert "Traceback" not in result.output
    assert project.build_containers() == []
    assert spec_images(project.client, name) == set()


def test_a_collection_from_a_folder_is_on_the_collections_path(project: TestProject,
                                                                tmp_path: Path) -> None:
    collection = tmp_path / "src" / "rbtest" / "tools"
    (collection / "plugins" / "filter").mkdir(parents=True)
    (collection / "galaxy.yml").write_text(
        "namespace: rbtest\nname: tools\nversion: 1.4.0\nreadme: README.md\nauthors: [t]\n")
    (collection / "README.md").write_text("test\n")
    (collection / "plugins" / "filter" / "shout.py").write_text(
        "class FilterModule:\n    def filters(self):\n"
        "        return {'shout': lambda s: str(s).upper()}\n")
    role = project.root / "roles" / "shouter" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(dedent("""
        - name: Write through the collection's filter
          ansible.builtin.copy:
            dest: /etc/req-role-version
            content: "{{ 'v1' | rbtest.tools.shout }}\\n"
        """))
    (project.root / "requirements.yml").write_text(
        f"collections:\n  - name: {collection}\n    type: dir\n")
    name = add_spec(project, f"reqc{project.token}", roles=("shouter",), suite=None)
    built = run_cli("build", "--no-verify", name, cwd=project.root)
    assert built.rc == 0, built.output
    assert file_in(project, project.tag(name)) == "V1"
    planned = run_cli("plan", name, cwd=project.root)
    assert "requirement collection rbtest.tools: 1.4.0" in planned.stdout, planned.output


def test_an_option_as_a_source_runs_nothing(project: TestProject, tmp_path: Path) -> None:
    # From a checkout with an `origin`: an empty or option-like URL must not reach it.
    subprocess.run(["git", "init", "-q", str(project.root)], check=True)
    subprocess.run(["git", "-C", str(project.root), "remote", "add", "origin",
                    str(role_repository(tmp_path / "origin"))], check=True)
    marker = Path(f"/tmp/rolebake-injected-{project.token}")
    name = add_spec(project, f"req{project.token}", roles=("reqrole",), suite=SUITE)
    (project.root / "requirements.yml").write_text(dedent(f"""
        ---
        roles:
          - name: reqrole
            src: "git+--upload-pack=touch {marker};git-upload-pack"
        """))
    try:
        for command in ("plan", "build"):
            result = run_cli(command, name, cwd=project.root, timeout=120)
            assert result.rc == 2, result.output
            errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
            assert len(errors) == 1 and len(result.stderr.strip().splitlines()) == 1, \
                result.output
            assert errors[0].startswith("error: requirements.yml:3: `src:`"), errors
            assert "looks like a command-line option" in errors[0], errors
            assert not marker.exists(), f"{command} ran the command in the source"
        assert not (project.root / ".rolebake" / "requirements").exists()
        assert project.build_containers() == []
        assert spec_images(project.client, name) == set()
    finally:
        marker.unlink(missing_ok=True)
