"""How Ansible reaches a build container: rolebake's agent vs Mitogen vs the engine's exec API.

Runs one ~10-task playbook (facts, file, copy, template, command, shell,
lineinfile, stat, apt, user) against a fresh container of the base image with
the lent python on /mnt, as a build has it, over three connections:

- `agent`:  rolebake's session and relay (connection `rolebake_agent`);
- `mitogen`: Mitogen for Ansible (strategy `mitogen_linear`, its `docker`
  connection, through the docker CLI), when `mitogen` is installed;
- `docker_api`: community.docker.docker_api, one engine exec per command.

Each connection runs `--runs` times (interleaved, a fresh container each
time; the container's creation is not timed, the agent's start is). Prints a
markdown table of the medians with the 1-minute load before each run, and
writes bench/results/connections.json.

Usage: .venv/bin/python bench/connections.py [--runs 3] [--only agent,mitogen,docker_api]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from rolebake.engine import ContainerHandle, DockerEngine, Engine  # noqa: E402
from rolebake.events import discard  # noqa: E402
from rolebake.provision import agent, pytoolchain  # noqa: E402
from rolebake.provision.base import lend_volume  # noqa: E402
from rolebake.release import release_of  # noqa: E402

BASE_IMAGE = "rolebake/debian:bookworm"
RUN_LABEL = "rolebake-bench.run"
MODES = ("agent", "mitogen", "docker_api")
PLAYBOOK = """\
- hosts: all
  gather_facts: true
  tasks:
    - ansible.builtin.file: {path: /srv/bench, state: directory, mode: "0755"}
    - ansible.builtin.copy: {dest: /srv/bench/a.conf, content: "a = 1\\n", mode: "0644"}
    - ansible.builtin.copy: {src: "{{ playbook_dir }}/b.bin", dest: /srv/bench/b.bin}
    - ansible.builtin.template: {src: "{{ playbook_dir }}/c.j2", dest: /srv/bench/c.conf}
    - ansible.builtin.command: cat /srv/bench/c.conf
      changed_when: false
    - ansible.builtin.shell: ls /srv/bench | wc -l
      changed_when: false
    - ansible.builtin.lineinfile: {path: /srv/bench/a.conf, line: "b = 2"}
    - ansible.builtin.stat: {path: /srv/bench/b.bin}
    - ansible.builtin.apt: {name: apt, state: present}
    - ansible.builtin.user: {name: bench, system: true, create_home: false}
    - ansible.builtin.file: {src: /srv/bench/a.conf, dest: /srv/bench/link, state: link}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(MODES))
    options = parser.parse_args()
    modes = [m for m in options.only.split(",") if m]
    engine = DockerEngine.connect()
    image = engine.image(BASE_IMAGE)
    assert image is not None, f"{BASE_IMAGE} is missing: run `make base`"
    runtime = pytoolchain.choose(engine, release_of(engine, image))
    toolchain = pytoolchain.ensure(engine, runtime, image, discard, "bench")
    mount = lend_volume(engine, toolchain.id, volume=pytoolchain.VOLUME,
                        at=pytoolchain.VOLUME, kind="python")
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="rolebake-bench-conn-"))
    (work / "site.yml").write_text(PLAYBOOK)
    (work / "b.bin").write_bytes(os.urandom(256 * 1024))
    (work / "c.j2").write_text("host {{ ansible_hostname }} on {{ ansible_distribution }}\n")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for attempt in range(options.runs):
            for mode in modes:
                name = f"rolebake-bench-conn-{run_id}-{mode}-{attempt}"
                with engine.container(image.id, name=name, mounts=(mount,),
                                      labels={RUN_LABEL: run_id}) as container:
                    load = os.getloadavg()[0]
                    seconds, ok, tail = _run(engine, container, mode, work)
                results[mode].append({"seconds": seconds, "load": load, "ok": ok,
                                      "tail": tail})
                print(f"{mode} run {attempt + 1}: {seconds:.2f} s (load {load:.2f})"
                      f"{'' if ok else ' FAILED: ' + tail}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_table(results))
    out = HERE / "results" / "connections.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"run": run_id, "uptime": _uptime(), "results": results},
                              indent=2) + "\n")
    return 0 if all(r["ok"] for rs in results.values() for r in rs) else 1


def _run(engine: Engine, container: ContainerHandle, mode: str,
         work: Path) -> tuple[float, bool, str]:
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
           "ANSIBLE_REMOTE_TMP": "/tmp/.bench-ansible"}
    host_vars = [f"ansible_host={container.id}",
                 f"ansible_python_interpreter={pytoolchain.INTERPRETER}"]
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if mode == "agent":
            relay = stack.enter_context(agent.relay(engine, container, pytoolchain.INTERPRETER,
                                                    env={}))
            env["ANSIBLE_CONNECTION_PLUGINS"] = str(agent.PLUGINS / "connection")
            host_vars += [f"ansible_connection={agent.CONNECTION}",
                          f"ansible_rolebake_socket={relay.socket_path}"]
        elif mode == "mitogen":
            import ansible_mitogen  # type: ignore[import-not-found]

            plugins = Path(ansible_mitogen.__file__).parent / "plugins"
            env["ANSIBLE_STRATEGY_PLUGINS"] = str(plugins / "strategy")
            env["ANSIBLE_STRATEGY"] = "mitogen_linear"
            host_vars += ["ansible_connection=docker"]
        else:
            host_vars += ["ansible_connection=community.docker.docker_api"]
        done = _playbook(work, host_vars, env)
    seconds = time.monotonic() - started
    tail = (done.stdout + done.stderr).strip().splitlines()[-12:]
    return seconds, done.returncode == 0, "\n".join(tail)


def _playbook(work: Path, host_vars: list[str], env: dict[str, str]) -> Any:
    inventory = work / "hosts"
    inventory.write_text("box " + " ".join(host_vars) + "\n")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                           str(inventory), str(work / "site.yml")], env=env, cwd=work,
                          capture_output=True, text=True, timeout=900, check=False)


def _table(results: dict[str, list[dict[str, Any]]]) -> str:
    rows = ["| connection | median (s) | runs (s) | load (1 min) before each |",
            "|---|---|---|---|"]
    for mode, runs in results.items():
        times = [r["seconds"] for r in runs if r["ok"]]
        median = f"{statistics.median(times):.2f}" if times else "failed"
        seconds = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        rows.append(f"| {mode} | {median} | {seconds} | {loads} |")
    return "\n".join(rows)


def _uptime() -> str:
    with contextlib.suppress(OSError):
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    return ""


if __name__ == "__main__":
    sys.exit(main())
