"""The ansible-bender part of the benchmark (a mixin of bench/run.py's Bench)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENDER_VENV = HERE / ".venv-bender"
BENDER_PINS = ["ansible-bender==0.10.1",
               # ansible-bender 0.10.1 fails every cached task under ansible-core 2.19
               # ("Encountered untrusted template or expression"), so it gets 2.18.
               "ansible-core>=2.18,<2.19", "ansible>=11,<12"]
NS = "rolebake-bench"
RUN_LABEL = "rolebake-bench.run"
BASE_IMAGE = "rolebake/debian:bookworm"
WEB_VARS = {"web_port": 8080}


class BenderMixin:
    """Set up ansible-bender and time it; needs Bench's run, note, probe and friends."""

    work: Path
    run_id: str
    results: dict[str, Any]
    podman_before: set[str]
    buildah_before: set[str]
    docker_refs: set[str]

    def setup_bender(self) -> None:
        bender = BENDER_VENV / "bin" / "ansible-bender"
        if not bender.exists():
            self.note(f"installing ansible-bender into {BENDER_VENV} (not timed)")
            self.run("setup-bender", [sys.executable, "-m", "venv", str(BENDER_VENV)])
            self.run("setup-bender", [str(BENDER_VENV / "bin" / "pip"), "install", "-q",
                                      *BENDER_PINS])
        for tool in ("buildah", "podman"):
            if shutil.which(tool) is None:
                raise SystemExit(f"bench: {tool} is missing; run scripts/ensure-host.sh podman")
        _, out, _ = self.run("setup-bender", ["podman", "images", "-a", "-q", "--no-trunc"])
        self.podman_before = set(out.split())
        _, out, _ = self.run("setup-bender", ["buildah", "containers", "-q", "--notruncate"])
        self.buildah_before = set(out.split())

    # ansible-bender -------------------------------------------------------------------

    def bench_bender(self) -> None:
        work = self.work / "bender"
        shutil.copytree(REPO / "roles", work / "roles")
        base = f"localhost/{NS}/debian:{self.run_id}"
        with_python = f"localhost/{NS}/bender-python-base:{self.run_id}"
        target = f"localhost/{NS}/bender-web:{self.run_id}"
        res: dict[str, Any] = {"command": "ansible-bender build site.yml (default caching and "
                                          "layering; its own empty database)"}
        # The base image lives in the Docker engine; buildah reads it from there (not timed,
        # as `docker build` finds it in place).
        self.note("bender: copying the base image from docker into buildah's storage")
        res["import_base_s"] = self.run("bender-import", [
            "buildah", "pull", "-q", f"docker-daemon:{BASE_IMAGE}"])[0]
        self.run("bender-import", ["buildah", "tag", f"docker.io/{BASE_IMAGE}", base])
        # ansible-bender needs python3 in the base image and cannot install it itself
        # (it probes for an interpreter before any task runs): make a base with it.
        self.note("bender: python bootstrap image (counted in its fresh time)")
        started = time.perf_counter()
        _, out, _ = self.run("bender-bootstrap", ["buildah", "from", "-q", base])
        container = out.strip()
        try:
            self.run("bender-bootstrap", [
                "buildah", "run", container, "--", "sh", "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                "--no-install-recommends python3 >/dev/null && rm -rf /var/lib/apt/lists/*"])
            self.run("bender-bootstrap", ["buildah", "commit", "-q", container, with_python])
        finally:
            self.run("bender-bootstrap", ["buildah", "rm", container], check=False)
        res["bootstrap_s"] = time.perf_counter() - started
        play = [{
            "name": "web image (common + web roles)",
            "hosts": "all",
            "vars": {**WEB_VARS, "ansible_bender": {
                "base_image": with_python,
                "target_image": {
                    "name": target,
                    "cmd": "nginx -g 'daemon off;'",
                    "ports": ["8080"],
                    "environment": {"LANG": "C.UTF-8"},
                    "labels": {"org.opencontainers.image.title": "web", RUN_LABEL: self.run_id},
                },
            }},
            "roles": ["common", "web"],
        }]
        (work / "site.yml").write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
        env = {"PATH": f"{BENDER_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               "ANSIBLE_ROLES_PATH": str(work / "roles")}
        cmd = [str(BENDER_VENV / "bin" / "ansible-bender"), "--database-dir", str(work / "db"),
               "build", "site.yml"]

        def build(name: str) -> tuple[float, dict[str, int]]:
            seconds, out, err = self.run(name, cmd, cwd=work, env=env)
            text = out + err
            return seconds, {"tasks_from_cache": text.count("loaded from cache"),
                             "tasks_run": len(re.findall(r"^(?:changed|ok): ", text, re.M))}

        self.note("bender: fresh build")
        res["load_before_fresh"] = self.load()
        res["build_s"], res["fresh_tasks"] = build("bender-fresh")
        res["fresh_s"] = res["bootstrap_s"] + res["build_s"]
        self.note("bender: no-op rebuild (one run)")
        res["noop_s"], res["noop_tasks"] = build("bender-noop")
        self.note("bender: rebuild after the template change")
        marker = f"bench change {self.run_id}"
        self.change_template(work / "roles", marker)
        res["change_s"], res["change_tasks"] = build("bender-change")
        res["change_landed"] = marker in self.file_in_image(target, "/var/www/site/index.html",
                                                            tool="podman")
        _, out, _ = self.run("bender-size", ["podman", "image", "inspect", "--format",
                                             "{{.Size}}", target])
        res["podman_size_bytes"] = int(out.strip())
        # Measure its size the way the others are measured: in the Docker engine.
        docker_ref = f"{NS}/bender-web:{self.run_id}"
        self.run("bender-copy", ["podman", "push", "-q", target, f"docker-daemon:{docker_ref}"])
        self.docker_refs.add(docker_ref)
        res["size_bytes"] = self.docker_size(docker_ref)
        res["contents"] = self.probe(docker_ref)
        self.results["bender"] = res

