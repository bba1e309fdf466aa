"""Races and engine faults against the fake engine, each hit at an exact point.

A signal after the last cancel check of the tag step, or during the move, puts
back every tag of the run; a rollback leaves alone the tags another build used
since; a worker's unexpected exception fails its layer only and the report is
still written; two checkouts take turns on one host-wide layer lock; every
container of a build carries its id; an engine that restarts or stops under a
step is said plainly (DESIGN.md invariant 1, exit codes).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rolebake import locks
from rolebake.builder import Builder, BuildOptions
from rolebake.builder import runner as build_runner
from rolebake.cleanup import find_leftovers, remove_leftovers
from rolebake.cli import main
from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, DockerEngine
from rolebake.errors import BuildFailed, EngineUnavailable, InternalError, Interrupted
from rolebake.image import TagJournal, images_in_flight, recover_journals
from rolebake.load import plan_build
from rolebake.parity import run as parity_run
from rolebake.provision.base import ProvisionContext
from rolebake.spec import Project
from rolebake.verify import TestCase
from tests.unit.fakes import FakeEngine, ProvisionerControl
from tests.unit.test_builder import (
    BASE,
    BASE_IMAGE,
    WEB,
    Recorder,
    cache_tag,
    make_project,
    run_build,
    spec_from,
)

pytestmark = pytest.mark.usefixtures("fake_provisioner")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", base=BASE, web=WEB)


@pytest.fixture
def sigint_raises_interrupted() -> Iterator[None]:
    """SIGINT raises Interrupted in the main thread, as the CLI's handler makes it."""
    def handle(_signum: int, _frame: Any) -> None:
        raise Interrupted("SIGINT")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


ALL_TAGS = ("rolebake/base:latest", "rolebake/web:latest", "rolebake/web:1.0")


def change_roles(project: Project, *roles: str) -> None:
    """A new input for each role: the next build of its layers misses the cache."""
    for role in roles:
        tasks = project.roles_dir / role / "tasks" / "main.yml"
        tasks.write_text(tasks.read_text() + f"- name: {role} again\n")


def tags_now(engine: FakeEngine, project: Project, report: Any = None) -> dict[str, str | None]:
    found: dict[str, str | None] = {ref: engine.tagged(ref) for ref in ALL_TAGS}
    if report is not None:
        for layer in ("base", "web"):
            key = report.results[layer].cache_key
            found[cache_tag(project, layer, key)] = engine.tagged(cache_tag(project, layer, key))
    return found


def interrupt_main_thread(builder: Builder) -> None:
    """SIGINT to the main thread, from a worker; return once the main thread has taken it."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
    assert builder.cancel.wait(5), "the main thread never took the signal"


# A signal at the tag step ---------------------------------------------------------------


@pytest.mark.usefixtures("sigint_raises_interrupted")
@pytest.mark.parametrize("when", ["after-the-last-check", "during-the-move"])
def test_signal_at_the_tag_step_puts_back_every_tag_of_the_run(
        engine: FakeEngine, project: Project, when: str) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    before = tags_now(engine, project)
    images_before = engine.image_ids()
    change_roles(project, "common", "web")  # both layers build anew
    builder = Builder(engine, project, Recorder(), BuildOptions())
    web_moved = threading.Event()
    if when == "during-the-move":
        # Between web's two tags: the worker's own check sees the cancel.
        engine.on("tag", lambda *_: interrupt_main_thread(builder), after=True, times=1,
                  match=lambda _image, ref: ref == "rolebake/web:latest")
    else:
        # The worker passed its last cancel check and every tag of web has moved;
        # it looks its image up as it returns, and only then does the signal land.
        engine.on("tag", lambda *_: web_moved.set(), after=True,
                  match=lambda _image, ref: ref.startswith("rolebake-cache/project/web:"))
        engine.on("image", lambda _ref: interrupt_main_thread(builder), times=1,
                  match=lambda ref: web_moved.is_set() and ref.startswith("sha256:"))

    with pytest.raises(Interrupted) as caught:
        builder.build(plan_build(project, ["web"]))

    assert caught.value.message == "interrupted by SIGINT; cleaned up, no tag moved"
    assert caught.value.exit_code == 130
    if when == "after-the-last-check":
        assert web_moved.is_set()  # the race really happened: web had finished
    # base had finished and web had finished (or half moved): every tag is back.
    assert tags_now(engine, project) == before
    assert engine.tagged(cache_tag(project, "web", first.results["web"].cache_key)) == \
        first.results["web"].image_id
    assert builder.tags.layers() == []  # nothing left to put back
    # The new images went with their tags; no container is left.
    assert engine.image_ids() == images_before
    assert engine.container_names() == []
    # Cache tags of this run's keys are gone: the next build misses, as nothing happened.
    again, _, _ = run_build(engine, project, ["web"])
    assert not again.results["base"].cached and not again.results["web"].cached


@pytest.mark.usefixtures("sigint_raises_interrupted")
def test_a_rollback_leaves_the_tags_another_build_used_since(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    run_build(engine, project, ["web"])
    before = tags_now(engine, project)
    change_roles(project, "common", "web")
    gate = fake_provisioner.block("web", "provision", timeout=10)
    builder = Builder(engine, project, Recorder(), BuildOptions())
    used: dict[str, Any] = {}

    def another_build_then_signal() -> None:
        # While this run is in web, another build (another checkout, same engine)
        # takes base from the cache: base's tags are now that build's too.
        assert gate.entered.wait(5)
        report, _, other = run_build(engine, project, ["base"])
        used["report"], used["other"] = report, other
        interrupt_main_thread(builder)
        gate.release.set()

    helper = threading.Thread(target=another_build_then_signal)
    helper.start()
    try:
        with pytest.raises(Interrupted) as caught:
            builder.build(plan_build(project, ["web"]))
    finally:
        gate.release.set()
        helper.join(10)

    base = used["report"].results["base"]
    assert base.cached and base.error is None
    base_tags = ["rolebake/base:latest", cache_tag(project, "base", base.cache_key)]
    assert caught.value.message == (
        "interrupted by SIGINT; cleaned up, but 2 tag(s) moved by this build stay moved")
    assert caught.value.details.splitlines() == [
        f"{ref}: another build has used this layer since" for ref in base_tags]
    # The other build's result stands; web's were never moved.
    assert engine.tagged(base_tags[0]) == base.image_id == engine.tagged(base_tags[1])
    assert engine.tagged("rolebake/web:latest") == before["rolebake/web:latest"]
    assert engine.container_names() == []


@pytest.mark.usefixtures("sigint_raises_interrupted")
def test_a_signal_while_the_report_is_written_still_puts_the_tags_back(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    run_build(engine, project, ["web"])
    before = tags_now(engine, project)
    change_roles(project, "web")
    monkeypatch.setattr(DockerEngine, "connect", classmethod(lambda cls, timeout=600: engine))
    # The build has returned; the signal comes while the CLI writes the JUnit file.
    monkeypatch.setattr("rolebake.verify.write_junit", lambda *_args: signal.raise_signal(
        signal.SIGINT))
    result = CliRunner().invoke(main, ["--project", str(project.root), "build", "web",
                                       "--junit", str(tmp_path / "junit.xml")])
    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: interrupted by SIGINT; cleaned up, no tag moved")
    assert tags_now(engine, project) == before


# Any exception in a --jobs worker -------------------------------------------------------


def three_layers(tmp_path: Path) -> Project:
    return make_project(tmp_path / "p",
                        one=spec_from(BASE_IMAGE, "web", "rolebake/one:1"),
                        child=spec_from("one", "tools", "rolebake/child:1"),
                        two=spec_from(BASE_IMAGE, "app", "rolebake/two:1"))


def fail_one_while_two_builds(control: ProvisionerControl, error: BaseException) -> None:
    gate = control.block("two", "provision")

    def fail_once_two_is_busy(_ctx: ProvisionContext) -> None:
        assert gate.entered.wait(5)
        threading.Timer(0.3, gate.release.set).start()
        raise error

    control.hooks[("one", "provision")] = fail_once_two_is_busy


def test_an_unexpected_exception_in_a_worker_fails_its_layer_only(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl) -> None:
    project = three_layers(tmp_path)
    boom = ValueError("boom")
    fail_one_while_two_builds(fake_provisioner, boom)

    report, recorder, _ = run_build(engine, project, ["child", "two"], jobs=2)

    statuses = {k: r.status.value for k, r in report.results.items()}
    assert statuses == {"one": "failed", "child": "skipped", "two": "ok"}
    error = report.results["one"].error
    assert isinstance(error, InternalError) and error is report.error
    assert error.exit_code == 1
    assert error.message == "internal error: ValueError: boom"
    assert error.__cause__ is boom  # --debug shows where it came from
    assert recorder.step_event("one", "provision", "failed").message == \
        "internal error: ValueError: boom"
    assert engine.tagged("rolebake/two:1") == report.results["two"].image_id
    assert engine.tagged("rolebake/one:1") is None
    assert engine.container_names() == []
    layers = json.loads(json.dumps(report.to_dict()))["layers"]
    assert layers[0]["error"] == {"message": "internal error: ValueError: boom",
                                  "exit_code": 1, "details": ""}


def test_the_cli_writes_the_report_when_a_worker_raises(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project = three_layers(tmp_path)
    (project.root / "tests" / "images" / "two").mkdir(parents=True)
    (project.root / "tests" / "images" / "two" / "test_two.py").write_text("")
    monkeypatch.setattr("rolebake.verify._pytest", lambda *_args, **_kw: [
        TestCase(suite="test_two", name="test_it", outcome="passed")])
    monkeypatch.setattr(DockerEngine, "connect", classmethod(lambda cls, timeout=600: engine))
    fail_one_while_two_builds(fake_provisioner, KeyError("layer"))
    junit = tmp_path / "junit.xml"

    result = CliRunner().invoke(main, ["--project", str(project.root), "build", "child",
                                       "two", "--jobs", "2", "--json", "--junit", str(junit)])

    assert result.exit_code == 1, result.output
    assert "error: internal error: KeyError: 'layer'" in result.stderr.splitlines()
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    assert report["exit_code"] == 1 and report["build_id"]
    assert {layer["layer"]: layer["status"] for layer in report["layers"]} == {
        "one": "failed", "child": "skipped", "two": "ok"}
    assert 'name="test_it"' in junit.read_text()


# One lock per layer and engine, whatever the checkout ------------------------------------------


@pytest.mark.parametrize("same_engine", [True, False], ids=["same-engine", "other-engine"])
def test_two_checkouts_take_turns_on_a_layer_of_one_engine(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl,
        tmp_path: Path, private_lock_dir: Path, same_engine: bool) -> None:
    # Checkouts of one project in folders of other names: rolebake.yml names the project.
    (project.root / "rolebake.yml").write_text("project: shop\n")
    other_root = tmp_path / "second-checkout"
    shutil.copytree(project.root, other_root)
    other = Project(other_root)
    entered, release = threading.Event(), threading.Event()

    def hold_the_first_checkout(ctx: ProvisionContext) -> None:
        if ctx.project.root == project.root:
            entered.set()
            assert release.wait(10)

    fake_provisioner.hooks[("base", "provision")] = hold_the_first_checkout
    first: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: first.setdefault(
        "report", run_build(engine, project, ["base"])[0]))
    thread.start()
    try:
        assert entered.wait(5)
        second_engine = engine
        if not same_engine:
            # The same layer on another engine (another daemon on this host) has a
            # lock of its own: no waiting.
            second_engine = FakeEngine()
            second_engine.add_image(BASE_IMAGE, config={"Cmd": ["bash"]})
            second_engine.engine_id = "another-engine"
        recorder = Recorder()
        outcome: dict[str, Any] = {}
        second = threading.Thread(target=lambda: outcome.setdefault("report", Builder(
            second_engine, other, recorder, BuildOptions()).build(plan_build(other, ["base"]))))
        second.start()
        if same_engine:
            waiting = "another build of this layer is running; waiting"
            assert _eventually(lambda: any(getattr(e, "message", "") == waiting
                                           for e in recorder.events))
        else:
            second.join(10)
            assert "report" in outcome
    finally:
        release.set()
        thread.join(10)
        second.join(10)
    assert first["report"].error is None and outcome["report"].error is None
    result = outcome["report"].results["base"]
    assert result.cached is same_engine
    if same_engine:
        assert result.image_id == first["report"].results["base"].image_id
    # The locks are host-wide: nothing of them lives in either checkout.
    assert list(private_lock_dir.glob("shop.base-*.lock"))
    assert not (project.state_dir / "locks").exists() and not (other.state_dir / "locks").exists()


def _eventually(condition: Callable[[], bool], timeout: float = 5) -> bool:
    ready = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        ready.wait(0.05)
    return condition()


# Every container carries the build id ------------------------------------------------------------


def test_every_container_of_a_build_carries_its_id(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("base", "web"):
        folder = project.root / "tests" / "images" / name
        folder.mkdir(parents=True)
        (folder / f"test_{name}.py").write_text("")
    monkeypatch.setattr("rolebake.verify._pytest", lambda *_args, **_kw: [
        TestCase(suite="suite", name="test_it", outcome="passed")])

    report, _, builder = run_build(engine, project, ["web"])

    assert report.error is None and report.build_id == builder.build_id
    made = engine.called("container")
    roles = sorted(labels[ROLE_LABEL] for _image, _name, labels in made)
    assert roles == ["build", "build", "verify", "verify"]
    assert {labels[BUILD_ID_LABEL] for _image, _name, labels in made} == {builder.build_id}


def test_the_parity_container_carries_the_build_id(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    image = engine.add_image("rolebake/base:latest", config={"Cmd": ["sleep", "1d"]})
    monkeypatch.setattr(parity_run, "wait_ready", lambda *_args: True)
    monkeypatch.setattr(parity_run, "_check_container", lambda *_args: ([], None))
    layer = plan_build(project, ["base"]).layer("base")
    parity_run._container_side(engine, project, layer, image.id, [], "3f2a9c81d0e4")
    (_image, name, labels), = engine.called("container")
    assert name.startswith("rolebake-parity-base-")
    assert labels[BUILD_ID_LABEL] == "3f2a9c81d0e4" and labels[ROLE_LABEL] == "verify"


@pytest.mark.usefixtures("sigint_raises_interrupted")
def test_an_interrupt_during_verify_kills_the_verify_container_by_build_id(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = project.root / "tests" / "images" / "base"
    folder.mkdir(parents=True)
    (folder / "test_base.py").write_text("")
    builder = Builder(engine, project, Recorder(), BuildOptions())
    killed = threading.Event()

    def slow_suite(*_args: Any, **_kw: Any) -> list[TestCase]:
        # A suite stops early only when its container dies.
        interrupt_main_thread(builder)
        assert _eventually(lambda: any(args for args in engine.called("kill")))
        killed.set()
        return [TestCase(suite="suite", name="test_it", outcome="error", message="killed")]

    monkeypatch.setattr("rolebake.verify._pytest", slow_suite)
    with pytest.raises(Interrupted):
        builder.build(plan_build(project, ["base"]))
    assert killed.is_set()
    verify = [c for c in engine.calls if c.method == "container" and
              c.args[2][ROLE_LABEL] == "verify"]
    assert len(verify) == 1
    assert engine.container_names() == []


# The engine stops or restarts under a step -------------------------------------------------------


def test_an_engine_restart_during_provision_is_said_plainly(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    run_build(engine, project, ["base"])
    before = engine.tagged("rolebake/base:latest")
    change_roles(project, "common")

    def restart(_ctx: ProvisionContext) -> None:
        engine.restart()
        raise BuildFailed("task 'x' failed: Error: unexpected EOF")

    fake_provisioner.hooks[("base", "provision")] = restart
    report, _, builder = run_build(engine, project, ["base"])

    error = report.results["base"].error
    assert isinstance(error, BuildFailed) and error.exit_code == 1
    assert error.message == ("the container engine restarted during provision; the build "
                             f"container rolebake-build-base-{builder.build_id} stopped with it")
    assert error.details == "task 'x' failed: Error: unexpected EOF"
    assert engine.tagged("rolebake/base:latest") == before
    assert engine.container_names() == []  # the engine came back: the container was removed


def test_an_engine_that_stops_and_stays_down_is_exit_4_and_clean_finds_the_rest(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_build(engine, project, ["base"])
    before = engine.tagged("rolebake/base:latest")
    change_roles(project, "common")
    monkeypatch.setattr(build_runner, "ENGINE_RETURN_S", 0.2)

    def stop(_ctx: ProvisionContext) -> None:
        engine.stop()
        raise BuildFailed("task 'x' failed: Cannot connect to the Docker daemon")

    fake_provisioner.hooks[("base", "provision")] = stop
    report, _, builder = run_build(engine, project, ["base"])

    error = report.results["base"].error
    assert isinstance(error, EngineUnavailable) and error.exit_code == 4
    assert error.message == ("the container engine stopped answering during provision and "
                             "did not come back within 0.2 s")
    # Once the engine is back: no tag moved, and `rolebake clean` finds what was left.
    engine.down = False
    assert engine.tagged("rolebake/base:latest") == before
    leftovers = find_leftovers(engine, older_than=dt.timedelta(0),
                               labels={BUILD_ID_LABEL: builder.build_id})
    assert [item.name for item in leftovers] == [f"rolebake-build-base-{builder.build_id}"]
    remove_leftovers(engine, leftovers)
    assert engine.container_names() == []


# Locks that cannot be turned (DESIGN.md invariant 7) ----------------------------------------------


def _plant_links(folder: Path, tmp_path: Path) -> dict[Path, Path]:
    """Every lock file in `folder` replaced by a link to a private file of its own."""
    planted: dict[Path, Path] = {}
    for index, lock in enumerate(sorted(folder.glob("*.lock"))):
        target = tmp_path / f"victim-{index}"
        target.write_text("precious\n")
        target.chmod(0o600)
        lock.unlink()
        lock.symlink_to(target)
        planted[lock] = target
    return planted


def test_a_planted_link_lock_file_is_refused_and_its_target_untouched(
        engine: FakeEngine, project: Project, tmp_path: Path, private_lock_dir: Path) -> None:
    report, _, _ = run_build(engine, project, ["base"])
    assert report.error is None
    planted = _plant_links(private_lock_dir, tmp_path)
    assert planted
    again, _, _ = run_build(engine, project, ["base"], no_cache=True)
    assert again.error is not None
    assert "is a symbolic link; refusing to follow it" in again.error.message
    for target in planted.values():
        assert target.read_text() == "precious\n"
        assert target.stat().st_mode & 0o777 == 0o600


def test_lock_files_are_made_0644_without_truncating_an_existing_one(
        tmp_path: Path, private_lock_dir: Path) -> None:
    lock = locks.host_lock("layer", "engine", "repo")
    with locks.exclusive(lock) as held:
        held.write("build-1")
    assert lock.stat().st_mode & 0o777 == 0o644
    assert private_lock_dir.stat().st_mode & 0o7777 == 0o1777
    with locks.exclusive(lock) as held:
        assert held.read() == "build-1"  # opening it again kept the record


def test_a_hard_link_lock_file_is_refused(tmp_path: Path, private_lock_dir: Path) -> None:
    lock = locks.host_lock("layer", "engine", "repo")
    with locks.exclusive(lock):
        pass
    target = tmp_path / "victim"
    target.write_text("precious\n")
    lock.unlink()
    lock.hardlink_to(target)
    with pytest.raises(BuildFailed, match="is a hard link to another file"), \
            locks.exclusive(lock):
        pass
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_lock_folder_others_can_write_without_the_sticky_bit_is_refused(
        private_lock_dir: Path, mode: int) -> None:
    private_lock_dir.mkdir()
    private_lock_dir.chmod(mode)
    before = private_lock_dir.stat().st_mode
    with pytest.raises(BuildFailed, match="writable by others without the sticky bit"), \
            locks.exclusive(locks.host_lock("layer", "engine")):
        pass
    assert private_lock_dir.stat().st_mode == before  # never chmod-ed
    assert not list(private_lock_dir.iterdir())


def test_a_lock_folder_that_is_a_link_is_refused(tmp_path: Path, private_lock_dir: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    private_lock_dir.symlink_to(elsewhere)
    with pytest.raises(BuildFailed, match="is not a folder"), \
            locks.exclusive(locks.host_lock("layer", "engine")):
        pass
    assert not list(elsewhere.iterdir())


def test_a_lock_folder_of_another_user_is_refused(private_lock_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    private_lock_dir.mkdir(mode=0o755)
    me = private_lock_dir.stat().st_uid
    monkeypatch.setattr(locks.os, "geteuid", lambda: me + 1 if me != 0 else 4242)
    if me == 0:  # root owns it and root is always trusted: pretend another owner
        real_lstat = locks.os.lstat

        def lstat(path: Any) -> Any:
            found = real_lstat(path)
            if Path(path) != private_lock_dir:
                return found
            fields = list(found)
            fields[4] = 4343  # st_uid
            return locks.os.stat_result(fields)
        monkeypatch.setattr(locks.os, "lstat", lstat)
    with pytest.raises(BuildFailed, match="belongs to another user"), \
            locks.exclusive(locks.host_lock("layer", "engine")):
        pass


# The tag journal on disk: a run killed outright is finished by the next one ------------------


def _killed_while_tagging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds that end as if SIGKILL hit them after their tags moved: the journal stays."""
    def die(journal: TagJournal) -> None:
        if journal._fd is not None:
            os.close(journal._fd)  # the kernel drops the lock of a dead process
            journal._fd = None
    monkeypatch.setattr(TagJournal, "settle", die)


def test_a_run_killed_while_tagging_is_rolled_back_by_the_next(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    assert first.error is None
    good = {tag: engine.tagged(tag) for tag in ("rolebake/base:latest", "rolebake/web:latest",
                                                  "rolebake/web:1.0")}
    with monkeypatch.context() as killed:
        _killed_while_tagging(killed)
        second, _, _ = run_build(engine, project, ["web"], no_cache=True)
    assert second.error is None
    moved = second.results["web"].image_id
    assert engine.tagged("rolebake/web:latest") == moved != good["rolebake/web:latest"]
    journals = list((project.state_dir / "journal").glob("*.jsonl"))
    assert [p.stem for p in journals] == [second.build_id]
    assert stat.S_IMODE(journals[0].stat().st_mode) == 0o600

    said = recover_journals(engine, project)
    assert said and all(line.startswith(f"build {second.build_id}, killed while moving tags: ")
                        for line in said), said
    assert any("put back rolebake/web:latest, rolebake/web:1.0" in line for line in said), said
    for tag, image_id in good.items():
        assert engine.tagged(tag) == image_id, tag
    assert moved not in engine.image_ids()  # left without a tag: removed
    assert not journals[0].exists()
    assert recover_journals(engine, project) == []  # done once


def test_a_live_runs_journal_and_another_engines_are_left_alone(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    run_build(engine, project, ["base"])
    with monkeypatch.context() as killed:
        _killed_while_tagging(killed)
        run_build(engine, project, ["base"], no_cache=True)
    (journal,) = (project.state_dir / "journal").glob("*.jsonl")
    moved = engine.tagged("rolebake/base:latest")
    fd = os.open(journal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as if its run were alive
        assert recover_journals(engine, project) == []
    finally:
        os.close(fd)
    other = FakeEngine()
    other.engine_id = "another-engine"
    assert recover_journals(other, project) == []
    assert engine.tagged("rolebake/base:latest") == moved and journal.exists()
    assert recover_journals(engine, project)
    assert engine.tagged("rolebake/base:latest") != moved


def test_a_layer_another_build_used_since_keeps_its_tags(
        engine: FakeEngine, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    run_build(engine, project, ["base"])
    with monkeypatch.context() as killed:
        _killed_while_tagging(killed)
        run_build(engine, project, ["base"], no_cache=True)
    third, _, _ = run_build(engine, project, ["base"], no_cache=True)
    now = engine.tagged("rolebake/base:latest")
    assert now == third.results["base"].image_id
    said = recover_journals(engine, project)
    assert any("kept the tags of base" in line and "another build has used this layer since"
               in line for line in said), said
    assert engine.tagged("rolebake/base:latest") == now


def test_a_finished_or_interrupted_run_leaves_no_journal(
        engine: FakeEngine, project: Project) -> None:
    report, _, _ = run_build(engine, project, ["web"])
    assert report.error is None
    folder = project.state_dir / "journal"
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_an_image_a_killed_run_made_goes_unless_something_tagged_it_since(
        engine: FakeEngine, project: Project) -> None:
    """A normalised image has no build id: the journal names it for the next command."""
    orphan = engine.add_image()  # committed and normalised; killed before its tags
    shared = engine.add_image()  # the same inputs reproduced it, and another build tagged it
    journal = TagJournal(engine, "killedrun0001", project)
    journal.made("web", orphan.id)
    journal.made("base", shared.id)
    engine.tag(shared.id, "rolebake/base:latest")
    assert journal._fd is not None
    os.close(journal._fd)  # SIGKILL: the kernel drops the journal's lock
    journal._fd = None

    said = recover_journals(engine, project)
    assert said == [f"build killedrun0001, killed: removed its untagged image "
                    f"{orphan.id.split(':')[-1][:12]} (web)"], said
    assert orphan.id not in engine.image_ids()
    assert engine.tagged("rolebake/base:latest") == shared.id
    assert list((project.state_dir / "journal").glob("*.jsonl")) == []


def test_clean_spares_the_untagged_images_a_live_run_made(engine: FakeEngine,
                                                          project: Project) -> None:
    """A normalised image is dated SOURCE_DATE_EPOCH: by age alone it is always old."""
    verifying = engine.add_image(labels={ROLE_LABEL: "image"})  # normalised, being verified
    dead = engine.add_image(labels={ROLE_LABEL: "image"})  # a killed run's
    live = TagJournal(engine, "liverun00001", project)
    live.made("web", verifying.id)
    killed = TagJournal(engine, "killedrun0002", project)
    killed.made("web", dead.id)
    assert killed._fd is not None
    os.close(killed._fd)  # SIGKILL: the kernel drops the journal's lock
    killed._fd = None

    assert images_in_flight(project) == {verifying.id}
    found = find_leftovers(engine, dt.timedelta(0), in_flight=images_in_flight(project))
    assert {item.id for item in found if item.kind == "dangling image"} == {dead.id}
    live.settle()
    assert images_in_flight(project) == set()
