"""A failed Ansible run as one rolebake error: which task, where, and why.

A task that names a missing file or variable is bad input (exit 2 at the task's
file and line); a task that fails is a failed build (exit 1) naming the task,
its role and module, with what only a machine can do explained
(container_limits.py); with no failed task, Ansible's own ERROR line is the input
error it refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rolebake.errors import BuildFailed, InputError, RolebakeError
from rolebake.provision import container_limits
from rolebake.provision.base import ProvisionContext, TaskResult, first_line, tail
from rolebake.provision.target import ContainerTarget

_ERROR_LOCATION = re.compile(r"The error appears to be in '([^']+)': line (\d+)")
_INPUT_FAULT = re.compile(r"Could not find or access '[^']+'|'[^']+' is undefined")
_OFFENDING = re.compile(r"(?:Origin|origin): ([^\s:]+):(\d+)")


def explain(ctx: ProvisionContext, failures: Sequence[TaskResult], failure_paths: Sequence[str],
            stdout: str) -> RolebakeError:
    """The error for a failed Ansible run: the first failed task, else Ansible's own ERROR line.

    Args:
        ctx: the pass's context (its target, its log).
        failures: the failed tasks, in order.
        failure_paths: "file:line" of each failed task, where Ansible said.
        stdout: Ansible's output.
    """
    log = f"full Ansible log: {ctx.log_path}"
    if failures:
        task = failures[0]
        res = task.result
        message = str(res.get("msg") or "").strip() or "the task failed"
        evidence = "\n".join(
            str(res[key]).rstrip() for key in ("stderr", "module_stderr", "stdout")
            if res.get(key)
        )
        # A task that names a file or variable that is not there is bad input in
        # the role, not a failed build: exit 2, at the task's file and line.
        fault = _INPUT_FAULT.search(message)
        task_path = failure_paths[0] if failure_paths else ""
        if fault and task_path:
            path, _, line = task_path.rpartition(":")
            return InputError(f"task {task.name!r}: {fault.group(0)}", path=path or task_path,
                              line=int(line) if line.isdigit() else None, hint=log)
        where = f"role {task.role}, " if task.role else ""
        # What only a machine can do (a kernel parameter, a mount): say so, and where.
        limit = container_limits.advice(task.action, message, evidence) if isinstance(
            ctx.target, ContainerTarget) else None
        return BuildFailed(
            f"task {task.name!r} ({where}module {task.action}) failed: {first_line(message)}",
            details=tail(evidence or message, 15),
            hint=f"{limit} ({task_path or 'see the log'}); {log}" if limit else log,
        )
    # No task ran into trouble, so Ansible refused the input itself: a YAML
    # error, a missing role or template, a bad play. That is an input error.
    error = next((line for line in stdout.splitlines() if line.startswith(("ERROR!", "[ERROR]"))),
                 "")
    location = _ERROR_LOCATION.search(stdout) or _OFFENDING.search(stdout)
    if error:
        message = error.removeprefix("ERROR!").removeprefix("[ERROR]").lstrip(": ").strip()
        if location:
            return InputError(message, path=location.group(1), line=int(location.group(2)))
        return InputError(message, hint=log)
    return BuildFailed("ansible-playbook failed", details=tail(stdout, 20), hint=log)
