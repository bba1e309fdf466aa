"""The step runner: each layer goes through `events.PIPELINE`, independent layers `jobs` at a time.

A step is a method named after it (`_cache`, `_create`, … `_tag`); the runner
walks the pipeline as data, reports the status of every step it runs and decides
which steps apply (a cache hit runs only `cache`, `attest`, `tag` and `push`). Tags move only
in the tag step, and only for a layer whose every step passed; the push step after it
publishes only what was tagged (DESIGN.md invariants 1, 2, 5).

A layer is built under a host-wide lock of the engine and the layer's cache
repository: builds in two checkouts take turns, the later one hits the cache.
An interrupted run puts back every tag it moved (see `image.TagJournal`).

`Builder` is put together from one module per concern, each a class over the
state of one build: `scheduler` (the plan, `--jobs` at a time; stop and roll
back) over `runner` (one layer through the pipeline; failures said plainly)
over `steps` (each step's work); `records` holds the options and results.
"""

from __future__ import annotations

from rolebake.builder.records import BuildOptions, BuildReport, LayerResult
from rolebake.builder.scheduler import Builder
from rolebake.builder.steps import mount_residue

__all__ = ["BuildOptions", "BuildReport", "Builder", "LayerResult", "mount_residue"]
