"""The one-shell testinfra backend, with the shell run locally in place of the engine exec."""

from __future__ import annotations

from pathlib import Path

import pytest
import testinfra

from rolebake import verify_session
from tests.unit.test_agent import LocalStream


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> testinfra.host.Host:
    # The shell's output files go to the container's /dev/shm; here, to a temp dir.
    monkeypatch.setattr(verify_session, "_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(verify_session, "_ERR", str(tmp_path / "err"))
    verify_session.register()
    backend_host = testinfra.get_host(f"{verify_session.SCHEME}://box")
    stream = LocalStream(["/bin/sh"])
    monkeypatch.setattr(backend_host.backend, "_session", lambda: stream)
    return backend_host


def test_results_are_those_of_the_docker_backend(host: testinfra.host.Host,
                                                 tmp_path: Path) -> None:
    assert host.backend.NAME == "docker"
    result = host.run("printf 'a\\000b'; echo oops >&2; exit 7")
    assert (result.rc, result.stdout_bytes, result.stderr) == (7, b"a\x00b", "oops\n")
    assert host.run("echo %s", "quoted 'arg'").stdout == "quoted 'arg'\n"
    # the shell stays: state set by one command is seen by the next one's shell only
    # through files, as with separate execs
    assert host.run("X=1; echo ${X}").stdout == "1\n"
    assert host.run("echo ${X:-unset}").stdout == "unset\n"
    assert host.file(str(tmp_path)).is_directory
    assert host.exists("sh")
