"""`rolebake makefile`: Make targets per image, so `make -j` or a CI matrix fans builds out.

rolebake grows no scheduler of its own (DESIGN.md, "Scale"): each target
builds one image; its prerequisites are the targets of its parent layers.
"""

from __future__ import annotations

from rolebake.plan import BuildPlan


def target_name(layer_id: str) -> str:
    """Make target for a layer: `image-web`, `image-web.dev`."""
    return "image-" + layer_id.replace(":", ".")


def render_makefile(plan: BuildPlan) -> str:
    """Render the plan as a Makefile fragment (include it, or run it with make -f)."""
    lines = [
        "# Written by `rolebake makefile`; regenerate it when images/ changes.",
        "# Each target builds one image; rolebake's cache makes parents no-ops.",
        "# DOCKER_HOST points the builds at a remote engine.",
        "ROLEBAKE ?= rolebake",
        "ROLEBAKE_FLAGS ?=",
        "",
        ".PHONY: images " + " ".join(target_name(layer.id) for layer in plan.layers),
        "images: " + " ".join(target_name(layer.id) for layer in plan.layers),
        "",
    ]
    for layer in plan.layers:
        deps = target_name(layer.parent) if layer.parent_is_layer else ""
        lines.append(f"{target_name(layer.id)}: {deps}".rstrip())
        lines.append(f"\t$(ROLEBAKE) build $(ROLEBAKE_FLAGS) {layer.id}")
        lines.append("")
    return "\n".join(lines)
