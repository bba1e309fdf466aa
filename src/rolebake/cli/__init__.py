"""The command line: the commands. The cli package is the only place that prints or exits.

Every RolebakeError becomes one clear message and its exit code; a Python
traceback reaches the user only with --debug (DESIGN.md invariant 4). For
the whole of a command, stdout and stderr pass through the installed
Redactor (`redact.py`): whatever reaches them, a traceback included, has
every secret value hidden (invariant 6). How a command runs (that handling,
signals, shared options) is `running.py`.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import click

from rolebake import __version__
from rolebake.cli.running import (
    CACHE_REPO_HELP,
    cache_repo_of,
    check_and_show,
    echo_json,
    engine_for,
    err,
    handled,
    insecure_engine_option,
    progress_of,
    project_of,
    reproducible_options,
    secret_files_option,
    secrets_for,
    vault_option,
)
from rolebake.errors import InputError, Interrupted


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rolebake")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path),
              help="Project root (default: the current directory).")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def main(project: Path | None, debug: bool, quiet: bool) -> None:
    """Bake immutable container images from your Ansible roles (or Chef-solo cookbooks).

    Exit codes: 0 ok, 1 build failed, 2 bad input, 3 image tests failed,
    4 no container engine, 5 parity differences, 130/143 interrupted.
    """
    del project, debug, quiet


@main.command()
@click.argument("images", nargs=-1)
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Independent layers to build at once.")
@click.option("--keep-failed", is_flag=True,
              help="Keep an image that failed after commit as <name>:failed-<id>.")
@click.option("--idempotence", is_flag=True, help="Apply the roles twice; fail on any change.")
@click.option("--no-verify", is_flag=True, help="Skip metadata checks and the testinfra suite.")
@secret_files_option
@vault_option
@insecure_engine_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the image checks as JUnit XML.")
@click.option("--push", is_flag=True,
              help="Push every tag of each image once it passed verification.")
@click.option("--cache-repo", envvar="ROLEBAKE_CACHE_REPO", metavar="REGISTRY/PATH",
              help=CACHE_REPO_HELP)
@click.option("--record-inputs", is_flag=True,
              help="Key project files Ansible read that the cache key missed (a cache hole), "
                   "instead of failing.")
@click.option("--attest", "attest_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write each verified image's SBOM and provenance to this folder.")
@reproducible_options
@click.pass_context
@handled
def build(ctx: click.Context, images: tuple[str, ...], no_cache: bool, jobs: int,
          keep_failed: bool, idempotence: bool, no_verify: bool, secrets: tuple[str, ...],
          vault_password_file: Path | None, allow_insecure_engine: bool, as_json: bool,
          junit: Path | None, push: bool, cache_repo: str | None, record_inputs: bool,
          attest_dir: Path | None, source_date_epoch: str | None,
          check_reproducible: bool) -> None:
    """Build IMAGES (spec names, or name:variant; none means all) and tag them when verified."""
    from rolebake.builder import Builder, BuildOptions
    from rolebake.load import install_requirements, plan_build
    from rolebake.normalise import source_date_epoch as epoch_of
    from rolebake.report import build_summary
    from rolebake.verify import write_junit

    if push and no_verify:
        raise InputError("--push publishes verified images only; drop --no-verify")
    if attest_dir is not None and no_verify:
        raise InputError("--attest records verified images only; drop --no-verify")
    if check_reproducible and (push or attest_dir or junit):
        raise InputError("--check-reproducible builds throwaway tags: drop --push/--attest/--junit")
    repository = cache_repo_of(cache_repo)
    project = project_of(ctx)
    epoch = epoch_of(project.root, source_date_epoch)
    plan = plan_build(project, images, progress_of(ctx))
    secret_set = secrets_for(ctx, project, plan, secrets, vault_password_file)
    engine = engine_for(ctx, project, secret_set, allow_insecure=allow_insecure_engine)
    # The build's first step, before any layer: `plan` installs nothing.
    install_requirements(project, progress_of(ctx))
    options = BuildOptions(no_cache=no_cache, jobs=jobs, keep_failed=keep_failed,
                           idempotence=idempotence, verify=not no_verify, secrets=secret_set,
                           push=push, cache_repo=repository, record_inputs=record_inputs,
                           attest_dir=attest_dir, source_date_epoch=epoch)
    if check_reproducible:
        return check_and_show(engine, project, plan, options, progress_of(ctx), as_json)
    builder = Builder(engine, project, progress_of(ctx), options)
    try:
        report = builder.build(plan)
        if junit is not None:
            write_junit({r.layer: r.verify or _verify_of(r) for r in report.results.values()
                         if r.verify is not None or _verify_of(r) is not None}, junit)
        if as_json:
            echo_json(report.to_dict())
        else:
            for line in build_summary(report, color=sys.stderr.isatty()):
                err(line)
    except Interrupted as exc:
        # A signal after the build returned (while the report is written) still
        # means "interrupted": its tags go back too, so exit 130/143 always says
        # that no tag moved, or names those that stayed.
        builder.roll_back(exc)
        raise
    for line in engine.settle():  # the containers removed in the background (engine/)
        err(f"warning: {line}")
    if report.error is not None:
        raise report.error


def _verify_of(result: Any) -> Any:
    return getattr(result.error, "verify", None)


@main.command()
@click.argument("images", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--cache-repo", envvar="ROLEBAKE_CACHE_REPO", metavar="REGISTRY/PATH",
              help="Look for layers in this registry repository too (or ROLEBAKE_CACHE_REPO).")
@vault_option
@click.pass_context
@handled
def plan(ctx: click.Context, images: tuple[str, ...], as_json: bool,
         cache_repo: str | None, vault_password_file: Path | None) -> None:
    """Show the layers IMAGES need, HIT or MISS, and which input changed. Creates nothing."""
    from rolebake.cache import preview
    from rolebake.events import PIPELINE
    from rolebake.load import plan_build, vault_needed
    from rolebake.provision.requirements import declared, installed
    from rolebake.registry import CacheRepo
    from rolebake.report import plan_table

    repository = cache_repo_of(cache_repo)
    project = project_of(ctx)
    build_plan = plan_build(project, images, progress_of(ctx))
    vaulted: list[str] = []
    if vault_password_file is not None or ctx.meta.get("vault_password_env") is not None:
        # Given: checked here as a build would (a wrong one is exit 2), and its values hidden.
        secrets_for(ctx, project, build_plan, vault_password_file=vault_password_file)
    else:
        vaulted = [f"{project.relative(path)}:{line}"
                   for path, line in vault_needed(project, build_plan)]
    engine = engine_for(ctx, project)
    rows = preview(engine, project, build_plan,
                   CacheRepo(engine, repository) if repository else None)
    required = installed(project)
    pins = {e.tool: e.value for e in required.manifest().values()} if required else {}
    pending = required is None and declared(project) is not None
    note = ("requirements.yml is not installed yet: `rolebake build` installs it first; "
            "the layers that use it are keyed once it is") if pending else ""
    if as_json:
        echo_json({"steps": [s.value for s in PIPELINE], "layers": [r.to_dict() for r in rows],
                    "requirements": pins, "requirements_installed": not pending,
                    "notes": [note] if note else [], "vault_password_needed": vaulted})
        return
    click.echo("steps per layer: " + " -> ".join(s.value for s in PIPELINE))
    if note:
        click.echo(f"note: {note}")
    for name, value in pins.items():
        click.echo(f"{name}: {value}")
    for line in plan_table((r.to_dict() for r in rows), color=sys.stdout.isatty()):
        click.echo(line)
    for where in vaulted:
        click.echo(f"note: {where} is vault-encrypted and no vault password was given: a "
                   "build needs --vault-password-file FILE (or ROLEBAKE_VAULT_PASSWORD)")


@main.command()
@click.argument("name", default="debian:bookworm")
@click.option("--mirror", help="Debian mirror URL (default: the one this machine's apt uses).")
@click.option("--rebuild", is_flag=True, help="Make it again even if it exists.")
@click.option("--cache-repo", envvar="ROLEBAKE_CACHE_REPO", metavar="REGISTRY/PATH",
              help="Take the base from this registry repository when the engine has none, "
                   "and put it there when the repository has none (or ROLEBAKE_CACHE_REPO).")
@click.pass_context
@handled
def base(ctx: click.Context, name: str, mirror: str | None, rebuild: bool,
         cache_repo: str | None) -> None:
    """Make a base image (e.g. debian:bookworm) with debootstrap; no registry needed."""
    from rolebake.registry import CacheRepo
    from rolebake.rootfs import ensure_base

    repository = cache_repo_of(cache_repo)
    engine = engine_for(ctx)
    result = ensure_base(engine, name, mirror=mirror, events=progress_of(ctx), rebuild=rebuild,
                         repo=CacheRepo(engine, repository) if repository else None)
    notes = [n for n in (result.source if result.reused else "", result.shared) if n]
    click.echo(f"{result.ref} {result.image_id.split(':')[-1][:12]}"
               + (f" ({'; '.join(notes)})" if notes else ""))


@main.command()
@click.argument("image")
@click.pass_context
@handled
def sbom(ctx: click.Context, image: str) -> None:
    """Print the CycloneDX SBOM recorded for IMAGE (a spec, a tag or an image id)."""
    echo_json(_recorded(ctx, image, "sbom"))


@main.command()
@click.argument("image")
@click.pass_context
@handled
def provenance(ctx: click.Context, image: str) -> None:
    """Print the provenance (in-toto statement, SLSA v1) recorded for IMAGE."""
    echo_json(_recorded(ctx, image, "provenance"))


def _recorded(ctx: click.Context, image: str, kind: str) -> Any:
    """What is recorded of `kind` for `image`; exit 2 when nothing is."""
    from rolebake.attest import Store, recorded
    from rolebake.load import plan_build

    project = project_of(ctx)
    store = Store(project)
    refs: tuple[str, ...] = ()
    if project.has_spec(image.split(":", maxsplit=1)[0]):
        refs = plan_build(project, [image], progress_of(ctx)).layer(image).tags
    engines: list[Any] = []

    def image_id_of(ref: str) -> str | None:
        if not engines:
            engines.append(engine_for(ctx))
        found = engines[0].image(ref)
        return found.id if found is not None else None

    image_id = recorded(store, image, refs=refs, image_id_of=image_id_of)
    found = store.sbom(image_id) if kind == "sbom" else store.provenance(image_id)
    if found is None:
        raise InputError(f"no {kind} is recorded for {image} ({image_id[:19]})")
    return found


@main.command("test")
@click.argument("image")
@click.option("--tests", "tests_dir", type=click.Path(file_okay=False, path_type=Path),
              help="testinfra folder (default: the spec's).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Write JUnit XML.")
@click.pass_context
@handled
def test_command(ctx: click.Context, image: str, tests_dir: Path | None, as_json: bool,
                 junit: Path | None) -> None:
    """Check an image against its spec's metadata and its testinfra suite.

    For a spec name (`web`, `web:dev`) the image its first tag names is checked,
    metadata included; any other IMAGE is an image reference and needs --tests.
    """
    from rolebake.errors import TestsFailed
    from rolebake.load import plan_build
    from rolebake.verify import (
        TestCase,
        VerifyResult,
        check_metadata,
        run_suite,
        spec_expectations,
        write_junit,
    )

    project = project_of(ctx)
    ready = None
    ref = image
    layer = None
    if project.has_spec(image.split(":", maxsplit=1)[0]):
        test_plan = plan_build(project, [image], progress_of(ctx))
        layer = test_plan.layer(image)
        if not layer.tags:
            raise InputError(f"image {image} has no tags to find it by",
                             path=layer.spec.path, line=layer.spec.line_of("tags"))
        ref, ready = layer.tags[0], layer.spec.ready
        tests_dir = tests_dir or layer.tests
    if layer is None and (tests_dir is None or not tests_dir.is_dir()):
        raise InputError(f"no testinfra suite for {image}", hint="pass --tests DIR")
    if tests_dir is not None and not tests_dir.is_dir():
        raise InputError(f"{tests_dir} is not a folder", hint="pass --tests DIR")
    engine = engine_for(ctx, project)
    found = engine.image(ref)
    if found is None:
        raise InputError(f"image {ref!r} is not on the engine", hint=f"rolebake build {image}")
    cases: list[TestCase] = []
    if layer is not None:
        parent_ref: str | None = layer.parent
        if layer.parent_is_layer:
            parent_tags = test_plan.layer(layer.parent).tags
            parent_ref = parent_tags[0] if parent_tags else None
        parent = engine.image(parent_ref) if parent_ref else None
        if parent is None:
            cases.append(TestCase(suite="metadata", name="config", outcome="skipped",
                                  message=f"parent image {parent_ref} is not on the engine"))
        else:
            cases += check_metadata(spec_expectations(parent.config, layer.config),
                                    found.config)
    if tests_dir is not None:
        cases += run_suite(engine, found.id, tests_dir, ready=ready, project_root=project.root,
                           name=image.replace(":", "."), build_id=uuid.uuid4().hex[:12])
    result = VerifyResult(image_id=found.id, cases=tuple(cases))
    if junit:
        write_junit({image: result}, junit)
    if as_json:
        echo_json(result.to_dict())
    else:
        for case in result.cases:
            click.echo(f"{case.outcome.upper():<7} {case.suite}::{case.name}")
    if not result.ok:
        details = "\n".join(f"{c.suite}::{c.name}: {_first_line(c.message)}"
                            for c in result.failed)
        raise TestsFailed(f"{len(result.failed)} of {len(result.cases)} checks failed for {ref}",
                          details=details)


@main.command("scaffold-tests")
@click.argument("image")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write (default: tests/images/<name>/test_scaffold.py).")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@secret_files_option
@vault_option
@insecure_engine_option
@click.pass_context
@handled
def scaffold_tests(ctx: click.Context, image: str, output: Path | None, force: bool,
                   secrets: tuple[str, ...], vault_password_file: Path | None,
                   allow_insecure_engine: bool) -> None:
    """Write a starting testinfra file for IMAGE from what its roles did.

    The layer is provisioned once more (as with --no-cache, without verifying,
    tagging or keeping the image) and the provisioner's task results become
    checks: packages, files, users and groups, services enabled.
    """
    from rolebake.load import plan_build
    from rolebake.scaffold import record, render, save

    project = project_of(ctx)
    if not project.has_spec(image.split(":", maxsplit=1)[0]):
        raise InputError(f"no image spec named {image.split(':', maxsplit=1)[0]!r}",
                         hint=f"known: {', '.join(project.spec_names()) or 'none'}")
    scaffold_plan = plan_build(project, [image], progress_of(ctx), install=True)
    layer = scaffold_plan.layer(image)
    folder = image.replace(":", "-")
    target = output or project.root / "tests" / "images" / folder / "test_scaffold.py"
    if target.exists() and not force:
        raise InputError(f"{target} exists; not overwriting it", hint="pass --force, or -o PATH")
    secret_set = secrets_for(ctx, project, scaffold_plan, secrets, vault_password_file)
    engine = engine_for(ctx, project, secret_set, allow_insecure=allow_insecure_engine)
    recording = record(engine, project, layer.id, progress_of(ctx), secrets=secret_set)
    kept = project.private_dir("scaffold") / f"{folder}.json"
    save(recording, kept)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(recording), encoding="utf-8")
    err(f"wrote {target} from {len(recording.tasks)} task results "
         f"(kept in {project.relative(kept)})")


@main.command()
@click.option("--playbook", type=click.Path(dir_okay=False, path_type=Path),
              help="The site playbook (default: site.yml or playbooks/site.yml).")
@click.option("--inventory", type=click.Path(path_type=Path),
              help="The inventory (default: ansible.cfg's, or inventory/hosts at the root or "
                   "beside the playbook).")
@click.option("--from", "base_from", default="rolebake/debian:bookworm", show_default=True,
              help="The image the first layer starts from.")
@click.pass_context
@handled
def init(ctx: click.Context, playbook: Path | None, inventory: Path | None,
         base_from: str) -> None:
    """Propose images/<group>.yml and a starting suite per group of an Ansible repository."""
    from rolebake.scaffold import init as scaffold_init

    project = project_of(ctx, made=False)  # an Ansible repository without images/ yet
    site = scaffold_init.find_playbook(project, playbook)
    proposals = scaffold_init.propose(site, base_from)
    scaffold_init.refuse_links(project, proposals)  # before any notice: one line, exit 2
    given = (project.root / inventory) if inventory is not None else None
    for line in scaffold_init.check(project, site, given, proposals):
        err(line)
    for path in scaffold_init.write(project, proposals, site, given):
        click.echo(f"wrote {project.relative(path)}")
    named = scaffold_init.write_identity(project)
    if named is not None:
        click.echo(f"wrote {project.relative(named)} (project: {project.name})")
    ignored = scaffold_init.ignore_state(project)
    if ignored is not None:
        click.echo(f"added .rolebake/ to {project.relative(ignored)}")
    err("check by hand in each service image: config.cmd (its service in the foreground), "
         "config.expose and a ready check (ready.port or ready.command); then "
         "`rolebake build` and `rolebake scaffold-tests <image>` for real checks")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


@main.command()
@click.argument("image")
@click.option("--vm", "vm", default="qemu", show_default=True,
              help="qemu (a throwaway local VM) or ssh://user@host:port (an existing one).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--all", "show_equal", is_flag=True, help="Also list resources that agree.")
@click.option("--strict-ids", is_flag=True,
              help="Count system users, groups and owners whose dynamic ids shifted as "
                   "differences.")
@click.option("--accept-recommends", is_flag=True,
              help="Do not count packages one side has only because apt installed a "
                   "Recommends the other side skipped (class `recommends`) as differences.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as one self-contained HTML page to this file.")
@vault_option
@insecure_engine_option
@click.pass_context
@handled
def parity(ctx: click.Context, image: str, vm: str, as_json: bool, show_equal: bool,
           strict_ids: bool, accept_recommends: bool, html_file: Path | None,
           vault_password_file: Path | None, allow_insecure_engine: bool) -> None:
    """Apply IMAGE's roles to a VM too; run its suite on both and diff their state (exit 5)."""
    from rolebake.errors import ParityDifferent
    from rolebake.load import plan_build
    from rolebake.parity.run import run_parity
    from rolebake.report import parity_html, parity_table, tests_side_by_side, vm_layer_lines

    project = project_of(ctx)
    if html_file is not None and not html_file.parent.is_dir():
        raise InputError(f"--html {html_file}: no such directory {html_file.parent}")
    secret_set = secrets_for(ctx, project, plan_build(project, [image], progress_of(ctx),
                                                      install=True),
                          vault_password_file=vault_password_file)
    engine = engine_for(ctx, project, secret_set, allow_insecure=allow_insecure_engine)
    result = run_parity(engine, project, image, vm, events=progress_of(ctx),
                        secrets=secret_set, strict_ids=strict_ids,
                        accept_recommends=accept_recommends)
    if html_file is not None:
        # Written before the verdict: a failed parity is when the page is read.
        html_file.write_text(parity_html(result.to_dict()), encoding="utf-8")
        err(f"wrote {html_file}")
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"parity of {image} ({result.image_id.split(':')[-1][:12]}) and {vm}")
        click.echo(parity_table(result.report, show_equal=show_equal,
                                color=sys.stdout.isatty()))
        click.echo("")
        for line in tests_side_by_side(result.container_tests, result.vm_tests,
                                       color=sys.stdout.isatty()):
            click.echo(line)
        # When each step ran, from the start of the run: the build and the VM overlap.
        timing = ", ".join(f"{k} {s:.0f}-{e:.0f}s" for k, (s, e) in result.steps.items())
        click.echo(f"\n{len(result.report.differences)} difference(s), "
                   f"{len(result.report.expected)} expected, "
                   f"{len(result.report.ids_shifted)} ids shifted, "
                   f"{len(result.report.recommends)} recommends, "
                   f"{result.report.equal_count} equal; {timing}")
        for line in vm_layer_lines(row.to_dict() for row in result.vm_layers):
            click.echo(line)
    if not result.ok:
        names = [item.resource for item in result.report.differences][:10]
        only_recommends = result.status == "recommends"
        raise ParityDifferent(
            f"{image} and the VM differ: {len(result.report.differences)} resource(s), "
            f"{len(result.tests_differ)} test(s)"
            + (" (only packages apt installed as Recommends on one side)"
               if only_recommends else ""),
            details="\n".join(names + [f"test {t}" for t in result.tests_differ]),
            hint=("install_recommends: false on the roles' apt tasks makes them equal; "
                  "--accept-recommends accepts them" if only_recommends else ""))


@main.command()
@click.option("--older-than", default="1h", show_default=True,
              help="Only leftovers at least this old (30m, 2h, 1d).")
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only leftovers carrying this label too (e.g. rolebake.build-id=ID); "
                   "on a shared engine, keeps `clean` to your own builds.")
@click.option("--vm-layers", is_flag=True, help="Also remove the VM layer snapshots of "
              "`parity` that no run booted from for --older-than (broken ones always go).")
@click.pass_context
@handled
def clean(ctx: click.Context, older_than: str, dry_run: bool, labels: tuple[str, ...],
          vm_layers: bool) -> None:
    """Remove leftovers with rolebake's labels: build/verify containers, failed images."""
    from rolebake.cli.clean import clean_leftovers

    clean_leftovers(ctx, older_than, dry_run, labels, vm_layers)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to a file instead of stdout.")
@click.option("--cache-repo", metavar="REGISTRY/PATH",
              help="The cache repo the targets use unless ROLEBAKE_CACHE_REPO says otherwise.")
@click.option("--push", is_flag=True,
              help="Targets push each verified image unless ROLEBAKE_PUSH= is set empty.")
@click.pass_context
@handled
def makefile(ctx: click.Context, output: Path | None, cache_repo: str | None,
             push: bool) -> None:
    """Write Make targets per image with their dependencies, for `make -j` or a CI matrix."""
    from rolebake.load import plan_build
    from rolebake.makefile import render_makefile

    repository = cache_repo_of(cache_repo)
    project = project_of(ctx)
    text = render_makefile(plan_build(project, (), progress_of(ctx)),
                           cache_repo=str(repository or ""), push=push)
    if output:
        output.write_text(text, encoding="utf-8")
        err(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@main.command("spec-keys")
@click.argument("provisioner", required=False)
@click.option("--markdown", is_flag=True, help="Print the docs page (docs/spec-keys.md).")
@click.pass_context
@handled
def spec_keys(ctx: click.Context, provisioner: str | None, markdown: bool) -> None:
    """List the keys an image spec may hold: the core's, and each provisioner's.

    With PROVISIONER (ansible, chef-solo), the core's and that provisioner's only.
    """
    del ctx
    from rolebake import provision
    from rolebake.spec_schema import markdown as as_markdown
    from rolebake.spec_schema import text as as_text

    schemas = provision.schemas(provisioner)
    click.echo(as_markdown(schemas) if markdown else as_text(schemas), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
