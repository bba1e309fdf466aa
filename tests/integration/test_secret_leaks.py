"""No secret leaves the build through any output (DESIGN.md invariant 6), on a real engine.

One `rolebake build` of two layers uses every kind of secret at once: a vaulted
group_var beside the playbook, a vaulted var in the spec's `vars:`, a
multi-line `--secret` file, a sensitive var holding a quote, a backslash, a
tab and a non-ASCII character, and a vault password made of the same kinds of
characters. Both layers print every secret (`debug`); the first then fails a
task whose message holds them all, the second provisions cleanly and fails
its testinfra suite with an assertion that shows a secret (so JUnit has
something to leak), and is kept with `--keep-failed` so there is an image to
`docker save`.

Then every output is searched for every value, for each line of the
multi-line one, and for the escaped forms JSON, YAML and Python's repr give
them: stdout (`--json`, decoded too), stderr, the JUnit file (parsed too),
the build logs, every file under `.rolebake/` (which must all be private),
and `docker inspect`, `docker history` and `docker save` of the kept image.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from rolebake.redact import Redactor
from tests.conftest import Run, run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    Build,
    new_project,
    python_base,
    remove_project_images,
)

pytestmark = pytest.mark.integration

ANSIBLE_VAULT = Path(sys.executable).parent / "ansible-vault"

PLAYBOOK = """\
---
- name: Print every secret, then maybe fail with them
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the multi-line secret
      ansible.builtin.slurp:
        src: "{{ rolebake_secrets_dir }}/multi"
      register: multi

    - name: Show the vaulted group var
      ansible.builtin.debug:
        var: group_secret

    - name: Show the vaulted spec var
      ansible.builtin.debug:
        var: spec_vaulted

    - name: Show the sensitive var
      ansible.builtin.debug:
        var: tricky

    - name: Show the multi-line secret
      ansible.builtin.debug:
        msg: "{{ multi.content | b64decode }}"

    - name: Sleep when asked
      ansible.builtin.command: sleep {{ leak_sleep | default(0) }}
      changed_when: false
      when: (leak_sleep | default(0) | int) > 0

    - name: "Fail while printing {{ tricky }}"
      ansible.builtin.fail:
        msg: "{{ group_secret }} {{ spec_vaulted }} {{ tricky }}
          {{ multi.content | b64decode }}"
      when: leak_fail | bool

    - name: Write only a harmless file
      ansible.builtin.copy:
        dest: /etc/leaky.conf
        content: "harmless\\n"
        mode: "0644"
"""

SUITE = """\
TRICKY = {tricky!r}


def test_shows_a_secret_when_it_fails(host):
    assert host.file("/etc/leaky.conf").content_string == TRICKY
"""


@dataclass
class Leaky:
    project: TestProject
    failing: str  # the spec whose task fails
    kept: str  # the spec whose suite fails, kept as :failed-
    crashing: str  # the spec whose build is killed while Ansible runs
    values: dict[str, str]  # what -> plain value
    secret_file: Path
    junit: Path
    built: Run


def _vault_string(name: str, value: str, password_file: Path) -> str:
    out = subprocess.run([str(ANSIBLE_VAULT), "encrypt_string", "--vault-password-file",
                          str(password_file), "--name", name, "--", value],
                         capture_output=True, text=True, check=True).stdout
    assert "$ANSIBLE_VAULT;" in out and value not in out
    return out


def _spec(project: TestProject, name: str, parent: str, values: dict[str, str],
          vaulted: str, *, fail: bool, sleep: int = 0) -> None:
    # Written by hand: `!vault` has no place in yaml.safe_dump. JSON strings are
    # YAML double-quoted scalars, so the tab and the euro sign survive as escapes.
    spec_vaulted = "".join(f"  {line}\n" for line in vaulted.splitlines())
    project.spec(name).write_text(
        f"from: {parent}\n"
        "playbook: playbooks/leaky.yml\n"
        "vars:\n"
        f"  tricky: {json.dumps(values['tricky sensitive var'])}\n"
        f"  leak_fail: {'true' if fail else 'false'}\n"
        f"  leak_sleep: {sleep}\n"
        f"{spec_vaulted}"
        "sensitive_vars: [tricky]\n"
        f"tags: [{project.tag(name)}]\n", encoding="utf-8")


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory,
          engine: docker.DockerClient) -> Iterator[Leaky]:
    tmp = tmp_path_factory.mktemp("leaks")
    project = new_project(tmp / "project", engine)
    # Each value and each line ends in a marker of its own: found anywhere, in any form
    # (even Ansible's tab-expanded one), the marker says which secret leaked.
    mark = [uuid.uuid4().hex[:10] for _ in range(7)]
    values = {
        "vault password": f'vault"pw\\\tö-{mark[0]}',
        "vaulted group var": f'grp"se\\cr\tét-{mark[1]}',
        "vaulted spec var": f"spec-vaulted-{mark[2]}",
        "tricky sensitive var": f'tr"ic\\k\ty€-{mark[3]}',
        "multi-line secret": f"first-line-{mark[4]}\n  second-line-{mark[5]}\n"
                             f"third-line-{mark[6]}",
    }
    (tmp / "vault-pass").write_text(values["vault password"] + "\n", encoding="utf-8")
    (tmp / "multi").write_text(values["multi-line secret"] + "\n", encoding="utf-8")
    playbooks = project.root / "playbooks"
    (playbooks / "leaky.yml").write_text(PLAYBOOK)
    (playbooks / "group_vars").mkdir(exist_ok=True)
    (playbooks / "group_vars" / "all.yml").write_text("---\n" + _vault_string(
        "group_secret", values["vaulted group var"], tmp / "vault-pass"), encoding="utf-8")
    vaulted = _vault_string("spec_vaulted", values["vaulted spec var"], tmp / "vault-pass")
    try:
        parent = python_base(engine, project)
        failing, kept = f"fail{project.token}", f"kept{project.token}"
        _spec(project, failing, parent, values, vaulted, fail=True)
        _spec(project, kept, parent, values, vaulted, fail=False)
        crashing = f"crash{project.token}"
        _spec(project, crashing, parent, values, vaulted, fail=False, sleep=300)
        suite = project.root / "tests" / "images" / kept
        suite.mkdir(parents=True)
        (suite / "test_leaky.py").write_text(
            SUITE.format(tricky=values["tricky sensitive var"]), encoding="utf-8")
        junit = tmp / "junit.xml"
        built = run_cli("build", failing, kept, "--jobs", "2", "--json", "--junit", str(junit),
                        "--keep-failed", "--secret", f"id=multi,src={tmp / 'multi'}",
                        "--vault-password-file", str(tmp / "vault-pass"), cwd=project.root)
        yield Leaky(project, failing, kept, crashing, values, tmp / "multi", junit, built)
    finally:
        remove_project_images(engine, project)


def _needles(values: dict[str, str]) -> dict[str, str]:
    """Every form a value may leak in: itself, its lines, and their escaped forms."""
    found: dict[str, str] = {}
    for what, value in values.items():
        for needle in Redactor([value]).needles:
            found.setdefault(needle, what)
    return found


def _leaks(blob: str | bytes, values: dict[str, str]) -> list[str]:
    text = blob.decode("utf-8", errors="replace") if isinstance(blob, bytes) else blob
    found = {f"{what}: {needle!r}" for needle, what in _needles(values).items()
             if needle in text}
    found.update(f"{what}: marker {marker}" for what, value in values.items()
                 for marker in re.findall(r"-([0-9a-f]{10})$", value, re.M) if marker in text)
    return sorted(found)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_the_build_printed_and_failed_with_the_secrets(leaky: Leaky) -> None:
    built = leaky.built
    assert built.rc != 0, built.output
    report = json.loads(built.stdout)
    layers = {layer["layer"]: layer for layer in report["layers"]}
    failing, kept = layers[leaky.failing], layers[leaky.kept]
    assert failing["error"]["exit_code"] == 1, failing
    assert "Fail while printing ********" in failing["error"]["message"]
    assert kept["error"]["exit_code"] == 3, kept
    assert kept["failed_tag"], kept
    # Each secret was printed (and hidden): the debug tasks ran with real values.
    log = Path(failing["log"]).read_text(encoding="utf-8")
    for var in ("group_secret", "spec_vaulted", "tricky"):
        assert re.search(rf'^ *{var}: "?\*{{8}}"?$', log, re.M), log


def test_no_secret_in_stdout_stderr_or_json(leaky: Leaky) -> None:
    assert _leaks(leaky.built.stdout, leaky.values) == []
    assert _leaks(leaky.built.stderr, leaky.values) == []
    decoded = "\n".join(_strings(json.loads(leaky.built.stdout)))
    assert _leaks(decoded, leaky.values) == []
    assert "Traceback" not in leaky.built.stderr


def test_no_secret_in_junit(leaky: Leaky) -> None:
    raw = leaky.junit.read_text(encoding="utf-8")
    assert "test_shows_a_secret_when_it_fails" in raw
    assert _leaks(raw, leaky.values) == []
    root = ET.parse(leaky.junit).getroot()
    parsed = [text for element in root.iter()
              for text in [element.text or "", *element.attrib.values()]]
    assert _leaks("\n".join(parsed), leaky.values) == []
    assert any("********" in text for text in parsed), raw


def test_nothing_under_state_dir_leaks_and_all_is_private(leaky: Leaky) -> None:
    state = leaky.project.root / ".rolebake"
    logs = list((state / "logs").glob("*.log"))
    assert len(logs) == 2, logs
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path}: {mode:o}"
        else:
            assert mode == 0o600, f"{path}: {mode:o}"
            assert _leaks(path.read_bytes(), leaky.values) == [], path
    # ansible-runner's private data dirs (vars, output, environment) are gone.
    assert [p.name for p in (state / "tmp").iterdir()] == []


def test_no_secret_in_inspect_history_or_save(leaky: Leaky) -> None:
    report = json.loads(leaky.built.stdout)
    (kept,) = [layer for layer in report["layers"] if layer["layer"] == leaky.kept]
    image = kept["failed_tag"]
    saved = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
    assert len(saved) > 1_000_000  # the whole image, every layer, uncompressed
    assert _leaks(saved, leaky.values) == []
    for argv in (["docker", "history", "--no-trunc", image], ["docker", "inspect", image]):
        out = subprocess.run(argv, capture_output=True, check=True).stdout
        assert _leaks(out, leaky.values) == [], argv


def test_a_killed_run_leaves_no_password_in_env_and_clean_sweeps_it(leaky: Leaky) -> None:
    """SIGKILL while Ansible runs: the orphaned scratch folder (ansible-runner's private
    data dir and artifacts) is private, its recorded environment holds no
    ROLEBAKE_VAULT_PASSWORD, and `rolebake clean` removes it with the container."""
    project = leaky.project
    password = leaky.values["vault password"]
    tmp = project.root / ".rolebake" / "tmp"
    before = set(tmp.iterdir()) if tmp.is_dir() else set()
    build = Build(project, leaky.crashing, "--no-verify", "--secret",
                  f"id=multi,src={leaky.secret_file}", env={"ROLEBAKE_VAULT_PASSWORD": password})
    try:
        build.wait_for(r"task Sleep when asked", timeout=600)
        build.proc.kill()  # SIGKILL: no cleanup of any kind runs
        build.proc.wait(timeout=60)
    finally:
        build.kill()
    orphans = set(tmp.iterdir()) - before
    assert len(orphans) == 1, orphans
    (orphan,) = orphans
    commands = list(orphan.glob("artifacts/*/command"))
    assert commands, sorted(p.relative_to(orphan) for p in orphan.rglob("*"))
    recorded = json.loads(commands[0].read_text(encoding="utf-8"))
    assert "ROLEBAKE_VAULT_PASSWORD" not in recorded["env"]
    assert recorded["env"]["ANSIBLE_VAULT_PASSWORD_FILE"].startswith(str(orphan))
    assert password not in commands[0].read_text(encoding="utf-8")
    # Private: the folder itself (and .rolebake, tmp) is 0700, so whatever Ansible wrote
    # inside with its own modes is out of others' reach; rolebake's own files are 0600.
    for folder in (orphan, tmp, tmp.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("vault-password", "env/extravars", "inventory/hosts.yml", "target-vars.json"):
        assert stat.S_IMODE((orphan / name).stat().st_mode) == 0o600, name
    listed = run_cli("clean", "--dry-run", "--older-than", "0s", "--label",
                     f"rolebake.layer={leaky.crashing}", cwd=project.root)
    assert listed.rc == 0, listed.output
    assert f"would remove scratch folder .rolebake/tmp/{orphan.name}" in listed.stdout
    assert orphan.exists()
    cleaned = run_cli("clean", "--older-than", "0s", "--label",
                      f"rolebake.layer={leaky.crashing}", cwd=project.root)
    assert cleaned.rc == 0, cleaned.output
    assert not orphan.exists()
    assert [c for c in project.build_containers() if leaky.crashing in c] == []


# Encoded forms: a role that prints and keeps `{{ secret | b64encode }}` ---------------------

ENCODING_PLAYBOOK = """\
---
- name: Print and keep secrets in encoded forms
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the secret file (slurp hands it over base64-encoded)
      ansible.builtin.slurp:
        src: "{{ rolebake_secrets_dir }}/token"
      register: token

    - name: Show the secrets encoded
      ansible.builtin.debug:
        msg: "b64 {{ tricky | b64encode }} file {{ token.content }}
          json {{ tricky | to_json }} url {{ tricky | urlencode }}"

    - name: Keep a base64 copy in the image
      ansible.builtin.copy:
        dest: /etc/b64copy
        content: "{{ tricky | b64encode }}\\n{{ token.content }}\\n"
        mode: "0644"
"""


def test_encoded_secrets_appear_nowhere_and_fail_the_scan(
        tmp_path: Path, engine: docker.DockerClient) -> None:
    import base64

    from tests.integration.tinyproject import spec_images

    project = new_project(tmp_path / "project", engine)
    mark = uuid.uuid4().hex[:10]
    values = {"tricky sensitive var": f'b64"se\\cr\tét €-{mark}',
              "secret file": f"token-{uuid.uuid4().hex}-{mark}"}
    (tmp_path / "token").write_text(values["secret file"] + "\n", encoding="utf-8")
    (project.root / "playbooks" / "encoding.yml").write_text(ENCODING_PLAYBOOK)
    name = f"enc{project.token}"
    try:
        project.spec(name).write_text(
            f"from: {python_base(engine, project)}\n"
            "playbook: playbooks/encoding.yml\n"
            f"vars:\n  tricky: {json.dumps(values['tricky sensitive var'])}\n"
            "sensitive_vars: [tricky]\n"
            f"tags: [{project.tag(name)}]\n", encoding="utf-8")
        junit = tmp_path / "junit.xml"
        built = run_cli("build", name, "--json", "--junit", str(junit), "--keep-failed",
                        "--secret", f"id=token,src={tmp_path / 'token'}", cwd=project.root)
        assert built.rc == 1, built.output
        (layer,) = json.loads(built.stdout)["layers"]
        message = layer["error"]["message"]
        assert "a build secret was found in the image" in message and "/etc/b64copy" in message
        assert "removed despite --keep-failed" in message, message
        assert "removed, not kept: it failed the secret scan" in built.stderr, built.stderr
        assert not layer.get("failed_tag"), layer
        assert spec_images(engine, name) == set()  # no kept image, no untagged one either

        # The role did print them (hidden): the log shows the task's redacted line.
        log = Path(layer["log"]).read_text(encoding="utf-8")
        assert re.search(r"b64 \*{8} file \*{8}", log), log
        plain = values["tricky sensitive var"].encode()
        encoded = {base64.b64encode(plain).decode(), base64.b64encode(plain).decode().rstrip("="),
                   base64.b64encode(values["secret file"].encode() + b"\n").decode(),
                   json.dumps(values["tricky sensitive var"])[1:-1]}
        artefacts = {"stdout": built.stdout, "stderr": built.stderr, "log": log,
                     "junit": junit.read_text(encoding="utf-8") if junit.exists() else "",
                     "json decoded": "\n".join(_strings(json.loads(built.stdout)))}
        for where, text in artefacts.items():
            assert _leaks(text, values) == [], where
            assert not [form for form in encoded if form in text], where
    finally:
        remove_project_images(engine, project)
