"""ansible-runner's events as rolebake's: progress per task, task results, failures.

An event holds a task's whole result, secrets printed by the task included;
rolebake keeps what it needs here and writes no copy to disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rolebake.events import LogEvent
from rolebake.provision.base import ProvisionContext, TaskCounter, TaskResult

SLOW_TASK_S = 10.0  # a task taking longer is named in the build's progress


@dataclass
class EventWatcher:
    """Turns ansible-runner events into rolebake events and task results."""

    ctx: ProvisionContext
    results: list[TaskResult] = field(default_factory=list)
    failures: list[TaskResult] = field(default_factory=list)
    failure_paths: list[str] = field(default_factory=list)  # "file:line" of each failed task
    counter: TaskCounter = field(init=False)

    def __post_init__(self) -> None:
        """Count tasks for the same context the events go to."""
        self.counter = TaskCounter(self.ctx)

    def __call__(self, event: Mapping[str, Any]) -> bool:
        """Take one ansible-runner event; False keeps it out of runner's artifacts.

        An event holds a task's whole result, secrets printed by the task
        included; rolebake keeps what it needs here and writes no copy to disk.
        """
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            self._emit(data, "started")
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_skipped",
                      "runner_on_unreachable"):
            res = data.get("res") or {}
            if kind == "runner_on_ok":
                status = "changed" if res.get("changed") else "ok"
            elif kind == "runner_on_skipped":
                status = "skipped"
            elif data.get("ignore_errors"):
                status = "ignored"
            else:
                status = "failed"
            self.counter.count(status)
            task = TaskResult(
                name=str(data.get("task") or ""),
                role=data.get("role") or None,
                action=str(data.get("task_action") or ""),
                status=status,
                args=(res.get("invocation") or {}).get("module_args") or {},
                result=_trim(res),
                path=str(data.get("task_path") or ""),
            )
            self.results.append(task)
            seconds = data.get("duration")
            if isinstance(seconds, (int, float)) and seconds >= SLOW_TASK_S:
                # A restart that waits for a process nobody reaps took 60 s and said nothing.
                self.ctx.events(LogEvent(self.ctx.layer.id, f"slow task: '{task.name}' took "
                                                            f"{seconds:.0f} s"))
            if status == "failed":
                self.failures.append(task)
                self.failure_paths.append(str(data.get("task_path") or ""))
            self._emit(data, status)
        return False

    def _emit(self, data: Mapping[str, Any], status: str) -> None:
        self.counter.emit(str(data.get("task") or ""), data.get("role") or None, status)


def _trim(res: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("msg", "stderr", "stdout", "module_stderr", "rc", "changed", "path", "dest", "state",
            "name", "mode", "owner", "group", "uid", "gid", "home", "shell", "enabled", "src",
            "status", "cache_updated", "diff", "results")
    return {k: res[k] for k in keep if k in res}
