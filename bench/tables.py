"""The bench report: the markdown tables, the targets and the versions of the tools."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

NOOP_REPS = 3
FIXED_REPS = 3
PARITY_TARGET_S = 180.0


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _load(res: dict[str, Any] | None, key: str = "load_before_fresh") -> str:
    load = (res or {}).get(key) or {}
    return f"{load['load1']:.1f}" if "load1" in load else "-"


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
    if contents.get("mnt"):
        parts.append(f"/mnt: {contents['mnt']}")
    return ", ".join(parts)


def table(results: dict[str, Any]) -> list[str]:
    """The comparison table, then rolebake's own measurements."""
    plain = results.get("plain", {}).get("size_bytes")
    rows = [
        "| tool | load (1 min) before | fresh build (s) | no-op rebuild (s) | "
        "after template change (s) | what reran after the change | change in image | "
        "image size (MB) | vs plain | tooling left in the image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def vs(size: int | None) -> str:
        return "-" if not (size and plain) else f"{(size / plain - 1) * 100:+.1f}%"

    rb = results.get("rolebake")
    if rb:
        rows.append(
            f"| rolebake (`build web`, verified) | {_load(rb)} | {_s(rb['fresh_s'])} (verify "
            f"{_s(rb['fresh_verify_s'])}) | {_s(rb['noop_s'])} | "
            f"{_s(rb['change_s'])} (verify {_s(rb['change_verify_s'])}) | "
            f"layers: {', '.join(rb['change_reran']) or 'none'} | "
            f"{'yes' if rb['change_landed'] else 'NO'} | {_mb(rb['size_bytes'])} | "
            f"{vs(rb['size_bytes'])} | {_tooling(rb['contents'])} |")
    df = results.get("dockerfile")
    if df:
        rows.append(
            f"| Dockerfile + ansible-playbook (legacy builder) | {_load(df)} | "
            f"{_s(df['fresh_s'])} | {_s(df['noop_s'])} | {_s(df['change_s'])} | "
            f"{len(df['change_reran'])} RUN step(s): {'; '.join(df['change_reran'])} | "
            f"{'yes' if df['change_landed'] else 'NO'} | {_mb(df['size_bytes'])} | "
            f"{vs(df['size_bytes'])} | {_tooling(df['contents'])} |")
    ab = results.get("bender")
    if ab:
        rows.append(
            f"| ansible-bender 0.10.1 (buildah) | {_load(ab)} | {_s(ab['fresh_s'])} "
            f"(python bootstrap {_s(ab['bootstrap_s'])} + build {_s(ab['build_s'])}) | "
            f"{_s(ab['noop_s'])} ({ab['noop_tasks']['tasks_from_cache']} tasks from cache) | "
            f"{_s(ab['change_s'])} | {ab['change_tasks']['tasks_from_cache']} tasks from cache,"
            f" {ab['change_tasks']['tasks_run']} run | "
            f"{'yes' if ab['change_landed'] else 'NO'} | {_mb(ab['size_bytes'])} | "
            f"{vs(ab['size_bytes'])} | {_tooling(ab['contents'])} |")
    pl = results.get("plain")
    if pl:
        rows.append(f"| plain Dockerfile, apt only (size reference) | {_load(pl)} | "
                    f"{_s(pl['fresh_s'])} | - | - | - | - | {_mb(pl['size_bytes'])} | ±0% | "
                    f"{_tooling(pl['contents'])} |")
    rows += _rolebake_rows(results)
    return rows


def _attest_rows(rb: dict[str, Any] | None) -> list[str]:
    """Per built layer: the SBOM and provenance (attest step) and the normalisation (commit).

    From `build --json`'s step timings of the rolebake section's builds; normalising
    (normalise.py) runs inside the commit step and is timed on its own as `normalise`.
    """
    built = [(f"{build}: {name}", layer) for build, key in (("fresh", "fresh_layers"),
                                                            ("after the change", "change_layers"))
             for name, layer in ((rb or {}).get(key) or {}).items() if not layer["cached"]]
    if not built:
        return []
    rows = ["", "| rolebake, per built layer | layer (s) | attest: SBOM + provenance (s) | "
                "normalise (s) | commit incl. normalise (s) | attest + normalise share |",
            "|---|---|---|---|---|---|"]
    for label, layer in built:
        steps = layer.get("step_seconds") or {}
        extra = (steps.get("attest") or 0) + (steps.get("normalise") or 0)
        share = f"{extra / layer['seconds'] * 100:.0f}%" if layer.get("seconds") else "-"
        rows.append(f"| {label} | {_s(layer.get('seconds'))} | {_s(steps.get('attest'))} | "
                    f"{_s(steps.get('normalise'))} | {_s(steps.get('commit'))} | {share} |")
    return rows


def _rolebake_rows(results: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    fixed, parity, jobs = (results.get(k) for k in ("fixed", "parity", "jobs"))
    if fixed or parity:
        rows += ["", "| rolebake | load (1 min) before | wall (s) | where the time went |",
                 "|---|---|---|---|"]
    if fixed:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in fixed["median_steps"].items()
                          if k not in ("cache", "tag", "idempotence", "scan"))
        rows.append(f"| layer whose role does nothing, one-test suite (median of "
                    f"{FIXED_REPS}: {', '.join(_s(x) for x in fixed['runs_s'])}) | "
                    f"{_load(fixed, 'load_before')} | {_s(fixed['median_s'])} | {steps} |")
    if parity:
        for name, what in (("cold", "no VM layer kept (cold)"),
                           ("warm", "base's VM layer kept")):
            run = parity.get(name) or parity  # an older result: one cold run at the top
            steps = ", ".join(f"{k} {v['start']:.0f}-{v['end']:.0f}"
                              for k, v in (run.get("steps") or {}).items())
            layers = "; ".join(f"{r['layer']} {r['source']}" for r in run.get("vm_layers") or ())
            rows.append(f"| `parity web --vm qemu` after a template change in web, {what} "
                        f"({run.get('accel') or '?'}; {'OK' if run.get('ok') else 'NOT OK'}) | "
                        f"{_load(run, 'load_before')} | {_s(run['wall_s'])} | {steps}; "
                        f"VM layers: {layers or '?'}; {run.get('apt') or ''} |")
            if name not in parity:
                break
        if parity.get("ratio") is not None:
            rows.append(f"| parity web, base's VM layer kept vs cold | | "
                        f"{parity['ratio']:.2f}x | |")
    rows += _attest_rows(results.get("rolebake"))
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
    """Issue 19's targets (and issue 4's that still apply), met or not, with the numbers."""
    rb, df, pl = (results.get(k) for k in ("rolebake", "dockerfile", "plain"))
    fixed, parity, jobs = results.get("fixed"), results.get("parity"), results.get("jobs")
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"target": name, "met": ok, "detail": detail})

    if rb and pl:
        add("fresh verified build of base + web ≤ 2.0 x the plain apt Dockerfile",
            rb["fresh_s"] <= 2.0 * pl["fresh_s"],
            f"{rb['fresh_s']:.1f} s vs {pl['fresh_s']:.1f} s = "
            f"{rb['fresh_s'] / pl['fresh_s']:.2f}x")
    if rb and df:
        add("fresh verified build ≤ 0.6 x the Dockerfile running ansible-playbook",
            rb["fresh_s"] <= 0.6 * df["fresh_s"],
            f"{rb['fresh_s']:.1f} s vs {df['fresh_s']:.1f} s = "
            f"{rb['fresh_s'] / df['fresh_s']:.2f}x")
        add("rebuild after one template change ≤ 1.0 x the Dockerfile+Ansible rebuild",
            rb["change_s"] <= df["change_s"],
            f"{rb['change_s']:.1f} s vs {df['change_s']:.1f} s = "
            f"{rb['change_s'] / df['change_s']:.2f}x")
    if fixed:
        add("fixed cost of a layer whose roles do nothing ≤ 2 s", fixed["median_s"] <= 2.0,
            f"median {fixed['median_s']:.2f} s of {FIXED_REPS} "
            f"({', '.join(f'{x:.2f}' for x in fixed['runs_s'])})")
    if jobs:
        add("--jobs 2 on web + app ≥ 1.6 x --jobs 1", jobs["speedup"] >= 1.6,
            f"{jobs['jobs1_s']:.1f} s vs {jobs['jobs2_s']:.1f} s = {jobs['speedup']:.2f}x")
    if parity:
        add(f"first (cold) `rolebake parity web` ≤ {PARITY_TARGET_S:.0f} s wall",
            bool(parity.get("ok")) and parity["wall_s"] <= PARITY_TARGET_S,
            f"{parity['wall_s']:.0f} s on {parity.get('accel') or '?'}; parity "
            f"{'OK' if parity.get('ok') else 'NOT OK'}")
        if parity.get("ratio") is not None:
            warm = parity["warm"]
            add("parity web after a template change with base's VM layer kept ≤ 0.5 x cold",
                bool(warm.get("ok")) and parity["ratio"] <= 0.5,
                f"{warm['wall_s']:.0f} s vs {parity['wall_s']:.0f} s = {parity['ratio']:.2f}x")
    if rb:
        contents = rb.get("contents") or {}
        clean = not (contents.get("python3") or contents.get("ansible")
                     or (contents.get("apt_lists_kb") or "0") != "0"
                     or (contents.get("apt_debs_kb") or "0") != "0" or contents.get("mnt"))
        if pl:
            within = rb["size_bytes"] <= pl["size_bytes"] * 1.02
            add("image contents unchanged: no python3, Ansible, apt lists or archives, no "
                "mount-point residue; size within 2% of the plain Dockerfile",
                clean and within,
                f"{_tooling(contents)}; {_mb(rb['size_bytes'])} MB vs "
                f"{_mb(pl['size_bytes'])} MB = "
                f"{(rb['size_bytes'] / pl['size_bytes'] - 1) * 100:+.1f}%")
        add("no-op rebuild ≤ 0.5 s wall incl. CLI start",
            rb["noop_s"] <= 0.5 and rb["noop_all_cached"],
            f"all layers cache hits: {rb['noop_all_cached']}; "
            f"median of {len(rb['noop_runs_s'])}: {rb['noop_s']:.2f} s (runs: "
            f"{', '.join(f'{x:.2f}' for x in rb['noop_runs_s'])}; `rolebake --version` "
            f"alone {rb['cli_start_s']:.2f} s)")
        add("after a one-file change only the layers above it rerun (issue 4)",
            rb["change_reran"] == ["web"] and rb["change_landed"],
            f"reran: {rb['change_reran']}; new template in image: {rb['change_landed']}")
    return checks


def uptime() -> str:
    """`uptime`: the machine's load when the run ended."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "n/a"


def versions(rolebake: list[str], venv_bin: Path, bender_venv: Path) -> dict[str, str]:
    """Versions of every tool the run used."""
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "n/a"

    return {
        "rolebake": out([*rolebake, "--version"]),
        "ansible-core (rolebake)": out([str(venv_bin / "ansible-playbook"), "--version"]),
        "ansible-core (bender venv)": out([str(bender_venv / "bin" / "ansible-playbook"),
                                           "--version"]),
        "docker engine": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "docker cli": out(["docker", "version", "--format", "{{.Client.Version}}"]),
        "buildah": out(["buildah", "--version"]),
        "podman": out(["podman", "--version"]),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
    }
