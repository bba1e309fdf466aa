"""`rolebake build` with the chef-solo provisioner on a real engine.

- The end-to-end build of the example `web-chef` image needs a chef toolchain
  image (ROLEBAKE_CHEF_IMAGE, e.g. cincproject/cinc:18); without one it is
  skipped, saying so.
- Without any toolchain, `rolebake build web-chef` exits 2 with one line and
  makes nothing: that runs everywhere.
- A stand-in toolchain image (a shell script playing cinc-solo, built here
  from scratch) exercises rolebake's side of the contract on a real engine:
  the volume lent from the toolchain image, the read-only mounts, the tmpfs
  workspace, streaming, failure reports, and an image with nothing of it left.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import REPO, run_cli
from tests.integration.conftest import TestProject

pytestmark = pytest.mark.integration

CHEF_IMAGE = os.environ.get("ROLEBAKE_CHEF_IMAGE", "").strip()


def sh(client: docker.DockerClient, image: str, script: str) -> str:
    out = client.containers.run(image, ["/bin/sh", "-c", script], entrypoint=[], remove=True,
                                user="root")
    return out.decode()


def chef_containers(client: docker.DockerClient, marker: str) -> list[str]:
    """Build and toolchain containers of this test still on the engine."""
    found = client.containers.list(all=True, filters={"label": "rolebake.role=build"})
    return [c.name for c in found if marker in c.name]


# The real thing ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not CHEF_IMAGE, reason=(
    "ROLEBAKE_CHEF_IMAGE is not set, so there is no chef toolchain image to lend chef-solo "
    "to the build; set it to one with /opt/chef or /opt/cinc on this engine "
    "(e.g. `docker pull cincproject/cinc:18`) to build web-chef and run its suite"))
def test_web_chef_builds_and_passes_the_web_suite(project: TestProject) -> None:
    project.edit_spec("web-chef", idempotence=True)
    result = run_cli("build", "web-chef", "--json", cwd=project.root)
    assert result.rc == 0, result.output
    report = json.loads(result.stdout)
    layer = next(x for x in report["layers"] if x["layer"] == "web-chef")
    assert layer["steps"]["verify"] == "ok" and layer["steps"]["idempotence"] == "ok"
    assert layer["tasks"]["changed"] >= 5
    image = project.tag("web-chef")
    assert project.image_id(image) == layer["image_id"]
    leftovers = sh(project.client, image,
                   "ls -d /opt/chef/bin /opt/cinc/bin /var/chef /var/cache/chef /etc/chef "
                   "/etc/cinc /root/.chef /mnt/rolebake-chef 2>/dev/null; true")
    assert leftovers.strip() == ""
    assert project.build_containers() == []


# No toolchain at all -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    try:
        found = docker.from_env()
        found.ping()
    except Exception as exc:  # any failure means "no engine"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Docker engine and none answers: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return found


def test_build_without_toolchain_exits_2_in_one_line(client: docker.DockerClient) -> None:
    before = {c.id for c in client.containers.list(all=True)}
    env = {k: v for k, v in os.environ.items() if k != "ROLEBAKE_CHEF_IMAGE"}
    proc = subprocess.run([sys.executable, "-m", "rolebake", "build", "web-chef"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: images/web-chef.yml:")
    assert "no chef toolchain" in lines[0]
    assert "ROLEBAKE_CHEF_IMAGE" in lines[0] and "chef.image" in lines[0] \
        and "chef.path" in lines[0]
    assert "Traceback" not in proc.stderr
    new = [c for c in client.containers.list(all=True, filters={"label": "rolebake.role=build"})
           if c.id not in before and ("web-chef" in c.name or "rolebake-chef" in c.name)]
    assert new == []


# A stand-in toolchain ------------------------------------------------------------------------

STAND_IN = r"""#!/bin/sh
# Plays cinc-solo for rolebake's tests: checks what rolebake mounted, writes
# the node JSON to /etc/hello, and prints what Cinc's doc formatter prints.
set -u
if [ "${1:-}" = "--version" ]; then echo "Cinc Client: 18.0.0-stand-in"; exit 0; fi
config=""; json=""
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=$2; shift ;;
        --json-attributes) json=$2; shift ;;
    esac
    shift
done
ws=/mnt/rolebake-chef
die() { echo "FATAL: RuntimeError: $1"; exit 2; }
[ -r "$config" ] && [ -r "$json" ] || die "no solo.rb or node.json"
grep -qF "cookbook_path ['$ws/cookbooks']" "$config" || die "solo.rb has no cookbook_path"
[ -r "$ws/cookbooks/hello/recipes/default.rb" ] || die "the cookbook is not mounted"
if touch "$ws/cookbooks/hello/probe" 2>/dev/null; then die "the cookbooks are writable"; fi
# What real chef leaves when a cookbook sends it to its defaults.
mkdir -p "$ws/state/cache" /var/chef/cache && echo stand-in > /var/chef/cache/marker
echo "Cinc Client, version 18.0.0"
echo "Infra Phase starting"
echo 'Resolving cookbooks for run list: ["hello"]'
echo "Synchronizing cookbooks:"
echo "  - hello (0.1.0)"
echo "Compiling cookbooks..."
echo "Converging 2 resources"
echo "Recipe: hello::default"
if grep -q '"fail": true' "$json"; then
    printf '  * file[/etc/hello] action create\n\n'
    echo "    ================================================================================"
    echo "    Error executing action \`create\` on resource 'file[/etc/hello]'"
    echo "    ================================================================================"
    echo ""
    echo "    Errno::EACCES"
    echo "    --------------"
    echo "    Permission denied @ rb_sysopen - /etc/hello"
    echo ""
    echo "    Compiled Resource:"
    echo "    ------------------"
    echo "    # Declared in $ws/cookbooks/hello/recipes/default.rb:1:in \`from_file'"
    echo ""
    echo "Running handlers:"
    echo "Running handlers complete"
    echo "Infra Phase failed. 0 resources updated in 01 seconds"
    printf '%s %s %s\n' "[2024-05-02T09:14:31+00:00] FATAL: Errno::EACCES:" \
        "file[/etc/hello] (hello::default line 1) had an error:" \
        "Errno::EACCES: Permission denied @ rb_sysopen - /etc/hello"
    exit 1
fi
if cmp -s "$json" /etc/hello; then
    echo "  * file[/etc/hello] action create (up to date)"
else
    printf '  * file[/etc/hello] action create'
    sleep 2  # long enough for rolebake to see the resource start
    cp "$json" /etc/hello
    printf '\n    - create new file /etc/hello\n'
fi
echo "  * log[greeting] action write (skipped due to only_if)"
echo ""
echo "Running handlers:"
echo "Running handlers complete"
echo "Infra Phase complete, 1/2 resources updated in 02 seconds"
"""


@pytest.fixture(scope="module")
def stand_in_toolchain(engine: docker.DockerClient) -> Iterator[str]:
    """A toolchain image from scratch: /opt/cinc/bin/cinc-solo and `VOLUME /opt/cinc`."""
    tag = f"rbt-{uuid.uuid4().hex[:8]}/stand-in-cinc:1"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", b"FROM scratch\nCOPY cinc-solo /opt/cinc/bin/cinc-solo\n"
                           b"VOLUME /opt/cinc\n", 0o644),
            ("cinc-solo", STAND_IN.encode(), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    yield tag
    engine.images.remove(tag, force=True)
    # The toolchain's volume, filled once for every build that lends it, goes with it.
    for volume in engine.volumes.list(
            filters={"label": f"rolebake.toolchain.image={image.id}"}):
        volume.remove(force=True)


@pytest.fixture
def hello_project(tmp_path: Path, stand_in_toolchain: str,
                  engine: docker.DockerClient) -> Iterator[TestProject]:
    token = uuid.uuid4().hex[:8]
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "images" / "hello-chef.yml").write_text(textwrap.dedent(f"""\
        from: rolebake/debian:bookworm
        provisioner: chef-solo
        chef:
          image: {stand_in_toolchain}
          run_list: ["recipe[hello]"]
          attributes:
            hello: {{greeting: hi}}
        tags: ["rbt-{token}/hello-chef:latest"]
        """))
    cookbook = root / "cookbooks" / "hello"
    (cookbook / "recipes").mkdir(parents=True)
    (cookbook / "metadata.rb").write_text("name 'hello'\nversion '0.1.0'\n")
    (cookbook / "recipes" / "default.rb").write_text(
        "file '/etc/hello' do\n  content node['hello'].to_json\nend\n")
    project = TestProject(root=root, token=token, client=engine)
    yield project
    # The image and its internal cache tag go together.
    for image in engine.images.list(filters={"label": "rolebake.spec=hello-chef"}):
        if any(t.startswith(f"rbt-{token}/") for t in image.tags):
            engine.images.remove(image.id, force=True)


def test_stand_in_toolchain_build(hello_project: TestProject) -> None:
    project, client = hello_project, hello_project.client
    result = run_cli("build", "hello-chef", "--json", cwd=project.root)
    assert result.rc == 0, result.output
    layer = json.loads(result.stdout)["layers"][0]
    assert layer["tasks"] == {"changed": 1, "skipped": 1}
    # progress came per resource, with the recipe it belongs to
    assert "task hello::default : file[/etc/hello]" in result.stderr
    image = layer["image_id"]
    assert project.image_id(project.tag("hello-chef")) == image
    # chef got the node JSON rolebake wrote, through the read-only config mount
    node = json.loads(sh(client, image, "cat /etc/hello"))
    assert node == {"hello": {"greeting": "hi"}, "run_list": ["recipe[hello]"]}
    # Nothing of the toolchain, chef's state or the workspace is committed, not even
    # a mount point: the volume was lent below the /mnt tmpfs and /opt/cinc was a
    # link to it while chef ran.
    left = sh(client, image, 'echo "mnt:$(ls -A /mnt)" "opt:$(ls -A /opt)"; '
                             "ls -d /opt/cinc /var/chef /etc/chef 2>/dev/null; true")
    assert left.split() == ["mnt:", "opt:"], left
    assert chef_containers(client, "hello-chef") == []


def test_stand_in_toolchain_failure(hello_project: TestProject) -> None:
    spec = hello_project.root / "images" / "hello-chef.yml"
    spec.write_text(spec.read_text().replace("{greeting: hi}", "{fail: true}"))
    result = run_cli("build", "hello-chef", cwd=hello_project.root)
    assert result.rc == 1, result.output
    assert ("error: chef resource file[/etc/hello] (recipe hello::default, "
            "cookbooks/hello/recipes/default.rb:1) failed to create: Errno::EACCES: "
            "Permission denied @ rb_sysopen - /etc/hello") in result.stderr
    assert hello_project.image_id(hello_project.tag("hello-chef")) is None
    assert chef_containers(hello_project.client, "hello-chef") == []
