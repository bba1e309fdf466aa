"""How rolebake looks to people: progress lines, the live view and the tables."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from rolebake.builder import BuildReport, LayerResult
from rolebake.events import Event, LogEvent, Step, StepEvent, StepStatus, TaskEvent
from rolebake.parity.diff import Category, ParityItem, ParityReport, Status
from rolebake.report import (
    LiveProgress,
    PlainProgress,
    build_summary,
    parity_table,
    plan_table,
    progress_for,
    tables,
)
from rolebake.verify import TestCase

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAMP = re.compile(r"^\d\d:\d\d:\d\dZ ")
SECRET = "hunter2hunter2"


def _redact(text: str) -> str:
    return text.replace(SECRET, "********")


def _plain(text: str) -> str:
    return ANSI.sub("", text)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# Every kind of line PlainProgress writes, exactly as CI logs have always shown it.
EVENTS_AND_LINES: list[tuple[Event, str | None]] = [
    (StepEvent("web", Step.CREATE, StepStatus.RUNNING), "[web] create ..."),
    (StepEvent("web", Step.CREATE, StepStatus.OK), "[web] create ok"),
    (StepEvent("web", Step.CACHE, StepStatus.CACHED, "sha256:abc"),
     "[web] cache cached: sha256:abc"),
    (StepEvent("web", Step.SCAN, StepStatus.SKIPPED, "--no-verify"),
     "[web] scan skipped: --no-verify"),
    (StepEvent("web", Step.IDEMPOTENCE, StepStatus.FAILED, "2 changed"),
     "[web] idempotence FAILED: 2 changed"),
    (StepEvent("web", Step.TAG, StepStatus.PENDING), "[web] tag "),
    (TaskEvent("web", "Install nginx", "nginx", "started", ok=3, changed=1),
     "[web] task nginx : Install nginx (ok=3 changed=1 failed=0)"),
    (TaskEvent("web", "nginx : Install nginx", "nginx", "started", ok=3),
     "[web] task nginx : Install nginx (ok=3 changed=0 failed=0)"),
    (TaskEvent("web", "Gathering Facts", None, "started"),
     "[web] task Gathering Facts (ok=0 changed=0 failed=0)"),
    (TaskEvent("web", "Install nginx", "nginx", "ok", ok=4), None),
    (TaskEvent("web", "Install nginx", "nginx", "changed", ok=4, changed=2), None),
    (TaskEvent("web", "Install nginx", "nginx", "failed", failed=1),
     "[web] task failed: Install nginx"),
    (LogEvent("web", "log: .rolebake/logs/web.log"), "[web] log: .rolebake/logs/web.log"),
]


# --------------------------------------------------------------------------- plain


def test_plain_progress_lines_are_unchanged() -> None:
    lines: list[str] = []
    view = PlainProgress(lines.append)
    for event, _ in EVENTS_AND_LINES:
        view(event)
    view.close()
    assert all(STAMP.match(line) for line in lines), lines
    assert [STAMP.sub("", line) for line in lines] == [
        line for _, line in EVENTS_AND_LINES if line is not None]


def test_plain_progress_redacts_whole_lines() -> None:
    lines: list[str] = []
    view = PlainProgress(lines.append, lambda s: s.replace("web] create", "XXX"))
    view(StepEvent("web", Step.CREATE, StepStatus.OK))
    view(LogEvent("web", f"token {SECRET}"))
    view = PlainProgress(lines.append, _redact)
    view(LogEvent("web", f"token {SECRET}"))
    view(TaskEvent("web", f"use {SECRET}", "[web]", "started"))
    texts = [STAMP.sub("", line) for line in lines]
    assert texts[0] == "[XXX ok"
    assert texts[2:] == ["[web] token ********",
                         "[web] task [web] : use ******** (ok=0 changed=0 failed=0)"]


def test_progress_for_a_pipe_is_plain_and_has_no_ansi(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich would take FORCE_COLOR as a terminal; CI logs must stay plain anyway.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    stream = io.StringIO()
    view = progress_for(stream, _redact)
    assert isinstance(view, PlainProgress)
    for event, _ in EVENTS_AND_LINES:
        view(event)
    view(LogEvent("[web]", f"[bold]{SECRET}[/bold]"))
    view.close()
    out = stream.getvalue()
    assert "\x1b" not in out
    assert out.endswith("[[web]] [bold]********[/bold]\n")
    assert SECRET not in out
    assert len(out.splitlines()) == sum(1 for _, line in EVENTS_AND_LINES if line) + 1


def test_progress_for_a_terminal_is_live(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    view = progress_for(_Tty())
    assert isinstance(view, LiveProgress)
    view.close()
    monkeypatch.setenv("TERM", "dumb")  # no cursor movement there: plain lines
    assert isinstance(progress_for(_Tty()), PlainProgress)


# --------------------------------------------------------------------------- live


def _terminal(width: int = 120) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=width, color_system="standard",
                      legacy_windows=False)
    return console, buffer


def test_live_view_shows_step_lines_and_a_status_line() -> None:
    console, buffer = _terminal()
    view = LiveProgress(console, refresh_per_second=1)
    view(StepEvent("web", Step.CREATE, StepStatus.RUNNING))
    view(StepEvent("web", Step.CREATE, StepStatus.OK))
    view(StepEvent("web", Step.PROVISION, StepStatus.RUNNING))
    view(TaskEvent("web", "Install nginx", "nginx", "started", ok=3, changed=1))
    # A printed line redraws the status line below it.
    view(LogEvent("web", "log: web.log"))
    view(TaskEvent("web", "Install nginx", "nginx", "failed", ok=3, changed=1, failed=1))
    view(StepEvent("web", Step.PROVISION, StepStatus.FAILED, "Install nginx failed"))
    view.close()
    raw = buffer.getvalue()
    assert "\x1b[" in raw  # colour and cursor control on a terminal
    out = _plain(raw)
    # Step lines stay, without time stamps; running steps are only shown in the status line.
    assert "[web] create ok\n" in out
    assert "[web] create ...\n" not in out
    assert "[web] log: web.log\n" in out
    assert "[web] task failed: nginx : Install nginx\n" in out
    assert "[web] provision FAILED: Install nginx failed\n" in out
    status = re.search(r"\[web\] nginx : Install nginx  ok=3 changed=1 failed=0  (\S+)", out)
    assert status is not None, out
    assert re.fullmatch(r"\d+\.\ds", status.group(1))
    assert "\x1b[?25h" in raw  # the cursor is shown again


def test_live_view_status_line_when_several_layers_are_busy() -> None:
    console, buffer = _terminal()
    view = LiveProgress(console, refresh_per_second=1)
    view(StepEvent("base", Step.COMMIT, StepStatus.RUNNING))
    view(TaskEvent("web", "Install nginx", None, "started", ok=1))
    view(LogEvent("web", "a line"))
    view.close()
    assert "[web] Install nginx  ok=1 changed=0 failed=0  (+1 more)" in _plain(buffer.getvalue())


def test_live_view_status_line_is_one_line_on_a_narrow_terminal() -> None:
    console, buffer = _terminal(width=40)
    view = LiveProgress(console, refresh_per_second=1)
    view(TaskEvent("web", "a task with a very long name " * 4, None, "started"))
    view(LogEvent("web", "x"))
    view.close()
    out = _plain(buffer.getvalue())
    assert "…" in out
    assert "a task with a very long name a task" not in out


def test_live_view_never_reads_names_as_markup() -> None:
    console, buffer = _terminal()
    view = LiveProgress(console, refresh_per_second=1)
    view(TaskEvent("[web]", "copy [bold]x[/bold] :smile:", "[red]", "started"))
    view(LogEvent("[web]", "[link=http://x]y[/link]"))
    view(StepEvent("[web]", Step.CREATE, StepStatus.OK, "[/]"))
    view.close()
    out = _plain(buffer.getvalue())
    assert "[[web]] [red] : copy [bold]x[/bold] :smile:  ok=0" in out
    assert "[[web]] [link=http://x]y[/link]\n" in out
    assert "[[web]] create ok: [/]\n" in out
    assert "😄" not in out


def test_live_view_redacts_lines_and_status() -> None:
    console, buffer = _terminal()
    view = LiveProgress(console, _redact, refresh_per_second=1)
    view(TaskEvent("web", f"write {SECRET}", "app", "started"))
    view(LogEvent("web", f"token={SECRET}"))
    view(TaskEvent("web", f"write {SECRET}", "app", "failed", failed=1))
    view.close()
    out = _plain(buffer.getvalue())
    assert SECRET not in buffer.getvalue()
    assert "[web] token=********\n" in out
    assert "app : write ********  ok=0" in out
    assert "[web] task failed: app : write ********" in out


def test_live_view_redacts_a_secret_across_styled_parts() -> None:
    console, buffer = _terminal()
    view = LiveProgress(console, lambda s: s.replace("web] create ok", "XXX"))
    view(StepEvent("web", Step.CREATE, StepStatus.OK))
    view.close()
    assert "[XXX" in buffer.getvalue()
    assert "create ok" not in _plain(buffer.getvalue())


# --------------------------------------------------------------------------- tables


def _report() -> BuildReport:
    return BuildReport(results={
        "base": LayerResult("base", StepStatus.OK, "sha256:bcdd002b9e66" + "0" * 52, cached=True,
                            tags=("rolebake/base:latest",), seconds=0.04),
        "web": LayerResult("web", StepStatus.OK, "sha256:141207f77e8d" + "1" * 52,
                           tags=("rolebake/web:latest", "rolebake/web:1"), seconds=83.2),
        "web:dev": LayerResult("web:dev", StepStatus.FAILED, None,
                               failed_tag="rolebake/web:failed-abc", seconds=12.0),
    }, seconds=95.5, build_id="3f2a9c81d0e4")


def test_build_summary_cells_and_alignment() -> None:
    lines = build_summary(_report())
    assert [line.split() for line in lines] == [
        ["base", "cached", "bcdd002b9e66", "0.0s", "rolebake/base:latest"],
        ["web", "ok", "141207f77e8d", "1m23s", "rolebake/web:latest,", "rolebake/web:1"],
        ["web:dev", "failed", "-", "12.0s", "kept", "as", "rolebake/web:failed-abc"],
        ["total", "1m35s", "build", "3f2a9c81d0e4"],
    ]
    # Columns line up: each starts at the same place on every layer line.
    for word in ("cached", "bcdd002b9e66"):
        column = lines[0].index(word)
        assert lines[1][column - 1] == " " and lines[1][column] != " "
        assert lines[2][column - 1] == " " and lines[2][column] != " "
    # Times are right-aligned.
    ends = {line.index(t) + len(t) for line, t in zip(lines, ("0.0s", "1m23s", "12.0s"),
                                                       strict=False)}
    assert len(ends) == 1
    assert all(line == line.rstrip() for line in lines)


def test_build_summary_redacts_and_colours_only_when_asked() -> None:
    report = _report()
    report.results["web"].tags = (f"rolebake/web:{SECRET}",)
    lines = build_summary(report, redact=_redact)
    assert not any(SECRET in line for line in lines)
    assert "rolebake/web:********" in lines[1]
    assert not any("\x1b" in line for line in lines)
    coloured = build_summary(report, redact=_redact, color=True)
    assert any("\x1b[" in line for line in coloured)
    assert [_plain(line).rstrip() for line in coloured] == lines


def _plan_rows() -> list[dict[str, object]]:
    return [
        {"layer": "base", "parent": "rolebake/debian:bookworm", "depth": 0, "status": "HIT",
         "image": "sha256:2035126676b2" + "f" * 52, "reasons": []},
        {"layer": "web", "parent": "base", "depth": 1, "status": "MISS", "image": None,
         "reasons": ["roles/web/templates/index.html.j2 changed", f"vars changed: {SECRET}"]},
        {"layer": "[web]:dev", "parent": "web", "depth": 2, "status": "MISS", "image": None,
         "reasons": ["parent web will be rebuilt first"]},
    ]


def test_plan_table_cells_and_reasons() -> None:
    lines = plan_table(_plan_rows(), redact=_redact)
    assert [line.split() for line in lines[:2]] == [
        ["base", "[HIT]", "2035126676b2", "<-", "rolebake/debian:bookworm"],
        ["web", "[MISS]", "<-", "base"],
    ]
    assert lines[1].startswith("  web ")
    assert lines[2] == "      - roles/web/templates/index.html.j2 changed"
    assert lines[3] == "      - vars changed: ********"
    assert lines[4].startswith("    [web]:dev ") and "[MISS]" in lines[4]
    assert lines[5] == "        - parent web will be rebuilt first"
    assert len(lines) == 6
    # Status and parent columns line up across depths.
    assert lines[0].index("[HIT]") == lines[1].index("[MISS]") == lines[4].index("[MISS]")
    assert lines[0].index("<-") == lines[1].index("<-") == lines[4].index("<-")


def test_plan_table_markup_and_colour() -> None:
    coloured = plan_table(_plan_rows(), redact=_redact, color=True)
    assert any("\x1b[" in line for line in coloured)
    assert [_plain(line).rstrip() for line in coloured] == plan_table(_plan_rows(),
                                                                      redact=_redact)
    assert "[web]:dev" in _plain(coloured[4]) and "[MISS]" in _plain(coloured[4])
    assert plan_table([]) == []


def _parity() -> ParityReport:
    return ParityReport(items=(
        ParityItem(Category.PACKAGE, "nginx", "1.22.1-9", "1.22.1-10", Status.DIFFERENT,
                   "differs"),
        ParityItem(Category.PATH, "/etc/app.conf", "file 600 root:root " + "a" * 20 + SECRET,
                   "file 600 root:root", Status.DIFFERENT, "sha256 differs"),
        ParityItem(Category.USER, "[app]", "[b]uid[/b]", None, Status.EXPECTED,
                   "user made by a VM boot package"),
        ParityItem(Category.FACT, "os", "Debian 12", "Debian 12", Status.EQUAL),
    ))


def test_parity_table_redacts_before_shortening() -> None:
    text = parity_table(_parity(), width=80, redact=_redact)
    assert SECRET not in text
    # The value is cut after redaction: no prefix of the secret shows either.
    assert "hunt" not in text
    assert "…" in text
    lines = text.splitlines()
    assert lines[0].split() == ["RESOURCE", "CONTAINER", "VM", "STATUS"]
    assert any(line.startswith("user [app]") and "[b]uid[/b]" in line
               and "expected: user made by a VM boot package" in line for line in lines)
    assert lines[-1] == "parity FAILED: 1 equal, 1 expected, 2 different"
    assert "fact os" not in text


def test_parity_table_colour_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    plain = parity_table(_parity(), show_equal=True)
    assert "\x1b" not in plain
    coloured = parity_table(_parity(), show_equal=True, color=True)
    assert "\x1b[" in coloured
    assert [_plain(line).rstrip() for line in coloured.splitlines()] == plain.splitlines()


def test_tests_side_by_side() -> None:
    container = [TestCase("test_web.py", "test_nginx_installed[docker://abc]", "passed"),
                 TestCase("test_web.py", "test_serves_site[docker://abc]", "failed"),
                 TestCase("test_web.py", "test_" + "n" * 60, "skipped")]
    vm = [TestCase("test_web.py", "test_nginx_installed[ssh://root@vm]", "passed"),
          TestCase("test_web.py", "test_vm_only[ssh://root@vm]", "passed")]
    lines = tables.tests_side_by_side(container, vm)
    assert [line.split() for line in lines] == [
        ["test", "container", "vm"],
        ["test_nginx_installed", "passed", "passed"],
        ["test_serves_site", "failed", "-"],
        ["test_" + "n" * 42 + "…", "skipped", "-"],
        ["test_vm_only", "-", "passed"],
    ]
    assert len({line.index(word) for line, word in zip(
        lines, ("container", "passed", "failed", "skipped", "-"), strict=True)}) == 1
    coloured = tables.tests_side_by_side(container, vm, color=True)
    assert any("\x1b[" in line for line in coloured)
    assert [_plain(line).rstrip() for line in coloured] == lines


def test_tests_side_by_side_redacts() -> None:
    lines = tables.tests_side_by_side([TestCase("t.py", f"test_{SECRET}", "passed")], [],
                               redact=_redact)
    assert lines[1].split() == ["test_********", "passed", "-"]
