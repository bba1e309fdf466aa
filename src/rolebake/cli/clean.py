"""`rolebake clean`: leftovers of rolebake's runs, found, listed and removed.

The engine's containers and failed images (by label and age), scratch folders of
dead processes, fact caches of gone parent images and VM layer snapshots. The
command's options are in `cli/__init__.py`; its work and its lines are here.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import click

from rolebake.cli.running import engine_for
from rolebake.errors import InputError

_AGE = re.compile(r"^(\d+)([smhd])$")


def clean_leftovers(ctx: click.Context, older_than: str, dry_run: bool,
                    labels: tuple[str, ...], vm_layers: bool) -> None:
    """Find, list and (unless `dry_run`) remove every kind of leftover.

    Raises:
        InputError: `--older-than` or a `--label` that cannot be read.
    """
    from rolebake.cleanup import find_leftovers, remove_leftovers, sweep_scratch
    from rolebake.cleanup import vm_layers as clean_vm_layers
    from rolebake.image import images_in_flight, recover_journals
    from rolebake.provision import ansible_facts
    from rolebake.rootfs import cache_dir, vm_disk_identities
    from rolebake.spec import Project

    match = _AGE.match(older_than)
    if not match:
        raise InputError(f"--older-than {older_than!r}: expected a number and s, m, h or d")
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    wanted: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key or not value:
            raise InputError(f"--label {label!r}: expected KEY=VALUE")
        wanted[key] = value
    project = Project(Path(ctx.find_root().params.get("project") or ".").resolve())
    engine = engine_for(ctx)
    leftovers = find_leftovers(engine, dt.timedelta(seconds=seconds), wanted,
                               in_flight=images_in_flight(project))
    for item in leftovers:
        click.echo(f"{'would remove' if dry_run else 'removing'} {item.kind} {item.name}"
                   f" ({item.age})")
    recovered: list[str] = []
    if not dry_run:
        remove_leftovers(engine, leftovers)
        # The journals of runs killed outright in this project, finished once their
        # containers are gone: tags put back, their untagged images removed (image.py).
        recovered = recover_journals(engine, project)
        for line in recovered:
            click.echo(f"note: {line}")
    # Scratch folders of runs that died.
    scratch = sweep_scratch(project, dry_run=dry_run)
    for folder in scratch:
        click.echo(f"{'would remove' if dry_run else 'removing'} scratch folder "
                   f"{project.relative(folder)} (its process is gone)")
    # Fact caches of parent images the engine no longer has (provision/ansible_facts.py).
    facts = ansible_facts.stale(project, lambda image_id: engine.image(image_id) is not None)
    for folder in facts:
        click.echo(f"{'would remove' if dry_run else 'removing'} fact cache "
                   f"{project.relative(folder)} (its image is gone)")
    if not dry_run:
        ansible_facts.remove(facts)
    snapshots = clean_vm_layers(project, bases=vm_disk_identities(cache_dir() / "vm"),
                                unused_for=dt.timedelta(seconds=seconds) if vm_layers else None,
                                dry_run=dry_run)
    for name, why in snapshots:
        click.echo(f"{'would remove' if dry_run else 'removing'} VM layer {name} ({why})")
    click.echo(f"{len(leftovers) + len(scratch) + len(facts) + len(snapshots)} leftover(s)"
               f"{' found' if dry_run else ' removed'}")

