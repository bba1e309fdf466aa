"""`rolebake makefile`: Make targets per image, so `make -j` or a CI matrix fans builds out.

rolebake grows no scheduler of its own (DESIGN.md, "Scale"): each target
builds one image; its prerequisites are the targets of its parent layers.
A cache repo shared by every runner makes the parents' targets pulls, not builds.
"""

from __future__ import annotations

from rolebake.plan import BuildPlan


def target_name(layer_id: str) -> str:
    """Make target for a layer: `image-web`, `image-web.dev`."""
    return "image-" + layer_id.replace(":", ".")


def render_makefile(plan: BuildPlan, *, cache_repo: str = "", push: bool = False) -> str:
    """Render the plan as a Makefile fragment (include it, or run it with make -f).

    Args:
        plan: every image's layers.
        cache_repo: the default of `ROLEBAKE_CACHE_REPO` in the file (REGISTRY/PATH).
        push: whether targets push by default (`ROLEBAKE_PUSH`).
    """
    lines = [
        "# Written by `rolebake makefile`; regenerate it when images/ changes.",
        "# Each target builds one image; rolebake's cache makes parents no-ops.",
        "# DOCKER_HOST points the builds at a remote engine.",
        "# ROLEBAKE_CACHE_REPO=REGISTRY/PATH shares verified layers between runners;",
        "# ROLEBAKE_PUSH=1 pushes each image's tags once it passed verification.",
        "ROLEBAKE ?= rolebake",
        "ROLEBAKE_FLAGS ?=",
        f"ROLEBAKE_CACHE_REPO ?= {cache_repo}".rstrip(),
        f"ROLEBAKE_PUSH ?= {'1' if push else ''}".rstrip(),
        "ROLEBAKE_BUILD = $(ROLEBAKE) build $(ROLEBAKE_FLAGS)"
        " $(if $(ROLEBAKE_CACHE_REPO),--cache-repo $(ROLEBAKE_CACHE_REPO))"
        " $(if $(ROLEBAKE_PUSH),--push)",
        "",
        ".PHONY: images " + " ".join(target_name(layer.id) for layer in plan.layers),
        "images: " + " ".join(target_name(layer.id) for layer in plan.layers),
        "",
    ]
    for layer in plan.layers:
        deps = target_name(layer.parent) if layer.parent_is_layer else ""
        lines.append(f"{target_name(layer.id)}: {deps}".rstrip())
        lines.append(f"\t$(ROLEBAKE_BUILD) {layer.id}")
        lines.append("")
    return "\n".join(lines)
