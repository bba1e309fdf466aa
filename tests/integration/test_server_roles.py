"""Roles written for servers, as public roles are: a service they start, a kernel parameter.

- A role that starts its service (`service: state=started enabled=true`) on an
  image without a running systemd: Ansible runs the init script, whose daemon
  here stays in the foreground, as a daemon configured for a systemd unit does
  (`daemonize no`). The start may not hold the build: after a minute the task goes
  on with a notice, the service is enabled, and nothing of the watch is left in the
  image. A service whose start returns is really started (a role may use it).
- A daemon the role left running gets time to stop before commit: one that
  flushes its files for a few seconds on SIGTERM finishes (a database killed
  mid-flush would leave the image a crashed data folder); one that ignores
  SIGTERM is killed after 10 s, and the build says which.
- A role that sets a kernel parameter fails in the build container, with the
  reason, the task's file and line, and the usual way out.
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    add_role,
    add_spec,
    iter_build_containers,
    new_project,
    remove_project_images,
)

pytestmark = pytest.mark.integration

INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          rbfg
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: a daemon that stays in the foreground
### END INIT INFO
. /lib/lsb/init-functions
case "$1" in
    start) exec sleep 86400 ;;  # in the foreground: the script never returns
    stop) exit 0 ;;
    status) exit 3 ;;
    restart|force-reload) "$0" stop && exec "$0" start ;;
    *) echo "Usage: $0 {start|stop|status|restart}"; exit 2 ;;
esac
"""

SERVICE_TASKS = """\
---
- name: Install the init scripts
  ansible.builtin.copy:
    src: "{{ item }}.init"
    dest: "/etc/init.d/{{ item }}"
    mode: "0755"
  loop: [rbfg, rbbg]

- name: Ensure rbfg is running and enabled on boot
  ansible.builtin.service:
    name: rbfg
    state: started
    enabled: true

- name: Start rbbg, which returns at once
  ansible.builtin.service:
    name: rbbg
    state: started

- name: Use the service the role started
  ansible.builtin.command: cat /run/rbbg.ready
  changed_when: false
"""

# A start that returns: its daemon (here a marker file) is there for the next task.
BG_SCRIPT = """\
#!/bin/sh
. /lib/lsb/init-functions
case "$1" in
    start) echo up > /run/rbbg.ready ;;
    stop) rm -f /run/rbbg.ready ;;
    status) [ -e /run/rbbg.ready ] || exit 3 ;;
esac
"""

SERVICE_SUITE = """\
def test_enabled_at_boot(host):
    assert "S01rbfg" in host.run("ls /etc/rc2.d").stdout

def test_the_watch_is_gone(host):
    assert not host.file("/lib/lsb/init-functions.d/01-rolebake-init-watch").exists
    assert host.file("/lib/lsb/init-functions.d/00-verbose").exists
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            engine: docker.DockerClient) -> Iterator[TestProject]:
    made = new_project(tmp_path_factory.mktemp("server-roles") / "project", engine)
    yield made
    remove_project_images(engine, made)


def test_a_service_the_role_starts_does_not_hold_the_build(project: TestProject) -> None:
    add_role(project, "rbfg", {
        "files/rbfg.init": INIT_SCRIPT,
        "files/rbbg.init": BG_SCRIPT,
        "tasks/main.yml": SERVICE_TASKS,
    })
    spec = add_spec(project, f"svc{project.token}", roles=("rbfg",), suite=SERVICE_SUITE)
    # Without the guard the init script's daemon holds the task forever.
    built = run_cli("build", spec, cwd=project.root, timeout=600)
    assert built.rc == 0, built.output
    assert "verify ok: " in built.stderr, built.stderr[-3000:]
    assert "notice: 'rbfg start' was still running after 60 s" in built.stderr, \
        built.stderr[-3000:]
    assert "rbbg start" not in built.stderr
    assert list(iter_build_containers(project.client, project.token)) == []


SLOW_STOP_TASKS = """\
---
- name: Install two daemons
  ansible.builtin.copy:
    dest: "/usr/local/bin/{{ item.name }}"
    mode: "0755"
    content: |
      #!/bin/sh
      {{ item.trap }}
      while :; do sleep 1; done
  loop:
    - name: rbslow  # flushes for 3 s on SIGTERM, then says it stopped cleanly
      trap: "trap 'sleep 3; echo clean > /var/lib/rbslow.stopped; exit 0' TERM"
    - name: rbstuck  # ignores SIGTERM
      trap: "trap '' TERM"

- name: Start them, as a role starts its services
  ansible.builtin.shell: nohup /usr/local/bin/{{ item }} >/dev/null 2>&1 &
  loop: [rbslow, rbstuck]
  changed_when: true
"""


def test_daemons_get_time_to_stop_before_commit(project: TestProject) -> None:
    add_role(project, "slowstop", {"tasks/main.yml": SLOW_STOP_TASKS})
    spec = add_spec(project, f"slow{project.token}", roles=("slowstop",),
                    suite="def test_stopped_cleanly(host):\n"
                          "    assert host.file('/var/lib/rbslow.stopped').contains('clean')\n")
    built = run_cli("build", spec, cwd=project.root, timeout=600)
    assert built.rc == 0, built.output
    notice = next((line for line in built.stderr.splitlines()
                   if "notice: killed what did not stop within 10 s of SIGTERM:" in line), None)
    assert notice is not None, built.stderr[-3000:]
    # rbstuck (and the `sleep` its loop started after SIGTERM), never rbslow.
    assert "rbstuck" in notice.split() and "rbslow" not in notice, notice


def test_a_kernel_parameter_fails_with_the_reason_and_the_task(project: TestProject) -> None:
    add_role(project, "kernel", {"tasks/main.yml": (
        "---\n"
        "- name: Let redis overcommit memory\n"
        "  ansible.posix.sysctl:\n"
        "    name: vm.overcommit_memory\n"
        "    value: \"1\"\n"
        "    state: present\n")})
    # On the example's base layer, which has procps (sysctl), as a server has.
    spec = add_spec(project, f"kernel{project.token}", parent="base", roles=("kernel",),
                    suite=None)
    built = run_cli("build", spec, cwd=project.root, timeout=600)
    assert built.rc == 1, built.output
    # The tool's own words, then why and where.
    assert "permission denied on key" in built.stderr, built.stderr[-3000:]
    assert "hint: a kernel parameter belongs to the host that runs the container" \
        in built.stderr, built.stderr[-3000:]
    assert "roles/kernel/tasks/main.yml:2)" in built.stderr, built.stderr[-3000:]
    assert list(iter_build_containers(project.client, project.token)) == []


# A role as public server roles are written: its own unit, templated into
# /etc/systemd/system, enabled and started with the systemd module, a handler that
# restarts it, and a service named by another unit's Alias=.
UNIT = """\
[Unit]
Description=rbunit, a daemon of the role's own
After=network.target

[Service]
Type=simple
User=daemon
Environment=RBUNIT_GREETING={{ rbunit_greeting }}
EnvironmentFile=-/etc/default/rbunit
WorkingDirectory=/var/lib/rbunit
ExecStart=/usr/local/bin/rbunit $RBUNIT_OPTS
ExecReload=/bin/kill -HUP $MAINPID

[Install]
WantedBy=multi-user.target
"""

FORKING_UNIT = """\
[Unit]
Description=a database-like daemon that forks, known by an alias too

[Service]
Type=forking
PIDFile=/run/rbdb.pid
ExecStart=/bin/sh -c 'sleep 86400 & echo $! > /run/rbdb.pid'

[Install]
WantedBy=multi-user.target
Alias=rbdb-alias.service
"""

UNIT_TASKS = """\
---
- name: Install the daemon
  ansible.builtin.copy:
    dest: /usr/local/bin/rbunit
    mode: "0755"
    content: |
      #!/bin/sh
      echo "$(id -un) $RBUNIT_GREETING $(pwd) $*" > /var/lib/rbunit/started
      exec sleep 86400

- name: Its folder and options
  ansible.builtin.copy:
    dest: /etc/default/rbunit
    content: "RBUNIT_OPTS=--verbose\\n"
    mode: "0644"

- name: Its state folder
  ansible.builtin.file:
    path: /var/lib/rbunit
    state: directory
    owner: daemon
    mode: "0755"

- name: Install the unit
  ansible.builtin.template:
    src: rbunit.service.j2
    dest: /etc/systemd/system/rbunit.service
    mode: "0644"
  notify: Restart rbunit

- name: Install the database-like unit
  ansible.builtin.copy:
    src: rbdb.service
    dest: /lib/systemd/system/rbdb.service
    mode: "0644"

- name: Enable and start rbunit
  ansible.builtin.systemd:
    name: rbunit
    enabled: true
    state: started
    daemon_reload: true

- name: Enable the database-like unit
  ansible.builtin.systemd:
    name: rbdb
    enabled: true

- name: Start it by its alias
  ansible.builtin.service:
    name: rbdb-alias
    state: started

- name: The daemon runs as its unit says
  ansible.builtin.command: cat /var/lib/rbunit/started
  register: started
  changed_when: false
  failed_when: started.stdout != "daemon hello /var/lib/rbunit --verbose"

- name: The alias is active
  ansible.builtin.command: systemctl is-active rbdb-alias
  changed_when: false
"""

UNIT_HANDLERS = """\
---
- name: Restart rbunit
  ansible.builtin.systemd:
    name: rbunit
    state: restarted
"""

UNIT_SUITE = """\
def test_enabled_as_on_a_server(host):
    wants = host.file("/etc/systemd/system/multi-user.target.wants/rbunit.service")
    assert wants.is_symlink
    assert wants.linked_to == "/etc/systemd/system/rbunit.service"
    # The link's own text, as systemctl writes it (linked_to resolves /lib to /usr/lib).
    for link in ("multi-user.target.wants/rbdb.service", "rbdb-alias.service"):
        assert host.check_output("readlink /etc/systemd/system/" + link) \\
            == "/lib/systemd/system/rbdb.service"

def test_no_systemctl_left(host):
    assert host.run("command -v systemctl").rc != 0
    # Verification lends the build's python on /mnt (a mount, never the image's own);
    # the test below looks at the image itself.
    assert not host.file("/mnt/rolebake-python").exists or host.mount_point("/mnt").exists
    assert not host.file("/tmp/.rolebake-systemctl").exists
    assert not host.file("/etc/dpkg/dpkg.cfg.d/zz-rolebake-systemctl").exists

def test_reaped_by_an_init(host):
    assert host.file("/proc/1/comm").content_string.strip() != "sleep"
"""


def test_systemd_tasks_without_systemd(project: TestProject) -> None:
    add_role(project, "rbunit", {
        "templates/rbunit.service.j2": UNIT,
        "files/rbdb.service": FORKING_UNIT,
        "tasks/main.yml": UNIT_TASKS,
        "handlers/main.yml": UNIT_HANDLERS,
        "defaults/main.yml": "rbunit_greeting: hello\n",
    })
    spec = add_spec(project, f"unit{project.token}", roles=("rbunit",), suite=UNIT_SUITE)
    built = run_cli("build", spec, cwd=project.root, timeout=900)
    assert built.rc == 0, built.output[-5000:]
    assert "verify ok: " in built.stderr, built.stderr[-3000:]
    image = project.client.images.get(project.tag(spec))
    # The image has no systemd installed, and none was needed.
    out = project.client.containers.run(
        image.id, ["sh", "-c", "ls /lib/systemd/systemd /usr/bin/systemctl 2>&1; "
                   "ls -A /mnt; command -v systemctl || echo no-systemctl"],
        remove=True, entrypoint=[]).decode()
    assert "No such file" in out, out
    # Nothing of the lent toolchain (its systemctl included) is in the image: /mnt is empty.
    assert out.rstrip().splitlines()[-1] == "no-systemctl", out
    assert "rolebake-python" not in out, out
    assert list(iter_build_containers(project.client, project.token)) == []


APACHE_TASKS = """\
---
- name: Install apache2
  ansible.builtin.apt:
    name: apache2
    state: present

- name: Start apache2
  ansible.builtin.service:
    name: apache2
    state: started

- name: Started through systemctl, as on a server
  ansible.builtin.command: systemctl is-active apache2
  changed_when: false

- name: Configure a site
  ansible.builtin.copy:
    dest: /var/www/html/index.html
    content: "rolebake\\n"
    mode: "0644"
  notify: Restart apache2
"""

APACHE_HANDLERS = """\
---
- name: Restart apache2
  ansible.builtin.service:
    name: apache2
    state: restarted
"""


def test_a_daemon_restart_takes_what_it_takes_on_a_server(project: TestProject) -> None:
    add_role(project, "rbapache", {"tasks/main.yml": APACHE_TASKS,
                                   "handlers/main.yml": APACHE_HANDLERS})
    spec = add_spec(project, f"apache{project.token}", roles=("rbapache",),
                    suite="def test_enabled(host):\n"
                          "    assert host.file('/etc/systemd/system/multi-user.target.wants/"
                          "apache2.service').is_symlink\n")
    built = run_cli("build", spec, cwd=project.root, timeout=900)
    assert built.rc == 0, built.output[-5000:]
    log = next(line.split("log: ", 1)[1].strip() for line in built.stderr.splitlines()
               if "log: " in line)
    text = (project.root / log).read_text()  # an absolute path stays one
    assert "RUNNING HANDLER [rbapache : Restart apache2]" in text, text[-3000:]
    # The build names every task that took 10 s or more (ansible's own duration of
    # the task); without a reaping PID 1 the restart waited 60 s for its zombie.
    slow = [line for line in built.stderr.splitlines() if "slow task: " in line]
    assert not any("Restart apache2" in line for line in slow), slow
