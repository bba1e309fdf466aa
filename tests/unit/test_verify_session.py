"""The testinfra backend over a session, with the agent run locally in place of the engine exec."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from rolebake import verify_session
from rolebake.engine import SessionResult
from rolebake.engine.session import agent_argv, agent_session
from tests.unit.test_agent import LocalStream


class FakeEngine:
    """What the backend asks of the engine when the container has no python."""

    def __init__(self) -> None:
        self.execs: list[list[str]] = []

    def exec_demuxed(self, container: object, argv: list[str]) -> SessionResult:
        import subprocess

        self.execs.append(argv)
        done = subprocess.run(argv, capture_output=True, check=False)
        return SessionResult(rc=done.returncode, stdout=done.stdout, stderr=done.stderr)


@pytest.fixture(params=["agent", "exec"])
def host(request: pytest.FixtureRequest,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[testinfra.host.Host]:
    verify_session.register()
    backend_host = testinfra.get_host(f"{verify_session.SCHEME}://box")
    backend = backend_host.backend
    backend._engine = FakeEngine()
    backend._opened = True
    if request.param == "agent":
        stream = LocalStream(agent_argv(sys.executable))
        backend._session = backend._stack.enter_context(agent_session(stream, sys.executable))
    yield backend_host
    backend._close()


def test_results_are_those_of_the_docker_backend(host: testinfra.host.Host,
                                                 tmp_path: Path) -> None:
    assert host.backend.NAME == "docker"
    result = host.run("printf 'a\\000b'; echo oops >&2; exit 7")
    assert (result.rc, result.stdout_bytes, result.stderr) == (7, b"a\x00b", "oops\n")
    assert host.run("echo %s", "quoted 'arg'").stdout == "quoted 'arg'\n"
    # state set by one command is not seen by the next, as with separate execs
    assert host.run("X=1; echo ${X}").stdout == "1\n"
    assert host.run("echo ${X:-unset}").stdout == "unset\n"
    assert host.file(str(tmp_path)).is_directory
    assert host.exists("sh")
    # through the agent no command became an exec; without it each one did
    execs = host.backend._engine.execs
    assert (execs == []) == (host.backend._session is not None)


def test_a_dead_agent_falls_back_to_execs(monkeypatch: pytest.MonkeyPatch) -> None:
    verify_session.register()
    backend = testinfra.get_host(f"{verify_session.SCHEME}://dead").backend
    backend._engine = FakeEngine()
    backend._opened = True
    stream = LocalStream(agent_argv(sys.executable))
    backend._session = backend._stack.enter_context(agent_session(stream, sys.executable))
    stream.proc.kill()
    stream.proc.wait()
    assert backend.run("echo %s", "fine").stdout == "fine\n"
    assert backend._session is None and backend._engine.execs


def test_verification_borrows_the_lent_python_only_when_it_exists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from rolebake.provision import pytoolchain
    from rolebake.release import Release
    from tests.unit.fakes import FakeEngine

    monkeypatch.delenv(pytoolchain.TOOLCHAIN_ENV, raising=False)
    engine = FakeEngine()
    bookworm = Release("debian", "12", "bookworm", ("debian",))
    labels = {"rolebake.build-id": "b1"}
    # none made yet: verification makes none, and goes without
    assert pytoolchain.lent_mount(engine, bookworm, labels) is None
    assert pytoolchain.lent_mount(engine, None, labels) is None
    toolchain = engine.add_image(pytoolchain.tag_for(bookworm),
                                 labels={pytoolchain.KIND_LABEL: "python"})
    mount = pytoolchain.lent_mount(engine, bookworm, labels)
    assert mount is not None
    assert (mount["target"], mount["read_only"]) == (pytoolchain.VOLUME, True)
    assert toolchain.id.split(":")[-1][:12] in mount["source"]
    monkeypatch.setenv(pytoolchain.TOOLCHAIN_ENV, "none")
    assert pytoolchain.lent_mount(engine, bookworm, labels) is None
