"""Benchmark rolebake against a Dockerfile running Ansible, and against ansible-bender.

Run by `make bench`. Everything happens in a throwaway copy of the project (a
temp dir) with image tags of its own (rolebake-bench/...), so the repo's roles
and tags are never touched; every image and container this script creates
carries the label rolebake-bench.run=<run id> (or is recorded by id) and is
removed at the end. Prints a markdown table and writes bench/results/latest.json.

Usage: .venv/bin/python bench/run.py [--only rolebake,jobs,dockerfile,plain,bender] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = REPO / ".venv" / "bin"
ROLEBAKE = str(VENV_BIN / "rolebake")
BENDER_VENV = HERE / ".venv-bender"
BENDER_PINS = ["ansible-bender==0.10.1",
               # ansible-bender 0.10.1 fails every cached task under ansible-core 2.19
               # ("Encountered untrusted template or expression"), so it gets 2.18.
               "ansible-core>=2.18,<2.19", "ansible>=11,<12"]
BASE_IMAGE = "rolebake/debian:bookworm"
NS = "rolebake-bench"
RUN_LABEL = "rolebake-bench.run"
NOOP_REPS = 3
JOBS_ORDER = (1, 2, 2, 1)
SECTIONS = ("rolebake", "jobs", "dockerfile", "plain", "bender")
# The same version of Ansible that rolebake drives from its own venv.
ANSIBLE_CORE_FOR_DOCKERFILE = "2.19.14"
WEB_VARS = {"web_port": 8080}

PROBE = r"""
p=$(command -v python3 || true); echo "python3=$p"
echo "python_pkgs=$(dpkg-query -W -f '${db:Status-Abbrev}${Package}\n' python3 python3-minimal \
     python3-apt 2>/dev/null | sed -n 's/^ii *//p' | tr '\n' ' ')"
a=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -type d -name ansible \
     \( -path '*site-packages*' -o -path '*dist-packages*' \) -print 2>/dev/null \
     | head -n 3 | tr '\n' ' ')
echo "ansible=$a$(command -v ansible-playbook || true)"
echo "pip_cache_kb=$(du -sk /root/.cache/pip 2>/dev/null | cut -f1)"
kb() { xargs -r du -ck 2>/dev/null | tail -n1 | cut -f1; }
echo "apt_lists_kb=$(find /var/lib/apt/lists -type f ! -name lock 2>/dev/null | kb)"
echo "apt_pkgcache_kb=$(find /var/cache/apt -name '*.bin' 2>/dev/null | kb)"
echo "apt_debs_kb=$(find /var/cache/apt/archives -name '*.deb' 2>/dev/null | kb)"
echo "dot_ansible=$(ls -d /root/.ansible /home/*/.ansible 2>/dev/null | tr '\n' ' ')"
echo "policy_rc_d=$(ls /usr/sbin/policy-rc.d 2>/dev/null)"
"""


class Bench:
    """One benchmark run: its work dir, its log, what it created."""

    def __init__(self, keep: bool) -> None:
        self.run_id = dt.datetime.now().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.work = Path(tempfile.mkdtemp(prefix="rolebake-bench-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.keep = keep
        self.results: dict[str, Any] = {}
        self.commands: list[str] = []
        self.podman_before: set[str] = set()
        self.buildah_before: set[str] = set()
        self.docker_refs: set[str] = set()

    # Running things -------------------------------------------------------------------

    def run(self, name: str, cmd: Sequence[str] | str, *, cwd: Path | None = None,
            env: dict[str, str] | None = None, check: bool = True,
            stdin: bytes | None = None) -> tuple[float, str, str]:
        """Run a command, log it, return (wall seconds, stdout, stderr)."""
        shell = isinstance(cmd, str)
        shown = cmd if shell else " ".join(cmd)
        self.commands.append(shown)
        log = self.logs / f"{name}.log"
        started = time.perf_counter()
        with subprocess.Popen(cmd, shell=shell, cwd=cwd, env={**os.environ, **(env or {})},
                              stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            try:
                out_b, err_b = proc.communicate(stdin)
            except KeyboardInterrupt:
                # Let the tool clean up after itself (rolebake removes its containers).
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        seconds = time.perf_counter() - started
        out = out_b.decode(errors="replace")
        err = err_b.decode(errors="replace")
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ {shown}\n# rc={proc.returncode} wall={seconds:.2f}s\n"
                         f"--- stdout\n{out}\n--- stderr\n{err}\n")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{name}: `{shown}` exited {proc.returncode}; see {log}\n"
                               + "\n".join((out + err).splitlines()[-15:]))
        return seconds, out, err

    def note(self, text: str) -> None:
        """Progress on stderr, so the table on stdout stays clean."""
        print(f"[{dt.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)

    # Shared helpers -------------------------------------------------------------------

    def docker_size(self, ref: str) -> int:
        _, out, _ = self.run("inspect", ["docker", "image", "inspect", "--format", "{{.Size}}",
                                         ref])
        return int(out.strip())

    def probe(self, ref: str, tool: str = "docker") -> dict[str, str]:
        _, out, _ = self.run(f"probe-{tool}", [tool, "run", "--rm", "-u", "0", "--entrypoint",
                                               "/bin/sh", ref, "-c", PROBE])
        found = {}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key:
                found[key.strip()] = value.strip()
        return found

    def file_in_image(self, ref: str, path: str, tool: str = "docker") -> str:
        _, out, _ = self.run(f"cat-{tool}", [tool, "run", "--rm", "-u", "0", "--entrypoint",
                                             "cat", ref, path], check=False)
        return out

    def change_template(self, roles: Path, marker: str) -> Path:
        """The one-file change: a line appended to the web role's index template."""
        template = roles / "web" / "templates" / "index.html.j2"
        with template.open("a", encoding="utf-8") as handle:
            handle.write(f"<!-- {marker} -->\n")
        return template

    @staticmethod
    def load() -> dict[str, float]:
        one, five, _ = os.getloadavg()
        return {"load1": round(one, 2), "load5": round(five, 2)}

    # Setup ----------------------------------------------------------------------------

    def setup(self, sections: Sequence[str]) -> None:
        if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True,
                          check=False).returncode != 0:
            raise SystemExit(f"bench: {BASE_IMAGE} is missing; run `make base` first")
        roles = REPO / "roles"
        project = self.work / "project"
        (project / "images").mkdir(parents=True)
        shutil.copytree(roles, project / "roles")
        shutil.copytree(REPO / "tests" / "images", project / "tests" / "images")
        for name in ("base", "web", "app"):
            self.write_spec(project, name, {})
        # Users keep their roles in git; rolebake reads the revision for its labels.
        git = ["git", "-C", str(project), "-c", "user.name=bench",
               "-c", "user.email=bench@localhost"]
        self.run("setup", [*git, "init", "-q"])
        self.run("setup", [*git, "add", "-A"])
        self.run("setup", [*git, "commit", "-q", "-m", "bench copy"])
        if "bender" in sections:
            self.setup_bender()

    def write_spec(self, project: Path, name: str, extra_labels: dict[str, str]) -> None:
        spec = yaml.safe_load((REPO / "images" / f"{name}.yml").read_text(encoding="utf-8"))
        spec.pop("variants", None)
        spec["tags"] = [f"{NS}/{name}:{self.run_id}"]
        config = spec.setdefault("config", {})
        config.setdefault("labels", {})[RUN_LABEL] = self.run_id
        config["labels"].update(extra_labels)
        (project / "images" / f"{name}.yml").write_text(yaml.safe_dump(spec, sort_keys=False),
                                                        encoding="utf-8")

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

    # rolebake -------------------------------------------------------------------------

    def rolebake(self, *args: str, name: str) -> tuple[float, dict[str, Any]]:
        seconds, out, err = self.run(name, [ROLEBAKE, "--project", str(self.work / "project"),
                                            "build", *args, "--json"])
        report = json.loads(out)
        return seconds, {layer["layer"]: {"cached": layer["cached"],
                                          "seconds": layer["seconds"],
                                          "verify_s": _step_seconds(err, layer["layer"], "verify"),
                                          "reasons": layer["reasons"],
                                          "steps": layer["steps"]}
                         for layer in report["layers"]}

    def bench_rolebake(self) -> None:
        # With verification (the default): rolebake caches only verified layers, so a
        # --no-verify build is never reused and its "no-op" would be a full rebuild.
        res: dict[str, Any] = {"command": f"rolebake build web (project copy, tags {NS}/*)",
                               "verify": True}
        self.note("rolebake: fresh build of base + web")
        res["load_before_fresh"] = self.load()
        res["fresh_s"], res["fresh_layers"] = self.rolebake("web", name="rolebake-fresh")
        res["fresh_verify_s"] = sum(v["verify_s"] or 0 for v in res["fresh_layers"].values())
        self.note("rolebake: no-op rebuilds")
        noops = []
        for i in range(NOOP_REPS):
            seconds, layers = self.rolebake("web", name=f"rolebake-noop{i}")
            noops.append(seconds)
            res["noop_layers"] = layers
        res["noop_runs_s"] = noops
        res["noop_s"] = statistics.median(noops)
        res["cli_start_s"] = self.run("rolebake-version", [ROLEBAKE, "--version"])[0]
        res["noop_profile"] = self.profile_noop()
        self.note("rolebake: rebuild after the template change")
        marker = f"bench change {self.run_id}"
        self.change_template(self.work / "project" / "roles", marker)
        res["change_s"], res["change_layers"] = self.rolebake("web", name="rolebake-change")
        res["change_reran"] = [k for k, v in res["change_layers"].items() if not v["cached"]]
        res["change_verify_s"] = sum(v["verify_s"] or 0 for v in res["change_layers"].values())
        res["noop_all_cached"] = all(v["cached"] for v in res["noop_layers"].values())
        ref = f"{NS}/web:{self.run_id}"
        res["change_landed"] = marker in self.file_in_image(ref, "/var/www/site/index.html")
        res["size_bytes"] = self.docker_size(ref)
        res["contents"] = self.probe(ref)
        self.results["rolebake"] = res

    def profile_noop(self) -> dict[str, Any]:
        prof = self.work / "noop.prof"
        seconds, _, _ = self.run("rolebake-profile", [
            str(VENV_BIN / "python"), "-m", "cProfile", "-o", str(prof), "-m", "rolebake",
            "--project", str(self.work / "project"), "build", "web", "--json"])
        stats = pstats.Stats(str(prof))
        rows = []
        for (path, line, func), (_cc, calls, _tt, cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append({"function": f"{Path(path).name}:{line}({func})", "path": path,
                         "calls": calls, "cumulative_s": round(cum, 3)})
        rows.sort(key=lambda r: -r["cumulative_s"])
        wanted = [r for r in rows if "rolebake" in r["path"] or any(
            k in r["function"] for k in ("subprocess.py", "_send_request", "getresponse",
                                         "_find_and_load", "communicate", "poll"))]
        return {"wall_s": round(seconds, 3), "top": wanted[:25]}

    def bench_jobs(self) -> None:
        """web and app, both on a cached base, --jobs 1 vs --jobs 2 (new keys each time).

        Order 1, 2, 2, 1, so drift in the machine's load (the engine is shared) does not
        favour either setting; the mean of each pair is compared.
        """
        project = self.work / "project"
        res: dict[str, Any] = {"order": list(JOBS_ORDER), "runs": []}
        for index, jobs in enumerate(JOBS_ORDER):
            for name in ("web", "app"):
                self.write_spec(project, name, {"rolebake-bench.jobs": f"{index}-{jobs}"})
            self.note(f"rolebake: web + app with --jobs {jobs} (run {index + 1} of "
                      f"{len(JOBS_ORDER)})")
            load = self.load()
            seconds, layers = self.rolebake("web", "app", "--jobs", str(jobs),
                                            name=f"rolebake-jobs{index}-j{jobs}")
            res["runs"].append({"jobs": jobs, "seconds": seconds, "load_before": load,
                                "layers": layers})
        for jobs in (1, 2):
            res[f"jobs{jobs}_s"] = statistics.mean(r["seconds"] for r in res["runs"]
                                                   if r["jobs"] == jobs)
        res["speedup"] = res["jobs1_s"] / res["jobs2_s"]
        self.results["jobs"] = res

    # Dockerfile with Ansible in a RUN step ---------------------------------------------

    def dockerfile_context(self) -> Path:
        ctx = self.work / "dockerfile"
        shutil.copytree(REPO / "roles", ctx / "roles")
        # This network intercepts TLS: pip in a build container reaches PyPI only when it
        # trusts the host's CA bundle (the same one the host's pip uses).
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", ctx / "host-ca.crt")
        for role in ("common", "web"):
            play = [{"name": f"{role} role", "hosts": "localhost", "connection": "local",
                     "gather_facts": True, "roles": [role]}]
            (ctx / f"{role}.yml").write_text(yaml.safe_dump(play, sort_keys=False),
                                             encoding="utf-8")
        web_vars = json.dumps(WEB_VARS)
        (ctx / "Dockerfile").write_text(f"""\
FROM {BASE_IMAGE}
LABEL {RUN_LABEL}={self.run_id}
# Ansible itself, in a venv (Debian's python is externally managed).
COPY host-ca.crt /etc/ssl/host-ca.crt
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive \\
    apt-get install -y --no-install-recommends python3 python3-venv \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/ansible \\
 && PIP_CERT=/etc/ssl/host-ca.crt /opt/ansible/bin/pip install --no-cache-dir \\
        ansible-core=={ANSIBLE_CORE_FOR_DOCKERFILE}
ENV LANG=C.UTF-8
# One RUN per layer, as rolebake's base and web layers: a web change reruns only web.
COPY common.yml /etc/ansible/common.yml
COPY roles/common /etc/ansible/roles/common
RUN ANSIBLE_ROLES_PATH=/etc/ansible/roles /opt/ansible/bin/ansible-playbook \\
        -i localhost, /etc/ansible/common.yml
COPY web.yml /etc/ansible/web.yml
COPY roles/web /etc/ansible/roles/web
RUN ANSIBLE_ROLES_PATH=/etc/ansible/roles /opt/ansible/bin/ansible-playbook \\
        -i localhost, /etc/ansible/web.yml -e '{web_vars}'
LABEL org.opencontainers.image.title=web
EXPOSE 8080
CMD ["nginx", "-g", "daemon off;"]
""", encoding="utf-8")
        return ctx

    def docker_build(self, name: str, ctx: Path, ref: str, *extra: str) -> tuple[float, str]:
        # The Docker CLI here (28.x) has no buildx plugin, so BuildKit cannot run:
        # the engine's legacy builder is used, explicitly.
        seconds, out, _ = self.run(name, ["docker", "build", *extra, "-t", ref, str(ctx)],
                                   env={"DOCKER_BUILDKIT": "0"})
        self.docker_refs.add(ref)
        return seconds, out

    def bench_dockerfile(self) -> None:
        ctx = self.dockerfile_context()
        ref = f"{NS}/dockerfile-web:{self.run_id}"
        res: dict[str, Any] = {"command": "DOCKER_BUILDKIT=0 docker build (legacy builder)",
                               "ansible_core": ANSIBLE_CORE_FOR_DOCKERFILE}
        self.note("dockerfile: fresh build (--no-cache)")
        res["load_before_fresh"] = self.load()
        res["fresh_s"], _ = self.docker_build("dockerfile-fresh", ctx, ref, "--no-cache")
        self.note("dockerfile: no-op rebuilds")
        noops = [self.docker_build(f"dockerfile-noop{i}", ctx, ref)[0] for i in range(NOOP_REPS)]
        res["noop_runs_s"] = noops
        res["noop_s"] = statistics.median(noops)
        self.note("dockerfile: rebuild after the template change")
        marker = f"bench change {self.run_id}"
        self.change_template(ctx / "roles", marker)
        res["change_s"], out = self.docker_build("dockerfile-change", ctx, ref)
        res["change_reran"] = _docker_steps_run(out)
        res["change_landed"] = marker in self.file_in_image(ref, "/var/www/site/index.html")
        res["size_bytes"] = self.docker_size(ref)
        res["contents"] = self.probe(ref)
        self.results["dockerfile"] = res

    def bench_plain(self) -> None:
        """The same Debian packages with apt in one RUN: the size reference.

        With `apt-get clean` and no lists, as Debian's own images leave them (their
        docker-clean hook); the debootstrap base has no such hook, so it is spelled out.
        """
        packages: list[str] = []
        for role in ("common", "web"):
            defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml")
                                      .read_text(encoding="utf-8"))
            packages += defaults[f"{role}_packages"]
        ctx = self.work / "plain"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"""\
FROM {BASE_IMAGE}
LABEL {RUN_LABEL}={self.run_id}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive \\
    apt-get install -y --no-install-recommends {' '.join(packages)} \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["nginx", "-g", "daemon off;"]
""", encoding="utf-8")
        ref = f"{NS}/plain-web:{self.run_id}"
        self.note("plain Dockerfile: fresh build")
        res: dict[str, Any] = {"packages": packages, "load_before_fresh": self.load()}
        res["fresh_s"], _ = self.docker_build("plain-fresh", ctx, ref, "--no-cache")
        res["size_bytes"] = self.docker_size(ref)
        res["contents"] = self.probe(ref)
        self.results["plain"] = res

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

    # Cleanup --------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.keep:
            self.note(f"--keep: leaving images and {self.work}")
            return
        self.note("removing what this run created")
        _, out, _ = self.run("cleanup", ["docker", "ps", "-aq", "--filter",
                                         f"label={RUN_LABEL}={self.run_id}"], check=False)
        if out.split():
            self.run("cleanup", ["docker", "rm", "-f", *out.split()], check=False)
        for ref in sorted(self.docker_refs):
            self.run("cleanup", ["docker", "rmi", ref], check=False)
        for _ in range(5):  # children first: retry until nothing with our label is left
            _, out, _ = self.run("cleanup", ["docker", "images", "-aq", "--filter",
                                             f"label={RUN_LABEL}={self.run_id}"], check=False)
            ids = sorted(set(out.split()))
            if not ids:
                break
            self.run("cleanup", ["docker", "rmi", "-f", *ids], check=False)
        if self.podman_before or "bender" in self.results:
            _, out, _ = self.run("cleanup", ["buildah", "containers", "-q", "--notruncate"],
                                 check=False)
            leftover = [c for c in out.split() if c not in self.buildah_before]
            if leftover:
                self.run("cleanup", ["buildah", "rm", *leftover], check=False)
            _, out, _ = self.run("cleanup", ["podman", "images", "-a", "-q", "--no-trunc"],
                                 check=False)
            ours = [i for i in out.split() if i not in self.podman_before]
            for _ in range(5):
                if not ours:
                    break
                self.run("cleanup", ["podman", "rmi", "-f", *ours], check=False)
                _, out, _ = self.run("cleanup", ["podman", "images", "-a", "-q", "--no-trunc"],
                                     check=False)
                ours = [i for i in out.split() if i not in self.podman_before]
        shutil.rmtree(self.work, ignore_errors=True)


def _step_seconds(progress: str, layer: str, step: str) -> float | None:
    """Seconds between `[layer] step ...` and its outcome in rolebake's progress lines."""
    stamps: list[dt.datetime] = []
    for line in progress.splitlines():
        match = re.match(rf"^(\S+Z) \[{re.escape(layer)}\] {step}\b", line)
        if match:
            stamps.append(dt.datetime.strptime(match.group(1), "%H:%M:%SZ"))
    if len(stamps) < 2:
        return None
    return (stamps[-1] - stamps[0]).total_seconds()


def _docker_steps_run(output: str) -> list[str]:
    """The RUN steps the legacy builder executed (not taken from its cache)."""
    ran: list[str] = []
    step = ""
    for line in output.splitlines():
        if line.startswith("Step "):
            step = line.split(" : ", 1)[-1]
        elif line.strip().startswith("---> Running in") and step.startswith("RUN"):
            play = re.search(r"/etc/ansible/(\w+)\.yml", step)
            ran.append(f"{play.group(1)} play" if play else step[:40])
    return ran


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _tooling(contents: dict[str, str] | None) -> str:
    if not contents:
        return "-"
    parts = []
    parts.append("python3" if contents.get("python3") else "no python3")
    parts.append("Ansible" if contents.get("ansible") else "no Ansible")
    pip = contents.get("pip_cache_kb") or ""
    parts.append(f"pip cache {pip} KiB" if pip and pip != "0" else "no pip cache")
    lists = contents.get("apt_lists_kb") or ""
    parts.append(f"apt lists {int(lists) // 1024} MiB" if lists and lists != "0"
                 else "no apt lists")
    cache = sum(int(contents.get(k) or 0) for k in ("apt_debs_kb", "apt_pkgcache_kb"))
    if cache:
        parts.append(f"apt cache {cache // 1024} MiB")
    if contents.get("dot_ansible"):
        parts.append("~/.ansible")
    return ", ".join(parts)


def table(results: dict[str, Any]) -> list[str]:
    plain = results.get("plain", {}).get("size_bytes")
    rows = [
        "| tool | fresh build (s) | no-op rebuild (s) | after template change (s) | "
        "what reran after the change | change in image | image size (MB) | vs plain | "
        "tooling left in the image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def vs(size: int | None) -> str:
        return "-" if not (size and plain) else f"{(size / plain - 1) * 100:+.1f}%"

    rb = results.get("rolebake")
    if rb:
        rows.append(
            f"| rolebake (`build web`, verified) | {_s(rb['fresh_s'])} (verify "
            f"{_s(rb['fresh_verify_s'])}) | {_s(rb['noop_s'])} | "
            f"{_s(rb['change_s'])} (verify {_s(rb['change_verify_s'])}) | "
            f"layers: {', '.join(rb['change_reran']) or 'none'} | "
            f"{'yes' if rb['change_landed'] else 'NO'} | {_mb(rb['size_bytes'])} | "
            f"{vs(rb['size_bytes'])} | {_tooling(rb['contents'])} |")
    df = results.get("dockerfile")
    if df:
        rows.append(
            f"| Dockerfile + ansible-playbook (legacy builder) | {_s(df['fresh_s'])} | "
            f"{_s(df['noop_s'])} | {_s(df['change_s'])} | "
            f"{len(df['change_reran'])} RUN step(s): {'; '.join(df['change_reran'])} | "
            f"{'yes' if df['change_landed'] else 'NO'} | {_mb(df['size_bytes'])} | "
            f"{vs(df['size_bytes'])} | {_tooling(df['contents'])} |")
    ab = results.get("bender")
    if ab:
        rows.append(
            f"| ansible-bender 0.10.1 (buildah) | {_s(ab['fresh_s'])} "
            f"(python bootstrap {_s(ab['bootstrap_s'])} + build {_s(ab['build_s'])}) | "
            f"{_s(ab['noop_s'])} ({ab['noop_tasks']['tasks_from_cache']} tasks from cache) | "
            f"{_s(ab['change_s'])} | {ab['change_tasks']['tasks_from_cache']} tasks from cache,"
            f" {ab['change_tasks']['tasks_run']} run | "
            f"{'yes' if ab['change_landed'] else 'NO'} | {_mb(ab['size_bytes'])} | "
            f"{vs(ab['size_bytes'])} | {_tooling(ab['contents'])} |")
    pl = results.get("plain")
    if pl:
        rows.append(f"| plain Dockerfile, apt only (size reference) | {_s(pl['fresh_s'])} | - | "
                    f"- | - | - | {_mb(pl['size_bytes'])} | ±0% | "
                    f"{_tooling(pl['contents'])} |")
    jobs = results.get("jobs")
    if jobs:
        runs = {j: ", ".join(_s(r["seconds"]) for r in jobs["runs"] if r["jobs"] == j)
                for j in (1, 2)}
        rows += ["", "| rolebake web + app on a cached base (verified) | mean wall (s) | runs |",
                 "|---|---|---|",
                 f"| `--jobs 1` | {_s(jobs['jobs1_s'])} | {runs[1]} |",
                 f"| `--jobs 2` | {_s(jobs['jobs2_s'])} | {runs[2]} |",
                 f"| speed-up | {jobs['speedup']:.2f}x | order {jobs['order']} |"]
    return rows


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rb, df, ab, pl = (results.get(k) for k in ("rolebake", "dockerfile", "bender", "plain"))
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"target": name, "met": ok, "detail": detail})

    if rb:
        add("no-op rebuild < 1 s wall incl. CLI start",
            rb["noop_s"] < 1.0 and rb["noop_all_cached"],
            f"all layers cache hits: {rb['noop_all_cached']}; "
            f"median of {NOOP_REPS}: {rb['noop_s']:.2f} s (runs: "
            f"{', '.join(f'{x:.2f}' for x in rb['noop_runs_s'])}; `rolebake --version` "
            f"alone {rb['cli_start_s']:.2f} s)")
        add("after a one-file change only the layers above it rerun",
            rb["change_reran"] == ["web"] and rb["change_landed"],
            f"reran: {rb['change_reran']}; new template in image: {rb['change_landed']}")
        if ab:
            add("fresh build ≤ 0.5 x ansible-bender", rb["fresh_s"] <= 0.5 * ab["fresh_s"],
                f"{rb['fresh_s']:.1f} s vs {ab['fresh_s']:.1f} s = "
                f"{rb['fresh_s'] / ab['fresh_s']:.2f}x")
        if df:
            add("fresh build ≤ 0.6 x Dockerfile", rb["fresh_s"] <= 0.6 * df["fresh_s"],
                f"{rb['fresh_s']:.1f} s vs {df['fresh_s']:.1f} s = "
                f"{rb['fresh_s'] / df['fresh_s']:.2f}x")
        if pl:
            add("image size ≤ plain Dockerfile + 2%", rb["size_bytes"] <= pl["size_bytes"] * 1.02,
                f"{_mb(rb['size_bytes'])} MB vs {_mb(pl['size_bytes'])} MB = "
                f"{(rb['size_bytes'] / pl['size_bytes'] - 1) * 100:+.1f}%")
    jobs = results.get("jobs")
    if jobs:
        add("--jobs 2 faster than --jobs 1 (web + app)", jobs["jobs2_s"] < jobs["jobs1_s"],
            f"{jobs['jobs1_s']:.1f} s → {jobs['jobs2_s']:.1f} s ({jobs['speedup']:.2f}x)")
    return checks


def versions() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "n/a"

    return {
        "rolebake": out([ROLEBAKE, "--version"]),
        "ansible-core (rolebake)": out([str(VENV_BIN / "ansible-playbook"), "--version"]),
        "ansible-core (bender venv)": out([str(BENDER_VENV / "bin" / "ansible-playbook"),
                                           "--version"]),
        "docker engine": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "docker cli": out(["docker", "version", "--format", "{{.Client.Version}}"]),
        "buildah": out(["buildah", "--version"]),
        "podman": out(["podman", "--version"]),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--keep", action="store_true", help="keep images and the work dir")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if "jobs" in sections and "rolebake" not in sections:
        parser.error("jobs needs the rolebake section (it reuses its cached base layer)")
    # SIGINT may arrive ignored (a background job); SIGTERM too must reach the cleanup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    bench = Bench(keep=args.keep)
    started = time.perf_counter()
    bench.note(f"run {bench.run_id}, work dir {bench.work}")
    errors: dict[str, str] = {}
    try:
        bench.setup(sections)
        steps = {"rolebake": bench.bench_rolebake, "jobs": bench.bench_jobs,
                 "dockerfile": bench.bench_dockerfile, "plain": bench.bench_plain,
                 "bender": bench.bench_bender}
        for name in SECTIONS:
            if name in sections:
                try:
                    steps[name]()
                except RuntimeError as exc:
                    errors[name] = str(exc)
                    bench.note(f"{name} FAILED: {exc}")
    finally:
        log_copy = HERE / "results" / "logs"
        shutil.rmtree(log_copy, ignore_errors=True)
        shutil.copytree(bench.logs, log_copy)
        bench.cleanup()
    total = time.perf_counter() - started
    results = bench.results
    checks = targets(results)
    payload = {
        "run_id": bench.run_id,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                        * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "versions": versions(),
        "repetitions": {"no-op rebuild (rolebake, dockerfile)": NOOP_REPS,
                        "--jobs 1 and --jobs 2": 2, "everything else": 1},
        "total_s": round(total, 1),
        "results": results,
        "targets": checks,
        "errors": errors,
        "commands": bench.commands,
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(payload, indent=2, default=str) + "\n",
                                         encoding="utf-8")
    print("\n".join(table(results)))
    print()
    for check in checks:
        print(f"- {'MET ' if check['met'] else 'MISSED'} {check['target']}: {check['detail']}")
    for name, error in errors.items():
        print(f"- ERROR in {name}: {error.splitlines()[0]}")
    print(f"\ntotal bench time {total / 60:.1f} min; results in {out_dir / 'latest.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
