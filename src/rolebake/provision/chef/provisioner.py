"""The chef-solo provisioner: lend the toolchain, run chef-solo, report resources, clean up.

Chef never enters the image. As kitchen-dokken does, the toolchain comes from
a toolchain image (chef/chef, cincproject/cinc or your own) that declares
`VOLUME /opt/chef` or `VOLUME /opt/cinc`: a created, never started, container
of it lends that volume to the build container (base.lend_volume), mounted on
the scratch tmpfs, with /opt/cinc a link to it while chef runs. Or the parent
image already has chef-solo (`chef.path`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rolebake.engine import Engine, ExecResult
from rolebake.errors import BuildFailed, InputError, RolebakeError
from rolebake.events import EventSink, LogEvent, discard
from rolebake.provision.base import (
    ContainerOptions,
    ProvisionContext,
    Provisioner,
    ProvisionerInputs,
    ProvisionResult,
    TaskCounter,
    append_log,
    lend_volume,
)
from rolebake.provision.chef.cookbooks import Resolved, resolve
from rolebake.provision.chef.options import (
    SCHEMA,
    TOOLCHAIN_DIRS,
    TOOLCHAIN_ENV,
    ChefOptions,
    options_of,
    parse_section,
    read_variants,
    require_toolchain,
)
from rolebake.provision.chef.output import DocOutputParser, ResourceEvent, failure_from_output
from rolebake.provision.chef.render import (
    COOKBOOKS_DIR,
    ENVIRONMENTS_DIR,
    OUTPUT_FILE,
    ROLES_DIR,
    TOOLCHAIN_MOUNT,
    WORKSPACE,
    chef_argv,
    chef_env,
    container_options,
    node_json,
    solo_rb,
    toolchain_dir,
)
from rolebake.scripts import script
from rolebake.spec import Project
from rolebake.spec_schema import Schema
from rolebake.state import scratch_dir
from rolebake.yamlfile import Fields, YamlList

# Where chef keeps state when a cookbook or a stray default sends it there;
# removed in `clean` unless the parent image already had them.
STATE_PATHS = (
    "/var/chef", "/var/cache/chef", "/etc/chef", "/root/.chef",
    "/var/cinc", "/var/cache/cinc", "/etc/cinc", "/root/.cinc",
    # apt_update's stamp says the apt lists are fresh; the lists are removed
    # before commit, so a child layer would trust a stamp with no lists behind it.
    "/var/lib/apt/periodic/update-success-stamp",
)

POLL_SECONDS = 1.0  # how often the output file is read while chef-solo runs


class ChefSoloProvisioner(Provisioner):
    """Applies Chef cookbooks and roles with chef-solo, the toolchain mounted, never installed."""

    name = "chef-solo"
    section = "chef"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Bind to a layer; see Provisioner."""
        super().__init__(*args, **kwargs)
        self.options = options_of(self.layer.settings)
        self.binary: str | None = self.options.path
        self.chef_version: str | None = None
        self.preexisting: tuple[str, ...] = ()
        self.lent_folder: str | None = None  # /opt/cinc while the toolchain volume is lent
        self.link_made: str | None = None  # how bootstrap made /opt/cinc point at it

    @classmethod
    def version(cls) -> str:
        """Chef's version comes with the toolchain, whose reference is in the options."""
        return "toolchain"

    @classmethod
    def schema(cls) -> Schema:
        """`chef:` at the top level, `roles_append` in a variant."""
        return SCHEMA

    @classmethod
    def read_settings(cls, top: Fields, variants: Mapping[str, Fields], project: Project
                      ) -> tuple[ChefOptions, Mapping[str, ChefOptions]]:
        """Read the `chef:` section and each variant's roles; resolve what they run."""
        options = parse_section(top, project)
        section = top.mapping("chef")
        items = section.data.get("run_list") if section is not None else None
        lines = [items.line_of(i) for i in range(len(items))] if isinstance(
            items, YamlList) else []
        resolve(project, options, options.run_list, (top.path, lines),
                environment_line=section.line_of("environment") if section else None)
        layers = read_variants(options, variants)
        for name, layer in layers.items():
            line = variants[name].line
            resolve(project, options, layer.run_list, (top.path, [line] * len(layer.run_list)))
        return options, layers

    # Inputs --------------------------------------------------------------------------------

    def run_list(self) -> list[str]:
        """This layer's run list (a variant layer runs its appended roles)."""
        return list(self.options.run_list)

    def resolved(self) -> Resolved:
        """The cookbooks and role files this layer's run list uses."""
        return resolve(self.project, self.options, self.run_list(), (self.layer.spec.path, []))

    def input_files(self) -> list[Path]:
        """Every file of the cookbooks used (with dependencies), the roles and environment."""
        return self.resolved().files(self.project)

    def inputs(self, engine: Engine) -> ProvisionerInputs:
        """The files, and the toolchain image's id: a new image under the same tag is a new chef.

        Only looked up, never pulled: `plan` makes nothing. A build has pulled
        the image in `preflight` before its inputs are read.
        """
        tools: dict[str, str] = {}
        if self.options.image is not None:
            found = engine.image(self.options.image)
            tools["chef toolchain image"] = found.id if found is not None else \
                f"{self.options.image} (not on the engine)"
        return ProvisionerInputs(files=tuple(self.input_files()), tools=tools)

    # Lifecycle -----------------------------------------------------------------------------

    def preflight(self, engine: Engine) -> None:
        """Check the toolchain is named and on the engine, without making anything."""
        require_toolchain(self.options, self.layer.spec)
        if self.options.image is not None:
            self._toolchain_image(engine)

    @contextlib.contextmanager
    def toolchain(self, engine: Engine,
                  labels: Mapping[str, str] | None = None,
                  events: EventSink = discard) -> Iterator[ContainerOptions]:
        """Lend the toolchain volume and mount the inputs; remove the toolchain container after.

        Raises:
            InputError: the toolchain image is not on the engine (and cannot be
                pulled) or declares neither /opt/chef nor /opt/cinc. Raised
                before any container exists.
        """
        del events
        image_id = folder = None
        if self.options.image is not None:
            image_id, folder = self._toolchain_image(engine)
            self.binary = TOOLCHAIN_DIRS[folder]
        resolved = self.resolved()
        # Removed at the end, or by the next run or `rolebake clean` if this one dies.
        with scratch_dir(self.project.private_dir("tmp"), "chef-") as config_dir:
            try:
                config_dir.chmod(0o755)
                _write(config_dir / "solo.rb", solo_rb(environment=self.options.environment))
                _write(config_dir / "node.json",
                       node_json(self.run_list(), self.options.attributes))
                mount = None
                if image_id is not None and folder is not None:
                    mount = lend_volume(engine, image_id, volume=folder, at=TOOLCHAIN_MOUNT,
                                        kind="chef", build_labels=labels)
                    self.lent_folder = folder
                yield container_options(
                    cookbooks=resolved.cookbooks,
                    roles_dir=self.project.root / self.options.roles if resolved.roles else None,
                    environments_dir=(self.project.root / self.options.environments
                                      if resolved.environment else None),
                    config_dir=config_dir,
                    toolchain_mount=mount,
                )
            finally:
                self.lent_folder = None

    def _toolchain_image(self, engine: Engine) -> tuple[str, str]:
        image = self.options.image
        assert image is not None
        given = f"`chef.image: {image}`" if self.options.image_from == "chef.image" else \
            f"{TOOLCHAIN_ENV}={image}"
        info = engine.image(image)
        if info is None:
            try:
                info = engine.pull(image)
            except InputError:
                raise InputError(
                    f"chef toolchain image {image!r} ({given}) is not on the engine and could "
                    f"not be pulled: load it (`docker load`/`docker pull {image}`) or name "
                    "another one", path=self.layer.spec.path,
                    line=self.layer.spec.line_of("chef")) from None
        folder = toolchain_dir(info.config.get("Volumes"))
        if folder is None:
            raise InputError(
                f"chef toolchain image {image!r} ({given}) declares no VOLUME /opt/chef or "
                "/opt/cinc, so it cannot lend chef to the build container (chef/chef and "
                "cincproject/cinc do)", path=self.layer.spec.path,
                line=self.layer.spec.line_of("chef"))
        return info.id, folder

    def bootstrap(self, ctx: ProvisionContext) -> None:
        """Check chef-solo runs in the build container; note which chef state dirs exist."""
        binary = self.binary
        if binary is None:
            raise BuildFailed("the chef toolchain was not set up (no chef.image or chef.path)")
        if self.lent_folder is not None:
            linked = ctx.engine.shell(ctx.container, script("chef-link.sh"), "link",
                                      self.lent_folder, TOOLCHAIN_MOUNT)
            if linked.rc != 0:
                raise BuildFailed(f"cannot lend chef at {self.lent_folder} in this image",
                                  details=linked.tail(),
                                  hint="the parent image has its own chef there: use "
                                       "`chef.path:` to run it instead of a toolchain image")
            made = linked.output.strip().splitlines()
            self.link_made = made[-1] if made else "absent"
        checked = ctx.engine.shell(ctx.container, 'test -x "$1" && "$1" --version', binary,
                                   env=chef_env())
        if checked.rc != 0:
            if self.options.path is not None:
                raise InputError(f"chef.path {binary} is not an executable chef-solo in the "
                                 f"parent image ({ctx.layer.parent})", path=ctx.layer.spec.path,
                                 line=ctx.layer.spec.line_of("chef"))
            raise BuildFailed(f"{binary} from toolchain image {self.options.image} does not run "
                              "in the build container", details=checked.tail())
        self.chef_version = checked.output.strip().splitlines()[-1] if checked.output.strip() \
            else binary
        existing = ctx.engine.shell(
            ctx.container, 'for p in "$@"; do [ -e "$p" ] && echo "$p"; done; exit 0',
            *STATE_PATHS)
        self.preexisting = tuple(p for p in existing.output.split() if p in STATE_PATHS)
        ctx.events(LogEvent(ctx.layer.id, f"chef toolchain: {self.chef_version} ({binary}, "
                            + (f"lent by {self.options.image})" if self.options.image
                               else "from the parent image)")))

    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        """Run chef-solo once, reporting each resource as the doc formatter prints it."""
        assert self.binary is not None
        title = "idempotence check" if idempotence else "provision"
        parser = DocOutputParser()
        result = _run_streaming(ctx, chef_argv(self.binary), chef_env(), parser,
                                TaskCounter(ctx))
        output = result.output
        append_log(ctx.log_path, f"chef-solo {title}", output)
        if ctx.cancel.is_set():
            raise BuildFailed("provisioning was cancelled")
        if result.rc != 0:
            raise failure_from_output(output, host_paths=self._host_paths(),
                                      root=self.project.root, log_path=ctx.log_path,
                                      rc=result.rc)
        return ProvisionResult(tasks=tuple(parser.results))

    def clean(self, ctx: ProvisionContext) -> None:
        """Remove chef's state and cache folders (the workspace tmpfs is never committed)."""
        created = [p for p in STATE_PATHS if p not in self.preexisting]
        if self.lent_folder is not None and self.link_made is not None:
            unlinked = ctx.engine.shell(ctx.container, script("chef-link.sh"), "unlink",
                                        self.lent_folder, self.link_made)
            if unlinked.rc != 0:
                raise BuildFailed(f"could not remove the link {self.lent_folder}",
                                  details=unlinked.tail())
        result = ctx.engine.shell(
            ctx.container,
            'ws="$1"; shift; rm -rf "$ws/state" "$@" 2>/dev/null; '
            'for h in /home/*; do rm -rf "$h/.chef" "$h/.cinc"; done; exit 0',
            WORKSPACE, *created)
        if result.rc != 0:
            raise BuildFailed("could not remove chef's state from the build container",
                              details=result.tail())

    def _host_paths(self) -> dict[str, Path]:
        paths = {f"{COOKBOOKS_DIR}/{name}": folder
                 for name, folder in self.resolved().cookbooks.items()}
        paths[ROLES_DIR] = self.project.root / self.options.roles
        paths[ENVIRONMENTS_DIR] = self.project.root / self.options.environments
        return paths


def _report(counter: TaskCounter, events: Iterable[ResourceEvent]) -> None:
    """Count what finished and tell the watcher about every resource, started ones too."""
    for event in events:
        counter.count(event.status)
        counter.emit(event.task.name, event.task.role, event.status)


def _run_streaming(ctx: ProvisionContext, argv: Sequence[str], env: Mapping[str, str],
                   parser: DocOutputParser, counter: TaskCounter) -> ExecResult:
    """Run chef-solo, reporting resources while it runs.

    The engine's exec returns only at the end, so chef writes to a file on the
    workspace tmpfs as well, and a second exec reads the new lines every second.
    """
    script = ('out="$1"; shift; mkdir -p "${out%/*}"; "$@" > "$out" 2>&1; rc=$?; '
              'cat "$out"; exit $rc')
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = ctx.engine.shell(ctx.container, script, OUTPUT_FILE, *argv, env=env)
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="rolebake-chef-solo", daemon=True)
    thread.start()
    consumed = 0
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        if not thread.is_alive() or ctx.cancel.is_set():
            break
        try:
            polled = ctx.engine.shell(ctx.container, 'tail -n "+$1" "$2" 2>/dev/null; exit 0',
                                      str(consumed + 1), OUTPUT_FILE)
        except RolebakeError:
            continue
        complete, newline, partial = polled.output.rpartition("\n")
        if newline:
            for line in complete.split("\n"):
                _report(counter, parser.feed(line))
                consumed += 1
        _report(counter, parser.peek(partial))
    thread.join()
    if "error" in box:
        raise box["error"]
    result: ExecResult = box["result"]
    remaining = result.output.split("\n")
    if remaining and remaining[-1] == "":
        remaining.pop()
    for line in remaining[consumed:]:
        _report(counter, parser.feed(line))
    _report(counter, parser.finish())
    return result


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)  # read by root in the container through a read-only bind mount
