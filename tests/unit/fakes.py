"""Fakes for unit tests of the build pipeline: an in-memory engine and a scriptable provisioner.

`FakeEngine` implements the `rolebake.engine.Engine` protocol (mypy checks it
does: see `_implements`, and the real class is not its parent); its state lives in plain dicts
(images by id with their tags, labels and config; containers with their
labels) and which logs every call, so a test can assert "no container left",
"tag X names image Y" or "image removed". It follows the Docker behaviours
the builder relies on: a container inherits its image's labels and a commit
inherits the container's; a tag names one image at a time; removing an
image's last tag removes the image. Faults are injected per call.

`FakeProvisioner` is registered as the `fake` provisioner by the tests
(`rolebake.provision.PROVISIONERS["fake"] = FAKE_PROVISIONER`); every
instance reports to, and takes orders from, the class-wide `control`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import json
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from rolebake.engine import (
    ContainerHandle,
    ContainerInfo,
    ContainerSession,
    Engine,
    ExecResult,
    ExecStream,
    ImageInfo,
    Progress,
    SessionError,
    SessionResult,
)
from rolebake.errors import BuildFailed, InputError, RegistryError

# The provisioner and the records live beside this module; tests import them from here.
from tests.unit.fake_provisioner import FakeProvisioner, Gate, ProvisionerControl
from tests.unit.fake_records import Call, FakeContainer, FakeImage, _Hook, normalize

FAKE_PROVISIONER = "tests.unit.fake_provisioner.FakeProvisioner"

# The builder's container scripts by text, so the call log can name them.
_SCRIPTS = {entry.read_text(encoding="utf-8"): entry.name
            for entry in resources.files("rolebake.scripts").iterdir()
            if entry.name.endswith(".sh")}


BASE_IMAGE = "debian:bookworm"  # the one image a fresh FakeEngine (conftest) holds


class FakeEngine:
    """An in-memory container engine with a call log and injectable faults."""

    kind = "docker"  # which engine it plays; a test may make it "podman"

    def __init__(self) -> None:
        self._went_away = threading.Event()
        self.images_by_id: dict[str, FakeImage] = {}
        self._saved: dict[int, str] = {}  # thread -> the image it saved last (see `load`)
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.calls: list[Call] = []
        self.pullable: dict[str, dict[str, Any]] = {}  # ref -> config, for pull()
        self.pushed: dict[str, str] = {}  # ref -> image id, what push() sent
        self.shell_result: Callable[[str, tuple[str, ...]], ExecResult | None] = (
            lambda _script, _args: None)
        self.commit_config_edit: Callable[[dict[str, Any]], None] | None = None
        # The engine going away: `down` makes every call fail as an unanswered
        # socket does; `answers` reports it; a restart sets `restarted()`.
        self.down = False
        self.engine_id = "fake-engine"
        self.volumes_made: dict[str, dict[str, str]] = {}
        self._hooks: list[_Hook] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    # Test helpers ----------------------------------------------------------------------

    def add_image(self, *tags: str, config: Mapping[str, Any] | None = None,
                  labels: Mapping[str, str] | None = None) -> ImageInfo:
        """Put an image on the engine (a base image, a previous build) and return it."""
        config = copy.deepcopy(dict(config or {}))
        all_labels = {**(config.get("Labels") or {}), **(labels or {})}
        config["Labels"] = all_labels
        with self._lock:
            image = FakeImage(id=self._new_id("image"), tags=[], labels=all_labels,
                              config=config, created=self._created())
            self.images_by_id[image.id] = image
            for tag in tags:
                self._retag(image, normalize(tag))
            return image.info()

    def on(self, method: str, action: Callable[..., Any], *,
           match: Callable[..., bool] | None = None, after: bool = False,
           times: int | None = None) -> None:
        """Run `action(*args)` when `method` is called with args that `match` accepts.

        Before the call by default (raise from `action` to make the call fail),
        or `after` it succeeded; `times` limits how often it fires.
        """
        with self._lock:
            self._hooks.append(_Hook(method, action, match, after, times))

    def fail(self, method: str, error: BaseException, *,
             match: Callable[..., bool] | None = None, times: int | None = None) -> None:
        """Make `method` raise `error` (when its args match)."""
        def action(*_args: Any) -> None:
            raise error

        self.on(method, action, match=match, times=times)

    def refuse_tag(self, ref: str) -> None:
        """Make the engine refuse to set `ref`, as `Engine.tag` reports it."""
        wanted = normalize(ref)
        self.fail("tag", InputError(f"the engine refused tag {ref!r}: repository is read-only"),
                  match=lambda _image_id, tag: normalize(tag) == wanted)

    def called(self, method: str) -> list[tuple[Any, ...]]:
        """The args of every call to `method`, in order."""
        with self._lock:
            return [c.args for c in self.calls if c.method == method]

    def tagged(self, ref: str) -> str | None:
        """The id of the image `ref` names, or None."""
        with self._lock:
            image = self._by_tag(normalize(ref))
            return image.id if image else None

    def image_ids(self) -> set[str]:
        """Ids of every image on the engine."""
        with self._lock:
            return set(self.images_by_id)

    def container_names(self) -> list[str]:
        """Names of every container on the engine, running or not."""
        with self._lock:
            return [c.name for c in self.containers_by_id.values()]

    # Images ----------------------------------------------------------------------------

    def version(self) -> str:
        """A fixed engine version."""
        self._enter("version")
        return "fake-27.0"

    def identity(self) -> str:
        """The engine's identity (for the host-wide layer locks)."""
        self._enter("identity")
        return self.engine_id

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Nothing to watch: `stop` and `restart` set the flag themselves."""
        self._went_away.clear()
        yield

    def answers(self, wait_s: float = 0.0) -> bool:
        """False while the test keeps the engine `down`."""
        self._enter("answers", wait_s)
        if self.down:
            self._went_away.set()
        return not self.down

    def restarted(self) -> bool:
        """Whether the engine stopped (and maybe came back) since `watch` began."""
        return self._went_away.is_set()

    def stop(self) -> None:
        """The engine stops: every container dies, no call is answered."""
        with self._lock:
            for made in self.containers_by_id.values():
                made.running = False
            self.down = True
            self._went_away.set()

    def restart(self) -> None:
        """The engine stops and comes back: its containers are stopped, not removed."""
        self.stop()
        self.down = False

    def image(self, ref: str) -> ImageInfo | None:
        """Look an image up by id, short id or tag."""
        self._enter("image", ref)
        with self._lock:
            image = self._resolve(ref)
            return image.info() if image else None

    def pull(self, ref: str, progress: Progress | None = None) -> ImageInfo:
        """Pull only what the test put in `pullable`; anything else is unknown."""
        self._enter("pull", ref)
        with self._lock:
            if ref not in self.pullable:
                raise InputError(
                    f"base image {ref!r} is not on this engine and could not be pulled: "
                    "pull access denied",
                    hint="make one with `rolebake base debian:bookworm`, or fix `from:`")
        return self.add_image(ref, config=self.pullable[ref])

    def push(self, ref: str, progress: Progress | None = None,
             check: Callable[[], None] = lambda: None) -> str:
        """Push a tag the engine holds; the registry is this engine's `pushed` dict."""
        self._enter("push", ref)
        with self._lock:
            image = self._by_tag(normalize(ref))
            if image is None:
                raise RegistryError(f"pushing {ref} failed: An image does not exist locally "
                                    f"with the tag: {ref}")
            self.pushed[ref] = image.id
        if progress is not None:
            progress(f"{image.id[7:19]}: pushed")
        check()
        self._leave("push", ref)
        return f"sha256:{image.id[7:]}"

    def images(self, labels: Mapping[str, str | None]) -> list[ImageInfo]:
        """Images carrying every label given (value None: any value), newest first."""
        self._enter("images", dict(labels))
        with self._lock:
            found = [i.info() for i in self.images_by_id.values() if _has(i.labels, labels)]
        return sorted(found, key=lambda i: i.created, reverse=True)

    def dangling_images(self, labels: Mapping[str, str | None]) -> list[ImageInfo]:
        """Untagged images carrying the labels."""
        self._enter("dangling_images", dict(labels))
        with self._lock:
            return [i.info() for i in self.images_by_id.values()
                    if not i.tags and _has(i.labels, labels)]

    def tag(self, image_id: str, ref: str) -> None:
        """Point `ref` at an image (taking it off any other image)."""
        self._enter("tag", image_id, ref)
        with self._lock:
            image = self._resolve(image_id)
            if image is None:
                raise InputError(f"the engine refused tag {ref!r}: No such image: {image_id}")
            self._retag(image, normalize(ref))
        self._leave("tag", image_id, ref)

    def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Remove a tag (and the image with its last tag) or, by id, the image itself."""
        self._enter("remove_image", ref, force)
        with self._lock:
            tagged = self._by_tag(normalize(ref)) if not ref.startswith("sha256:") else None
            image = tagged or self._resolve(ref)
            if image is None:
                return False
            in_use = any(c.image == image.id for c in self.containers_by_id.values())
            if tagged is not None and len(image.tags) > 1:
                image.tags.remove(normalize(ref))
                return True
            if in_use or (tagged is None and len(image.tags) > 1 and not force):
                return False  # 409: in use, or "referenced in multiple repositories"
            del self.images_by_id[image.id]
        self._leave("remove_image", ref, force)
        return True

    def save(self, image_id: str) -> Iterator[bytes]:
        """A `docker save` archive of one empty layer: its config has the image's labels.

        Normalising (normalise.py) rewrites the config and loads it back in the same
        thread: `load` then makes an image with the saved one's files and the new
        config's labels (the same labels give the same id, as on a real engine).
        """
        self._enter("save", image_id)
        with self._lock:
            image = self._resolve(image_id)
            assert image is not None, f"no image {image_id}"
            labels = dict(image.labels)
            self._saved[threading.get_ident()] = image.id  # what this thread's load rewrites
        empty = io.BytesIO()
        tarfile.open(fileobj=empty, mode="w").close()
        layer = empty.getvalue()
        config = json.dumps({"config": {"Labels": labels}, "created": image.created,
                             "history": [{"created": image.created}],
                             "rootfs": {"type": "layers", "diff_ids": [
                                 "sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
        name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": name, "Layers": ["l1/layer.tar"]}]).encode()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for entry, data in (("l1/json", b'{"config": {}}'), ("l1/layer.tar", layer),
                                (name, config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(entry)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        yield out.getvalue()

    def local_layer(self, image_id: str) -> None:
        """No store on disk: normalising reads the layer through `save`."""
        return None

    def load(self, archive: Path) -> None:
        """Make the image of a saved-and-rewritten archive (see `save`)."""
        self._enter("load", str(archive))
        with tarfile.open(archive) as tar:
            manifest = json.loads(_member(tar, "manifest.json"))
            config = _member(tar, manifest[0]["Config"])
        body = json.loads(config)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        with self._lock:
            source = self.images_by_id[self._saved[threading.get_ident()]]
            labels = dict(body["config"].get("Labels") or {})
            self.images_by_id.setdefault(image_id, FakeImage(
                id=image_id, tags=[], labels=labels,
                config={**copy.deepcopy(source.config), "Labels": labels},
                created=body["created"], parent=source.parent, files=dict(source.files)))

    def history(self, image_id: str) -> list[dict[str, Any]]:
        """One history entry, the image itself."""
        self._enter("history", image_id)
        return [{"Id": image_id, "CreatedBy": "rolebake (fake)"}]

    # Containers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def container(
        self,
        image_id: str,
        *,
        name: str,
        labels: Mapping[str, str],
        keep_alive: bool = True,
        mounts: Sequence[Mapping[str, Any]] = (),
        tmpfs: Mapping[str, str] | None = None,
        volumes_from: Sequence[str] = (),
        ports: Mapping[str, Any] | None = None,
        environment: Mapping[str, str] | None = None,
        init: bool = True,
        hostname: str | None = None,
        remove_in_background: bool = False,
    ) -> Iterator[ContainerHandle]:
        """Create and start a container for a `with` block; always remove it (at once)."""
        self._enter("container", image_id, name, dict(labels))
        with self._lock:
            image = self._resolve(image_id)
            if image is None:
                raise BuildFailed(f"the engine failed on container {name}: "
                                  f"No such image: {image_id}")
            if any(c.name == name for c in self.containers_by_id.values()):
                raise BuildFailed(f"the engine failed on container {name}: Conflict. "
                                  f"The container name {name!r} is already in use")
            made = FakeContainer(id=self._new_id("container"), name=name, image=image.id,
                                 labels={**image.labels, **labels}, options={
                                     "keep_alive": keep_alive, "mounts": list(mounts),
                                     "tmpfs": dict(tmpfs or {}),
                                     "volumes_from": list(volumes_from),
                                     "hostname": hostname,
                                     "remove_in_background": remove_in_background})
            self.containers_by_id[made.id] = made
        try:
            yield ContainerHandle(id=made.id, name=name)
        except BaseException:
            # As the real engine: a container it cannot remove now (it is down) must
            # not hide the error in flight; it is left for `rolebake clean`.
            with contextlib.suppress(Exception):
                self.remove_container(made.id)
            raise
        self.remove_container(made.id)

    def settle(self) -> list[str]:
        """Nothing to wait for: the fake removes every container at the end of its block."""
        self._enter("settle")
        return []

    def remove_container(self, ref: str) -> None:
        """Force-remove a container by id or name; one already gone is fine."""
        self._enter("remove_container", ref)
        with self._lock:
            for cid, made in list(self.containers_by_id.items()):
                if ref in (cid, made.name):
                    del self.containers_by_id[cid]

    def kill(self, ref: str) -> None:
        """Stop a container (it stays until removed)."""
        self._enter("kill", ref)
        with self._lock:
            for made in self.containers_by_id.values():
                if ref in (made.id, made.name):
                    made.running = False

    def containers(self, labels: Mapping[str, str | None]) -> list[ContainerInfo]:
        """Every container, running or not, carrying all the labels given."""
        self._enter("containers", dict(labels))
        with self._lock:
            return [c.info() for c in self.containers_by_id.values() if _has(c.labels, labels)]

    def create_stopped(self, image_id: str, *, name: str, labels: Mapping[str, str],
                       mounts: Sequence[Mapping[str, Any]] = ()) -> str:
        """Create a container that is never started."""
        self._enter("create_stopped", image_id, name, dict(labels))
        with self._lock:
            made = FakeContainer(id=self._new_id("container"), name=name, image=image_id,
                                 labels=dict(labels), running=False)
            self.containers_by_id[made.id] = made
            return made.id

    def read_files(self, image_id: str, paths: Sequence[str], *, name: str,
                   labels: Mapping[str, str] | None = None) -> dict[str, bytes | None]:
        """The files a test put on the image (FakeImage.files); nothing else exists."""
        self._enter("read_files", image_id, tuple(paths))
        with self._lock:
            image = self._resolve(image_id)
            files = image.files if image is not None else {}
            return {p: files.get(p) for p in paths}

    def volume_at(self, container_id: str, destination: str) -> str | None:
        """A volume per toolchain container, named after it."""
        self._enter("volume_at", container_id, destination)
        return f"vol-{container_id[:12]}"

    def diff(self, container: ContainerHandle) -> list[tuple[str, str]]:
        """No changes recorded."""
        self._enter("diff", container.name)
        return []

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """Remember the volume."""
        self._enter("ensure_volume", name, dict(labels))
        with self._lock:
            self.volumes_made.setdefault(name, dict(labels))

    def volumes(self, labels: Mapping[str, str | None]) -> list[str]:
        """Volumes made with the labels."""
        self._enter("volumes", dict(labels))
        with self._lock:
            return sorted(n for n, have in self.volumes_made.items() if _has(have, labels))

    def remove_volume(self, name: str) -> bool:
        """Forget the volume."""
        self._enter("remove_volume", name)
        with self._lock:
            return self.volumes_made.pop(name, None) is not None

    def exec(self, container: ContainerHandle, argv: Sequence[str], *,
             env: Mapping[str, str] | None = None, user: str = "root") -> ExecResult:
        """Run nothing; scripts answer through `shell_result`, anything else succeeds."""
        self._enter("exec", container.name, tuple(argv))
        self._alive(container, argv[0])
        if list(argv[:2]) == ["/bin/sh", "-c"]:
            name = _SCRIPTS.get(argv[2], argv[2].splitlines()[0] if argv[2] else "")
            answer = self.shell_result(name, tuple(argv[4:]))
            if answer is not None:
                return answer
        return ExecResult(0, "")

    def shell(self, container: ContainerHandle, script: str, *args: str,
              env: Mapping[str, str] | None = None) -> ExecResult:
        """Run a script (logged by its file name when it is one of rolebake's)."""
        self._enter("shell", container.name, _SCRIPTS.get(script, script), args)
        return self.exec(container, ["/bin/sh", "-c", script, "rolebake", *args], env=env)

    def put_file(self, container: ContainerHandle, path: str, data: bytes,
                 mode: int = 0o644) -> None:
        """Accept the file."""
        self._enter("put_file", container.name, path)
        self._alive(container, "put_file")

    def container_state(self, container: ContainerHandle) -> Mapping[str, Any]:
        """Running or not, as the real State block says it."""
        self._enter("container_state", container.name)
        with self._lock:
            made = self.containers_by_id.get(container.id)
            if made is None:
                raise BuildFailed(f"No such container: {container.id}")
            return {"Running": made.running, "ExitCode": 0 if made.running else 137}

    def container_ip(self, container: ContainerHandle) -> str | None:
        """No network."""
        self._enter("container_ip", container.name)
        return None

    def logs(self, container: ContainerHandle, tail: int = 30) -> str:
        """No output."""
        self._enter("logs", container.name)
        return ""

    def commit(self, container: ContainerHandle, config: Mapping[str, Any]) -> str:
        """Make an untagged image from the container; its labels carry over, as Docker's do."""
        self._enter("commit", container.name, copy.deepcopy(dict(config)))
        with self._lock:
            made = self.containers_by_id.get(container.id)
            if made is None:
                raise BuildFailed(f"commit failed: No such container: {container.id}")
            committed = copy.deepcopy(dict(config))
            committed["Labels"] = {**made.labels, **(config.get("Labels") or {})}
            if self.commit_config_edit is not None:
                self.commit_config_edit(committed)
            parent = self.images_by_id.get(made.image)
            image = FakeImage(id=self._new_id("image"), tags=[],
                              labels=dict(committed["Labels"]), config=committed,
                              created=self._created(), parent=made.image,
                              # an image holds its parent's files, as a real layer does
                              files=dict(parent.files) if parent is not None else {})
            self.images_by_id[image.id] = image
        self._leave("commit", container.name, config)
        return image.id

    # Internals -------------------------------------------------------------------------

    def _enter(self, method: str, *args: Any) -> None:
        with self._lock:
            self.calls.append(Call(method, args))
        if self.down and method != "answers":
            raise ConnectionError(f"fake engine is down ({method})")
        self._run_hooks(method, args, after=False)

    def _leave(self, method: str, *args: Any) -> None:
        self._run_hooks(method, args, after=True)

    def _run_hooks(self, method: str, args: tuple[Any, ...], *, after: bool) -> None:
        # Hooks run outside the lock: one may block until another thread moves on.
        with self._lock:
            due = [h for h in self._hooks if h.method == method and h.after == after
                   and (h.match is None or h.match(*args))]
            for hook in due:
                if hook.times is not None:
                    hook.times -= 1
                    if hook.times <= 0:
                        self._hooks.remove(hook)
        for hook in due:
            hook.action(*args)

    def _alive(self, container: ContainerHandle, what: str) -> None:
        with self._lock:
            made = self.containers_by_id.get(container.id)
            if made is None or not made.running:
                raise BuildFailed(f"could not run {what} in container {container.name}: "
                                  "container is not running")

    def _new_id(self, kind: str) -> str:
        digest = hashlib.sha256(f"{kind}-{next(self._ids)}".encode()).hexdigest()
        return f"sha256:{digest}" if kind == "image" else digest

    def _created(self) -> str:
        return f"2024-01-01T00:00:00.{next(self._clock):06d}Z"

    def _resolve(self, ref: str) -> FakeImage | None:
        if ref in self.images_by_id:
            return self.images_by_id[ref]
        bare = ref.removeprefix("sha256:")
        if len(bare) >= 12 and all(ch in "0123456789abcdef" for ch in bare):
            for image_id, image in self.images_by_id.items():
                if image_id.removeprefix("sha256:").startswith(bare):
                    return image
        return self._by_tag(normalize(ref))

    def _by_tag(self, ref: str) -> FakeImage | None:
        return next((i for i in self.images_by_id.values() if ref in i.tags), None)

    def _retag(self, image: FakeImage, ref: str) -> None:
        for other in self.images_by_id.values():
            if ref in other.tags:
                other.tags.remove(ref)
        image.tags.append(ref)


    # What no unit test drives: each says so if one ever does ---------------------------

    def fetch(self, ref: str, progress: Progress | None = None,
              check: Callable[[], None] = lambda: None) -> ImageInfo:
        """Pulls from a cache repo go through `pull` here."""
        return self.pull(ref, progress)

    def import_rootfs(self, tarball: Path, ref: str, changes: Sequence[str]) -> ImageInfo:
        """An image from a tarball: an empty image tagged `ref`."""
        self._enter("import_rootfs", tarball, ref)
        return self.add_image(ref)

    def registry_config(self) -> Mapping[str, Any]:
        """No registry settings."""
        return {}

    def registry_credentials(self, registry: str) -> dict[str, str]:
        """No credentials."""
        return {}

    def copy_out(self, container: ContainerHandle, path: str, dest: Path) -> None:
        """Not in memory: a unit test that needs it is an integration test."""
        raise NotImplementedError("FakeEngine.copy_out")

    def open_file(self, container_id: str, path: str) -> tuple[int, Iterator[bytes]] | None:
        """Not in memory: a unit test that needs it is an integration test."""
        raise NotImplementedError("FakeEngine.open_file")

    def exec_demuxed(self, container: ContainerHandle, argv: Sequence[str], *,
                     user: str = "root") -> SessionResult:
        """`exec`, its output as stdout."""
        done = self.exec(container, argv, user=user)
        return SessionResult(rc=done.rc, stdout=done.output.encode(), stderr=b"")

    def exec_stream(self, container: ContainerHandle, argv: Sequence[str], *,
                    env: Mapping[str, str] | None = None) -> ExecStream:
        """No long-lived commands in memory."""
        raise NotImplementedError("FakeEngine.exec_stream")

    @contextlib.contextmanager
    def session(self, container: ContainerHandle, python: str, *,
                env: Mapping[str, str] | None = None) -> Iterator[ContainerSession]:
        """No agent in memory: callers fall back to `exec`, as without a python."""
        self._enter("session", container, python)
        raise SessionError(f"no agent in the fake engine ({python})")
        yield  # pragma: no cover - a generator, for contextmanager


def _implements(fake: FakeEngine) -> Engine:
    """Never called: mypy checks here that FakeEngine keeps up with the Engine protocol."""
    return fake


def _has(labels: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    return all(k in labels and (v is None or labels[k] == v) for k, v in wanted.items())


__all__ = [
    "BASE_IMAGE",
    "FAKE_PROVISIONER",
    "Call",
    "FakeContainer",
    "FakeEngine",
    "FakeImage",
    "FakeProvisioner",
    "Gate",
    "ProvisionerControl",
    "normalize",
]


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    extracted = tar.extractfile(name)
    assert extracted is not None
    return extracted.read()
