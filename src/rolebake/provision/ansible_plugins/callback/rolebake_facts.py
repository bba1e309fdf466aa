"""Ansible callback plugin: the parent image's facts answer a layer's first gather, once.

Loaded by the ansible-playbook rolebake starts (ANSIBLE_CALLBACK_PLUGINS), inert
unless ROLEBAKE_FACTS_HOST is set (see rolebake/provision/ansible_facts.py).
The run's fact cache (jsonfile, `gathering = smart`) starts as a copy of what
was gathered in a container of the parent image. Ansible's smart gathering
then skips the gather while the cache holds facts; this plugin only decides,
at each play's start, whether the cached facts may answer it:

- any gather while no task has run on the host yet (skipped tasks do not
  count: rolebake's wrapper skips the plays a parent layer applied), when the
  cache holds the play's `gather_subset` (as Ansible's own collectors resolve it);
- never after a task ran (the container is no longer the parent image): a play
  gathers then as Ansible says without a cache (`implicit`, the default: every
  play; `smart`: when the facts lack the play's subset).

A gather it lets happen is told to Ansible by setting the `_ansible_facts_gathered`
flag false (VariableManager.set_host_facts, as a meta task would), so smart
gathering gathers and merges as usual. The run's first gather, when it ran
before any other task, is written by Ansible's jsonfile cache plugin into a
staging folder: rolebake stores it for the parent image after the run. What
happened is written, one JSON object a line, to ROLEBAKE_FACTS_REPORT.
It has no use outside a rolebake build.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: rolebake_facts
type: aggregate
short_description: serve a layer's first fact gather from its parent image's cache
description:
  - Decides per play whether rolebake's cache of the parent image's facts may answer it.
author: rolebake
"""

GATHER_ACTIONS = frozenset({"gather_facts", "ansible.builtin.gather_facts",
                            "ansible.legacy.gather_facts"})
FLAG = "_ansible_facts_gathered"
# ansible.builtin.setup's own (modules/setup.py, kept in its main()): what `min` means.
MINIMAL_GATHER_SUBSET = frozenset(["apparmor", "caps", "cmdline", "date_time", "distribution",
                                   "dns", "env", "fips", "local", "lsb", "pkg_mgr", "platform",
                                   "python", "selinux", "service_mgr", "ssh_pub_keys", "user"])


def collectors(subset: list[str]) -> frozenset[str] | None:
    """The fact collectors Ansible runs for `subset`; None when Ansible refuses it."""
    from ansible.module_utils.facts import collector, default_collectors

    try:
        found = collector.collector_classes_from_gather_subset(
            all_collector_classes=default_collectors.collectors,
            minimal_gather_subset=MINIMAL_GATHER_SUBSET, gather_subset=list(subset),
            platform_info={"system": "Linux"})
    except Exception:  # an unknown subset: the module says so when it gathers
        return None
    return frozenset(c.name for c in found)


def covers(cached: Any, wanted: list[str]) -> bool:
    """Whether facts gathered with subset `cached` hold all that subset `wanted` gathers."""
    if not isinstance(cached, list):
        return False
    have, need = collectors([str(s) for s in cached]), collectors(wanted)
    return have is not None and need is not None and need <= have


def _may_default_subset(defaults: Any) -> bool:
    """Whether a play's module_defaults may give its fact gather a gather_subset.

    What Ansible applies (`_apply_action_arg_defaults`) is resolved at gather time:
    any entry for setup or gather_facts, an action group, or defaults that are
    still a template counts.
    """
    if not defaults:
        return False
    for entry in defaults if isinstance(defaults, list) else [defaults]:
        if not isinstance(entry, dict):
            return True
        for key in entry:
            name = str(key).rsplit(".", 1)[-1]
            if name in ("setup", "gather_facts") or str(key).startswith("group/"):
                return True
    return False


def _subset(facts: dict[str, Any]) -> Any:
    """The gather_subset the facts were gathered with (the cache holds them unprefixed)."""
    return facts.get("gather_subset", facts.get("ansible_gather_subset"))


class CallbackModule(CallbackBase):
    """Lets the cached facts of the parent image answer a layer's first gather only."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "rolebake_facts"
    CALLBACK_NEEDS_ENABLED = False  # always on when its folder is on the callback path

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._host = os.environ.get("ROLEBAKE_FACTS_HOST")
        self._report = os.environ.get("ROLEBAKE_FACTS_REPORT")
        self._staging = os.environ.get("ROLEBAKE_FACTS_STAGING")
        self._every_play = os.environ.get("ROLEBAKE_FACTS_EVERY_PLAY") == "1"
        self._touched = False  # a task other than a gather ran: not the parent image any more
        self._said = False  # the line about the run's first gather is written
        self._store = False  # the next gather of our host is the parent's: keep it

    # -- plays -------------------------------------------------------------------------

    def v2_playbook_on_play_start(self, play: Any) -> None:
        """Before the play gathers: may the cached facts answer it?"""
        if not self._host:
            return
        gather = play.gather_facts
        if gather is not None and str(gather).lower() not in ("1", "true", "yes", "on"):
            return  # this play gathers nothing, whatever the cache holds
        wanted = [str(s) for s in (play.gather_subset or ["all"])]
        manager = play.get_variable_manager()
        facts = self._facts()
        held = bool(facts.get(FLAG)) and covers(_subset(facts), wanted)
        defaulted = play.gather_subset is None and _may_default_subset(play.module_defaults)
        if defaulted:
            # The gather takes its subset from module_defaults (the play's keyword wins
            # over them): not known here, so the cache answers nothing.
            held = False
        if self._touched:
            # Tasks ran: gather as Ansible would without a cache (implicit: every play).
            if self._every_play or not held:
                self._gather(manager)
            if not self._said:
                self._write({"facts": "gathered", "why": "tasks ran before the first gather"})
            return
        # Nothing ran yet (a play skipped by rolebake's wrapper runs nothing either):
        # the container is still the parent image, and so are the facts in the cache.
        if held:
            self._write({"facts": "cache", "subset": wanted})
            return
        if facts:
            self._gather(manager)
        self._store = bool(self._staging)
        why = ("its module_defaults may set the gather_subset" if defaulted else
               f"gather_subset {','.join(wanted)} is not in the cache") if facts.get(FLAG) else ""
        self._write({"facts": "gathered", "why": why, "subset": wanted})

    def _gather(self, manager: Any) -> None:
        # Smart gathering asks only this flag: false, the play gathers and merges.
        if manager is not None:
            manager.set_host_facts(self._host, {FLAG: False})

    def _facts(self) -> dict[str, Any]:
        """The host's facts in the run's cache, as Ansible's configured cache plugin reads them."""
        from ansible import constants as C
        from ansible.plugins.loader import cache_loader

        try:
            found = cache_loader.get(C.CACHE_PLUGIN).get(self._host)
        except KeyError:
            return {}
        return dict(found) if isinstance(found, dict) else {}

    # -- tasks -------------------------------------------------------------------------

    def _ran(self, result: Any) -> None:
        """A result of our host: any task but a gather means the container changed."""
        if result._host.get_name() == self._host and result._task.action not in GATHER_ACTIONS:
            self._touched = True
            self._store = False

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        """A failed task (ignored or not) ran too."""
        del ignore_errors
        self._ran(result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        """Counted as run: what it did before is not known."""
        self._ran(result)

    def v2_runner_on_ok(self, result: Any) -> None:
        """The run's first gather, before any task: written for the parent's cache."""
        self._ran(result)
        if not self._store or result._task.action not in GATHER_ACTIONS \
                or result._host.get_name() != self._host:
            return
        self._store = False
        facts = result._result.get("ansible_facts")
        if not isinstance(facts, dict) or not self._staging:
            return
        from ansible.plugins.loader import cache_loader

        # Ansible's own jsonfile plugin writes the file, in the folder rolebake reads back.
        cache = cache_loader.get("ansible.builtin.jsonfile", _uri=self._staging, _timeout=0,
                                 _prefix=os.environ.get("ANSIBLE_CACHE_PLUGIN_PREFIX", ""))
        # As Ansible's cache holds them: the flag is in there, callbacks get results without it.
        cache.set(self._host, {**facts, FLAG: True})
        self._write({"facts": "stored"})

    def _write(self, record: dict[str, Any]) -> None:
        self._said = True
        if self._report:
            with open(self._report, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
