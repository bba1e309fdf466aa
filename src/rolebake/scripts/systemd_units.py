"""Units for rolebake's systemctl: found, loaded and run as systemd would, without systemd.

Lent with the python toolchain (on PATH for Ansible's modules, after the image's
own folders, so a systemctl a role installs wins) and never part of an image.
Enabling writes the links `systemctl enable` writes ([Install] WantedBy=,
RequiredBy=, Alias=, Also=); start/stop/restart/reload run the unit's Exec*
lines with its User=, Group=, Environment=, EnvironmentFile=,
WorkingDirectory=, and wait as systemd would for Type=simple/exec/forking/
oneshot/notify. A unit's processes are found by a mark in their environment
(there are no cgroups to ask). What it does not serve is listed in
docs/server-roles.md and fails with NOT_SERVED in its message.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

SEARCH = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system",
          "/usr/lib/systemd/system")
CONFIG = SEARCH[0]
STATE = "/tmp/.rolebake-systemctl"  # removed before commit with every /tmp/.rolebake*
MARK = "ROLEBAKE_SYSTEMD_UNIT"  # in a unit's processes' environment: our "cgroup"
TMPFILES = ("/usr/lib/tmpfiles.d", "/lib/tmpfiles.d", "/run/tmpfiles.d", "/etc/tmpfiles.d")
RUNTIME = ("/run/", "/var/run/")  # what a boot makes afresh
NOT_SERVED = "not served in a build container (rolebake's systemctl)"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_TYPES = (".service", ".socket", ".timer", ".target", ".path", ".mount", ".automount",
              ".swap", ".slice", ".scope", ".device")
NOMINAL = (".socket", ".timer", ".path", ".mount", ".automount", ".swap")  # enabled, not run


class Failed(Exception):
    """A verb failed: its message for stderr and systemctl's exit code."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


class Unit:
    """One unit as systemd would load it: fragment, drop-ins, alias, mask, or a SysV script."""

    def __init__(self, asked: str) -> None:
        self.asked = unit_name(asked)
        self.name, self.path, self.masked = _resolve(self.asked)
        self.alias = self.name != self.asked
        self.sysv: str | None = None
        self.conf: dict[str, dict[str, list[str]]] = {}
        self.dropins: list[str] = []
        if self.path:
            _parse(self.path, self.conf)
            for dropin in _dropins(self.name):
                _parse(dropin, self.conf)
                self.dropins.append(dropin)
        elif not self.masked and self.name.endswith(".service"):
            script = f"/etc/init.d/{self.name[:-8]}"
            # As systemd-sysv-generator: a script with no unit of that name is one.
            if os.access(script, os.X_OK):
                self.sysv = script

    @property
    def found(self) -> bool:
        """A unit file, a SysV script, or a mask: something systemd would load."""
        return bool(self.path or self.sysv or self.masked)

    def get(self, section: str, key: str, default: str = "") -> str:
        """A setting's last value, specifiers expanded."""
        values = self.conf.get(section, {}).get(key)
        return self.expand(values[-1]) if values else default

    def all(self, section: str, key: str) -> list[str]:
        """Every value of a list setting (ExecStart=, Environment=), specifiers expanded."""
        return [self.expand(v) for v in self.conf.get(section, {}).get(key, [])]

    def words(self, section: str, key: str) -> list[str]:
        """The space-separated names of a setting (WantedBy=, Requires=)."""
        return [w for v in self.all(section, key) for w in v.split()]

    @property
    def instance(self) -> str:
        """The instance of a template unit (`x@inst.service`), or ''."""
        stem = self.name.rsplit(".", 1)[0]
        return stem.split("@", 1)[1] if "@" in stem else ""

    def expand(self, text: str) -> str:
        """The specifiers (%n, %i, %p, ...) in a setting's value."""
        stem = self.name.rsplit(".", 1)[0]
        values = {"n": self.name, "N": stem, "p": stem.split("@", 1)[0], "i": self.instance,
                  "I": self.instance.replace("-", "/"), "f": "/" + self.instance,
                  "t": "/run", "S": "/var/lib", "C": "/var/cache", "L": "/var/log",
                  "E": "/etc", "T": "/tmp", "V": "/var/tmp", "H": socket.gethostname(),
                  "u": self.get("Service", "User", "root") if "%u" in text else "root",
                  "h": "/root", "%": "%"}
        return re.sub(r"%(.)", lambda m: values.get(m.group(1), m.group(0)), text)


def unit_name(name: str) -> str:
    """`x` is `x.service`, as systemctl has it."""
    return name if name.endswith(UNIT_TYPES) else f"{name}.service"


def _resolve(name: str, depth: int = 0) -> tuple[str, str | None, bool]:
    """(the unit's own name, its fragment, masked): links in the search path decide."""
    for folder in SEARCH:
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            continue
        if not os.path.islink(path):
            return name, path, False
        target = os.path.realpath(path)
        if target == "/dev/null":
            return name, None, True
        real = os.path.basename(target)
        if real != name and depth < 8 and os.path.exists(target):
            return _resolve(real, depth + 1)  # an alias (Alias= of an enabled unit)
        return name, target if os.path.exists(target) else None, False
    stem, _sep, kind = name.rpartition(".")
    if "@" in stem and not stem.endswith("@"):
        template = stem.split("@", 1)[0] + "@." + kind
        _template, fragment, masked = _resolve(template, depth + 1)
        return name, fragment, masked
    return name, None, False


def _dropins(name: str) -> list[str]:
    stem, _, kind = name.rpartition(".")
    dirs = [f"{kind}.d"]
    if "@" in stem:
        dirs.append(stem.split("@", 1)[0] + "@." + kind + ".d")
    dirs.append(name + ".d")
    found: dict[str, str] = {}
    for folder in SEARCH:  # a drop-in of the same file name higher up hides one lower down
        for sub in dirs:
            for path in glob.glob(os.path.join(folder, sub, "*.conf")):
                found.setdefault(os.path.basename(path), path)
    return [found[base] for base in sorted(found)]


def _parse(path: str, conf: dict[str, dict[str, list[str]]]) -> None:
    section = ""
    pending = ""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            if not sep:
                continue
            values = conf.setdefault(section, {}).setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()  # an empty assignment resets the list (drop-ins rely on it)


# State ---------------------------------------------------------------------------------

def _state_path(unit: Unit) -> str:
    return os.path.join(STATE, unit.name + ".json")


def load_state(unit: Unit) -> dict[str, Any]:
    """What this systemctl remembers of the unit (main pid, failed, remain-after-exit)."""
    try:
        with open(_state_path(unit), encoding="utf-8") as handle:
            return dict(json.load(handle))
    except (OSError, ValueError):
        return {}


def save_state(unit: Unit, state: dict[str, Any]) -> None:
    """Remember the unit's state for the next command."""
    os.makedirs(STATE, mode=0o755, exist_ok=True)
    with open(_state_path(unit), "w", encoding="utf-8") as handle:
        json.dump(state, handle)


def alive(pid: int) -> bool:
    """The process runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except (OSError, IndexError):
        return False


def processes(unit: Unit) -> list[int]:
    """Every live process carrying the unit's mark (what its cgroup would hold)."""
    wanted = f"{MARK}={unit.name}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as handle:
            if wanted in handle.read().split(b"\0") and alive(int(entry)):
                found.append(int(entry))
    return found


def main_pid(unit: Unit, state: dict[str, Any]) -> int:
    """The unit's main process, from PIDFile= or as started; 0 when it is not running."""
    pidfile = unit.get("Service", "PIDFile")
    if pidfile:
        with contextlib.suppress(OSError, ValueError, IndexError), \
                open(pidfile, encoding="utf-8") as handle:
            pid = int(handle.read().split()[0])
            if alive(pid):
                return pid
    pid = int(state.get("main") or 0)
    return pid if pid and alive(pid) else 0


def active_state(unit: Unit) -> tuple[str, str]:
    """(ActiveState, SubState)."""
    if unit.sysv and not unit.path:
        status = subprocess.run([unit.sysv, "status"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return ("active", "running") if status.returncode == 0 else ("inactive", "dead")
    state = load_state(unit)
    if state.get("failed"):
        return "failed", "failed"
    if main_pid(unit, state) or processes(unit):
        return "active", "running"
    if state.get("remain"):
        return "active", "exited" if unit.name.endswith(".service") else "waiting"
    return "inactive", "dead"


# Running a unit's commands -------------------------------------------------------------

def _environment(unit: Unit, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": SYSTEMD_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"), MARK: unit.name}
    user = unit.get("Service", "User")
    if user:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(user)
            env.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir,
                       SHELL=entry.pw_shell)
    for line in unit.all("Service", "Environment"):
        for word in shlex.split(line):
            key, sep, value = word.partition("=")
            if sep:
                env[key] = value
    for setting in unit.all("Service", "EnvironmentFile"):
        optional, name = setting.startswith("-"), setting.lstrip("-")
        try:
            with open(name, encoding="utf-8", errors="replace") as handle:
                text = handle.read().replace("\\\n", "")
        except OSError:
            if optional:
                continue
            raise Failed(f"Failed to load environment files: {name}: No such file") from None
        for raw in text.splitlines():
            line = raw.strip()
            if line and line[0] not in "#;" and "=" in line:
                key, _, value = line.partition("=")
                words = shlex.split(value, posix=True) if value.strip() else [""]
                env[key.strip().removeprefix("export ").strip()] = " ".join(words)
    env.update(extra or {})
    return env


def _argv(line: str, env: dict[str, str]) -> tuple[list[str], str]:
    """A command line of an Exec* setting: argv with $VAR/${VAR} expanded, and its prefixes."""
    match = re.match(r"[-@:+!]*", line)
    prefix = match.group(0) if match else ""
    argv: list[str] = []
    for word in shlex.split(line[len(prefix):]):
        plain = re.fullmatch(r"\$(\w+)", word)
        if plain and ":" not in prefix:  # $VAR alone becomes as many words as it holds
            argv += env.get(plain.group(1), "").split()
        elif ":" in prefix:
            argv.append(word)
        else:
            argv.append(re.sub(r"\$\{(\w+)\}|\$(\w+)",
                               lambda m: env.get(m.group(1) or m.group(2), ""), word))
    if "@" in prefix and len(argv) > 1:
        argv = [argv[0], *argv[2:]]  # @: the second word is argv[0]; not kept by Popen
    if argv and not argv[0].startswith("/"):
        argv[0] = shutil.which(argv[0], path=SYSTEMD_PATH) or argv[0]
    return argv, prefix


def log_path(unit: Unit) -> str:
    """Where the unit's output goes: there is no journal in a build container."""
    os.makedirs(STATE, mode=0o755, exist_ok=True)
    return os.path.join(STATE, unit.name + ".log")


def _output(unit: Unit, key: str, log: str) -> Any:
    where = unit.get("Service", key, "journal")
    if where == "null":
        return subprocess.DEVNULL
    for kind in ("file:", "append:", "truncate:"):
        if where.startswith(kind):
            return open(where[len(kind):], "a" if kind == "append:" else "w")
    return open(log, "a")


def spawn(unit: Unit, line: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start one Exec* command of the unit, in its own session, away from our caller's pipes."""
    env = _environment(unit, extra)
    argv, prefix = _argv(line, env)
    if not argv:
        raise Failed(f"{unit.name}: empty command line {line!r}")
    user = unit.get("Service", "User") or None
    group = unit.get("Service", "Group") or None
    if "+" in prefix or "!" in prefix:
        user = group = None  # full privileges, as systemd gives these
    extra_groups = None
    if user is not None:
        try:
            entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            raise Failed(f"{unit.name}: User={user} does not exist (status=217/USER)") from None
        group = group or grp.getgrgid(entry.pw_gid).gr_name
        extra_groups = [g for g in os.getgrouplist(entry.pw_name, entry.pw_gid)]
    cwd = unit.get("Service", "WorkingDirectory", "/")
    if cwd.lstrip("-") == "~":
        cwd = env.get("HOME", "/root")
    if cwd.startswith("-"):
        cwd = cwd[1:] if os.path.isdir(cwd[1:]) else "/"
    log = log_path(unit)
    stdout = _output(unit, "StandardOutput", log)
    stderr = _output(unit, "StandardError", log)
    umask = int(unit.get("Service", "UMask", "0022"), 8)
    try:
        return subprocess.Popen(argv, env=env, cwd=cwd, user=user, group=group,
                                extra_groups=extra_groups, umask=umask, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    except OSError as exc:
        if "-" in prefix:
            return subprocess.Popen(["true"])
        raise Failed(f"{unit.name}: failed to run {argv[0]}: {exc.strerror} (status=203/EXEC)"
                     ) from None
    finally:
        for handle in (stdout, stderr):
            if hasattr(handle, "close"):
                handle.close()


def run(unit: Unit, key: str, timeout: float, extra: dict[str, str] | None = None) -> None:
    """Run each command of an Exec* setting to its end; one failing (without `-`) fails the job."""
    for line in unit.all("Service", key):
        child = spawn(unit, line, extra)
        try:
            rc = child.wait(timeout)
        except subprocess.TimeoutExpired:
            kill([child.pid], signal.SIGKILL)
            raise Failed(f"{unit.name}: {key} timed out after {timeout:.0f} s") from None
        if rc != 0 and not line.startswith("-"):
            raise Failed(f"{unit.name}: {key}={line.split()[0]} exited with {rc}")


def seconds(unit: Unit, key: str, default: float = 90.0) -> float:
    """A time setting (TimeoutStartSec=) in seconds; systemd's default 90 s."""
    text = unit.get("Service", key) or unit.get("Service", "TimeoutSec")
    if not text:
        return default
    if text == "infinity":
        return 3600.0
    total, units = 0.0, {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    for number, unit_word in re.findall(r"([\d.]+)\s*([a-z]*)", text):
        total += float(number) * units.get(unit_word, 1)
    return total or default


def kill(pids: list[int], signum: int) -> None:
    """Signal processes that may be gone already."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Wait for processes to end (zombies count as ended); False at the timeout."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def directories(unit: Unit) -> None:
    """RuntimeDirectory= and its kin, made (and owned by User=) as systemd makes them."""
    user = unit.get("Service", "User")
    uid = gid = -1
    with contextlib.suppress(KeyError):
        if user:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
    group = unit.get("Service", "Group")
    with contextlib.suppress(KeyError):
        if group:
            gid = grp.getgrnam(group).gr_gid
    for key, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib"),
                      ("CacheDirectory", "/var/cache"), ("LogsDirectory", "/var/log"),
                      ("ConfigurationDirectory", "/etc")):
        mode = int(unit.get("Service", key + "Mode", "0755"), 8)
        for name in unit.words("Service", key):
            path = os.path.join(base, name.split(":", 1)[0])
            os.makedirs(path, mode=mode, exist_ok=True)
            os.chmod(path, mode)
            if key != "ConfigurationDirectory":
                with contextlib.suppress(OSError):
                    os.chown(path, uid, gid)


def boot_directories() -> None:
    """The folders systemd-tmpfiles makes under /run at boot (`d`, `D` lines).

    A build container never booted, and a daemon's ExecStartPre= counts on them
    (MariaDB's /run/mysqld); /etc/tmpfiles.d overrides a file of the same name.
    """
    found: dict[str, str] = {}
    for folder in TMPFILES:
        for path in glob.glob(os.path.join(folder, "*.conf")):
            found[os.path.basename(path)] = path
    for name in sorted(found):
        with contextlib.suppress(OSError), open(found[name], encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for line in lines:
            fields = line.split()
            if len(fields) < 2 or fields[0].rstrip("!-=~^") not in ("d", "D") or \
                    not fields[1].startswith(RUNTIME) or "%" in fields[1] or \
                    os.path.exists(fields[1]):
                continue
            fields += ["-"] * 4
            mode = int(fields[2], 8) if fields[2].isdigit() else 0o755
            os.makedirs(fields[1], mode=mode, exist_ok=True)
            os.chmod(fields[1], mode)
            with contextlib.suppress(KeyError, OSError):
                uid = pwd.getpwnam(fields[3]).pw_uid if fields[3] != "-" else -1
                gid = grp.getgrnam(fields[4]).gr_gid if fields[4] != "-" else -1
                os.chown(fields[1], uid, gid)


def conditions(unit: Unit) -> bool:
    """Condition*= on paths: False skips the start (not a failure), as in systemd."""
    checks = {"ConditionPathExists": os.path.exists, "ConditionPathIsDirectory": os.path.isdir,
              "ConditionFileNotEmpty": lambda p: os.path.isfile(p) and os.path.getsize(p) > 0,
              "ConditionFileIsExecutable": lambda p: os.path.isfile(p) and os.access(p, os.X_OK),
              "ConditionDirectoryNotEmpty": lambda p: os.path.isdir(p) and bool(os.listdir(p)),
              "ConditionPathIsSymbolicLink": os.path.islink}
    triggering: list[bool] = []
    for key, test in checks.items():
        for setting in unit.all("Unit", key):
            trigger, value = setting.startswith("|"), setting.lstrip("|")
            negate, value = value.startswith("!"), value.lstrip("!")
            result = bool(test(value)) != negate
            if trigger:
                triggering.append(result)
            elif not result:
                return False
    return not triggering or any(triggering)
