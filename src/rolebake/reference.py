"""Image references and tags: their grammar, the engine's normal form, rolebake's namespace.

Kept strict (the grammar of distribution/reference, matched in full) so that a
bad tag is refused when the spec is read, not by the engine after a long build.
"""

from __future__ import annotations

import re

# One path component of a repository: project, spec and variant names are held to it,
# since they become `<project>/<name>` and `rolebake-cache/<project>/<name>.<variant>`.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_COMPONENT = COMPONENT
_HOST = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?/)"
)
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
REFERENCE_RE = re.compile(
    rf"{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@sha256:[a-f0-9]{{64}})?"
)
# rolebake's own cache tags live here (`rolebake-cache/<project>/<layer>:<key>`); a
# spec tag in it could be taken for a verified cache entry, or be moved by one.
CACHE_NAMESPACE = "rolebake-cache/"


def cache_repository(project: str, layer_stem: str) -> str:
    """The repository of a layer's internal cache tags: `rolebake-cache/<project>/<layer>`.

    The project is a path component of its own, not a prefix joined with `.`:
    layer names hold dots (`web.dev`), so `a.b` + `c` and `a` + `b.c` would meet.
    """
    return f"{CACHE_NAMESPACE}{project}/{layer_stem}"


def is_image_reference(value: str) -> bool:
    """Tell whether `value` is a valid image reference (name[:tag][@digest])."""
    return len(value) <= 255 and bool(REFERENCE_RE.fullmatch(value))


def is_tag(value: str) -> bool:
    """Tell whether `value` can name an image: a reference without a digest."""
    return "@" not in value and is_image_reference(value)


def normal_tag(tag: str) -> str:
    """The tag as the engine stores it: `name` means `name:latest`."""
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last else f"{tag}:latest"


def in_cache_namespace(tag: str) -> bool:
    """Tell whether a tag falls in rolebake's cache repositories, on any registry host."""
    first, _, rest = tag.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        tag = rest  # the engine's rule: a first component like that is a registry host
    return tag.startswith(CACHE_NAMESPACE)
