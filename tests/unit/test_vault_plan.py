"""A vaulted file without a password: `plan` says so, `build` refuses before any container.

No engine: `build` is pointed at a socket nothing answers on, so reaching the
engine would be exit 4; the vault check comes first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret
from click.testing import CliRunner

from rolebake.cli import main
from rolebake.load import plan_build, vault_needed
from rolebake.spec import Project
from tests.conftest import run_cli
from tests.unit.fakes import BASE_IMAGE, FakeEngine

PASSWORD = "correct horse"
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def encrypt(text: str) -> str:
    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    return vault.encrypt(text.encode()).decode()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "shop"
    files = {
        "images/web.yml": f"from: {BASE_IMAGE}\nroles: [site]\ngroups: [web]\n"
                          "inventory: inventory/hosts\n",
        "inventory/hosts": "[web]\nweb1\n",
        "inventory/group_vars/web.yml": encrypt("db_password: s3cret-for-db\n"),
        "roles/site/tasks/main.yml": "- name: hello\n  ansible.builtin.debug: {msg: hi}\n",
        "roles/site/vars/main.yml": "site_name: shop\napi_token: !vault |\n"
                                    + "".join(f"  {line}\n" for line in
                                              encrypt("t0ken-value").splitlines()),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "vault-pass").write_text(PASSWORD + "\n")
    return Project(root)


def test_vaulted_files_and_values_are_found_without_a_password(project: Project) -> None:
    found = vault_needed(project, plan_build(project, ["web"]))
    assert [(project.relative(path), line) for path, line in found] == [
        ("inventory/group_vars/web.yml", 1), ("roles/site/vars/main.yml", 2)]


def test_build_without_the_password_stops_before_the_engine(project: Project) -> None:
    result = run_cli("build", "web", cwd=project.root, env=NO_ENGINE)
    assert result.rc == 2, result.output
    assert result.stderr.startswith("error: inventory/group_vars/web.yml:1: is vault-encrypted "
                                     "and no vault password was given"), result.stderr
    assert "engine" not in result.output


def test_build_with_the_password_prints_no_ansible_warnings(project: Project) -> None:
    result = run_cli("build", "web", "--vault-password-file", "../vault-pass",
                     cwd=project.root, env=NO_ENGINE)
    assert result.rc == 4, result.output  # past the vault, at the engine
    assert "WARNING" not in result.stderr, result.stderr
    assert "RedactingStream" not in result.stderr


def test_plan_notes_the_missing_password_and_checks_a_given_one(
        project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rolebake.engine import DockerEngine

    engine = FakeEngine()
    engine.add_image(BASE_IMAGE, config={"Cmd": ["bash"]})
    monkeypatch.setattr(DockerEngine, "connect", classmethod(lambda cls, *a, **k: engine))
    monkeypatch.chdir(project.root)

    def plan(*args: str) -> Any:
        return CliRunner().invoke(main, ["plan", "web", *args])

    result = plan()
    assert result.exit_code == 0, result.output
    assert ("note: inventory/group_vars/web.yml:1 is vault-encrypted and no vault password "
            "was given: a build needs --vault-password-file FILE") in result.output
    assert "note: roles/site/vars/main.yml:2 is vault-encrypted" in result.output
    as_json = plan("--json")
    assert '"vault_password_needed": [\n    "inventory/group_vars/web.yml:1",' in as_json.output
    given = plan("--vault-password-file", str(tmp_path / "vault-pass"))
    assert given.exit_code == 0, given.output
    assert "vault-encrypted" not in given.output
    (tmp_path / "wrong").write_text("wrong\n")
    wrong = plan("--vault-password-file", str(tmp_path / "wrong"))
    assert wrong.exit_code == 2
    assert "could not be decrypted with the vault password given" in wrong.output
