"""Ansible's side of observed inputs: the recorder put into the ansible-playbook rolebake runs.

An audit hook (ansible_plugins/observe/sitecustomize.py), loaded through
PYTHONPATH, records every file the controller-side Ansible process and its
forked workers open for reading and every folder they list; a callback plugin
(ansible_plugins/callback/rolebake_observe.py) names the task running at that
moment. What was read is compared with the cache key in `observed.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rolebake.provision.agent import PLUGINS
from rolebake.provision.ansible_config import read_config
from rolebake.provision.ansible_spec import AnsibleSettings
from rolebake.provision.observed import Observed, Read, drop_loaded, sort_reads
from rolebake.spec import Project

RECORD = "observed.jsonl"  # in the run's private data dir


def environment(project: Project, data_dir: Path, python_path: str = "") -> dict[str, str]:
    """Variables that install the recorder in ansible-playbook and say what it may skip.

    The recorder's folder goes first on `python_path` (the PYTHONPATH Ansible
    would have had): what Ansible then reads from the rest of it (a collection)
    is a read from outside the project like any other.

    Skipped: rolebake's own scratch and state (the run's data dir, ANSIBLE_HOME,
    `.rolebake/`: installed requirements are keyed by their digest), and the
    installations of rolebake, Ansible and ansible-runner (Python's own prefix the
    hook skips by itself).
    """
    import ansible
    import ansible_runner

    import rolebake

    package = Path(rolebake.__file__).parent
    # rolebake's distribution metadata beside its package (an editable install keeps
    # it outside the venv): `rolebake.__version__` reads it wherever rolebake loads.
    metadata = [*package.parent.glob("rolebake.egg-info"),
                *package.parent.glob("rolebake-*.dist-info")]
    skip = [data_dir, project.state_dir, package, *metadata,
            Path(ansible.__file__).parent, Path(ansible_runner.__file__).parent]
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS / "observe"), python_path])),
        "ROLEBAKE_OBSERVE_FILE": str(data_dir / RECORD),
        "ROLEBAKE_OBSERVE_SKIP": os.pathsep.join(
            dict.fromkeys(os.path.realpath(p) for p in skip)),
    }


CALLBACK_PLUGINS = PLUGINS / "callback"


def observe(project: Project, data_dir: Path, loaded_only: frozenset[str],
            own: AnsibleSettings) -> Observed:
    """What the run read, sorted, with what the layer's spec allows (`inputs`, recording).

    `loaded_only` are project files only plays the layer does not apply use.
    """
    seen = drop_loaded(sort_reads(project, read_record(data_dir, project)), loaded_only)
    return replace(seen, declared=own.inputs, record=own.record_inputs)


def read_record(data_dir: Path, project: Project | None = None) -> list[Read]:
    """What the recorder wrote during the run (one JSON line per first sight).

    With `project`, the credential files its ansible.cfg names are left out: they
    decide nothing about an image, and are neither keyed nor refused.
    """
    path = data_dir / RECORD
    found: list[Read] = []
    if not path.exists():
        return found
    credentials = _credential_files(project) if project is not None else set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a worker killed mid-write; the rest stands
        if isinstance(item, dict) and isinstance(item.get("path"), str) \
                and os.path.realpath(item["path"]) not in credentials:
            found.append(Read(kind=str(item.get("kind") or "read"), path=item["path"],
                              task=str(item.get("task") or "")))
    return found


def _credential_files(project: Project) -> set[str]:
    """Real paths of `vault_password_file` and `private_key_file` in the project's cfg."""
    config = read_config(project)
    found = set()
    for key in CREDENTIAL_KEYS:
        value = config.get(key)
        if value:
            path = Path(os.path.expanduser(value))
            found.add(os.path.realpath(path if path.is_absolute() else project.root / path))
    return found


CREDENTIAL_KEYS = ("vault_password_file", "private_key_file")


# Host files the spec declares (`inputs:`) --------------------------------------------


def declared_digests(paths: Sequence[str]) -> dict[str, str]:
    """`outside input <path>` -> the digest of its content (a folder: every file below it)."""
    found: dict[str, str] = {}
    for path in paths:
        digest = hashlib.sha256()
        if os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    digest.update(os.path.relpath(full, path).encode() + b"\0")
                    digest.update(_content(full) + b"\0")
        else:
            digest.update(_content(path))
        found[f"outside input {path}"] = digest.hexdigest()[:32]
    return found


def _content(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return hashlib.sha256(stream.read()).digest()
    except OSError:
        return b"missing"
