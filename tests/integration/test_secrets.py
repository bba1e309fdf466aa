"""Secrets on a real engine (DESIGN.md invariant 6).

One build uses all three kinds of secret: a vaulted var (ansible-vault
encrypt_string, in the role's vars), a `--secret` file the role reads from
{{ rolebake_secrets_dir }}, and a spec var marked `sensitive_vars:`. The role
writes only digests of them into the image, which proves it used them; then
`docker save`, `docker history --no-trunc` and `docker inspect` of the result
are grepped for every value. A second role copies each secret into the image:
that build fails with exit 1, untagged, naming the files but no value.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import Run, run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import add_role, add_spec, new_project, remove_project_images

pytestmark = pytest.mark.integration

# Beside the python running the tests: a worktree has no .venv of its own.
ANSIBLE_VAULT = Path(sys.executable).parent / "ansible-vault"

USE_TASKS = """\
---
- name: "Announce the api token {{ api_token }}"
  ansible.builtin.debug:
    msg: "the api token is {{ api_token }}"

- name: Read the build secret
  ansible.builtin.slurp:
    src: "{{ rolebake_secrets_dir }}/token"
  register: secretive_token
  no_log: true

- name: Keep only digests of the secrets
  ansible.builtin.copy:
    dest: /etc/secretive.digests
    mode: "0644"
    content: |
      {{ secretive_token.content | b64decode | trim | hash('sha256') }}
      {{ secretive_vaulted | hash('sha256') }}
      {{ api_token | hash('sha256') }}
"""

LEAK_TASKS = """\
---
- name: Copy the build secret into the image
  ansible.builtin.copy:
    src: "{{ rolebake_secrets_dir }}/token"
    remote_src: true
    dest: /etc/leaked-token
    mode: "0600"

- name: Write the vaulted value into the image
  ansible.builtin.copy:
    dest: /opt/leaked-vault.txt
    content: "{{ secretive_vaulted }}"
    mode: "0600"
  no_log: true

- name: Put the sensitive var in an env file
  ansible.builtin.copy:
    dest: /etc/default/leaky
    content: "API_TOKEN={{ api_token }}\\n"
    mode: "0600"
  no_log: true
"""


@dataclass
class Secrets:
    project: TestProject
    spec: str
    leaky: str
    values: dict[str, str]  # what -> plain value
    args: list[str]
    built: Run
    report: dict


def vault_string(name: str, value: str, password_file: Path) -> str:
    out = subprocess.run([str(ANSIBLE_VAULT), "encrypt_string", "--vault-password-file",
                          str(password_file), value, "--name", name],
                         capture_output=True, text=True, check=True).stdout
    assert "$ANSIBLE_VAULT;" in out and value not in out
    return out


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory,
            engine: docker.DockerClient) -> Iterator[Secrets]:
    tmp = tmp_path_factory.mktemp("secrets")
    project = new_project(tmp / "project", engine)
    values = {
        "vault password": f"vault-pw-{uuid.uuid4().hex}",
        "vaulted var": f"vaulted-{uuid.uuid4().hex}",
        "secret file": f"file-secret-{uuid.uuid4().hex}",
        "sensitive var": f"api-token-{uuid.uuid4().hex}",
    }
    (tmp / "vault-pass").write_text(values["vault password"] + "\n")
    (tmp / "token").write_text(values["secret file"] + "\n")
    vaulted = vault_string("secretive_vaulted", values["vaulted var"], tmp / "vault-pass")
    try:
        add_role(project, "secretive", {"tasks/main.yml": USE_TASKS,
                                        "vars/main.yml": "---\n" + vaulted})
        add_role(project, "leaky", {"tasks/main.yml": LEAK_TASKS,
                                    "vars/main.yml": "---\n" + vaulted})
        common: dict[str, Any] = {"vars": {"api_token": values["sensitive var"]},
                                  "sensitive_vars": ["api_token"]}
        spec = add_spec(project, f"s{project.token}", roles=("secretive",), suite=None,
                        **common)
        leaky = add_spec(project, f"l{project.token}", roles=("leaky",), suite=None, **common)
        args = ["--secret", f"id=token,src={tmp / 'token'}",
                "--vault-password-file", str(tmp / "vault-pass")]
        built = run_cli("build", spec, "--json", *args, cwd=project.root)
        assert built.rc == 0, built.output
        yield Secrets(project, spec, leaky, values, args, built, json.loads(built.stdout))
    finally:
        remove_project_images(engine, project)


def hits(blob: bytes, values: dict[str, str]) -> list[str]:
    return [what for what, value in values.items() if value.encode() in blob]


def test_the_role_used_every_secret(secrets: Secrets) -> None:
    digests = secrets.project.client.containers.run(
        secrets.project.tag(secrets.spec), ["cat", "/etc/secretive.digests"], entrypoint=[],
        remove=True).decode().split()
    sha = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in secrets.values.items()}
    assert digests == [sha["secret file"], sha["vaulted var"], sha["sensitive var"]]


def test_no_secret_in_save_history_or_inspect(secrets: Secrets) -> None:
    tag = secrets.project.tag(secrets.spec)
    saved = subprocess.run(["docker", "save", tag], capture_output=True, check=True).stdout
    assert len(saved) > 1_000_000  # the whole image, every layer, uncompressed
    assert hits(saved, secrets.values) == []
    history = subprocess.run(["docker", "history", "--no-trunc", tag], capture_output=True,
                             check=True).stdout
    assert hits(history, secrets.values) == []
    inspect = subprocess.run(["docker", "inspect", tag], capture_output=True, check=True).stdout
    assert hits(inspect, secrets.values) == []
    # The tmpfs the secret file lived on is not in the image either.
    listing = secrets.project.client.containers.run(
        tag, ["/bin/sh", "-c", "ls -A /run/rolebake-secrets 2>&1; true"], entrypoint=[],
        remove=True).decode()
    assert "token" not in listing


def test_sensitive_var_is_only_a_keyed_digest_in_the_labels(secrets: Secrets) -> None:
    project = secrets.project
    labels = project.client.images.get(project.tag(secrets.spec)).labels
    inputs = json.loads(labels["rolebake.inputs"])
    digest = inputs["vars"]["api_token"]
    assert digest.startswith("sensitive:")
    value = json.dumps(secrets.values["sensitive var"])
    # Keyed by the var's name alone, anyone holding the image could test guesses
    # against the label; the key is a secret salt kept out of the image.
    by_name = hashlib.blake2b(value.encode(), key=b"api_token", digest_size=16).hexdigest()
    assert digest != f"sensitive:{by_name}"
    assert hashlib.sha256(value.encode()).hexdigest()[:32] not in digest
    salt = project.root / ".rolebake" / "sensitive-salt"
    assert salt.stat().st_mode & 0o077 == 0
    key = hashlib.sha256(salt.read_bytes() + b"\0api_token").digest()
    assert digest == "sensitive:" + hashlib.blake2b(value.encode(), key=key,
                                                    digest_size=16).hexdigest()


def test_no_secret_in_report_progress_or_log(secrets: Secrets) -> None:
    built = secrets.built
    assert hits(built.stdout.encode(), secrets.values) == []  # the JSON report
    assert hits(built.stderr.encode(), secrets.values) == []  # the progress output
    assert "Announce the api token ********" in built.stderr
    (layer,) = secrets.report["layers"]
    log = Path(layer["log"]).read_text()
    assert "the api token is ********" in log
    assert hits(log.encode(), secrets.values) == []


def test_same_secrets_same_cache_key(secrets: Secrets) -> None:
    again = run_cli("build", secrets.spec, "--json", *secrets.args, cwd=secrets.project.root)
    assert again.rc == 0, again.output
    assert json.loads(again.stdout)["layers"][0]["cached"] is True


def test_a_role_that_copies_secrets_into_the_image_fails_untagged(secrets: Secrets) -> None:
    project = secrets.project
    result = run_cli("build", secrets.leaky, *secrets.args, cwd=project.root)
    assert result.rc == 1, result.output
    assert hits(result.output.encode(), secrets.values) == []
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "a build secret was found in the image" in errors[0]
    for path in ("/etc/leaked-token", "/opt/leaked-vault.txt", "/etc/default/leaky"):
        assert path in errors[0], errors[0]
    assert "Traceback" not in result.output
    assert project.image_id(project.tag(secrets.leaky)) is None
    assert project.client.images.list(all=True, filters={
        "label": f"rolebake.spec={secrets.leaky}"}) == []
    assert project.build_containers() == []
