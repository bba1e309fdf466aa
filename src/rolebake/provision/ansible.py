"""The Ansible provisioner: roles and playbooks applied with ansible-runner.

Ansible stays on the host. A build container is reached through rolebake's agent
(agent.py) and runs the modules with a python lent read-only
from the toolchain image of its release (pytoolchain.py); only when there is
none for it is python3 bootstrapped with apt, and removed again unless the
roles need it. A VM (parity) is reached over SSH by the very same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from rolebake.engine import Engine, ExecResult, ImageInfo, SessionError
from rolebake.errors import BuildFailed, InputError
from rolebake.events import EventSink, LogEvent, discard
from rolebake.provision import (
    agent,
    ansible_facts,
    ansible_failure,
    ansible_inventory,
    ansible_observed,
    pytoolchain,
    requirements,
)
from rolebake.provision.ansible_config import (
    COLLECTIONS_KEYS,
    content_paths,
    environment,
    read_config,
    roles_path,
    runner_environment,
)
from rolebake.provision.ansible_events import EventWatcher
from rolebake.provision.ansible_inputs import AnsibleInputs, read_inputs
from rolebake.provision.ansible_spec import SCHEMA, AnsibleSettings, read, settings_of
from rolebake.provision.base import (
    ContainerOptions,
    ProvisionContext,
    Provisioner,
    ProvisionerInputs,
    ProvisionResult,
    append_log,
    first_line,
    lend_volume,
)
from rolebake.provision.pytoolchain import Runtime
from rolebake.provision.target import ContainerTarget, SSHTarget
from rolebake.release import Release
from rolebake.scripts import script
from rolebake.spec import ImageSpec, Project
from rolebake.spec_schema import Schema
from rolebake.state import scratch_dir, write_private
from rolebake.yamlfile import Fields, Vaulted, load_yaml

REMOTE_TMP = "/tmp/.rolebake-ansible"
SYSTEM_PYTHON = "/usr/bin/python3"
# The lent python has apt_pkg; with the apt bootstrap python3-apt is installed
# first. Either way the apt module must never install it into the layer itself.
MODULE_DEFAULTS = {"ansible.builtin.apt": {"auto_install_module_deps": False}}
IDEMPOTENCE_SKIP_TAGS = "molecule-notest,molecule-idempotence-notest"
TARGET_VARS_FILE = "target-vars.json"  # read by ansible_plugins/vars/rolebake_target.py
TARGET_VARS_ENV = "ROLEBAKE_TARGET_VARS"
HOST_NAME_MAX = 64  # Linux's HOST_NAME_MAX: a longer `host:` is not the container's hostname


class AnsibleProvisioner(Provisioner):
    """Applies Ansible roles (or a playbook) to a build container."""

    name = "ansible"
    over_ssh = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Bind to a layer; see Provisioner."""
        super().__init__(*args, **kwargs)
        self.bootstrapped: tuple[str, ...] = ()
        self.interpreter = SYSTEM_PYTHON
        self._runtime = Runtime(release=None)
        self._parent: ImageInfo | None = None
        self._lent = False
        self._agent: contextlib.ExitStack | None = None
        self._relay: agent.AgentRelay | None = None
        self._run: ansible_inventory.RunInventory | None = None
        self._env: dict[str, str] = dict(CONTAINER_ENV)

    @classmethod
    def version(cls) -> str:
        """ansible-core's version (and community.docker's, whose connection is used)."""
        from ansible.release import __version__ as core

        return f"ansible-core {core}"

    @classmethod
    def schema(cls) -> Schema:
        """`roles`, `playbook`, `vars`, `sensitive_vars`, `groups`, `host`, `inventory`."""
        return SCHEMA

    @classmethod
    def read_settings(cls, top: Fields, variants: Mapping[str, Fields], project: Project
                      ) -> tuple[AnsibleSettings, Mapping[str, AnsibleSettings]]:
        """Read the Ansible keys of a spec (see ansible_spec.py)."""
        return read(top, variants, project)

    @classmethod
    def validate(cls, spec: ImageSpec, project: Project) -> None:
        """Roles and playbooks must exist inside the project; one of them must be given."""
        own = settings_of(spec)
        if own.roles and own.playbook:
            raise InputError("give either `roles:` or `playbook:`, not both",
                             path=spec.path, line=spec.line_of("playbook"))
        if not own.roles and not own.playbook:
            raise InputError("nothing to apply: give `roles:` or `playbook:`",
                             path=spec.path, line=1)
        for role in own.roles:
            _role_dir(project, role, spec)
        for variant in spec.variants:
            for role in settings_of(variant).roles:
                _role_dir(project, role, spec, line=variant.line)
        if own.playbook is not None:
            if not own.playbook.is_file():
                raise InputError(f"playbook {project.relative(own.playbook)} does not exist",
                                 path=spec.path, line=spec.line_of("playbook"))
            plays = load_yaml(own.playbook)
            if not isinstance(plays, list) or not plays:
                raise InputError("a playbook must be a list of plays", path=own.playbook,
                                 line=1)
            for index, play in enumerate(plays):
                line = plays.line_of(index) if hasattr(plays, "line_of") else 1
                if not isinstance(play, dict):
                    raise InputError(f"play {index + 1} is not a mapping", path=own.playbook,
                                     line=line)
                if not {"import_playbook", "ansible.builtin.import_playbook"} & play.keys() \
                        and "hosts" not in play:
                    raise InputError(f"play {index + 1} has no `hosts:`", path=own.playbook,
                                     line=line)
        # Follow what each layer of the spec pulls in now, so a path or link out of
        # the project is refused before any container, by every command.
        _read_inputs(project, spec, own)
        for variant in spec.variants:
            _read_inputs(project, spec, settings_of(variant), line=variant.line)

    def input_files(self) -> list[Path]:
        """Every project file Ansible reads for the layer (see `ansible_inputs`)."""
        return list(self._inputs().files)

    def inputs(self, engine: Engine) -> ProvisionerInputs:
        """The files, the versions of the collections used, and why the key is wide if it is."""
        del engine
        found = self._inputs()
        tools = {**{f"collection {name}": version for name, version in found.collections.items()},
                 **found.requirements, **ansible_observed.declared_digests(
                     settings_of(self.layer).inputs)}
        member = ansible_inventory.membership(self.project, self.layer.spec)
        plays: tuple[str, ...] = ()
        notes = found.notes
        if member is not None:
            tools["inventory host"] = f"{member.host} in {', '.join(member.groups)}"
            tools["group_vars and host_vars"] = ", ".join(found.vars_files or ()) or "none"
        own = settings_of(self.layer)
        if own.playbook is not None and own.groups is not None:
            selection = ansible_inventory.select_plays(
                own.playbook, member, ansible_inventory.parent_memberships(
                    self.project, self.layer.spec, own.playbook))
            plays, notes = tuple(selection.lines()), (*notes, *selection.notes)
        return ProvisionerInputs(files=found.files, tools=tools, notes=notes, plays=plays)

    def _inputs(self, *, every_play: bool = False) -> AnsibleInputs:
        layer = self.layer
        line = next((v.line for v in layer.spec.variants if v.name == layer.variant), None)
        return _read_inputs(self.project, layer.spec, settings_of(layer), line=line,
                            every_play=every_play)

    def _loaded_only(self) -> frozenset[str]:
        """Files only plays the layer does not apply read: Ansible loads them with the rest."""
        every, applied = (frozenset(map(self.project.logical, found.files)) for found in
                          (self._inputs(every_play=True), self._inputs()))
        return every - applied

    def runtime(self, engine: Engine, parent: ImageInfo, release: Release | None) -> str:
        """The lent python of the parent's release, or the apt bootstrap when there is none."""
        self._runtime = pytoolchain.choose(engine, release)
        self._parent = parent
        return self._runtime.key

    @contextlib.contextmanager
    def toolchain(self, engine: Engine, labels: Mapping[str, str] | None = None,
                  events: EventSink = discard) -> Iterator[ContainerOptions]:
        """Lend the python toolchain (made first when this release has none yet)."""
        runtime = self._runtime
        # The build container's hostname is the image's inventory host name, so facts
        # (ansible_hostname, ansible_fqdn) say what a server of that name would.
        hostname: str | None = ansible_inventory.host_name(self.layer.spec)
        if hostname is not None and len(hostname) > HOST_NAME_MAX:
            hostname = None  # the kernel refuses it; the engine's own name stays
        try:
            if runtime.toolchain is None or self._parent is None:
                yield ContainerOptions(hostname=hostname)
                return
            image = pytoolchain.ensure(engine, runtime, self._parent, events, self.layer.id)
            mount = lend_volume(engine, image.id, volume=pytoolchain.VOLUME,
                                at=pytoolchain.VOLUME, kind="python", build_labels=labels)
            self._lent = True
            yield ContainerOptions(mounts=(mount,), hostname=hostname)
        finally:
            # The build container outlives no toolchain; neither does the agent in it.
            self._lent = False
            self._stop_agent()

    def bootstrap(self, ctx: ProvisionContext) -> None:
        """Check the lent python runs here; otherwise install python3 (marked removable)."""
        runtime = self._runtime
        if self._lent:
            assert runtime.release is not None
            self.interpreter = pytoolchain.INTERPRETER
            # The lent systemctl runs with the lent python: both, or neither.
            self._env = container_env(self._parent.config if self._parent else {})
            agent_started = self._start_agent(ctx, quiet=True)
            checked = self._shell(ctx, _CHECK_LENT, pytoolchain.INTERPRETER)
            lines = checked.output.strip().splitlines()
            here = Release.parse("\n".join(lines[:-1])) if lines else None
            if checked.rc == 0 and here is not None and here.key == runtime.release.key:
                how = "rolebake's agent" if agent_started else "the engine's exec API"
                ctx.events(LogEvent(ctx.layer.id, f"python lent: {lines[-1]} for {here}; "
                                                  f"tasks run through {how}"))
                return
            self._stop_agent()
            self._env = dict(CONTAINER_ENV)
            why = (f"is for {runtime.release}, the build container is {here}"
                   if checked.rc == 0 and here is not None
                   else f"does not run on {here or 'this image'} ({first_line(checked.tail(1))})")
            ctx.events(LogEvent(ctx.layer.id, f"notice: the lent python {why}: "
                                "python3 bootstrapped"))
        elif runtime.notice:
            ctx.events(LogEvent(ctx.layer.id, f"notice: {runtime.notice}"))
        self.interpreter = SYSTEM_PYTHON
        result = ctx.engine.shell(ctx.container, script("bootstrap-python.sh"))
        if result.rc != 0:
            raise BuildFailed(
                "could not bootstrap python3 for Ansible in the build container",
                details=result.tail(),
                hint="use a base image with python3 or apt-get "
                     "(e.g. `rolebake base debian:bookworm`)",
            )
        lines = result.output.strip().splitlines()
        added = next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("added:")), [])
        self.bootstrapped = tuple(added)
        summary = next((line for line in lines if line.startswith(("installed", "python3"))),
                       "python3 checked")
        ctx.events(LogEvent(ctx.layer.id, summary))
        self._start_agent(ctx)

    def _start_agent(self, ctx: ProvisionContext, *, quiet: bool = False) -> bool:
        """One python for every task of the layer (agent.py); the exec API when it fails."""
        stack = contextlib.ExitStack()
        try:
            self._relay = stack.enter_context(agent.relay(
                ctx.engine, ctx.container, self.interpreter, env=dict(self._env)))
        except BuildFailed as exc:
            stack.close()
            if not quiet:
                ctx.events(LogEvent(ctx.layer.id, f"notice: {exc.message}; tasks use the "
                                                  "engine's exec API"))
            return False
        self._agent = stack
        return True

    def _shell(self, ctx: ProvisionContext, text: str, *args: str) -> ExecResult:
        """A shell script in the build container: through the agent when it runs."""
        if self._relay is None:
            return ctx.engine.shell(ctx.container, text, *args)
        try:
            done = self._relay.session.shell(text, *args)
        except SessionError:
            return ctx.engine.shell(ctx.container, text, *args)
        return ExecResult(rc=done.rc, output=done.output)

    def _stop_agent(self) -> None:
        agent_stack, self._agent, self._relay = self._agent, None, None
        if agent_stack is not None:
            agent_stack.close()

    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        """Apply the layer's roles to the target and report each task as it goes.

        Args:
            ctx: the pass's context; its target is a build container or an SSH host.
            idempotence: this is the second, checking pass.

        Returns:
            Every task's result.
        """
        host_vars = _host_vars(ctx.target, self.interpreter, self._relay, self._env)
        with _private_data_dir(ctx) as data_dir:
            playbook = self._write_run_files(ctx, data_dir, host_vars)
            watcher = EventWatcher(ctx)
            envvars = self._envvars(ctx, data_dir)
            facts = self._facts(ctx, data_dir, envvars, idempotence=idempotence)
            run = self._run
            assert run is not None
            thread, runner = _runner_async(
                envvars,
                private_data_dir=str(data_dir),
                playbook=playbook,
                # The project's inventory first (its groups, its group_vars), then the
                # target; --limit, as on a server of those groups.
                inventory=[*map(str, run.sources), str(data_dir / "inventory" / "hosts.yml")],
                limit=run.host if run.sources else None,
                event_handler=watcher,
                cancel_callback=ctx.cancel.is_set,
                quiet=True,
                ident="idempotence" if idempotence else "provision",
                skip_tags=IDEMPOTENCE_SKIP_TAGS if idempotence else None,
                settings={"suppress_ansible_output": True},
                # ansible-runner's own jsonfile fact cache, in the folder ansible_facts seeded.
                fact_cache=str(facts.scratch) if facts is not None else None,
            )
            while thread.is_alive():
                thread.join(0.2)
            stdout = _artifact_stdout(data_dir, "idempotence" if idempotence else "provision")
            append_log(ctx.log_path, "idempotence check" if idempotence else "provision",
                       stdout)
            status = runner.status
            if facts is not None:
                said = ansible_facts.finish(self.project, facts, succeeded=status == "successful")
                if said:
                    ctx.events(LogEvent(ctx.layer.id, said))
            if not idempotence and isinstance(ctx.target, ContainerTarget):
                self.observed = ansible_observed.observe(
                    self.project, data_dir, self._loaded_only(), settings_of(self.layer))
        if ctx.cancel.is_set() or status == "canceled":
            raise BuildFailed("provisioning was cancelled")
        result = ProvisionResult(tasks=tuple(watcher.results))
        if status != "successful":
            raise ansible_failure.explain(ctx, watcher.failures, watcher.failure_paths,
                                          stdout)
        return result

    def clean(self, ctx: ProvisionContext) -> None:
        """Remove Ansible's remote files, then the bootstrap python (unless the roles need it)."""
        self._shell(
            ctx,
            'rm -rf "$1" /root/.ansible /root/.ansible_async; '
            "for h in /home/*; do rm -rf \"$h/.ansible\" \"$h/.ansible_async\"; done; "
            "rm -rf /tmp/ansible_* /var/tmp/ansible_*",
            REMOTE_TMP,
        )
        self._stop_agent()
        if self.bootstrapped:
            result = ctx.engine.shell(ctx.container, script("unbootstrap-python.sh"),
                                      *self.bootstrapped)
            if result.rc != 0:
                raise BuildFailed("could not remove the bootstrap python", details=result.tail())
            ctx.events(LogEvent(ctx.layer.id, result.output.strip()))

    def _facts(self, ctx: ProvisionContext, data_dir: Path, env: dict[str, str], *,
               idempotence: bool) -> ansible_facts.FactsRun | None:
        """The parent image's fact cache for this run (ansible_facts.py); None when unused."""
        facts, said = ansible_facts.for_run(
            self.project, read_config(self.project), self._parent.id if self._parent else None,
            self._run.host if self._run else None, data_dir,
            applies=not idempotence and isinstance(ctx.target, ContainerTarget))
        if said:
            ctx.events(LogEvent(ctx.layer.id, said))
        if facts is not None:
            env.update(ansible_facts.environment(facts))
        return facts

    # ----------------------------------------------------------------------------------

    def _write_run_files(self, ctx: ProvisionContext, data_dir: Path,
                         target_vars: Mapping[str, Any]) -> str:
        layer = self.layer
        own = settings_of(layer)
        host_vars = dict(target_vars)
        if ctx.secrets is not None:
            host_vars.update(ctx.secrets.ansible_vars())
        # The target as a host of the project's inventory (ansible_inventory.py).
        run = ansible_inventory.prepare(self.project, layer.spec, own.playbook, host_vars)
        _write(data_dir / "inventory" / "hosts.yml", yaml.safe_dump(dict(run.generated)))
        _write(data_dir / TARGET_VARS_FILE, json.dumps({"host": run.host,
                                                        "vars": dict(run.target_vars)}))
        self._run = run
        # Vars go in a file, not on ansible-playbook's command line where `ps` shows them;
        # YAML, so that a `!vault` var of the spec reaches Ansible still encrypted.
        _write(data_dir / "env" / "extravars", _extravars({**own.vars, **run.extravars}))
        if own.playbook is not None and run.wrapper is not None:
            _write(data_dir / "project" / "rolebake.yml", yaml.safe_dump(run.wrapper))
            return "rolebake.yml"
        if own.playbook is not None:
            return str(own.playbook.resolve())
        play = [{
            "name": f"rolebake {layer.id}",
            "hosts": "all",
            "gather_facts": True,
            "module_defaults": MODULE_DEFAULTS,
            "roles": list(own.roles),
        }]
        _write(data_dir / "project" / "rolebake.yml", yaml.safe_dump(play, sort_keys=False))
        return "rolebake.yml"

    def _envvars(self, ctx: ProvisionContext, data_dir: Path) -> dict[str, str]:
        required = requirements.installed(self.project)
        # Built, not inherited: see ansible_config. ansible-runner finds
        # ansible-playbook on PATH, so ours goes first.
        config = read_config(self.project)
        found = roles_path(self.project, config, settings_of(self.layer).playbook)
        if required is not None:  # last, as the inputs' walker searches them
            found.append(required.roles_dir)
        env = environment(config, data_dir, roles_path=[p.resolve() for p in found],
                          remote_tmp=REMOTE_TMP, programs=Path(_ansible_playbook()).parent)
        if required is not None:  # after the cfg's own collections_path, as the inputs have it
            env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([
                *(str(p) for key, p in content_paths(self.project, config)
                  if key in COLLECTIONS_KEYS), str(required.collections_dir.resolve())])
        # rolebake's agent connection (agent.py) first; the project's own after it.
        env["ANSIBLE_CONNECTION_PLUGINS"] = os.pathsep.join(filter(None, [
            str(agent.PLUGINS / "connection"), env.get("ANSIBLE_CONNECTION_PLUGINS")
            or os.pathsep.join(config.paths("connection_plugins"))]))
        # The read recorder (ansible_observed.py); ansible-runner puts its own callbacks first.
        env.update(ansible_observed.environment(self.project, data_dir,
                                                env.get("PYTHONPATH", "")))
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(ansible_observed.CALLBACK_PLUGINS)
        # The target's connection, for the target alone (ansible_plugins/vars).
        env[TARGET_VARS_ENV] = str(data_dir / TARGET_VARS_FILE)
        if ctx.secrets is not None:
            password_file = ctx.secrets.write_vault_password(data_dir)
            if password_file is not None:
                env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(password_file)
        return env


_CHECK_LENT = ('cat /etc/os-release 2>/dev/null; "$1" -c "import apt_pkg, sys; '
               'print(\'python %d.%d\' % sys.version_info[:2])" 2>&1')


CONTAINER_ENV = {
    # A systemctl the roles install enables units offline and skips starts (no
    # systemd runs here); without one the lent systemctl serves, starts included.
    "SYSTEMD_OFFLINE": "1",
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's


def container_env(image_config: Mapping[str, Any]) -> dict[str, str]:
    """CONTAINER_ENV, and the image's PATH ending in the lent systemctl's folder.

    Last, so that a systemctl the roles install is the one Ansible's modules find.
    """
    path = next((e.split("=", 1)[1] for e in image_config.get("Env") or ()
                 if e.startswith("PATH=")), DEFAULT_PATH)
    return {**CONTAINER_ENV, "PATH": f"{path}:{pytoolchain.SYSTEMCTL_DIR}"}


def _host_vars(target: ContainerTarget | SSHTarget, interpreter: str = SYSTEM_PYTHON,
               relay: agent.AgentRelay | None = None,
               env: Mapping[str, str] = CONTAINER_ENV) -> dict[str, Any]:
    """How Ansible reaches the target: rolebake's agent (or the engine's exec API), or SSH."""
    if isinstance(target, SSHTarget):
        return dict(target.ansible_host_vars())
    # No `ansible_host`: the container is named by the connection's own variable, so the
    # image's host keeps its inventory address for templates, as on a server.
    if relay is not None:
        return {"ansible_connection": agent.CONNECTION,
                "ansible_rolebake_socket": str(relay.socket_path), "ansible_user": "root",
                "ansible_python_interpreter": interpreter}
    host_vars: dict[str, Any] = {
        "ansible_connection": "community.docker.docker_api",
        "ansible_docker_host": target.container.id,
        "ansible_user": "root",
        "ansible_python_interpreter": interpreter,
        "ansible_docker_extra_env": dict(env),
    }
    if os.environ.get("DOCKER_HOST"):
        # The connection plugin does not read DOCKER_HOST by itself: name the
        # engine, or Ansible would look for the container on the default socket.
        host_vars["ansible_docker_docker_host"] = os.environ["DOCKER_HOST"]
    return host_vars


def _runner_async(envvars: dict[str, str], **kwargs: Any) -> tuple[threading.Thread, Any]:
    """ansible-runner's run_async, with the environment rolebake built and nothing else.

    The runner seeds its environment with the host's; what it copied from
    there unchanged is taken out again before Ansible starts.
    """
    from ansible_runner.interface import init_runner

    runner = init_runner(envvars=envvars, **kwargs)
    runner.config.env = runner_environment(runner.config.env, envvars)
    thread = threading.Thread(target=runner.run, name="rolebake-ansible-runner")
    thread.start()
    return thread, runner


def _ansible_playbook() -> str:
    # Use the ansible-playbook installed beside this python, activated or not.
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise BuildFailed("ansible-playbook is not installed", hint="pip install ansible")
    return found


@contextlib.contextmanager
def _private_data_dir(ctx: ProvisionContext) -> Iterator[Path]:
    # ansible-runner's private data dir and artifacts: the vault password file, the
    # vars, the run's full output and environment. Private, removed afterwards, and
    # swept by the next run or `rolebake clean` when this process dies first.
    with scratch_dir(ctx.project.private_dir("tmp"), "ansible-") as path:
        (path / "tmp").mkdir(mode=0o700)
        yield path


def _artifact_stdout(data_dir: Path, ident: str) -> str:
    stdout = data_dir / "artifacts" / ident / "stdout"
    return stdout.read_text(encoding="utf-8", errors="replace") if stdout.exists() else ""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, text)


class _ExtravarsDumper(yaml.SafeDumper):
    """Writes a spec's `!vault` vars back as `!vault |`, for Ansible to decrypt."""


_ExtravarsDumper.add_representer(
    Vaulted, lambda dumper, value: dumper.represent_scalar("!vault", str(value), style="|"))


def _extravars(variables: Mapping[str, Any]) -> str:
    return yaml.dump(dict(variables), Dumper=_ExtravarsDumper, sort_keys=True,
                     allow_unicode=True, width=1 << 30)


def _role_dir(project: Project, role: str, spec: ImageSpec, line: int | None = None) -> Path:
    folders = roles_path(project, read_config(project), None)  # roles/ and the cfg's roles_path
    path = next((f / role for f in folders if (f / role).is_dir()), project.roles_dir / role)
    line = line or spec.line_of("roles")
    if not project.inside(path):
        raise InputError(f"role {role!r} is outside the project's roles/", path=spec.path,
                         line=line)
    required = requirements.installed(project)
    if not path.is_dir() and required is not None and (required.roles_dir / role).is_dir():
        return required.roles_dir / role  # installed from requirements.yml
    if not path.is_dir() and role in requirements.pending_roles(project):
        return path  # from requirements.yml, which the build installs first (`plan` says so)
    if not path.is_dir():
        known = sorted(p.name for p in project.roles_dir.iterdir()) if project.roles_dir.is_dir() \
            else []
        raise InputError(f"role {role!r} not found in roles/ (known: {', '.join(known) or 'none'})",
                         path=spec.path, line=line)
    return path


def _read_inputs(project: Project, spec: ImageSpec, own: AnsibleSettings,
                 line: int | None = None, every_play: bool = False) -> AnsibleInputs:
    """What one layer of `spec` reads: `own` is the layer's settings.

    With `every_play`, also what the plays the layer does not apply read.
    """
    # Sensitive values never name a file: the name would end up in the inputs label.
    resolvable = {k: v for k, v in own.vars.items() if k not in own.sensitive_vars}
    playbook = own.playbook
    where = line or spec.line_of("playbook" if playbook is not None else "roles")
    member = ansible_inventory.membership(project, spec)
    return read_inputs(project, roles=own.roles, playbook=playbook, variables=resolvable,
                       where=(spec.path, where), inventory=member,
                       not_applied=frozenset() if every_play else
                       ansible_inventory.not_applied(project, spec, playbook, member))
