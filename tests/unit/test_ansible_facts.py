"""Facts once per parent image: keying, environment, and real Ansible runs (no engine).

The runs are ansible-runner's, as a build makes them (the run's environment,
`fact_cache` in the folder ansible_facts seeds, rolebake's callback), against
the local host standing in for a container of the parent image.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from rolebake import redact
from rolebake.provision import ansible_facts, ansible_observed
from rolebake.provision.ansible import _runner_async
from rolebake.provision.ansible_config import environment, read_config
from rolebake.provision.ansible_plugins.callback.rolebake_facts import covers
from rolebake.spec import Project

PARENT = "sha256:" + "ab" * 32
HOST = "probe"
# Two plays, as a playbook may have: the first prints a fact, then sets one of its own.
PLAYS = """\
- hosts: all
  gather_subset: [{subset}]
  tasks:
    - ansible.builtin.copy:
        dest: "{{{{ out }}}}"
        content: "{{{{ ansible_facts['system'] }}}} {{{{ ansible_facts['gather_subset'] }}}}"
    - ansible.builtin.set_fact:
        rolebake_layer_fact: set by the layer
        cacheable: true
- hosts: all
  tasks: []
"""


def project_at(tmp_path: Path, cfg: str | None = None) -> Project:
    root = tmp_path / "project"
    (root / "roles").mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        (root / "ansible.cfg").write_text(cfg)
    return Project(root)


# A layer of a playbook, as rolebake's wrapper runs it: the play a parent layer applied
# is skipped (its gather and tasks too), the layer's own play applies.
LAYERED = """\
- name: base
  hosts: all
  gather_subset: [min]
  tasks:
    - ansible.builtin.file:
        path: "{{ out }}.base"
        state: touch
- name: web
  hosts: all
  gather_subset: [min]
  tasks:
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: "{{ ansible_facts['system'] }}"
"""
WRAPPER = """\
- import_playbook: site.yml
  when: ansible_play_name not in ['base']
"""


def run(project: Project, tmp_path: Path, *, subset: str = "min", parent: str = PARENT,
        extra_env: dict[str, str] | None = None,
        layered: bool = False, plays: str | None = None) -> tuple[str, str, str]:
    """One layer's run on `parent`: (the progress line, the probe's output, Ansible's stdout)."""
    data = tmp_path / "data"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    (data / "project").mkdir(parents=True)
    (data / "tmp").mkdir()
    (data / "project" / "play.yml").write_text(WRAPPER if layered else
                                               plays or PLAYS.format(subset=subset))
    (data / "project" / "site.yml").write_text(LAYERED)
    (data / "hosts.yml").write_text(
        f"all:\n  hosts:\n    {HOST}:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    config = read_config(project)
    facts = ansible_facts.prepare(project, config, parent, HOST, data)
    env = environment(config, data, roles_path=[project.roles_dir], remote_tmp="/tmp/.rbt",
                      programs=Path(sys.executable).parent)
    env.update(ansible_facts.environment(facts))
    env["ANSIBLE_CALLBACK_PLUGINS"] = str(ansible_observed.CALLBACK_PLUGINS)
    env.update(extra_env or {})
    out = tmp_path / "out.txt"
    thread, runner = _runner_async(
        env, private_data_dir=str(data), playbook="play.yml", inventory=str(data / "hosts.yml"),
        extravars={"out": str(out)}, quiet=True, settings={"suppress_ansible_output": True},
        fact_cache=str(facts.scratch))
    thread.join(180)
    stdout = "".join(p.read_text() for p in (data / "artifacts").glob("*/stdout"))
    assert runner.status == "successful", stdout
    line = ansible_facts.finish(project, facts, succeeded=True)
    assert line is not None
    return line, out.read_text(), stdout


def cached_text(project: Project, parent: str = PARENT) -> str:
    folder = project.state_dir / "facts" / parent.split(":")[1] / HOST
    return "".join(p.read_text() for p in folder.iterdir())


def test_the_first_layer_gathers_and_the_next_takes_the_parents_facts(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    line, out, stdout = run(project, tmp_path)
    assert line == "facts: gathered (parent abababababab); cached for the next layers on it"
    assert out.startswith("Linux ")
    assert stdout.count("TASK [Gathering Facts]") == 2  # Ansible's implicit: every play
    parent_dir = project.state_dir / "facts" / ("ab" * 32)
    assert stat.S_IMODE(parent_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (parent_dir / HOST).iterdir())
    # Only the first gather, before any task: the layer's own fact never reaches it.
    assert "rolebake_layer_fact" not in cached_text(project)

    line, out, stdout = run(project, tmp_path)
    assert line == "facts: from the cache of parent abababababab"
    assert out.startswith("Linux ")  # the task still sees the fact
    # The first play took the cache; the second gathers, as Ansible's implicit says,
    # since a task ran in between.
    assert stdout.count("TASK [Gathering Facts]") == 1
    assert "rolebake_layer_fact" not in cached_text(project)

    # Another parent (the parent rebuilt with a change): gathered again.
    line, _, _ = run(project, tmp_path, parent="sha256:" + "cd" * 32)
    assert line.startswith("facts: gathered (parent cdcdcdcdcdcd)")


def test_a_subset_the_cache_lacks_is_gathered(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    run(project, tmp_path, subset="min")
    line, out, _ = run(project, tmp_path, subset="min,network")
    assert line.startswith("facts: gathered (parent abababababab): gather_subset min,network "
                           "is not in the cache; cached"), line
    assert "network" in out
    line, _, _ = run(project, tmp_path, subset="min")  # min is in min,network
    assert line == "facts: from the cache of parent abababababab"


# The gather's subset from the play's module_defaults (no gather_subset keyword).
DEFAULTED = """\
- hosts: all
  module_defaults:
    ansible.builtin.setup:
      gather_subset: [min, network]
  tasks:
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: "{{ ansible_facts['gather_subset'] }}"
"""


def test_a_subset_from_module_defaults_is_gathered_not_guessed(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    # The parent's cache holds every fact: it would answer a play without a
    # gather_subset keyword, with more than the play's defaults ask for.
    run(project, tmp_path, subset="all")
    line, out, _ = run(project, tmp_path, plays=DEFAULTED)
    assert line.startswith("facts: gathered (parent abababababab): its module_defaults may "
                           "set the gather_subset"), line
    assert "network" in out and "all" not in out  # what the defaults asked for


def test_a_play_the_wrapper_skips_leaves_the_parents_facts_in_place(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    line, _, _ = run(project, tmp_path, layered=True)
    assert line == "facts: gathered (parent abababababab); cached for the next layers on it"
    line, out, stdout = run(project, tmp_path, layered=True)
    assert line == "facts: from the cache of parent abababababab"
    assert out == "Linux"
    assert "TASK [Gathering Facts]" not in stdout
    assert not (tmp_path / "out.txt.base").exists()  # the skipped play ran nothing


def test_facts_holding_a_secret_are_not_cached(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    secret = "s3cret-in-the-env-4711"
    redact.register([secret])
    try:
        # The target's environment is a fact (`env`, in `min`).
        line, _, _ = run(project, tmp_path, extra_env={"LC_ROLEBAKE_PROBE": secret})
    finally:
        redact.reset()
    assert line.endswith("; not cached: a secret is in them")
    assert not (project.state_dir / "facts" / ("ab" * 32) / HOST).exists()


def test_gathering_set_in_the_project_cfg_keeps_the_cache_off(tmp_path: Path) -> None:
    for value in ("implicit", "explicit"):
        config = read_config(project_at(tmp_path, f"[defaults]\ngathering = {value}\n"))
        assert ansible_facts.off_reason(config) == f"ansible.cfg: gathering = {value}"
    config = read_config(project_at(tmp_path, "[defaults]\ngathering = smart\n"))
    assert ansible_facts.off_reason(config) is None
    assert ansible_facts.off_reason(read_config(project_at(tmp_path / "none"))) is None


def test_the_environment_overrides_the_cfgs_fact_cache(tmp_path: Path) -> None:
    project = project_at(tmp_path, "[defaults]\nfact_caching_prefix = mine_\n"
                                   "fact_caching_timeout = 5\n")
    data = tmp_path / "data"
    data.mkdir()
    facts = ansible_facts.prepare(project, read_config(project), PARENT, HOST, data)
    env = ansible_facts.environment(facts)
    assert env["ANSIBLE_GATHERING"] == "smart"
    assert env["ANSIBLE_CACHE_PLUGIN_TIMEOUT"] == "0"
    assert env["ANSIBLE_CACHE_PLUGIN_PREFIX"] == ansible_facts.PREFIX
    assert env["ROLEBAKE_FACTS_HOST"] == HOST
    assert env["ROLEBAKE_FACTS_EVERY_PLAY"] == "1"  # the cfg leaves Ansible's implicit
    assert facts.folder == project.state_dir / "facts" / ("ab" * 32) / HOST
    assert facts.scratch.parent == data and facts.staging.parent == data


@pytest.mark.parametrize("image_id", ["", "sha256:", "sha256:../x", "sha256:AB/..", "sha256:zz"])
def test_only_an_image_id_names_a_cache_folder(image_id: str) -> None:
    with pytest.raises(ValueError):
        ansible_facts.folder_name(image_id)


@pytest.mark.parametrize("host", ["", "a/b", "..", ".hidden"])
def test_only_a_host_name_names_a_host_folder(host: str) -> None:
    with pytest.raises(ValueError):
        ansible_facts.host_folder(host)


def test_clean_finds_the_caches_of_images_that_are_gone(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    kept, gone = "ab" * 32, "cd" * 32
    for name in (kept, gone):
        (project.state_dir / "facts" / name / HOST).mkdir(parents=True)
    stale = ansible_facts.stale(project, lambda image_id: image_id == f"sha256:{kept}")
    assert [p.name for p in stale] == [gone]
    ansible_facts.remove(stale)
    assert sorted(p.name for p in (project.state_dir / "facts").iterdir()) == [kept]


def test_subsets_are_compared_as_ansible_resolves_them() -> None:
    assert covers(["all"], ["min"])
    assert covers(["all"], ["network", "hardware"])
    assert covers(["min", "network"], ["min"])
    assert not covers(["min"], ["all"])
    assert not covers(["min"], ["network"])
    assert not covers(None, ["min"])
    assert not covers(["all"], ["no-such-subset"])


def test_a_report_says_what_happened(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    facts = ansible_facts.prepare(project, read_config(project), PARENT, HOST, data)
    assert ansible_facts.finish(project, facts, succeeded=True) is None  # no play gathered
    facts.report.write_text(json.dumps({"facts": "gathered", "why": ""}) + "\nnot json\n")
    (facts.staging / "facts_x").write_text("{}")
    # No "stored" record (a task ran before the gather): nothing is kept.
    assert ansible_facts.finish(project, facts, succeeded=True) == \
        "facts: gathered (parent abababababab)"
    assert not (project.state_dir / "facts").exists()


def test_which_runs_use_the_cache(tmp_path: Path) -> None:
    project = project_at(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    config = read_config(project)
    facts, said = ansible_facts.for_run(project, config, PARENT, HOST, data, applies=True)
    assert facts is not None and said is None
    # The idempotence pass, a VM over SSH (no parent image): as before, nothing said.
    assert ansible_facts.for_run(project, config, PARENT, HOST, data, applies=False) == \
        (None, None)
    assert ansible_facts.for_run(project, config, None, HOST, data, applies=True) == (None, None)
    # A host name that cannot name a folder: no cache, the build goes on.
    assert ansible_facts.for_run(project, config, PARENT, "../up", data, applies=True) == \
        (None, None)
    off = read_config(project_at(tmp_path / "off", "[defaults]\ngathering = explicit\n"))
    assert ansible_facts.for_run(project, off, PARENT, HOST, data, applies=True) == (
        None, "facts: gathered (parent abababababab): ansible.cfg: gathering = explicit, "
              "no cache")
