"""Benchmark a fleet's second runner: `web` on an empty engine with a warm cache repo, against
the fresh build that warmed it, in one run.

Run by `make bench` (after bench/run.py). A throwaway copy of the project gets labels of its
own (rolebake-bench.run=<run id>), so its cache keys are new: the first build, on the shared
engine, builds `base` and `web` from scratch, verifies them and pushes them (and the base image
they start on) to a cache repo of its own on the loopback registry (`make registry`). Then a
second dockerd of the script's own, empty (own data root and socket, no bridge), builds `web`
with the same cache repo: every layer and the base image are pulled, nothing is built. Then
the same again on the second engine (all local hits). Prints a markdown table and writes
bench/results/fleet.json; every image it made on the shared engine is removed at the end, and
the second engine with all it holds.

Usage: .venv/bin/python bench/fleet.py [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.engines import (  # noqa: E402 (needs the repo on the path)
    REGISTRY,
    empty_dockerd,
    registry_answers,
)
from bench.projectcopy import copy_project  # noqa: E402 (needs the repo on the path)

ROLEBAKE = [sys.executable, "-m", "rolebake"]
BASE_IMAGE = "rolebake/debian:bookworm"
NS = "rolebake-bench"
RUN_LABEL = "rolebake-bench.run"
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)Z \[(\S+)\] (\S+) (\.\.\.|ok|cached|FAILED)")


def note(text: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def make_project(work: Path, run_id: str) -> Path:
    project = work / "project"
    copy_project(REPO, project)  # what git holds: the playbooks and inventory the specs name
    (project / "rolebake.yml").write_text(f"project: {NS}\n", encoding="utf-8")
    for name in ("base", "web"):
        spec = yaml.safe_load((REPO / "images" / f"{name}.yml").read_text(encoding="utf-8"))
        spec.pop("variants", None)
        spec["tags"] = [f"{NS}/{name}:{run_id}"]
        spec.setdefault("config", {}).setdefault("labels", {})[RUN_LABEL] = run_id
        (project / "images" / f"{name}.yml").write_text(yaml.safe_dump(spec, sort_keys=False),
                                                        encoding="utf-8")
    return project


def build(project: Path, cache_repo: str, log: Path,
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """`rolebake build web --cache-repo …`, timed; its report and per-step seconds."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([*ROLEBAKE, "--project", str(project), "build", "web", "--cache-repo",
                           cache_repo, "--json"], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"# rc={proc.returncode} wall={seconds:.2f}s\n{proc.stderr}\n{proc.stdout}\n")
    if proc.returncode != 0:
        raise SystemExit(f"fleet: the build failed ({proc.returncode}); see {log}\n"
                         + proc.stderr[-2000:])
    report = json.loads(proc.stdout)
    return {"wall_s": round(seconds, 2), "load1_before": round(load, 2),
            "layers": {x["layer"]: {k: x[k] for k in ("cached", "source", "image_id",
                                                      "seconds", "steps")}
                       for x in report["layers"]},
            "step_s": step_seconds(proc.stderr)}


def step_seconds(progress: str) -> dict[str, dict[str, int]]:
    """Seconds per layer and step, from the progress lines' timestamps (whole seconds)."""
    started: dict[tuple[str, str], int] = {}
    spent: dict[str, dict[str, int]] = {}
    for line in progress.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        hh, mm, ss, layer, step, mark = match.groups()
        at = int(hh) * 3600 + int(mm) * 60 + int(ss)
        if mark == "...":
            started[(layer, step)] = at
        elif (layer, step) in started:
            spent.setdefault(layer, {})[step] = at - started.pop((layer, step))
    return spent


def cleanup(run_id: str) -> None:
    """Every image the run left on the shared engine: by its label, or its tags."""
    out = subprocess.run(["docker", "images", "-q", "--no-trunc", "--filter",
                          f"label={RUN_LABEL}={run_id}"], capture_output=True, text=True,
                         check=False).stdout.split()
    for image_id in dict.fromkeys(out):
        subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True, check=False)


def table(results: dict[str, Any]) -> list[str]:
    fresh, warm, again = results["fresh"], results["warm"], results["again"]
    push = sum(fresh["step_s"].get(layer, {}).get("push", 0) for layer in ("base", "web"))
    return [
        "| `rolebake build web --cache-repo …` | wall (s) | layers | engine |",
        "|---|---|---|---|",
        f"| fresh build, cache repo empty (verified, then pushed) | {fresh['wall_s']:.1f} "
        f"(push {push} s) | built: base, web | shared engine, base image present |",
        f"| empty engine, cache repo warm | {warm['wall_s']:.1f} | pulled: "
        f"{', '.join(warm['from_repo'])}; containers created: {warm['containers']} "
        f"| second dockerd, empty |",
        f"| the same again on that engine | {again['wall_s']:.2f} | local hits | "
        f"second dockerd |",
        "",
        f"warm / fresh = {warm['wall_s'] / fresh['wall_s']:.2f}; the warm build pulled "
        f"{warm['pulled_mb']:.0f} MB of image layers (base image included); image ids equal on "
        f"both engines: {'yes' if results['same_ids'] else 'NO'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the work dir")
    args = parser.parse_args(argv)
    if not registry_answers():
        raise SystemExit(f"fleet: no registry at {REGISTRY}; run `make registry`")
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True,
                      check=False).returncode != 0:
        raise SystemExit(f"fleet: {BASE_IMAGE} is missing; run `make base`")
    run_id = dt.datetime.now().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="rolebake-fleet-"))
    log = work / "builds.log"
    cache_repo = f"{REGISTRY}/{NS}/{run_id}/cache"
    project = make_project(work, run_id)
    results: dict[str, Any] = {"run": run_id, "cache_repo": cache_repo,
                               "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        note(f"fresh build of base + web on the shared engine, pushing to {cache_repo}")
        results["fresh"] = build(project, cache_repo, log)
        with empty_dockerd() as second:
            note(f"empty engine at {second.host}: build web from the warm cache repo")
            since = int(time.time()) - 1
            warm = build(project, cache_repo, log, env=second.env)
            until = int(time.time()) + 1
            warm["from_repo"] = [name for name, x in warm["layers"].items()
                                 if x["source"] == "cache repo"]
            warm["containers"] = len(list(second.client.events(
                since=since, until=until, decode=True,
                filters={"type": "container", "event": "create"})))
            sizes = {i.id: i.attrs.get("Size", 0) for i in second.client.images.list()}
            # web's size counts every layer below it: what the empty engine pulled.
            warm["pulled_mb"] = round(max(sizes.values(), default=0) / 1e6, 1)
            results["warm"] = warm
            note("the same build again on that engine")
            results["again"] = build(project, cache_repo, log, env=second.env)
        results["same_ids"] = all(
            results["fresh"]["layers"][n]["image_id"] == warm["layers"][n]["image_id"]
            for n in ("base", "web"))
        results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        lines = table(results)
        print("\n".join(lines))
        out = HERE / "results" / "fleet.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        note(f"wrote {out.relative_to(REPO)}")
    finally:
        cleanup(run_id)
        if args.keep:
            note(f"kept {work} (build output in {log})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
