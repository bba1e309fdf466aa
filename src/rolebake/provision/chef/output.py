"""Reading chef-solo's doc-formatter output: per-resource results, and the error it reports.

The formatter prints one line per resource as it starts and its status when
it ends; a failure adds an error block naming the resource, the recipe and
where it was declared, which becomes one RolebakeError with that evidence.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.errors import BuildFailed, InputError, RolebakeError
from rolebake.provision.base import TaskResult, tail

_RECIPE_LINE = re.compile(r"^\s*Recipe: (?P<recipe>\S+)\s*$")
_RESOURCE_LINE = re.compile(
    r"^(?P<indent> *)\* (?P<resource>[A-Za-z_][\w:]*\[.*\]) action (?P<action>\w+)(?P<rest>.*)$")
_UPDATE_LINE = re.compile(r"^(?P<indent> *)- (?P<text>.*)$")
_STATUS_ONLY = re.compile(r"^\s*\((up to date|skipped due to [^)]*|Skipped: [^)]*)\)\s*$")
_VERSION_LINE = re.compile(r"^(?:Starting )?(?P<product>(?:Chef|Cinc)(?: Infra)? Client), "
                           r"version (?P<version>\S+)")
_END_LINES = re.compile(r"^(?:Running handlers:|(?:Chef|Cinc)(?: Infra)? Client "
                        r"(?:finished|failed)|Infra Phase (?:complete|failed))")
_ERROR_EXECUTING = re.compile(
    r"Error executing action `(?P<action>\w+)` on resource '(?P<resource>.+)'\s*$")
_FATAL_RESOURCE = re.compile(
    r"FATAL: (?P<exception>[\w:]+): (?P<resource>\S+\[.*?\]) \((?P<recipe>[\w.-]+::[\w.-]+) "
    r"line (?P<line>\d+)\) had an error: (?P<message>.*)$")
_FATAL = re.compile(r"FATAL: (?P<message>(?!Stacktrace dumped)(?!-{5})(?!PLEASE PROVIDE).+)$")
_COMPILE_ERROR = re.compile(r"^\s*(?P<what>\w[\w ]*?Compile Error) in (?P<path>\S+)\s*$")
_DECLARED_IN = re.compile(r"#\s*Declared in (?P<path>\S+?):(?P<line>\d+)")
_TRACE_LINE = re.compile(r"^\s+(?P<path>/\S+?):(?P<line>\d+):in ")
_SECTION_HEADS = ("Resource Declaration:", "Compiled Resource:", "System Info:", "Platform:",
                  "Cookbook Trace:", "Relevant File Content:", "Additional information:",
                  "Cookbook Trace: (most recent call first)")


@dataclass(frozen=True)
class ResourceEvent:
    """A resource started or finished, as chef's doc formatter printed it."""

    status: str  # started | ok | changed | skipped | failed
    task: TaskResult


@dataclass
class _Open:
    name: str
    action: str
    recipe: str | None
    indent: int
    updates: list[str] = field(default_factory=list)
    parent: str | None = None


class DocOutputParser:
    """Reads chef-solo's doc-formatter output line by line into per-resource results.

    Feed complete lines as they arrive; `finish` closes what is still open.
    """

    def __init__(self) -> None:
        """Start with no recipe and no open resource."""
        self.recipe: str | None = None
        self.version: str | None = None
        self.results: list[TaskResult] = []
        self._open: list[_Open] = []
        self._peeked: str | None = None

    def feed(self, line: str) -> list[ResourceEvent]:
        """Take one line of output (without its newline); return what finished or started."""
        line = line.rstrip("\r\n")
        events: list[ResourceEvent] = []
        if self.version is None and (m := _VERSION_LINE.match(line)):
            self.version = f"{m.group('product')} {m.group('version')}"
        if m := _RECIPE_LINE.match(line):
            events += self._close(0)
            self.recipe = m.group("recipe")
            return events
        if m := _RESOURCE_LINE.match(line):
            indent = len(m.group("indent"))
            events += self._close(indent)
            opened = _Open(name=m.group("resource"), action=m.group("action"),
                           recipe=self.recipe, indent=indent,
                           parent=self._open[-1].name if self._open else None)
            self._open.append(opened)
            if not (self._peeked and line.startswith(self._peeked)):
                events.append(ResourceEvent("started", self._task(opened, "started")))
            self._peeked = None
            rest = m.group("rest").strip()
            if rest:
                events += self._status(rest)
            return events
        if m := _ERROR_EXECUTING.search(line):
            return events + self._fail(m.group("resource"), m.group("action"))
        if m := _STATUS_ONLY.match(line):
            return events + self._status(m.group(0).strip())
        if (m := _UPDATE_LINE.match(line)) and self._open:
            indent = len(m.group("indent"))
            for opened in reversed(self._open):
                if opened.indent < indent:
                    opened.updates.append(m.group("text"))
                    break
            return events
        if _END_LINES.match(line) or _COMPILE_ERROR.match(line):
            events += self._close(0)
        return events

    def peek(self, partial: str) -> list[ResourceEvent]:
        """Look at an unfinished last line: the formatter ends a resource's line only when done."""
        m = _RESOURCE_LINE.match(partial)
        if m is None or m.group("rest").strip() or partial.rstrip() == self._peeked:
            return []
        self._peeked = partial.rstrip()
        opened = _Open(name=m.group("resource"), action=m.group("action"), recipe=self.recipe,
                       indent=len(m.group("indent")))
        return [ResourceEvent("started", self._task(opened, "started"))]

    def finish(self) -> list[ResourceEvent]:
        """Close every resource still open (end of output)."""
        return self._close(0)

    def _status(self, rest: str) -> list[ResourceEvent]:
        # A parent's status may follow its nested resources' lines, so it
        # belongs to the innermost resource still open.
        if not self._open:
            return []
        opened = self._open.pop()
        if "up to date" in rest:
            status = "ok"
        elif rest.lower().startswith(("(skipped", "skipped")):
            status = "skipped"
        else:
            status = "changed" if opened.updates else "ok"
        reason = rest.strip("() ")
        return [self._finish(opened, status, {"reason": reason} if status == "skipped" else {})]

    def _fail(self, resource: str, action: str) -> list[ResourceEvent]:
        events: list[ResourceEvent] = []
        for position in range(len(self._open) - 1, -1, -1):
            if self._open[position].name == resource:
                # Resources nested in the failed one were finished by now.
                inner = self._open[position + 1:]
                del self._open[position + 1:]
                for opened in reversed(inner):
                    events.append(self._finish(opened, "changed" if opened.updates else "ok"))
                failed = self._open.pop()
                events.append(self._finish(failed, "failed"))
                return events
        return [self._finish(_Open(name=resource, action=action, recipe=self.recipe, indent=0),
                             "failed")]

    def _close(self, indent: int) -> list[ResourceEvent]:
        events: list[ResourceEvent] = []
        while self._open and self._open[-1].indent >= indent:
            opened = self._open.pop()
            events.append(self._finish(opened, "changed" if opened.updates else "ok"))
        return events

    def _finish(self, opened: _Open, status: str,
                extra: Mapping[str, Any] | None = None) -> ResourceEvent:
        task = self._task(opened, status, extra)
        self.results.append(task)
        return ResourceEvent(status, task)

    @staticmethod
    def _task(opened: _Open, status: str, extra: Mapping[str, Any] | None = None) -> TaskResult:
        result: dict[str, Any] = {}
        if opened.updates:
            result["updates"] = opened.updates[:20]
        if opened.parent:
            result["within"] = opened.parent
        result.update(extra or {})
        return TaskResult(name=opened.name, role=opened.recipe, action=opened.action,
                          status=status, result=result)


def parse_chef_output(lines: Iterable[str]) -> list[TaskResult]:
    """Every resource chef-solo reported, in the order they finished."""
    parser = DocOutputParser()
    for line in lines:
        parser.feed(line)
    parser.finish()
    return parser.results


@dataclass(frozen=True)
class ChefError:
    """What chef printed about a failure, picked out of its output."""

    kind: str  # resource | compile | resolve | other
    resource: str | None = None
    action: str | None = None
    recipe: str | None = None
    exception: str | None = None
    message: str = ""
    block: tuple[str, ...] = ()
    path: str | None = None
    line: int | None = None


def find_error(text: str) -> ChefError | None:
    """Pick the error report out of chef-solo's output (None when there is none)."""
    lines = text.splitlines()
    fatal = _fatal_line(lines)
    for index, line in enumerate(lines):
        if m := _ERROR_EXECUTING.search(line):
            exception, message, block = _error_block(lines, index + 1)
            path, line_no = _declared_at(lines, index + 1)
            recipe = None
            if fatal and (fm := _FATAL_RESOURCE.search(fatal)):
                recipe = fm.group("recipe")
                line_no = line_no or int(fm.group("line"))
            recipe = recipe or _recipe_before(lines, index)
            return ChefError(kind="resource", resource=m.group("resource"),
                             action=m.group("action"), recipe=recipe, exception=exception,
                             message=message, block=block, path=path, line=line_no)
        if m := _COMPILE_ERROR.match(line):
            exception, message, block = _error_block(lines, index + 1)
            trace = next((t for t in (_TRACE_LINE.match(x) for x in lines[index + 1:]) if t),
                         None)
            return ChefError(kind="compile", exception=exception, message=message, block=block,
                             path=trace.group("path") if trace else m.group("path"),
                             line=int(trace.group("line")) if trace else None,
                             recipe=m.group("what"))
        if line.strip().startswith("Error Resolving Cookbooks for Run List"):
            _exception, message, block = _error_block(lines, index + 1, heads=False)
            return ChefError(kind="resolve", message=message or "cookbooks missing",
                             block=block)
    if fatal:
        return ChefError(kind="other", message=fatal)
    return None


def _fatal_line(lines: Sequence[str]) -> str | None:
    # The line naming the resource is the best; past it, chef's last word.
    found = None
    for line in lines:
        if m := _FATAL.search(line):
            if _FATAL_RESOURCE.search(line):
                return m.group("message").strip()
            if "ChildConvergeError" not in line or found is None:
                found = m.group("message").strip()
    return found


def _error_block(lines: Sequence[str], start: int, *,
                 heads: bool = True) -> tuple[str | None, str, tuple[str, ...]]:
    """The exception name, its first message line, and the whole block up to the next section."""
    block: list[str] = []
    for line in lines[start:]:
        stripped = line.strip()
        if stripped in _SECTION_HEADS or _END_LINES.match(stripped) or "FATAL:" in line:
            break
        if stripped.startswith("=====") and not block:
            continue
        block.append(stripped)
    while block and not block[-1]:
        block.pop()
    while block and not block[0]:
        block.pop(0)
    exception = None
    body = [b for b in block if b and set(b) != {"-"}]
    if heads and len(block) >= 2 and block[1] and set(block[1]) == {"-"}:
        exception, body = block[0], body[1:]
    # Sub-headings ("Missing Cookbooks:") are not the message; the line under them is.
    message = next((b for b in body if not b.endswith(":")), body[0] if body else "")
    stderr = next((b[7:].strip() for b in body if b.startswith("STDERR:") and b[7:].strip()),
                  None)
    if stderr and stderr not in message:
        message = f"{message} (STDERR: {stderr})"
    return exception, message, tuple(block)


def _declared_at(lines: Sequence[str], start: int) -> tuple[str | None, int | None]:
    for line in lines[start:start + 200]:
        if m := _DECLARED_IN.search(line):
            return m.group("path"), int(m.group("line"))
        if "FATAL:" in line:
            break
    return None, None


def _recipe_before(lines: Sequence[str], index: int) -> str | None:
    for line in reversed(lines[:index]):
        if m := _RECIPE_LINE.match(line):
            return m.group("recipe")
    return None


def failure_from_output(text: str, *, host_paths: Mapping[str, Path] | None = None,
                        root: Path | None = None, log_path: Path | None = None,
                        rc: int | None = None) -> RolebakeError:
    """Turn a failed chef-solo run into one error naming the resource, recipe and chef's words.

    Args:
        text: everything chef-solo printed.
        host_paths: container folder -> project folder, to name files as the user knows them.
        root: the project root; file names in messages are shown relative to it.
        log_path: where the full output was written (for the hint).
        rc: chef-solo's exit status.

    Returns:
        BuildFailed for a resource that failed (exit 1); InputError for a
        cookbook that does not compile or a run list chef cannot resolve (exit 2).
    """
    hint = f"full chef-solo output: {log_path}" if log_path else ""
    error = find_error(text)
    if error is None:
        status = f" (exit {rc})" if rc is not None else ""
        return BuildFailed(f"chef-solo failed{status}", details=tail(text, 20), hint=hint)
    path = _host_path(error.path, host_paths or {})
    where = ""
    if path is not None:
        shown = path
        if root is not None:
            with contextlib.suppress(ValueError):
                shown = str(Path(path).relative_to(root))
        where = f", {shown}:{error.line}" if error.line else f", {shown}"
    said = f"{error.exception}: {error.message}" if error.exception else error.message
    if error.kind == "resource":
        recipe = f"recipe {error.recipe}" if error.recipe else "an unknown recipe"
        return BuildFailed(
            f"chef resource {error.resource} ({recipe}{where}) failed to {error.action}: {said}",
            details="\n".join(error.block[:25]) or tail(text, 20), hint=hint)
    if error.kind == "compile":
        return InputError(f"chef: {error.recipe.lower() if error.recipe else 'compile error'}: "
                          f"{said}", path=path, line=error.line, hint=hint)
    if error.kind == "resolve":
        return InputError(f"chef could not resolve the run list: {said}", hint=hint)
    return BuildFailed(f"chef-solo failed: {said}", details=tail(text, 20), hint=hint)


def _host_path(path: str | None, host_paths: Mapping[str, Path]) -> str | None:
    if path is None:
        return None
    for prefix, folder in sorted(host_paths.items(), key=lambda kv: -len(kv[0])):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            rest = path[len(prefix.rstrip("/")):].lstrip("/")
            return str(folder / rest) if rest else str(folder)
    return path

