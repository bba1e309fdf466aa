"""A build's secrets: where vaulted values are found, how Ansible gets them, and .rolebake/.

No engine: specs, vault decryption, the vars file handed to Ansible, and the
private state folder with its scratch folders, swept after a real process dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import EncryptedString, VaultLib, VaultSecret
from click.testing import CliRunner

from rolebake.cache import layer_inputs
from rolebake.cli import main
from rolebake.cli.running import handled
from rolebake.errors import InputError
from rolebake.load import plan_build, plan_secrets
from rolebake.provision import provisioner_class
from rolebake.provision.ansible import _extravars
from rolebake.spec import Project
from rolebake.state import private_dir, scratch_dir, sweep, write_private
from rolebake.yamlfile import Vaulted
from tests.conftest import REPO

PASSWORD = "correct horse battery staple"


def encrypt(value: str, password: str = PASSWORD) -> str:
    vault = VaultLib([("default", VaultSecret(password.encode()))])
    return vault.encrypt(value.encode()).decode()


def vault_block(name: str, value: str, indent: int = 0) -> str:
    pad = " " * indent
    body = "".join(f"{pad}  {line}\n" for line in encrypt(value).splitlines())
    return f"{pad}{name}: !vault |\n{body}"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    shutil.copytree(REPO / "roles", root / "roles")
    (root / "playbooks").mkdir()
    (root / "playbooks" / "site.yml").write_text(
        "- hosts: all\n  roles: [common]\n", encoding="utf-8")
    return Project(root)


def write_spec(project: Project, name: str, body: str) -> None:
    project.spec_path(name).write_text(
        "from: rolebake/debian:bookworm\n" + textwrap.dedent(body), encoding="utf-8")


# Vaulted values wherever Ansible loads them -------------------------------------------------


def test_vaulted_spec_vars_and_group_vars_are_decrypted_on_the_host(project: Project) -> None:
    write_spec(project, "app", "playbook: playbooks/site.yml\nvars:\n"
               + vault_block("api_token", "spec-token-value", indent=2)
               + "  plain: visible\n")
    group_vars = project.root / "playbooks" / "group_vars"
    group_vars.mkdir()
    (group_vars / "all.yml").write_text(
        "---\n" + vault_block("db_password", "group-var-value"), encoding="utf-8")
    (project.root / "playbooks" / "host_vars").mkdir()
    (project.root / "playbooks" / "host_vars" / "rolebake-build.yml").write_text(
        encrypt("host_secret: host-var-value\nport: 5432\n"), encoding="utf-8")
    plan = plan_build(project, ["app"])
    assert isinstance(plan.layer("app").settings.variables["api_token"], Vaulted)
    found = plan_secrets(project, plan, env_password=PASSWORD)
    assert found is not None
    values = found.values()
    assert {"spec-token-value", "group-var-value", "host-var-value", PASSWORD} <= set(values)
    assert "5432" not in values  # numbers in a vaulted file would match anywhere
    assert "visible" not in values
    assert not any("$ANSIBLE_VAULT" in v for v in values)  # ciphertext is not a secret


def test_group_vars_beside_the_playbook_are_inputs(project: Project) -> None:
    write_spec(project, "app", "playbook: playbooks/site.yml\n")
    group_vars = project.root / "playbooks" / "group_vars"
    group_vars.mkdir()
    (group_vars / "all.yml").write_text("x: 1\n", encoding="utf-8")
    layer = plan_build(project, ["app"]).layer("app")
    files = provisioner_class("ansible")(project, layer).input_files()
    assert group_vars / "all.yml" in files


@pytest.mark.parametrize(("password", "message"), [
    (None, "is vault-encrypted and no vault password was given"),
    ("wrong", "could not be decrypted with the vault password given"),
])
def test_a_vaulted_spec_var_without_its_password_is_bad_input(
        project: Project, password: str | None, message: str) -> None:
    write_spec(project, "app", "roles: [common]\nvars:\n  port: 1\n"
               + vault_block("api_token", "spec-token-value", indent=2))
    with pytest.raises(InputError) as caught:
        plan_secrets(project, plan_build(project, ["app"]), env_password=password)
    assert caught.value.path == project.spec_path("app") and caught.value.line == 5
    assert message in caught.value.message
    assert "spec-token-value" not in str(caught.value)


def test_a_vaulted_spec_var_reaches_ansible_still_encrypted(project: Project,
                                                            tmp_path: Path) -> None:
    write_spec(project, "app", "roles: [common]\nvars:\n  port: 8080\n  name: 'yes'\n"
               + vault_block("api_token", "spec-token-value", indent=2))
    layer = plan_build(project, ["app"]).layer("app")
    text = _extravars(layer.settings.variables)
    assert "spec-token-value" not in text and "!vault |" in text
    extravars = tmp_path / "extravars"
    extravars.write_text(text, encoding="utf-8")
    # Ansible's own loader reads it: plain vars as they were, the token as a vaulted value.
    loaded = DataLoader().load_from_file(str(extravars))
    assert loaded["port"] == 8080 and loaded["name"] == "yes"
    assert isinstance(loaded["api_token"], EncryptedString)
    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    assert vault.decrypt(loaded["api_token"]._ciphertext) == b"spec-token-value"


def test_a_vaulted_var_keys_the_cache_by_its_ciphertext_not_its_value(project: Project) -> None:
    write_spec(project, "app", "roles: [common]\nvars:\n"
               + vault_block("api_token", "spec-token-value", indent=2))
    layer = plan_build(project, ["app"]).layer("app")
    inputs = layer_inputs(project, layer, "sha256:parent", [], "ansible-core 9")
    import hashlib
    import json
    plain = hashlib.sha256(json.dumps("spec-token-value").encode()).hexdigest()[:32]
    assert inputs.values["vars"]["api_token"] != plain
    assert "spec-token-value" not in inputs.to_label()


def test_sensitive_vars_of_a_variant_are_known(project: Project) -> None:
    write_spec(project, "app", """\
        roles: [common]
        sensitive_vars: [token]
        variants:
          dev: {roles_append: [common], vars: {token: dev-token-value}}
        """)
    found = plan_secrets(project, plan_build(project, ["app:dev"]))
    assert found is not None and "dev-token-value" in found.values()


# The vault password never in the environment --------------------------------------------------


@pytest.fixture
def env_command() -> Iterator[dict[str, Any]]:
    box: dict[str, Any] = {}

    @click.command("env-for-test")
    @click.pass_context
    @handled
    def command(ctx: click.Context) -> None:
        box["env"] = os.environ.get("ROLEBAKE_VAULT_PASSWORD")
        box["read"] = ctx.meta.get("vault_password_env")

    main.add_command(command)
    try:
        yield box
    finally:
        main.commands.pop("env-for-test", None)


def test_the_cli_takes_the_vault_password_out_of_the_environment(
        env_command: dict[str, Any]) -> None:
    result = CliRunner().invoke(main, ["env-for-test"],
                                env={"ROLEBAKE_VAULT_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.output
    assert env_command == {"env": None, "read": PASSWORD}


# .rolebake/ is private; scratch folders outlive no process ------------------------------------


def test_state_folders_and_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / ".rolebake"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as an older rolebake left it
    logs = private_dir(state, "logs")
    assert (state.stat().st_mode & 0o777, logs.stat().st_mode & 0o777) == (0o700, 0o700)
    old = logs / "old.log"
    old.write_text("x")
    old.chmod(0o644)
    write_private(old, "y")
    assert old.stat().st_mode & 0o777 == 0o600 and old.read_text() == "y"


def test_a_project_makes_its_state_private(project: Project) -> None:
    from rolebake.cache import sensitive_salt

    sensitive_salt(project)
    for path in [project.state_dir, *project.state_dir.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


CHILD = """
import sys, time
from pathlib import Path
from rolebake.state import scratch_dir
with scratch_dir(Path(sys.argv[1]), "ansible-") as path:
    (path / "artifacts").mkdir()
    (path / "artifacts" / "stdout").write_text("secret output")
    print(path, flush=True)
    time.sleep(600)
"""


def _start_child(base: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(base)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_scratch_of_a_killed_process_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    base = private_dir(tmp_path / ".rolebake", "tmp")
    dead, dead_dir = _start_child(base)
    live, live_dir = _start_child(base)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
        assert dead_dir.is_dir() and live_dir.is_dir()
        assert sweep(base, dry_run=True) == [dead_dir]
        assert dead_dir.is_dir()
        # The next scratch folder made beside them sweeps the orphan first.
        with scratch_dir(base, "ansible-") as mine:
            assert not dead_dir.exists()
            assert live_dir.is_dir() and mine.is_dir()
            assert mine.stat().st_mode & 0o777 == 0o700
        assert not mine.exists()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert sweep(base) == [live_dir] and not live_dir.exists()
