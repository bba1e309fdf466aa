"""Benchmark rolebake against a Dockerfile running Ansible, and against ansible-bender.

Run by `make bench`. Everything happens in a throwaway copy of the project (a
temp dir) with image tags of its own (rolebake-bench/...), so the repo's roles
and tags are never touched; every image and container this script creates
carries the label rolebake-bench.run=<run id> (or is recorded by id) and is
removed at the end. Prints a markdown table and writes bench/results/latest.json.

Usage: .venv/bin/python bench/run.py [--only rolebake,fixed,parity,jobs,dockerfile,plain,bender]
                                     [--keep]
rolebake runs as `<this python> -m rolebake`, so PYTHONPATH picks the tree under test.
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
sys.path.insert(0, str(HERE))
from bender import BENDER_VENV, BenderMixin  # noqa: E402 - beside this file
from parity import ParityMixin  # noqa: E402 - beside this file
from projectcopy import copy_project  # noqa: E402 - beside this file
from tables import FIXED_REPS, NOOP_REPS, table, targets, uptime, versions  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ROLEBAKE = [sys.executable, "-m", "rolebake"]
BASE_IMAGE = "rolebake/debian:bookworm"
NS = "rolebake-bench"
RUN_LABEL = "rolebake-bench.run"
JOBS_ORDER = (1, 2, 2, 1)
SECTIONS = ("rolebake", "fixed", "parity", "jobs", "dockerfile", "plain", "bender")
SMOKE_SECTIONS = ("rolebake", "plain")
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
echo "mnt=$(ls -A /mnt 2>/dev/null | tr '\n' ' ')"
"""


class Bench(BenderMixin, ParityMixin):
    """One benchmark run: its work dir, its log, what it created."""

    def __init__(self, keep: bool, smoke: bool = False) -> None:
        self.run_id = dt.datetime.now().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.work = Path(tempfile.mkdtemp(prefix="rolebake-bench-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.keep = keep
        # The smoke run (make test): one repetition, no profile; it proves each section
        # still runs to the end, its numbers are not a measurement.
        self.smoke = smoke
        self.noop_reps = 1 if smoke else NOOP_REPS
        self.results: dict[str, Any] = {}
        self.commands: list[str] = []
        self.podman_before: set[str] = set()
        self.buildah_before: set[str] = set()
        self.docker_refs: set[str] = set()
        # An apt cache of this run's own: the fresh build downloads what `docker build
        # --no-cache` downloads; later builds of the run find it there.
        self.apt_env = {"ROLEBAKE_APT_CACHE": f"{NS}-{self.run_id}"}

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
        project = self.work / "project"
        copy_project(REPO, project)
        # A project of its own: its cache tags, locks and miss explanations stay apart
        # from the repository's builds on the same engine.
        (project / "rolebake.yml").write_text(f"project: {NS}\n", encoding="utf-8")
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

    # rolebake -------------------------------------------------------------------------

    def rolebake(self, *args: str, name: str) -> tuple[float, dict[str, Any]]:
        seconds, out, err = self.run(name, [*ROLEBAKE, "--project", str(self.work / "project"),
                                            "build", *args, "--json"], env=self.apt_env)
        report = json.loads(out)
        return seconds, {layer["layer"]: {"cached": layer["cached"],
                                          "seconds": layer["seconds"],
                                          "step_seconds": layer.get("step_seconds") or {},
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
        for i in range(self.noop_reps):
            seconds, layers = self.rolebake("web", name=f"rolebake-noop{i}")
            noops.append(seconds)
            res["noop_layers"] = layers
        res["noop_runs_s"] = noops
        res["noop_s"] = statistics.median(noops)
        res["cli_start_s"] = self.run("rolebake-version", [*ROLEBAKE, "--version"])[0]
        if not self.smoke:
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

    def bench_fixed(self) -> None:
        """A layer whose role does nothing, with a one-test suite, on the cached base.

        What every layer pays however little its roles do: create (with the lent
        runtime), bootstrap, provision (ansible-playbook and facts), clean, commit
        and verify. A new label each run makes it a cache miss.
        """
        project = self.work / "project"
        tasks = project / "roles" / "nothing" / "tasks"
        tasks.mkdir(parents=True)
        (tasks / "main.yml").write_text("---\n[]\n", encoding="utf-8")
        suite = project / "tests" / "images" / "nothing"
        suite.mkdir(parents=True)
        (suite / "test_nothing.py").write_text("def test_nothing(host):\n    pass\n",
                                               encoding="utf-8")
        res: dict[str, Any] = {"runs": [], "load_before": self.load()}
        for index in range(FIXED_REPS):
            spec = {"from": "base", "roles": ["nothing"], "tags": [f"{NS}/nothing:{self.run_id}"],
                    "config": {"labels": {RUN_LABEL: self.run_id,
                                          "rolebake-bench.fixed": str(index)}}}
            (project / "images" / "nothing.yml").write_text(yaml.safe_dump(spec),
                                                            encoding="utf-8")
            self.note(f"rolebake: a layer that does nothing ({index + 1} of {FIXED_REPS})")
            _, layers = self.rolebake("nothing", name=f"rolebake-fixed{index}")
            res["runs"].append(layers["nothing"])
        res["runs_s"] = [r["seconds"] for r in res["runs"]]
        res["median_s"] = statistics.median(res["runs_s"])
        steps = res["runs"][0]["step_seconds"].keys()
        res["median_steps"] = {k: statistics.median(r["step_seconds"].get(k, 0.0)
                                                    for r in res["runs"]) for k in steps}
        self.results["fixed"] = res

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
        noops = [self.docker_build(f"dockerfile-noop{i}", ctx, ref)[0]
                 for i in range(self.noop_reps)]
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
        _, out, _ = self.run("cleanup", ["docker", "volume", "ls", "-q", "--filter",
                                         f"name={self.apt_env['ROLEBAKE_APT_CACHE']}"],
                             check=False)
        if out.split():
            self.run("cleanup", ["docker", "volume", "rm", *out.split()], check=False)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--keep", action="store_true", help="keep images and the work dir")
    parser.add_argument("--smoke", action="store_true",
                        help=f"sections {','.join(SMOKE_SECTIONS)} once each; exit 1 when one "
                             "errors or rolebake's image carries tooling (run by make test)")
    args = parser.parse_args(argv)
    sections = [s for s in (",".join(SMOKE_SECTIONS) if args.smoke else args.only).split(",")
                if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    for needs_base in ("jobs", "fixed", "parity"):
        if needs_base in sections and "rolebake" not in sections:
            parser.error(f"{needs_base} needs the rolebake section (it reuses its cached layers)")
    # SIGINT may arrive ignored (a background job); SIGTERM too must reach the cleanup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    bench = Bench(keep=args.keep, smoke=args.smoke)
    started = time.perf_counter()
    bench.note(f"run {bench.run_id}, work dir {bench.work}")
    errors: dict[str, str] = {}
    try:
        bench.setup(sections)
        steps = {"rolebake": bench.bench_rolebake, "fixed": bench.bench_fixed,
                 "parity": bench.bench_parity, "jobs": bench.bench_jobs,
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
        log_copy = HERE / "results" / ("smoke-logs" if args.smoke else "logs")
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
        "versions": versions(ROLEBAKE, VENV_BIN, BENDER_VENV),
        "smoke": args.smoke,
        "repetitions": {"no-op rebuild (rolebake, dockerfile)": bench.noop_reps,
                        "do-nothing layer": FIXED_REPS,
                        "--jobs 1 and --jobs 2": 2, "everything else": 1},
        "uptime": uptime(),
        "total_s": round(total, 1),
        "results": results,
        "targets": checks,
        "errors": errors,
        "commands": bench.commands,
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / ("smoke.json" if args.smoke else "latest.json")).write_text(
        json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print("\n".join(table(results)))
    print()
    for check in checks:
        print(f"- {'MET ' if check['met'] else 'MISSED'} {check['target']}: {check['detail']}")
    for name, error in errors.items():
        print(f"- ERROR in {name}: {error.splitlines()[0]}")
    written = out_dir / ("smoke.json" if args.smoke else "latest.json")
    print(f"\ntotal bench time {total / 60:.1f} min; results in {written}; "
          f"at the end: {payload['uptime']}")
    if args.smoke:
        tooling = [c for c in checks if c["target"].startswith("image contents")
                   and c["met"] is False]
        for check in tooling:
            print(f"- SMOKE FAILED: {check['detail']}")
        return 1 if errors or tooling else 0
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
