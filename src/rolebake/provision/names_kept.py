"""The collections each keyed file names by FQCN, kept between runs like git's index.

`collection_versions.named_in_file` scans every file a layer keys; a project
that holds a collection (or a venv with one) keys hundreds of files, and the
scan is most of a no-op's time. Its answer depends on the file's bytes only,
so it is kept in `.rolebake/answers/collection-names.json` per path, with the
file's size, mtime, ctime and inode: any write changes the ctime (which
nothing can set back), a replaced file its inode. As git does with racily
clean entries, an answer is kept only for a file whose mtime and ctime are
older than RACY_S when it is kept, so a write in the same clock tick as the
scan cannot hide behind an unchanged stamp. A file that cannot be read, or
holds another format, is ignored and written again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from rolebake.provision.collection_versions import named_in_file
from rolebake.spec import Project
from rolebake.state import private_dir, replace_private

FORMAT = "rolebake-collection-names/1"
FILE = "collection-names.json"
RACY_S = 2.0


class KeptNames:
    """`named_in_file` answers of one project, read once, written back when new ones came."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.path = project.root / ".rolebake" / "answers" / FILE
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        self._lock = threading.Lock()  # layers of a --jobs build walk their inputs at once
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("format") == FORMAT \
                    and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]

    def names(self, path: Path) -> set[str]:
        """The collections `path` names (as `named_in_file`), kept or scanned."""
        try:
            info = os.stat(path)
        except OSError:
            return named_in_file(path)
        stamp = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        entry = self.entries.get(str(path))
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp \
                and isinstance(entry[1], list):
            return set(map(str, entry[1]))
        found = named_in_file(path)
        settled = (time.time() - RACY_S) * 1e9
        if info.st_mtime_ns < settled and info.st_ctime_ns < settled:
            with self._lock:
                self.entries[str(path)] = [stamp, sorted(found)]
                self.dirty = True
        return found

    def save(self) -> None:
        """Write the answers back (whole, by rename) when new ones were kept."""
        with self._lock:
            if not self.dirty:
                return
            text = json.dumps({"format": FORMAT, "entries": self.entries}, sort_keys=True)
            self.dirty = False
        with contextlib.suppress(OSError):  # a read-only checkout: scanned next time too
            private_dir(self.project.root / ".rolebake", "answers")
            replace_private(self.path, text)


@functools.lru_cache(maxsize=8)
def kept_names(project: Project) -> KeptNames:
    """The project's kept answers, read once per process (each entry checks its file's stamp)."""
    return KeptNames(project)
