"""The benchmark still runs to the end: `bench/run.py --smoke` (one repetition of
rolebake's fresh build, its no-op and one-template rebuilds, and the plain
Dockerfile) exits 0.

The bench builds in a copy of the project made from what git holds; a section
that errors (a spec naming a file the copy lacks, a changed flag, a report key
gone) fails here instead of rotting until the next benchmark round. The smoke's
numbers are not measurements: the full `make bench` run is.
"""

from __future__ import annotations

import json
import subprocess
import sys

import docker

from tests.conftest import REPO


def test_bench_smoke_runs_to_the_end(engine: docker.DockerClient) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((REPO / "bench" / "results" / "smoke.json").read_text())
    assert result["errors"] == {}
    assert set(result["results"]) == {"rolebake", "plain"}
    rolebake = result["results"]["rolebake"]
    assert rolebake["change_reran"] == ["web"] and rolebake["change_landed"]
    assert rolebake["noop_all_cached"]
    # Everything the run made carries its label, and it removed all of it.
    label = f"rolebake-bench.run={result['run_id']}"
    assert engine.images.list(all=True, filters={"label": label}) == []
    assert engine.containers.list(all=True, filters={"label": label}) == []
