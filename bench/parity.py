"""The parity part of the benchmark (a mixin of bench/run.py's Bench): VM layers cold vs kept.

Two `rolebake parity web --vm qemu` runs side by side, each after one template change in
`web` (so the container rebuilds the web layer in both): the first with no VM layer
snapshot (cold: the VM applies base and web), the second with the snapshots the first kept
(the VM boots from base's and applies only web). Issue 21's targets: warm ≤ 0.5x cold, and
cold ≤ 180 s on TCG.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROLEBAKE = [sys.executable, "-m", "rolebake"]


class ParityMixin:
    """Time parity cold and from kept VM layers; needs Bench's run, note and load."""

    work: Path
    run_id: str
    results: dict[str, Any]
    apt_env: dict[str, str]

    def bench_parity(self) -> None:
        """`parity web` after a template change: no VM layer kept (cold), then base's kept."""
        project = self.work / "project"
        template = project / "roles" / "web" / "templates" / "index.html.j2"
        original = template.read_text(encoding="utf-8")
        # The bench's own project: its VM layers are its own, none before the cold run.
        shutil.rmtree(project / ".rolebake" / "vm-layers", ignore_errors=True)
        res: dict[str, Any] = {}
        try:
            for name in ("cold", "warm"):
                template.write_text(original + f"<!-- bench {self.run_id} {name} -->\n",
                                    encoding="utf-8")
                self.note(f"rolebake: parity web --vm qemu after a template change ({name}: "
                          + ("no VM layer kept)" if name == "cold" else "base's VM layer kept)"))
                res[name] = self._parity_once(project, name)
        finally:
            template.write_text(original, encoding="utf-8")
        cold, warm = res["cold"], res["warm"]
        # The table's row and the targets read these at the top level (the cold run).
        res.update({k: cold[k] for k in ("wall_s", "ok", "steps", "accel", "notices", "apt",
                                         "load_before")})
        res["ratio"] = warm["wall_s"] / cold["wall_s"] if cold["wall_s"] else None
        self.results["parity"] = res

    def _parity_once(self, project: Path, name: str) -> dict[str, Any]:
        res: dict[str, Any] = {"load_before": self.load()}
        seconds, out, err = self.run(f"rolebake-parity-{name}", [
            *ROLEBAKE, "--project", str(project), "parity", "web", "--vm", "qemu",
            "--json"], check=False, env=self.apt_env)
        res["wall_s"] = seconds
        report = json.loads(out) if out.strip().startswith("{") else {}
        if not report:
            raise RuntimeError(f"parity ({name}): no report; "
                               + "\n".join(err.splitlines()[-10:]))
        res["ok"] = report.get("ok")
        res["steps"] = report.get("steps")
        res["vm_layers"] = report.get("vm_layers")
        res["accel"] = "kvm" if " up (kvm)" in err else "tcg" if " up (tcg)" in err else None
        res["notices"] = [ln.split("] ", 1)[-1] for ln in err.splitlines() if "notice:" in ln]
        res["apt"] = next((ln.split("apt: ", 1)[1] for ln in err.splitlines()
                           if "[vm] apt: " in ln), None)
        return res
