"""The committed image: its config, its provenance labels, its tags (all or none), keep-failed.

Tags move only through a `TagJournal`: one layer's tags move all or none (a
refused tag, a cancel half-way puts back those already moved), and every move
of a run is kept, with what the tag named before, so that an interrupted run
can put back the tags of layers that had finished too (DESIGN.md invariant 1).

The journal is also on disk, written ahead of each move (`.rolebake/journal/
<build id>.jsonl`, 0600, held under a lock by its run): a run killed outright
(SIGKILL, a crash) leaves it behind, and the next rolebake on that engine
(`recover_journals`) puts the tags back, or keeps them where another build
has used the layer since, and says which.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake import __version__
from rolebake.engine import BUILD_ID_LABEL, LABEL_PREFIX, ROLE_LABEL, Engine
from rolebake.locks import Held, try_exclusive
from rolebake.spec import ImageConfig, Project

JOURNAL_DIR = "journal"  # .rolebake/journal/<build id>.jsonl
LAYER_LABEL = "rolebake.layer"
# The project the layer belongs to (project_config.py): a miss is explained only
# against the same project's builds of a layer of that name.
PROJECT_LABEL = "rolebake.project"
SPEC_LABEL = "rolebake.spec"
CACHE_KEY_LABEL = "rolebake.cache-key"
INPUTS_LABEL = "rolebake.inputs"
# The files and folders the layer's own tasks managed (JSON list), so `rolebake parity`
# compares them even when the layer comes from the cache.
MANAGED_LABEL = "rolebake.managed-paths"


def commit_config(parent: Mapping[str, Any], config: ImageConfig,
                  labels: Mapping[str, str]) -> dict[str, Any]:
    """The image config to commit: the parent's config with the spec's settings over it.

    Cmd and Entrypoint are always given explicitly: left empty, the daemon would
    fill them from the build container (whose entrypoint only sleeps).
    """
    entrypoint = list(config.entrypoint) if config.entrypoint is not None else list(
        parent.get("Entrypoint") or [])
    if config.cmd is not None:
        cmd = list(config.cmd)
    elif config.entrypoint is not None:
        cmd = []  # as a Dockerfile ENTRYPOINT does, a new entrypoint drops the inherited cmd
    else:
        cmd = list(parent.get("Cmd") or [])
    env = dict(e.split("=", 1) for e in parent.get("Env") or [] if "=" in e)
    env.update(config.env)
    ports: dict[str, dict[str, Any]] = {p: {} for p in parent.get("ExposedPorts") or {}}
    ports.update({p: {} for p in config.expose})
    volumes: dict[str, dict[str, Any]] = {v: {} for v in parent.get("Volumes") or {}}
    volumes.update({v: {} for v in config.volumes})
    all_labels = {k: v for k, v in (parent.get("Labels") or {}).items()
                  if not k.startswith(LABEL_PREFIX)}
    all_labels.update(config.labels)
    all_labels.update(labels)
    result: dict[str, Any] = {
        "Cmd": cmd,
        "Entrypoint": entrypoint,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": config.user if config.user is not None else parent.get("User", ""),
        "WorkingDir": config.workdir if config.workdir is not None else parent.get(
            "WorkingDir", ""),
        "ExposedPorts": ports,
        "Volumes": volumes,
        "Labels": all_labels,
    }
    health = config.healthcheck
    if health is not None:
        result["Healthcheck"] = {
            "Test": list(health.test),
            **({"Interval": _ns(health.interval_s)} if health.interval_s else {}),
            **({"Timeout": _ns(health.timeout_s)} if health.timeout_s else {}),
            **({"Retries": health.retries} if health.retries is not None else {}),
            **({"StartPeriod": _ns(health.start_period_s)} if health.start_period_s else {}),
        }
    elif parent.get("Healthcheck"):
        result["Healthcheck"] = parent["Healthcheck"]
    return result


def provenance_labels(*, build_id: str, spec: str, layer: str, cache_key: str, inputs: str,
                      provisioner: str, revision: str | None,
                      project: str = "") -> dict[str, str]:
    """The labels every image rolebake commits carries (DESIGN.md, "Image spec").

    `rolebake.role=image` overrides the build container's `build`: Docker's
    commit merges container labels into the image, and containers users start
    from it must not look like leftovers.
    """
    labels = {
        ROLE_LABEL: "image",
        BUILD_ID_LABEL: build_id,
        SPEC_LABEL: spec,
        LAYER_LABEL: layer,
        CACHE_KEY_LABEL: cache_key,
        INPUTS_LABEL: inputs,
        "rolebake.version": __version__,
        "rolebake.provisioner": provisioner,
        "org.opencontainers.image.created": dt.datetime.now(dt.UTC).isoformat(
            timespec="seconds"),
    }
    if project:
        labels[PROJECT_LABEL] = project
    if revision:
        labels["rolebake.git-revision"] = revision
        labels["org.opencontainers.image.revision"] = revision
    return labels


def provenance(labels: Mapping[str, str]) -> dict[str, str]:
    """An image's provenance, from its labels (the bulky inputs digest and paths left out)."""
    return {k: v for k, v in labels.items()
            if k.startswith(LABEL_PREFIX) and k not in (INPUTS_LABEL, MANAGED_LABEL)}


def managed_label(paths: Sequence[str]) -> str:
    """The managed paths as the label's compact JSON (no line break: Podman's commit needs that)."""
    return json.dumps(list(paths), separators=(",", ":"))


def managed_from_labels(labels: Mapping[str, str]) -> list[str] | None:
    """The managed paths an image records; None when it records none or they are unreadable."""
    text = labels.get(MANAGED_LABEL)
    if text is None:
        return None
    try:
        paths = json.loads(text)
    except ValueError:
        return None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return None
    return paths


@dataclass(frozen=True)
class TagMove:
    """One tag a run moved: what it named before (None: it did not exist) and after."""

    layer: str
    ref: str
    before: str | None
    after: str


class TagJournal:
    """Every tag move of one run, in order, so any of them can be put back.

    Each layer's tags move while its build holds the layer's host-wide lock,
    whose file then names the build that moved them last (and the one before).
    A run putting its tags back checks that record first: a layer another
    build has used since keeps its tags, so one run never undoes another's.

    With a project, each move is also written to disk before the tag moves
    (see the module's docstring); `settle` ends that record when the run ends.
    """

    def __init__(self, engine: Engine, build_id: str, project: Project | None = None) -> None:
        """Keep the moves the build `build_id` makes on `engine` (on disk below `project`)."""
        self.engine = engine
        self.build_id = build_id
        self.project = project
        self._moves: list[TagMove] = []
        self._lock = threading.Lock()
        self._fd: int | None = None  # the journal file, locked while this run lives
        self._settled = False

    def move(self, layer: str, image_id: str, refs: Sequence[str], lock: Held,
             check: Callable[[], None] = lambda: None) -> None:
        """Point every ref at `image_id`, all of them or none, and record the moves.

        Args:
            layer: the layer whose tag step moves them (moves are put back by layer).
            image_id: the image the refs should name.
            refs: the tags, the internal cache tag last.
            lock: the layer's lock, held; its record is updated.
            check: raises when the build was cancelled; called after each tag
                moved, so a cancel that arrives during the move puts them back too.

        Raises:
            InputError: the engine refused a tag (every moved tag is put back first).
        """
        moved: list[TagMove] = []
        record = lock.read()
        try:
            for ref in refs:
                move = TagMove(layer, ref, _image_id(self.engine, ref), image_id)
                if move.before == image_id:
                    continue  # there already (a no-op rebuild): nothing to move or put back
                # Written ahead: a kill between the two leaves a move the disk knows of.
                self._write({"op": "move", **vars(move), "lock": str(lock.path or ""),
                             "record": record})
                self.engine.tag(image_id, ref)
                moved.append(move)
                check()
        except BaseException:
            for move in reversed(moved):
                self._put_back(move)
            with contextlib.suppress(OSError):  # put back already; the disk may be why
                self._write({"op": "done", "layer": layer})
            raise
        with self._lock:
            self._moves.extend(moved)
        lock.write(" ".join([self.build_id, *record.split()[:1]]))

    def made(self, layer: str, image_id: str) -> None:
        """Record an image this run made, before any tag names it.

        A normalised image carries no build id (it would break reproducibility),
        so a run killed between its commit and its tags leaves an untagged image
        that `clean --label rolebake.build-id=...` cannot find: the next command
        that recovers this journal removes it, unless something tagged it since.
        """
        self._write({"op": "made", "layer": layer, "image": image_id})

    def roll_back(self, locks: Mapping[str, Path]) -> dict[str, str]:
        """Put back every move of the run, by layer, the last one moved first.

        Args:
            locks: each layer's lock file.

        Returns:
            {tag: why} for the tags left moved: the layer's lock is taken (another
            build is at it), or its record names another build (which used them).
        """
        stayed: dict[str, str] = {}
        for layer in self.layers():
            with try_exclusive(locks[layer]) as held:
                record = held.read().split() if held is not None else []
                if held is None or record[:1] != [self.build_id]:
                    why = ("another build of this layer is running" if held is None
                           else "another build has used this layer since")
                    stayed.update(dict.fromkeys(self.keep(layer), why))
                    continue
                stayed.update(self.put_back(layer))
                held.write(" ".join(record[1:2]))  # the build that moved them before us
        return stayed

    def layers(self) -> list[str]:
        """Layers with moves to put back, the one that moved last first."""
        with self._lock:
            order = [m.layer for m in reversed(self._moves)]
        return list(dict.fromkeys(order))

    def put_back(self, layer: str) -> dict[str, str]:
        """Undo every move of `layer`, newest first; returns {tag: why} for those left moved.

        A tag that names another image by now was moved since by someone else: it
        is left as it is. An image the moves leave without any tag (the layer's
        new image) is removed with them.
        """
        with self._lock:
            moves = [m for m in self._moves if m.layer == layer]
            self._moves = [m for m in self._moves if m.layer != layer]
        stayed = undo(self.engine, moves)
        self._write({"op": "done", "layer": layer})
        return stayed

    def keep(self, layer: str) -> list[str]:
        """Forget the moves of `layer` without undoing them; returns their tags."""
        with self._lock:
            kept = [m.ref for m in self._moves if m.layer == layer]
            self._moves = [m for m in self._moves if m.layer != layer]
        self._write({"op": "done", "layer": layer})
        return kept

    def settle(self) -> None:
        """The run is over (built, or rolled back): its journal on disk goes.

        The moves stay known in memory, for a signal that lands while the report
        is written (the CLI rolls back then); a kill after this keeps the tags.
        """
        with self._lock:
            self._settled = True
            if self._fd is None:
                return
            with contextlib.suppress(OSError):
                os.unlink(self._path())
            os.close(self._fd)
            self._fd = None

    def _path(self) -> Path:
        assert self.project is not None
        return self.project.private_dir(JOURNAL_DIR) / f"{self.build_id}.jsonl"

    def _write(self, entry: dict[str, Any]) -> None:
        """Append one entry to the journal on disk, synced before the caller goes on."""
        if self.project is None:
            return
        with self._lock:
            if self._settled:
                return
            if self._fd is None:
                path = self._path()
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                                   | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # alive: no one recovers it
                header = {"op": "begin", "build": self.build_id,
                          "engine": self.engine.identity()}
                os.write(self._fd, (json.dumps(header) + "\n").encode())
            os.write(self._fd, (json.dumps(entry) + "\n").encode())
            os.fsync(self._fd)

    def _put_back(self, move: TagMove) -> None:
        _put_back(self.engine, move)


def undo(engine: Engine, moves: Sequence[TagMove]) -> dict[str, str]:
    """Undo `moves`, newest first; {tag: why} for those left; images left untagged removed."""
    stayed: dict[str, str] = {}
    for move in reversed(moves):
        try:
            now = _image_id(engine, move.ref)
            if now == move.before:
                continue  # never moved (killed before the tag), or put back already
            if now is not None and now != move.after:
                stayed[move.ref] = "moved again since, by another build"
                continue
            _put_back(engine, move)
        except Exception as exc:  # the engine went away: say so, put back the others
            stayed[move.ref] = f"could not be put back: {_reason(exc)}"
    for image_id in dict.fromkeys(m.after for m in moves):
        with contextlib.suppress(Exception):  # in use, or gone: `rolebake clean` then
            image = engine.image(image_id)
            if image is not None and not image.tags:
                engine.remove_image(image_id)
    return stayed


def _put_back(engine: Engine, move: TagMove) -> None:
    if move.before is not None:
        engine.tag(move.before, move.ref)
    else:
        engine.remove_image(move.ref)


def recover_journals(engine: Engine, project: Project) -> list[str]:
    """Finish the tag journals runs killed outright left for this engine; what was done.

    A journal whose run is alive is locked and left alone; one written for
    another engine waits for a run on that engine. Each layer's moves are put
    back under the layer's lock when its record still names the dead run (or
    still what it named before the run moved the tags: killed half-way);
    otherwise another build has used the layer since and its tags stay.

    Returns:
        One line per layer handled, for the CLI to print.
    """
    said: list[str] = []
    identity: str | None = None
    for path, fd, alive in _journal_files(project, shared=False):
        if alive or os.fstat(fd).st_nlink == 0:
            continue  # its run lives, or another rolebake finished it meanwhile
        entries = _entries(path)
        if not entries or entries[0].get("op") != "begin":
            os.unlink(path)
            continue
        identity = identity or engine.identity()
        if entries[0].get("engine") != identity:
            continue
        build_id = str(entries[0].get("build", ""))
        left = False
        for line in _recover_run(engine, build_id, entries):
            left = left or line.startswith("left ")
            what = "killed" if " its untagged image " in line else "killed while moving tags"
            said.append(f"build {build_id}, {what}: {line}")
        if not left:
            os.unlink(path)
    return said


def images_in_flight(project: Project) -> set[str]:
    """The images live runs of this project made and have not tagged yet (their journals).

    A normalised image is dated SOURCE_DATE_EPOCH, so `clean --older-than`
    cannot tell by its age that a run is verifying it: `clean` spares these.
    """
    return {str(entry.get("image", "")) for path, _fd, alive in _journal_files(project, shared=True)
            if alive for entry in _entries(path) if entry.get("op") == "made"}


def _journal_files(project: Project, *, shared: bool) -> Iterator[tuple[Path, int, bool]]:
    """Each tag journal of the project, open: (path, fd, whether its run is alive).

    A live run holds its journal's lock; a dead run's journal comes locked here,
    exclusively unless `shared` (a reader), until the caller moves to the next.
    """
    folder = project.state_dir / JOURNAL_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        try:
            fd = os.open(path, (os.O_RDONLY if shared else os.O_RDWR)
                         | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                alive = False
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                alive = True
            yield path, fd, alive
        finally:
            os.close(fd)


def _entries(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            break  # a torn last line: the kill landed while it was written
        if isinstance(entry, dict):
            found.append(entry)
    return found


def _recover_run(engine: Engine, build_id: str, entries: list[dict[str, Any]]) -> list[str]:
    moves: dict[str, list[dict[str, Any]]] = {}
    for entry in entries[1:]:
        layer = str(entry.get("layer", ""))
        if entry.get("op") == "move":
            moves.setdefault(layer, []).append(entry)
        elif entry.get("op") == "done":
            moves.pop(layer, None)
    said: list[str] = []
    for layer in reversed(list(moves)):
        found = moves[layer]
        tags = ", ".join(str(e["ref"]) for e in found)
        lock = Path(str(found[0].get("lock") or ""))
        if not lock.name:
            said.append(f"kept the tags of {layer} ({tags}): no lock was recorded")
            continue
        with try_exclusive(lock) as held:
            if held is None:
                said.append(f"left {layer} for now ({tags}): another build of it is running")
                continue
            record = held.read()
            before = str(found[0].get("record", ""))
            if record.split()[:1] != [build_id] and record != before:
                said.append(f"kept the tags of {layer} ({tags}): another build has used "
                            "this layer since")
                continue
            stayed = undo(engine, [TagMove(layer, str(e["ref"]), e.get("before"),
                                           str(e["after"])) for e in found])
            if record.split()[:1] == [build_id]:
                held.write(" ".join(record.split()[1:2]))
        back = [str(e["ref"]) for e in found if str(e["ref"]) not in stayed]
        if back:
            said.append(f"put back {', '.join(back)} ({layer})")
        for ref, why in stayed.items():
            said.append(f"kept {ref} ({layer}): {why}")
    for entry in entries[1:]:
        if entry.get("op") != "made":
            continue
        image = engine.image(str(entry.get("image", "")))
        # Tagged since (the same inputs reproduce the same id): another build's now.
        if image is None or image.tags:
            continue
        short, layer = image.id.split(":")[-1][:12], entry.get("layer", "")
        if engine.remove_image(image.id):
            said.append(f"removed its untagged image {short} ({layer})")
        else:  # a container of the dead run still uses it: the journal stays for `clean`
            said.append(f"left its untagged image {short} ({layer}) for now: a container "
                        "uses it (rolebake clean removes both)")
    return said


def keep_failed(engine: Engine, image_id: str, tags: Sequence[str]) -> str:
    """Keep an image that failed its checks as `<repository>:failed-<id>`; returns that tag."""
    repository = "rolebake/failed"
    if tags:
        # `localhost:5000/web` names a repository with a port, not a tag.
        name, sep, tag = tags[0].rpartition(":")
        repository = name if sep and "/" not in tag else tags[0]
    failed = f"{repository}:failed-{image_id.rsplit(':', maxsplit=1)[-1][:12]}"
    engine.tag(image_id, failed)
    return failed


# rolebake's own state folders (logs, scratch, salt, installed requirements), the
# project's and any other project's in the repository: written by every build, never
# a change to what an image is made from.
STATE_PATHSPECS = (":(top,exclude,glob)**/.rolebake", ":(top,exclude,glob)**/.rolebake/**")


def git_revision(root: Path) -> str | None:
    """The repository's commit (with `-dirty` for uncommitted changes), or None.

    The whole repository counts (`:/`), except rolebake's `.rolebake/` folders:
    a build's own logs must not make the next image `-dirty`, whether or not
    the repository ignores them.
    """
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                ":/", *STATE_PATHSPECS],
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty.strip() else "")


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _image_id(engine: Engine, ref: str) -> str | None:
    found = engine.image(ref)
    return found.id if found is not None else None


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
