"""Ansible callback plugin: tells rolebake's read recorder which task is running.

Loaded by the ansible-playbook rolebake starts (ANSIBLE_CALLBACK_PLUGINS). The
recorder (observe/sitecustomize.py) keys each file read with the task or play
running at that moment, as `file:line`; workers forked for a task inherit the
value. It has no use outside a rolebake build.
"""

from __future__ import annotations

import sys
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: rolebake_observe
type: aggregate
short_description: name the running task for rolebake's read recorder
description:
  - Sets the task (file:line) the files read next are attributed to.
author: rolebake
"""


class CallbackModule(CallbackBase):
    """Marks where in the playbook the run is, for the audit hook."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "rolebake_observe"
    CALLBACK_NEEDS_ENABLED = False  # always on when its folder is on the callback path

    def _mark(self, item: Any) -> None:
        state = sys.modules.get("_rolebake_observe")
        if state is not None:
            try:
                state.task = str(item.get_path())  # type: ignore[attr-defined]
            except Exception:
                state.task = ""  # type: ignore[attr-defined]

    def v2_playbook_on_play_start(self, play: Any) -> None:
        """A play's vars_files and roles are read next."""
        self._mark(play)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        """A task runs next (its workers are forked after this)."""
        del is_conditional
        self._mark(task)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        """A handler runs next."""
        self._mark(task)

    def v2_playbook_on_cleanup_task_start(self, task: Any) -> None:
        """A cleanup task runs next."""
        self._mark(task)
