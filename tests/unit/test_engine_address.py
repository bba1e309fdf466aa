"""DOCKER_HOST as an input (DESIGN.md invariant 7): malformed ssh:// URLs are exit 4 in one
line, never an option to ssh nor an internal error; tcp:// without TLS is named, and a build
with secrets is refused over it unless --allow-insecure-engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rolebake.cli import main
from rolebake.engine import engine_address
from rolebake.errors import EngineUnavailable
from tests.conftest import REPO


@pytest.mark.parametrize("url", [
    "ssh://host:-oX",
    "ssh://host:-oProxyCommand=touch /tmp/x",
    "ssh://-oProxyCommand=x",
    "ssh://-oProxyCommand=x@host",
    "ssh://user@-host",
    "ssh://host:99999",
    "ssh://host:0",
    "ssh://host:22x",
    "ssh://",
    "ssh://user@",
    "ssh://ho st",
    "tcp://host:abc",
])
def test_a_malformed_engine_url_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        engine_address({"DOCKER_HOST": url})
    assert caught.value.exit_code == 4
    assert "\n" not in caught.value.message and url in caught.value.message


@pytest.mark.parametrize(("url", "scheme"), [
    ("ssh://builder@build-01.example.com:2222", "ssh"),
    ("ssh://build-01", "ssh"),
    ("ssh://root@[::1]:22", "ssh"),
    ("ssh://10.0.0.7", "ssh"),
    ("unix:///var/run/docker.sock", "unix"),
    ("tcp://127.0.0.1:2375", "tcp"),
    ("localhost:2375", "tcp"),
])
def test_good_engine_urls_pass(url: str, scheme: str) -> None:
    assert engine_address({"DOCKER_HOST": url}).scheme == scheme


@pytest.mark.parametrize(("env", "insecure"), [
    ({"DOCKER_HOST": "tcp://10.0.0.7:2375"}, True),
    ({"DOCKER_HOST": "http://10.0.0.7:2375"}, True),
    ({"DOCKER_HOST": "tcp://10.0.0.7:2376", "DOCKER_TLS_VERIFY": ""}, True),
    ({"DOCKER_HOST": "tcp://10.0.0.7:2376", "DOCKER_TLS_VERIFY": "1"}, False),
    ({"DOCKER_HOST": "tcp://10.0.0.7:2376", "DOCKER_CERT_PATH": "/certs"}, False),
    ({"DOCKER_HOST": "https://10.0.0.7:2376"}, False),
    ({"DOCKER_HOST": "ssh://10.0.0.7"}, False),
    ({}, False),
])
def test_tcp_without_tls_is_insecure(env: dict[str, str], insecure: bool) -> None:
    assert engine_address(env).insecure is insecure


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    shutil.copytree(REPO / "roles" / "common", root / "roles" / "common")
    (root / "images" / "base.yml").write_text("from: rolebake/debian:bookworm\nroles: [common]\n")
    (tmp_path / "token").write_text("s3cr3t-token-value\n")
    monkeypatch.chdir(root)
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "ROLEBAKE_VAULT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return root


def test_a_malformed_ssh_engine_is_exit_4_for_the_cli(project: Path) -> None:
    result = CliRunner().invoke(main, ["plan", "base"], env={"DOCKER_HOST": "ssh://host:-oX"})
    output = result.stderr + result.stdout
    assert result.exit_code == 4, output
    assert "internal error" not in output and "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == ["error: DOCKER_HOST 'ssh://host:-oX': the port is not a number from 1 to "
                      "65535"], output


def test_secrets_over_tcp_without_tls_are_refused(project: Path, tmp_path: Path) -> None:
    # Nothing listens on port 9: the refusal must come before any connection.
    env = {"DOCKER_HOST": "tcp://127.0.0.1:9"}
    secret = f"id=token,src={tmp_path / 'token'}"
    result = CliRunner().invoke(main, ["build", "--secret", secret, "base"], env=env)
    output = result.stderr + result.stdout
    assert result.exit_code == 2, output
    assert "warning: DOCKER_HOST=tcp://127.0.0.1:9 is tcp:// without TLS" in output
    assert "this build has secrets and DOCKER_HOST=tcp://127.0.0.1:9 has no TLS" in output
    assert "--allow-insecure-engine" in output
    assert "s3cr3t-token-value" not in output

    allowed = CliRunner().invoke(main, ["build", "--allow-insecure-engine", "--secret", secret,
                                        "base"], env=env)
    output = allowed.stderr + allowed.stdout
    assert allowed.exit_code == 4, output  # it went on, to the engine that is not there
    assert "warning: DOCKER_HOST=tcp://127.0.0.1:9 is tcp:// without TLS" in output


def test_a_build_without_secrets_over_tcp_is_named_not_refused(project: Path) -> None:
    result = CliRunner().invoke(main, ["plan", "base"], env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    output = result.stderr + result.stdout
    assert result.exit_code == 4, output
    assert "warning: DOCKER_HOST=tcp://127.0.0.1:9 is tcp:// without TLS" in output
