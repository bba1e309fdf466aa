"""How every command runs: signals, errors and exit codes, redacted output, shared options.

A RolebakeError becomes one `error:` line (with its details and hint) and its
exit code; anything else is an "internal error" whose traceback only --debug
shows. stdout and stderr pass through the installed Redactor for the whole of
a command.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from rolebake import redact
from rolebake.errors import InputError, Interrupted, RolebakeError
from rolebake.yamlio import parsed_once

if TYPE_CHECKING:
    from rolebake.engine import Engine
    from rolebake.plan import BuildPlan
    from rolebake.secrets import SecretSet
    from rolebake.spec import Project

F = TypeVar("F", bound=Callable[..., Any])
VAULT_PASSWORD_ENV = "ROLEBAKE_VAULT_PASSWORD"


class _Signals:
    """Turn the first SIGINT/SIGTERM into Interrupted; ignore the rest while cleaning up."""

    def __init__(self) -> None:
        self.fired = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the signals for a `with` block; the previous handlers come back after."""
        previous = {sig: signal.signal(sig, self._handle)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.fired:
            return  # cleanup is under way; a second Ctrl-C must not cut it short
        self.fired = True
        raise Interrupted("SIGTERM" if signum == signal.SIGTERM else "SIGINT")


def err(text: str = "") -> None:
    """One line on stderr."""
    click.echo(text, err=True)


def fail(exc: RolebakeError) -> None:
    """An error as users see it: `error:`, its details, its hint."""
    err(f"error: {exc.message}")
    if exc.details:
        for line in exc.details.rstrip().splitlines():
            err(f"  | {line}")
    if exc.hint:
        err(f"  hint: {exc.hint}")


@contextlib.contextmanager
def _redacted_output() -> Iterator[None]:
    """Pass stdout and stderr through the installed Redactor while a command runs.

    Secret values are registered with it as soon as they are parsed (the spec's
    sensitive vars, `--secret` files, the vault password), so it hides them
    from the first line the command prints; after the command it hides nothing.
    """
    saved = sys.stdout, sys.stderr
    redact.reset()  # values are registered from here on, as they are parsed
    sys.stdout = redact.RedactingStream(saved[0])
    sys.stderr = redact.RedactingStream(saved[1])
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = saved
        redact.reset()


def handled(func: F) -> F:
    """Run a command with rolebake's error handling, exit codes and redacted output."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        # Read once, then gone from the environment every process rolebake starts
        # inherits (ansible-runner writes that environment into its artifacts).
        ctx.meta["vault_password_env"] = os.environ.pop(VAULT_PASSWORD_ENV, None)
        with _redacted_output():
            try:
                with _Signals().installed(), parsed_once():  # each YAML file parsed once
                    return func(*args, **kwargs)
            except RolebakeError as exc:
                if debug:
                    traceback.print_exc()
                fail(exc)
                sys.exit(exc.exit_code)
            except click.exceptions.Exit:
                raise
            except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
                if debug:
                    traceback.print_exc()
                err(f"internal error: {type(exc).__name__}: {exc}")
                err("  hint: run again with --debug for the traceback, and please report it")
                sys.exit(1)

    return wrapper  # type: ignore[return-value]


def secrets_for(ctx: click.Context, project: Project, plan: BuildPlan,
             secrets: tuple[str, ...] = (),
             vault_password_file: Path | None = None) -> SecretSet | None:
    """The build's SecretSet (or None); its Redactor is installed for every output."""
    from rolebake.load import plan_secrets

    found = plan_secrets(project, plan, secrets, vault_password_file,
                         ctx.meta.get("vault_password_env"))
    if found is not None:
        redact.install(found.redactor())
    return found


def engine_for(ctx: click.Context, project: Project | None = None,
               secrets: SecretSet | None = None, *, allow_insecure: bool = False) -> Engine:
    """Connect to the engine DOCKER_HOST names, after checking where that is.

    A malformed DOCKER_HOST is exit 4 in one line. A tcp:// engine without TLS is
    named on stderr; a build with secrets is refused over it (exit 2, before any
    byte is sent) unless `allow_insecure` (--allow-insecure-engine). With a
    project, the tag journals of runs killed outright on this engine are
    finished (`image.recover_journals`) and what was done is said.
    """
    from rolebake.engine import DockerEngine, engine_address

    address = engine_address()
    if address.insecure:
        err(f"warning: DOCKER_HOST={address.url} is tcp:// without TLS: the engine's API, and "
            "whatever a build sends it, cross the network in clear")
        if secrets is not None and secrets.values() and not allow_insecure:
            raise InputError(f"this build has secrets and DOCKER_HOST={address.url} has no TLS: "
                             "they would cross the network in clear",
                             hint="set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH, use ssh://, "
                                  "or pass --allow-insecure-engine")
    engine = DockerEngine.connect()
    if project is not None:
        from rolebake.image import recover_journals

        # A run killed outright while it moved tags left its journal: finish it first.
        for line in recover_journals(engine, project):
            err(f"note: {line}")
    return engine


def echo_json(data: Any) -> None:
    """Data as JSON on stdout, every secret in it hidden."""
    # Redacted before serialising: json.dumps escapes quotes, backslashes, tabs and
    # non-ASCII characters, and a secret holding one is no longer found after it.
    click.echo(json.dumps(redact.data(data), indent=2))


def project_of(ctx: click.Context, *, made: bool = True) -> Any:
    """The project of --project (or the current directory); `made`: it must have images/."""
    from rolebake.spec import Project

    root = Path(ctx.find_root().params.get("project") or ".").resolve()
    if made and not (root / "images").is_dir():
        raise InputError("not a rolebake project: no images/ folder", path=root,
                         hint="run from the project root, or pass --project DIR")
    return Project(root)


def cache_repo_of(value: str | None) -> Any:
    """The parsed --cache-repo (or ROLEBAKE_CACHE_REPO), or None."""
    from rolebake.registry import parse_repository

    return parse_repository(value, source="--cache-repo") if value else None


CACHE_REPO_HELP = ("Share verified layers through this registry repository (REGISTRY/PATH; "
                    "or set ROLEBAKE_CACHE_REPO).")


def progress_of(ctx: click.Context) -> Any:
    """The command's one progress view on stderr (installing requirements, then building)."""
    from rolebake.report import progress_for

    if ctx.find_root().params.get("quiet"):
        return lambda _event: None
    if "progress" not in ctx.meta:
        ctx.meta["progress"] = view = progress_for(sys.stderr)
        ctx.call_on_close(view.close)
    return ctx.meta["progress"]


secret_files_option = click.option(
    "--secret", "secrets", multiple=True, metavar="id=NAME,src=PATH",
    help="A file the roles may read during the build only.")
insecure_engine_option = click.option(
    "--allow-insecure-engine", is_flag=True,
    help="Send secrets to a tcp:// engine without TLS (in clear over the network).")


def reproducible_options(func: F) -> F:
    """`--source-date-epoch` and `--check-reproducible` (normalise.py, reproducible.py)."""
    func = click.option("--check-reproducible", is_flag=True, help=(
        "Build twice from scratch into throwaway tags; list the files that differ "
        "(exit 5 if any)."))(func)
    return click.option("--source-date-epoch", metavar="SECONDS", help=(
        "Clamp layer times to this (default: $SOURCE_DATE_EPOCH, else the commit time "
        "of HEAD)."))(func)


vault_option = click.option(
    "--vault-password-file", type=click.Path(path_type=Path),
    help="Ansible Vault password (or set ROLEBAKE_VAULT_PASSWORD).")


def check_and_show(engine: Engine, project: Project, plan: BuildPlan, options: Any,
                   events: Any, as_json: bool) -> None:
    """`build --check-reproducible`: build twice, print what differs (reproducible.py).

    Raises:
        NotReproducible: the two builds differ (exit 5).
    """
    from rolebake import reproducible

    checked = reproducible.check(engine, project, plan, options, events)
    if as_json:
        echo_json(checked.to_dict())
    else:
        for line in checked.lines():
            click.echo(line)
    if not checked.reproducible:
        raise reproducible.NotReproducible("two builds of the same inputs differ")
