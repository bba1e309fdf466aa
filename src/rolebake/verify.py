"""Verification: an image's metadata checks and its testinfra suite, before it gets its name.

A container is started from the new image id (never the tag), running its own
command so services are up; rolebake waits until it is ready, then runs
pytest-testinfra against it: the `docker` backend, with every command going
through one shell in the container (verify_session.py) instead of a docker CLI
process each. The container is removed afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake import redact, suite_sides
from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, ContainerHandle, Engine
from rolebake.errors import RolebakeError, TestsFailed
from rolebake.image import commit_config
from rolebake.listeners import (
    LISTENERS_SCRIPT,
    Listener,
    merge_owners,
    owners_to_ask,
    parse_listeners,
)
from rolebake.provision import pytoolchain
from rolebake.release import release_of
from rolebake.rootfs import cache_dir
from rolebake.spec import ImageConfig, ReadyCheck


@dataclass(frozen=True)
class TestCase:
    """One check and its outcome."""

    __test__ = False  # not a pytest class

    suite: str  # "metadata" or the testinfra file
    name: str
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    seconds: float = 0.0
    only: str = ""  # "container" or "vm": marked rolebake_only (suite_sides.py)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"suite": self.suite, "name": self.name, "outcome": self.outcome,
                "message": self.message, "seconds": round(self.seconds, 3),
                "only": self.only or None}


@dataclass(frozen=True)
class VerifyResult:
    """Everything verification found for one image."""

    image_id: str
    cases: tuple[TestCase, ...]

    @property
    def failed(self) -> tuple[TestCase, ...]:
        """Cases that failed or errored."""
        return tuple(c for c in self.cases if c.outcome in ("failed", "error"))

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"image_id": self.image_id, "ok": self.ok,
                "cases": [c.to_dict() for c in self.cases]}


def check_metadata(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[TestCase]:
    """Compare a committed image config with what the spec asked for, as CST's metadataTest.

    Args:
        expected: the config rolebake committed (see engine.commit_config).
        actual: the config the engine reports for the image.

    Returns:
        One case per setting checked.
    """
    cases = []
    for key in ("Cmd", "Entrypoint", "User", "WorkingDir"):
        want = expected.get(key) or ([] if key in ("Cmd", "Entrypoint") else "")
        got = actual.get(key) or ([] if key in ("Cmd", "Entrypoint") else "")
        if key == "WorkingDir":
            # No working directory is the root: Podman writes "/" where Docker leaves "".
            want, got = want or "/", got or "/"
        cases.append(_case(key, want == got, f"expected {want!r}, image has {got!r}"))
    want_env = set(expected.get("Env") or [])
    missing = sorted(want_env - set(actual.get("Env") or []))
    cases.append(_case("Env", not missing, f"missing {missing}"))
    for key in ("ExposedPorts", "Volumes"):
        want_keys = set(expected.get(key) or {})
        got_keys = set(actual.get(key) or {})
        cases.append(_case(key, want_keys == got_keys,
                           f"expected {sorted(want_keys)}, image has {sorted(got_keys)}"))
    want_labels = dict(expected.get("Labels") or {})
    got_labels = dict(actual.get("Labels") or {})
    wrong = {k: got_labels.get(k) for k, v in want_labels.items() if got_labels.get(k) != v}
    cases.append(_case("Labels", not wrong, f"differing labels: {sorted(wrong)}"))
    if expected.get("Healthcheck"):
        same = expected["Healthcheck"].get("Test") == (actual.get("Healthcheck") or {}).get("Test")
        cases.append(_case("Healthcheck", same,
                           f"expected {expected['Healthcheck'].get('Test')!r}, image has "
                           f"{(actual.get('Healthcheck') or {}).get('Test')!r}"))
    return cases


def spec_expectations(parent: Mapping[str, Any], config: ImageConfig) -> dict[str, Any]:
    """What an image built from `config` on `parent` must show, build provenance left out.

    `rolebake test SPEC` checks an existing image against its spec as it is now:
    the labels a build stamps (build id, cache key, creation time) cannot be
    known then, so only the labels the spec names are expected.
    """
    expected = commit_config(parent, config, {})
    expected["Labels"] = dict(config.labels)
    return expected


def _case(key: str, ok: bool, message: str) -> TestCase:
    return TestCase(suite="metadata", name=key, outcome="passed" if ok else "failed",
                    message="" if ok else f"{key}: {message}")


def run_suite(
    engine: Engine,
    image_id: str,
    tests: Path,
    *,
    ready: ReadyCheck | None,
    project_root: Path,
    name: str,
    build_id: str,
) -> list[TestCase]:
    """Start a container from `image_id`, wait for it, run the testinfra suite, remove it.

    The container carries `build_id` (the build's, or a `rolebake test` run's
    own), so a build can kill it when interrupted and `rolebake clean --label
    rolebake.build-id=…` finds it if the process died.

    Raises:
        TestsFailed: the container never became ready (exit 3, with its logs).
    """
    run_id = uuid.uuid4().hex[:8]
    labels = {ROLE_LABEL: "verify", BUILD_ID_LABEL: build_id}
    # `name` may be an image reference (rolebake test registry/app:1.0): the engine
    # only takes [a-zA-Z0-9][a-zA-Z0-9_.-] in container names.
    name = re.sub(r"[^a-zA-Z0-9_.-]+", ".", name).strip(".") or "image"
    image = engine.image(image_id)
    # The build's lent python runs the session's agent here too (one agent for
    # every command of the suite instead of an exec each); an image without it
    # gets one exec per command (verify_session.py).
    mounts = [found] if image is not None and (found := pytoolchain.lent_mount(
        engine, release_of(engine, image, cache_dir() / "releases"), labels)) else []
    # pytest starts now, with a pending host: its imports and the suite's collection
    # overlap the container's creation and start (verify_session.py, PENDING).
    with _Suite(tests, session_url(PENDING), project_root, SESSION_ARGS) as suite:
        if ready is not None or image is None or not _exits_at_once(image.config):
            with engine.container(image_id, name=f"rolebake-verify-{name}-{run_id}",
                                  labels=labels, keep_alive=False, mounts=mounts,
                                  remove_in_background=True) as container:
                if wait_ready(engine, container, ready):
                    return _pytest(tests, session_url(container.id), project_root,
                                   SESSION_ARGS, started=suite)
        # The image's command finished on its own (a shell, a one-shot tool): such an
        # image has nothing to wait for, so its files are tested in an idle container.
        with engine.container(image_id, name=f"rolebake-verify-{name}-{run_id}-idle",
                              labels=labels, keep_alive=True, mounts=mounts,
                              remove_in_background=True) as container:
            return _pytest(tests, session_url(container.id), project_root, SESSION_ARGS,
                           started=suite)


SESSION_SCHEME = "rolebake"
SESSION_ARGS = ("-p", "rolebake.verify_session")
# verify_session's PENDING and HOST_FD_ENV (a test holds them equal): importing that
# module here would import testinfra into every build.
PENDING = "pending"
HOST_FD_ENV = "ROLEBAKE_VERIFY_HOST_FD"


def session_url(container_id: str) -> str:
    """The testinfra host of a container, reached through one shell (verify_session.py)."""
    return f"{SESSION_SCHEME}://{container_id}"


_SHELLS = {("bash",), ("/bin/bash",), ("/usr/bin/bash",), ("sh",), ("/bin/sh",)}


def _exits_at_once(config: Mapping[str, Any]) -> bool:
    """A shell as the image's command, with no stdin, ends as soon as it starts."""
    return (not config.get("Entrypoint") and not config.get("Healthcheck")
            and tuple(config.get("Cmd") or ()) in _SHELLS)


def suite_for_host(tests: Path, host_url: str, project_root: Path,
                   extra_args: tuple[str, ...] = (), *, side: str = "container") -> list[TestCase]:
    """Run a testinfra suite against any host URL testinfra knows (docker://, ssh://).

    `side` (container or vm) decides which tests marked `rolebake_only` are skipped.
    """
    return _pytest(tests, host_url, project_root, extra_args, side=side)


# While a `ready.port` stays shut, look inside this often; a service seen listening on
# loopback only in two looks this far apart will not open the port: fail then, not at
# the timeout (a server's own start-up may bind loopback for a moment first).
FIRST_LOOK_S = 1.0
LOOK_EVERY_S = 2.0
LOOPBACK_CONFIRM_S = 2.0
# Between looks at a starting container: short at first (a service up in a few tens
# of ms was waited for a quarter second, on every verified layer), then every 0.25 s.
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.25


def wait_ready(engine: Engine, container: ContainerHandle, ready: ReadyCheck | None) -> bool:
    """Wait until the container is ready; False when its command ended cleanly by itself.

    Raises:
        TestsFailed: the command exited, the healthcheck says unhealthy, the timeout
            passed, or the `ready.port` is held on a loopback address only (at once,
            naming the process).
    """
    timeout = ready.timeout_s if ready else 60.0
    deadline = time.monotonic() + timeout
    settle_until = time.monotonic() + 1.0
    next_look = time.monotonic() + FIRST_LOOK_S
    loopback_since: float | None = None
    pause = POLL_FIRST_S
    while True:
        state = engine.container_state(container)
        if not state.get("Running"):
            if state.get("ExitCode") == 0 and ready is None and not state.get("Health"):
                return False
            raise TestsFailed(
                f"the image's command exited (code {state.get('ExitCode')}) before its tests ran",
                details=engine.logs(container),
            )
        health = (state.get("Health") or {}).get("Status")
        if ready is not None and ready.port is not None:
            if _port_open(engine.container_ip(container), ready.port):
                return True
            now = time.monotonic()
            if now >= next_look:
                next_look = now + LOOK_EVERY_S
                bound = _loopback_only(engine, container, ready.port)
                if not bound:
                    loopback_since = None
                elif loopback_since is None:
                    loopback_since = now
                elif now - loopback_since >= LOOPBACK_CONFIRM_S:
                    raise _loopback_error(engine, container, ready.port, bound,
                                          now - loopback_since)
        elif ready is not None and ready.command is not None:
            if engine.exec(container, list(ready.command)).rc == 0:
                return True
        elif health is not None:
            if health == "healthy":
                return True
            if health == "unhealthy":
                raise TestsFailed("the image's HEALTHCHECK reports unhealthy",
                                  details=engine.logs(container))
        elif time.monotonic() >= settle_until:
            return True  # no readiness signal: a command still running after a second will do
        if time.monotonic() > deadline:
            message, hint = f"the container was not ready within {timeout:.0f} s", ""
            if ready is not None and ready.port is not None:
                message, hint = _port_never_opened(engine, container, ready.port, message)
            raise TestsFailed(message, details=engine.logs(container), hint=hint)
        time.sleep(pause)
        pause = min(pause * 2, POLL_MAX_S)


def _port_never_opened(engine: Engine, container: ContainerHandle, port: int,
                       message: str) -> tuple[str, str]:
    """Say why `ready.port` stayed shut, from what listens inside the container.

    A service bound to 127.0.0.1 is up, yet only the container itself reaches it:
    the commonest reason, and one a role variable or a `ready.command` fixes.
    """
    message += f": port {port} never opened from outside the container"
    found = _listeners(engine, container, port)
    if found is None:
        return message, ""  # the container is gone, or has no shell: nothing more to say
    on_port = [item for item in found if item.port == port]
    if on_port and all(item.loopback_only for item in on_port):
        inside = "; ".join(item.describe() for item in on_port)
        return (f"{message}, but inside it {inside}: a loopback address only the container "
                "itself reaches", _loopback_hint(port))
    if not on_port:
        others = ", ".join(f"{item.address}:{item.port}" for item in found[:5])
        return (f"{message}; nothing in it listens on port {port}"
                + (f" (it listens on {others})" if others else ""), "")
    return message, ""


def _listeners(engine: Engine, container: ContainerHandle, port: int) -> list[Listener] | None:
    """What listens inside, each socket on `port` named even when a non-root user holds it.

    None when nothing can be looked at (the container is gone, or has no shell).
    """
    try:
        found = parse_listeners(engine.exec(container, ["sh", "-c", LISTENERS_SCRIPT]).output)
        for uid in owners_to_ask(found, port):
            # Root in the container may not read another user's fds; that user may.
            again = engine.exec(container, ["sh", "-c", LISTENERS_SCRIPT], user=str(uid))
            found = merge_owners(found, parse_listeners(again.output))
    except RolebakeError:
        return None
    return found


def _loopback_only(engine: Engine, container: ContainerHandle, port: int) -> list[Listener]:
    """The sockets on `port` when every one of them is on a loopback address, else []."""
    on_port = [item for item in _listeners(engine, container, port) or () if item.port == port]
    return on_port if on_port and all(item.loopback_only for item in on_port) else []


def _loopback_error(engine: Engine, container: ContainerHandle, port: int,
                    bound: list[Listener], seconds: float) -> TestsFailed:
    inside = "; ".join(item.describe() for item in bound)
    return TestsFailed(
        f"port {port} cannot open from outside the container: inside it {inside} only, a "
        f"loopback address only the container itself reaches (seen for {seconds:.0f} s; not "
        "waiting for the ready timeout)",
        details=engine.logs(container), hint=_loopback_hint(port))


def _loopback_hint(port: int) -> str:
    return ("have the role bind it to 0.0.0.0 (the role variable for its listen or bind "
            "address), or check readiness from inside the container: ready: {command: "
            f"[bash, -c, '</dev/tcp/127.0.0.1/{port}']}}")


def _port_open(address: str | None, port: int) -> bool:
    if not address:
        return False
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _pytest(tests: Path, host_url: str, project_root: Path,
            extra_args: tuple[str, ...] = (), *, side: str = "container",
            started: _Suite | None = None) -> list[TestCase]:
    """The suite's results on `host_url`; `started`: the run begun with a pending host."""
    if started is not None:
        return started.results(host_url.removeprefix(f"{SESSION_SCHEME}://"))
    with _Suite(tests, host_url, project_root, extra_args, side=side) as suite:
        return suite.results()


class _Suite:
    """One pytest run of a suite, started at once; with a pending host, told it later.

    With the host `rolebake://pending`, the process imports pytest and testinfra and
    collects the suite while the caller makes the container, and waits for its id
    (`results(container_id)`, through a pipe: verify_session.pending_container).
    Leaving the block without results stops the process.
    """

    def __init__(self, tests: Path, host_url: str, project_root: Path,
                 extra_args: tuple[str, ...] = (), *, side: str = "container") -> None:
        self.tests, self.host_url = tests, host_url
        self._tmp = tempfile.TemporaryDirectory(prefix="rolebake-verify-")
        self.junit = Path(self._tmp.name) / "junit.xml"
        argv = [sys.executable, "-m", "pytest", str(tests), f"--hosts={host_url}",
                f"--junitxml={self.junit}", "-p", "no:cacheprovider", "-q", "--tb=short",
                # The project's conftest.py files (tests/images/conftest.py) apply;
                # its own pytest addopts do not.
                "-o", "addopts=", "--rootdir", str(project_root),
                "--confcutdir", str(project_root),
                # Tests marked for the other side (a VM's) are skipped, with a reason.
                "-p", suite_sides.__name__, f"--rolebake-side={side}", *extra_args]
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        read_end, self._host_pipe = os.pipe()
        env[HOST_FD_ENV] = str(read_end)
        try:
            self.proc = subprocess.Popen(argv, cwd=project_root, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=env, pass_fds=(read_end,))
        except BaseException:
            os.close(self._host_pipe)
            self._tmp.cleanup()
            raise
        finally:
            os.close(read_end)

    def __enter__(self) -> _Suite:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tell("")
        if self.proc.poll() is None:  # left early: the container never became ready
            self.proc.kill()
            self.proc.communicate()
        self._tmp.cleanup()

    def _tell(self, container_id: str) -> None:
        if self._host_pipe < 0:
            return
        # The suite may have ended without asking (no test needs the host).
        with contextlib.suppress(OSError):
            if container_id:
                os.write(self._host_pipe, f"{container_id}\n".encode("ascii"))
        os.close(self._host_pipe)
        self._host_pipe = -1

    def results(self, container_id: str = "") -> list[TestCase]:
        """Give the pending host its container (if it is pending), wait, read the results."""
        self._tell(container_id)
        stdout, stderr = self.proc.communicate()
        if not self.junit.exists():
            return [TestCase(suite=str(self.tests), name="pytest", outcome="error",
                             message=(stdout + stderr)[-2000:])]
        # testinfra names a test after the backend (docker), not the scheme it was given.
        cases = parse_junit(self.junit,
                            self.host_url.replace(f"{SESSION_SCHEME}://", "docker://"))
        if self.proc.returncode == 5 or not cases:
            # Nothing ran: nothing collected (5), or pytest refused the suite (a usage error).
            message = (f"no tests collected in {self.tests}" if self.proc.returncode in (0, 5)
                       else (stdout + stderr).strip()[-2000:])
            return [TestCase(suite=str(self.tests), name="pytest", outcome="error",
                             message=message)]
        return cases


def parse_junit(path: Path, host_url: str | None = None) -> list[TestCase]:
    """Read pytest's JUnit XML into test cases.

    Args:
        path: the file `pytest --junitxml` wrote.
        host_url: the `--hosts` URL the suite ran against; testinfra puts it in
            every test id (`test_x[docker://<id>-nginx]`), and it is dropped so
            case names stay the same from one run (and container) to the next.
    """
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        only = next((p.get("value", "") for p in case.iter("property")
                     if p.get("name") == suite_sides.PROPERTY), "")
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        cases.append(TestCase(
            suite=case.get("classname", ""),
            name=_without_host(case.get("name", ""), host_url),
            outcome=outcome,
            message=_shorten(message.strip()),
            seconds=float(case.get("time") or 0),
            only=only,
        ))
    return cases


def _shorten(message: str, limit: int = 1500) -> str:
    """Keep the assertion (the first line) and the end of the traceback."""
    if len(message) <= limit:
        return message
    first, _, rest = message.partition("\n")
    return f"{first[:300]}\n...\n{rest[-(limit - 300):]}"


def _without_host(name: str, host_url: str | None) -> str:
    if not host_url:
        return name
    return name.replace(f"[{host_url}-", "[").replace(f"[{host_url}]", "")


def write_junit(results: Mapping[str, VerifyResult], path: Path) -> None:
    """Write every image's cases as JUnit XML, one testsuite per image.

    Every text is redacted before it goes into the XML: escaped there, a
    secret with a quote or a tab would no longer be found.
    """
    hide = redact.text
    root = ET.Element("testsuites")
    for image, result in results.items():
        suite = ET.SubElement(root, "testsuite", name=hide(image), tests=str(len(result.cases)),
                              failures=str(sum(c.outcome == "failed" for c in result.cases)),
                              errors=str(sum(c.outcome == "error" for c in result.cases)),
                              skipped=str(sum(c.outcome == "skipped" for c in result.cases)))
        for case in result.cases:
            element = ET.SubElement(suite, "testcase", classname=hide(f"{image}.{case.suite}"),
                                    name=hide(case.name), time=f"{case.seconds:.3f}")
            message = hide(case.message)
            if case.outcome in ("failed", "error"):
                tag = "failure" if case.outcome == "failed" else "error"
                child = ET.SubElement(element, tag, message=message.splitlines()[0]
                                      if message else case.outcome)
                child.text = message
            elif case.outcome == "skipped":
                ET.SubElement(element, "skipped", message=message)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
