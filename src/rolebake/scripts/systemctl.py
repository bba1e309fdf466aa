"""rolebake's systemctl: systemd's unit files served in a build container that runs no systemd.

Lent with the python toolchain (on PATH for Ansible's modules, after the image's
own folders, so a systemctl a role installs wins) and never part of an image.
Enabling writes the links `systemctl enable` writes ([Install] WantedBy=,
RequiredBy=, Alias=, Also=); start/stop/restart/reload run the unit's Exec*
lines as systemd_units.py does. What it does not serve is listed in
docs/server-roles.md and fails with NOT_SERVED in its message.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

try:  # checked as part of rolebake
    from rolebake.scripts import systemd_units as units
except ImportError:  # lent in a build container, beside this file
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    import systemd_units as units  # type: ignore[no-redef]


# Verbs that run units ------------------------------------------------------------------

def _job_failed(unit: units.Unit, why: str) -> units.Failed:
    state = units.load_state(unit)
    state.update(failed=True, main=0, result=why)
    units.save_state(unit, state)
    tail = ""
    with contextlib.suppress(OSError), \
            open(units.log_path(unit), encoding="utf-8", errors="replace") as handle:
        tail = "".join(handle.readlines()[-10:])
    return units.Failed(f"Job for {unit.name} failed because the control process exited with error "
                  f"code ({why}).\nIts output (a build container keeps no journal):\n{tail}")


def start(unit: units.Unit, seen: set[str] | None = None) -> None:
    """`systemctl start`: its Requires=/Wants= services first, then its Exec* lines."""
    seen = seen if seen is not None else set()
    if unit.name in seen:
        return
    seen.add(unit.name)
    if not unit.found:
        raise units.Failed(f"Failed to start {unit.asked}: Unit {unit.asked} not found.", 5)
    if unit.masked:
        raise units.Failed(f"Failed to start {unit.asked}: Unit {unit.name} is masked.")
    if unit.sysv and not unit.path:
        if subprocess.run([unit.sysv, "start"], stdin=subprocess.DEVNULL, check=False).returncode:
            raise units.Failed(f"Job for {unit.name} failed: {unit.sysv} start failed")
        return
    for dep in unit.words("Unit", "Requires") + unit.words("Unit", "BindsTo") + \
            unit.words("Unit", "Wants"):
        other = units.Unit(dep)
        if other.found and other.name.endswith(".service") and \
                units.active_state(other)[0] != "active":
            try:
                start(other, seen)
            except units.Failed:
                if dep in unit.words("Unit", "Requires") + unit.words("Unit", "BindsTo"):
                    raise
    if units.active_state(unit)[0] == "active":
        return
    if unit.name.endswith(units.NOMINAL):
        kind = unit.name.rsplit(".", 1)[1]
        print(f"{unit.name}: {kind} units are {units.NOT_SERVED}: enabled in the image as on a "
              "server, started only where systemd runs", file=sys.stderr)
        units.save_state(unit, {"remain": True})
        return
    if not unit.name.endswith(".service"):
        units.save_state(unit, {"remain": True})  # a target: a point to reach, nothing to run
        return
    if unit.get("Service", "DynamicUser") in ("yes", "true", "1") or \
            unit.get("Service", "RootDirectory") or unit.get("Service", "RootImage"):
        raise units.Failed(f"{unit.name}: DynamicUser=, RootDirectory= and RootImage= are "
                           f"{units.NOT_SERVED}")
    if not units.conditions(unit):
        print(f"{unit.name}: a start condition failed; skipped, as systemd does", file=sys.stderr)
        return
    units.save_state(unit, {})
    kind = unit.get("Service", "Type", "simple" if unit.all("Service", "ExecStart")
                    else "oneshot")
    timeout = units.seconds(unit, "TimeoutStartSec")
    units.boot_directories()
    units.directories(unit)
    try:
        units.run(unit, "ExecCondition", timeout)
    except units.Failed:
        return  # a failing ExecCondition= skips the unit
    try:
        units.run(unit, "ExecStartPre", timeout)
        if kind == "oneshot":
            units.run(unit, "ExecStart", timeout)
            main = 0
        else:
            main = _start_main(unit, kind, timeout)
        units.run(unit, "ExecStartPost", timeout, {"MAINPID": str(main)} if main else None)
    except units.Failed as exc:
        raise _job_failed(unit, str(exc)) from None
    remain = unit.get("Service", "RemainAfterExit") in ("yes", "true", "1")
    units.save_state(unit, {"main": main, "remain": remain})


def _start_main(unit: units.Unit, kind: str, timeout: float) -> int:
    lines = unit.all("Service", "ExecStart")
    if len(lines) != 1:
        raise units.Failed(f"{unit.name}: Type={kind} takes one ExecStart=, found {len(lines)}")
    extra: dict[str, str] = {}
    listener = None
    if kind == "notify":
        # READY=1 says the daemon is ready, as it tells systemd on a server.
        os.makedirs(units.STATE, mode=0o755, exist_ok=True)
        path = os.path.join(units.STATE, f"notify-{os.getpid()}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(path)
        os.chmod(path, 0o777)
        extra["NOTIFY_SOCKET"] = path
    try:
        child = units.spawn(unit, lines[0], extra)
        if kind == "forking":
            try:
                rc = child.wait(timeout)
            except subprocess.TimeoutExpired:
                units.kill([child.pid], signal.SIGKILL)
                raise units.Failed(f"start timed out after {timeout:.0f} s (Type=forking)"
                                   ) from None
            if rc != 0:
                raise units.Failed(f"ExecStart exited with {rc}")
            deadline = time.monotonic() + min(timeout, 10)
            while unit.get("Service", "PIDFile") and not units.main_pid(unit, {}):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            return units.main_pid(unit, {}) or 0
        if listener is not None:
            _wait_ready(listener, child, timeout)
        else:
            time.sleep(0.1)
            if child.poll() not in (None, 0):
                raise units.Failed(f"ExecStart exited with {child.returncode} at once")
        return child.pid
    finally:
        if listener is not None:
            os.unlink(extra["NOTIFY_SOCKET"])
            listener.close()


def _wait_ready(listener: socket.socket, child: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    listener.settimeout(0.1)
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError, socket.timeout):
            message = listener.recv(4096).decode("utf-8", "replace")
            if "READY=1" in message.split("\n"):
                return
        if child.poll() is not None:
            if child.returncode != 0:
                raise units.Failed(f"ExecStart exited with {child.returncode} before READY=1")
            return
    units.kill([child.pid], signal.SIGKILL)
    raise units.Failed(f"no READY=1 within {timeout:.0f} s (Type=notify)")


def stop(unit: units.Unit) -> None:
    """`systemctl stop`: ExecStop=, then KillSignal= to what is left, SIGKILL after the timeout."""
    if not unit.found:
        raise units.Failed(f"Failed to stop {unit.asked}: Unit {unit.asked} not loaded.", 5)
    if unit.sysv and not unit.path:
        subprocess.run([unit.sysv, "stop"], stdin=subprocess.DEVNULL, check=False)
        return
    state = units.load_state(unit)
    main = units.main_pid(unit, state)
    timeout = units.seconds(unit, "TimeoutStopSec")
    if main or units.processes(unit):
        with contextlib.suppress(units.Failed):  # a failing ExecStop= does not keep a unit up
            units.run(unit, "ExecStop", timeout, {"MAINPID": str(main)} if main else None)
        mode = unit.get("Service", "KillMode", "control-group")
        left = [main] if mode in ("process", "mixed") and main else units.processes(unit)
        if main and main not in left:
            left.append(main)
        left = [p for p in left if units.alive(p)]
        signum = getattr(signal, unit.get("Service", "KillSignal", "SIGTERM"), signal.SIGTERM)
        if mode != "none":
            units.kill(left, signum)
        if not units.wait_gone(left, timeout):
            units.kill(left + units.processes(unit), signal.SIGKILL)
            units.wait_gone(left, 5)
        if mode == "mixed":
            units.kill(units.processes(unit), signal.SIGKILL)
    with contextlib.suppress(units.Failed):
        units.run(unit, "ExecStopPost", timeout)
    for name in unit.words("Service", "RuntimeDirectory"):
        if unit.get("Service", "RuntimeDirectoryPreserve", "no") == "no":
            shutil.rmtree(os.path.join("/run", name.split(":", 1)[0]), ignore_errors=True)
    units.save_state(unit, {})


def reload(unit: units.Unit) -> None:
    """`systemctl reload`: ExecReload= with $MAINPID."""
    if unit.sysv and not unit.path:
        if subprocess.run([unit.sysv, "reload"], stdin=subprocess.DEVNULL,
                          check=False).returncode:
            raise units.Failed(f"Job for {unit.name} failed: {unit.sysv} reload failed")
        return
    if not unit.all("Service", "ExecReload"):
        raise units.Failed(f"Failed to reload {unit.name}: Job type reload is not applicable for "
                     f"unit {unit.name}.")
    if units.active_state(unit)[0] != "active":
        raise units.Failed(f"Failed to reload {unit.name}: unit is not active.")
    main = units.main_pid(unit, units.load_state(unit))
    units.run(unit, "ExecReload", units.seconds(unit, "TimeoutStartSec"),
        {"MAINPID": str(main)} if main else None)


def restart(unit: units.Unit) -> None:
    """`systemctl restart`: stop, then start."""
    if unit.sysv and not unit.path:
        if subprocess.run([unit.sysv, "restart"], stdin=subprocess.DEVNULL,
                          check=False).returncode:
            raise units.Failed(f"Job for {unit.name} failed: {unit.sysv} restart failed")
        return
    stop(unit)
    start(unit)


# Verbs on unit files -------------------------------------------------------------------

def _install_links(unit: units.Unit) -> list[tuple[str, str]]:
    """(link, target) pairs `systemctl enable` makes for the unit, Also= units included."""
    links: list[tuple[str, str]] = []
    assert unit.path is not None
    name = unit.name
    if name.rsplit(".", 1)[0].endswith("@"):
        instance = unit.get("Install", "DefaultInstance")
        if not instance:
            return links
        name = name.replace("@.", f"@{instance}.")
    for key, suffix in (("WantedBy", ".wants"), ("RequiredBy", ".requires"),
                        ("UpheldBy", ".upholds")):
        for target in unit.words("Install", key):
            links.append((os.path.join(units.CONFIG, target + suffix, name), unit.path))
    for alias in unit.words("Install", "Alias"):
        links.append((os.path.join(units.CONFIG, alias), unit.path))
    return links


def enable(unit: units.Unit, seen: set[str] | None = None) -> None:
    """`systemctl enable`: the [Install] links, as systemctl writes them (update-rc.d for SysV)."""
    seen = seen if seen is not None else set()
    if unit.name in seen:
        return
    seen.add(unit.name)
    if unit.masked:
        raise units.Failed(f"Failed to enable unit: Unit file {unit.name} is masked.")
    if not unit.found:
        raise units.Failed(f"Failed to enable unit: Unit file {unit.asked} does not exist.")
    if unit.sysv and not unit.path:
        print(f"Synchronizing state of {unit.name} with SysV service script with "
              "/lib/systemd/systemd-sysv-install.", file=sys.stderr)
        subprocess.run(["update-rc.d", unit.name[:-8], "defaults"], check=False,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["update-rc.d", unit.name[:-8], "enable"], check=False,
                       stdout=subprocess.DEVNULL)
        return
    links = _install_links(unit)
    also = unit.words("Install", "Also")
    if not links and not also:
        print(f"The unit files have no installation config (WantedBy=, RequiredBy=, Alias= "
              f"settings in the [Install] section, and DefaultInstance= for template units). "
              f"{unit.name} is static.", file=sys.stderr)
    for link, target in links:
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            if not os.path.islink(link):
                raise units.Failed(f"Failed to enable unit: File {link} already exists.")
            os.unlink(link)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
        print(f"Created symlink {link} \u2192 {target}.", file=sys.stderr)
    for other in also:
        enable(units.Unit(other), seen)


def disable(unit: units.Unit) -> None:
    """`systemctl disable`: the links to the unit under /etc/systemd/system go."""
    if unit.sysv and not unit.path:
        subprocess.run(["update-rc.d", unit.name[:-8], "disable"], check=False,
                       stdout=subprocess.DEVNULL)
        return
    if not unit.path:
        if unit.masked:
            return
        raise units.Failed(f"Failed to disable unit: Unit file {unit.asked} does not exist.")
    names = {unit.name, *unit.words("Install", "Alias")}
    for link, _ in _install_links(unit):
        names.add(os.path.basename(link))
    config = units.CONFIG
    for path in glob.glob(os.path.join(config, "*")) + glob.glob(os.path.join(config, "*", "*")):
        if os.path.islink(path) and os.path.basename(path) in names and \
                path != os.path.join(units.CONFIG, unit.name) and \
                os.path.realpath(path) == os.path.realpath(unit.path):
            os.unlink(path)
            print(f"Removed {path}.", file=sys.stderr)
    for other in unit.words("Install", "Also"):
        with contextlib.suppress(units.Failed):
            disable(units.Unit(other))


def mask(unit: units.Unit) -> None:
    """`systemctl mask`: a link to /dev/null."""
    link = os.path.join(units.CONFIG, unit.asked)
    if os.path.islink(link) and os.readlink(link) == "/dev/null":
        return
    if os.path.lexists(link) and not os.path.islink(link):
        raise units.Failed(f"Failed to mask unit: File {link} already exists.")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.makedirs(units.CONFIG, exist_ok=True)
    os.symlink("/dev/null", link)
    print(f"Created symlink {link} \u2192 /dev/null.", file=sys.stderr)


def unmask(unit: units.Unit) -> None:
    """`systemctl unmask`: that link removed."""
    link = os.path.join(units.CONFIG, unit.asked)
    if os.path.islink(link) and os.readlink(link) == "/dev/null":
        os.unlink(link)
        print(f"Removed {link}.", file=sys.stderr)


def enabled_state(unit: units.Unit) -> str:
    """What `systemctl is-enabled` prints."""
    if unit.masked:
        return "masked"
    if unit.alias:
        return "alias"
    if unit.sysv and not unit.path:
        base = unit.name[:-8]
        return "enabled" if glob.glob(f"/etc/rc[2-5].d/S??{base}") else "disabled"
    if not unit.path:
        return ""
    links = _install_links(unit)
    if any(os.path.islink(link) for link, _ in links):
        return "enabled"
    if not links and not unit.words("Install", "Also"):
        return "static"
    also = unit.words("Install", "Also")
    if any(enabled_state(units.Unit(other)) == "enabled" for other in also):
        return "indirect"
    return "disabled"


# Reading state -------------------------------------------------------------------------

def show(unit: units.Unit, props: list[str], value_only: bool) -> str:
    """`systemctl show`: the properties Ansible's systemd and service modules read."""
    state = units.load_state(unit)
    active, sub = (units.active_state(unit) if unit.found and not unit.masked
                   else ("inactive", "dead"))
    main = units.main_pid(unit, state) if unit.path else 0
    service = unit.conf.get("Service", {})
    info: dict[str, str] = {
        "Type": unit.get("Service", "Type", "simple"),
        "Restart": unit.get("Service", "Restart", "no"),
        "PIDFile": unit.get("Service", "PIDFile"),
        "MainPID": str(main), "ExecMainPID": str(main),
        "Result": "exit-code" if state.get("failed") else "success",
        "Id": unit.name,
        "Names": " ".join(sorted({unit.name, *unit.words("Install", "Alias")})),
        "Description": unit.get("Unit", "Description", unit.name),
        "LoadState": "masked" if unit.masked else "loaded" if unit.found else "not-found",
        "ActiveState": active, "SubState": sub,
        "FragmentPath": unit.path or "",
        "SourcePath": unit.sysv or "",
        "DropInPaths": " ".join(unit.dropins),
        "UnitFileState": enabled_state(unit) if unit.found else "",
        "UnitFilePreset": "enabled",
        "User": unit.get("Service", "User"), "Group": unit.get("Service", "Group"),
        "WorkingDirectory": unit.get("Service", "WorkingDirectory"),
        "Environment": " ".join(unit.all("Service", "Environment")),
        "CanStart": "yes", "CanStop": "yes",
        "CanReload": "yes" if service.get("ExecReload") or unit.sysv else "no",
        "NeedDaemonReload": "no",
        "Wants": " ".join(unit.words("Unit", "Wants")),
        "Requires": " ".join(unit.words("Unit", "Requires")),
        "After": " ".join(unit.words("Unit", "After")),
        "WantedBy": " ".join(unit.words("Install", "WantedBy")),
    }
    for key in ("ExecStart", "ExecStartPre", "ExecStop", "ExecReload"):
        info[key] = " ; ".join(f"{{ path={v.split()[0]} ; argv[]={v} }}"
                               for v in unit.all("Service", key))
    if not unit.found:
        info["LoadError"] = (f'org.freedesktop.systemd1.NoSuchUnit "Unit {unit.name} not '
                             'found."')
    keys = props or list(info)
    return "\n".join(info.get(k, "") if value_only else f"{k}={info.get(k, '')}" for k in keys)


def status(unit: units.Unit) -> int:
    """`systemctl status`, short; its exit code as systemctl's (0, 3 inactive, 4 unknown)."""
    if not unit.found:
        print(f"Unit {unit.asked} could not be found.", file=sys.stderr)
        return 4
    active, sub = units.active_state(unit)
    where = unit.path or unit.sysv or "/dev/null"
    print(f"\u25cf {unit.name} - {unit.get('Unit', 'Description', unit.name)}\n"
          f"     Loaded: {'masked' if unit.masked else 'loaded'} ({where}; "
          f"{enabled_state(unit)})\n     Active: {active} ({sub})")
    main = units.main_pid(unit, units.load_state(unit)) if unit.path else 0
    if main:
        print(f"   Main PID: {main}")
    return 0 if active == "active" else 3


def list_unit_files(patterns: list[str]) -> int:
    """`systemctl list-unit-files [PATTERN...]`."""
    seen: dict[str, str] = {}
    for folder in units.SEARCH:
        for path in sorted(glob.glob(os.path.join(folder, "*"))):
            name = os.path.basename(path)
            if name.endswith(units.UNIT_TYPES) and name not in seen and (
                    not patterns or any(fnmatch(name, p) for p in patterns)):
                seen[name] = enabled_state(units.Unit(name)) or "bad"
    for script in sorted(glob.glob("/etc/init.d/*")):
        name = os.path.basename(script) + ".service"
        if name not in seen and os.access(script, os.X_OK) and (
                not patterns or any(fnmatch(name, p) for p in patterns)):
            seen[name] = "generated"
    print("UNIT FILE STATE")
    for name, state in seen.items():
        print(f"{name} {state}")
    print(f"\n{len(seen)} unit files listed.")
    return 0 if seen else 1


def fnmatch(name: str, pattern: str) -> bool:
    """A unit name against a pattern given with or without its suffix."""
    import fnmatch as matcher

    return matcher.fnmatchcase(name, pattern) or matcher.fnmatchcase(name, units.unit_name(pattern))


# Command line --------------------------------------------------------------------------

VALUED = {"-p", "--property", "-t", "--type", "--state", "-s", "--signal", "--kill-whom",
          "-n", "--lines", "-o", "--output", "--job-mode", "--root", "-H", "--host",
          "-M", "--machine", "--preset-mode", "--what"}


def parse(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Words and options of a systemctl command line (options may come anywhere)."""
    words: list[str] = []
    opts: dict[str, list[str]] = {}
    items = iter(argv)
    for arg in items:
        if arg.startswith("-") and arg != "-":
            key, sep, value = arg.partition("=")
            if key in VALUED and not sep:
                value = next(items, "")
            opts.setdefault(key, []).extend(value.split(",") if value else [""])
        else:
            words.append(arg)
    return words, opts


PER_UNIT = {
    "start": start, "stop": stop, "restart": restart, "reload": reload,
    "enable": enable, "disable": disable, "mask": mask, "unmask": unmask,
}
IGNORED = {"daemon-reload", "daemon-reexec", "reset-failed", "preset-all", "revert"}
ALIASES = {"try-restart": "restart", "condrestart": "restart", "force-reload": "reload",
           "reload-or-restart": "restart", "try-reload-or-restart": "restart",
           "reload-or-try-restart": "restart", "preset": "enable"}


def main(argv: list[str]) -> int:
    """Run one systemctl command; its exit code."""
    words, opts = parse(argv)
    quiet = "-q" in opts or "--quiet" in opts
    if "--version" in opts:
        print("systemd 252 (rolebake's systemctl for build containers)")
        return 0
    if "--user" in opts or "--global" in opts or "--root" in opts or "-H" in opts:
        print(f"systemctl --user, --global, --root and --host are {units.NOT_SERVED}",
              file=sys.stderr)
        return 1
    verb, names = (words[0], words[1:]) if words else ("list-units", [])
    verb = ALIASES.get(verb, verb)
    try:
        if verb in IGNORED:
            if verb == "reset-failed":
                for name in names:
                    unit = units.Unit(name)
                    if units.load_state(unit).get("failed"):
                        units.save_state(unit, {})
            return 0
        if verb in PER_UNIT:
            if not names:
                raise units.Failed(f"Too few arguments: systemctl {verb} needs a unit.")
            for name in names:
                if verb == "disable" and "--now" in opts:
                    stop(units.Unit(name))
                PER_UNIT[verb](units.Unit(name))
                if verb == "enable" and "--now" in opts:
                    start(units.Unit(name))
            return 0
        if verb == "reenable":
            for name in names:
                disable(units.Unit(name))
                enable(units.Unit(name))
            return 0
        if verb in ("is-active", "is-failed"):
            states = [units.active_state(u)[0] if u.found else "inactive"
                      for u in map(units.Unit, names)]
            if not quiet:
                print("\n".join(states))
            want = "active" if verb == "is-active" else "failed"
            return 0 if any(s == want for s in states) else (3 if verb == "is-active" else 1)
        if verb == "is-enabled":
            rc = 1
            for name in names:
                unit = units.Unit(name)
                state = enabled_state(unit) if unit.found else ""
                if not state:
                    print(f"Failed to get unit file state for {unit.asked}: No such file or "
                          "directory", file=sys.stderr)
                    continue
                if not quiet:
                    print(state)
                if state in ("enabled", "static", "alias", "indirect", "generated"):
                    rc = 0
            return rc
        if verb == "show":
            props = [p for p in opts.get("-p", []) + opts.get("--property", []) if p]
            blocks = [show(units.Unit(n), props, "--value" in opts) for n in names]
            print("\n\n".join(blocks))
            return 0
        if verb == "status":
            return max((status(units.Unit(n)) for n in names), default=0)
        if verb == "list-unit-files":
            return list_unit_files(names)
        if verb == "list-units":
            for path in sorted(glob.glob(os.path.join(units.STATE, "*.json"))):
                unit = units.Unit(os.path.basename(path)[:-5])
                active, sub = units.active_state(unit)
                if active != "inactive" or "--all" in opts:
                    print(f"{unit.name} loaded {active} {sub} "
                          f"{unit.get('Unit', 'Description')}")
            return 0
        if verb == "cat":
            for name in names:
                unit = units.Unit(name)
                for path in ([unit.path] if unit.path else []) + unit.dropins:
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        print(f"# {path}\n{handle.read()}")
            return 0
        if verb == "kill":
            signum = getattr(signal, (opts.get("-s") or opts.get("--signal") or ["SIGTERM"])[0]
                             if (opts.get("-s") or opts.get("--signal", [""]))[0]
                             .startswith("SIG") else "SIGTERM", signal.SIGTERM)
            for name in names:
                units.kill(units.processes(units.Unit(name)), signum)
            return 0
        if verb == "is-system-running":
            # Roles that wait for boot to finish: the build's units are up when asked.
            if not quiet:
                print("running")
            return 0
        if verb == "get-default":
            target = os.path.join(units.CONFIG, "default.target")
            print(os.path.basename(os.path.realpath(target)) if os.path.lexists(target)
                  else "graphical.target")
            return 0
        if verb == "set-default" and names:
            unit = units.Unit(names[0])
            if not unit.path:
                raise units.Failed(f"Failed to set default target: Unit file {names[0]} does "
                                   "not exist.")
            link = os.path.join(units.CONFIG, "default.target")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(unit.path, link)
            return 0
    except units.Failed as exc:
        print(str(exc), file=sys.stderr)
        return exc.rc
    print(f"systemctl {verb} is {units.NOT_SERVED}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
