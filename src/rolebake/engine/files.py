"""Files into and out of containers, and read from images without running them."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker.errors

from rolebake.engine.containers import Containers
from rolebake.engine.records import ROLE_LABEL, ContainerHandle
from rolebake.errors import BuildFailed


class Files(Containers):
    """Files in the engine's containers and images."""

    def put_file(self, container: ContainerHandle, path: str, data: bytes,
                 mode: int = 0o644) -> None:
        """Write one file into a container."""
        directory, _, filename = path.rpartition("/")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        self.client.api.put_archive(container.id, directory or "/", buffer.getvalue())

    def read_files(self, image_id: str, paths: Sequence[str], *, name: str,
                   labels: Mapping[str, str] | None = None) -> dict[str, bytes | None]:
        """Read small files from an image without running it (None: not there, or not a file).

        A container is created, never started, read from and removed. A symlink
        is followed inside the image (/etc/os-release -> ../usr/lib/os-release).
        `labels` go on it besides `rolebake.role=scan` (a build's id).
        """
        found: dict[str, bytes | None] = {}
        container = self.create_stopped(image_id, name=name,
                                        labels={**(labels or {}), ROLE_LABEL: "scan"})
        try:
            for path in paths:
                found[path] = self._read_in(container, path)
        finally:
            self.remove_container(container)
        return found

    def _read_in(self, container: str, path: str, depth: int = 0) -> bytes | None:
        try:
            stream, stat = self.client.api.get_archive(container, path)
            data = b"".join(stream)
        except docker.errors.NotFound:
            return None
        target = str(stat.get("linkTarget") or "")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next(iter(tar.getmembers()), None)
            if member is not None and member.issym() and depth < 5:
                link = member.linkname
                parent = path.rsplit("/", 1)[0] or "/"
                resolved = target if target.startswith("/") else os.path.normpath(
                    f"{parent}/{link}")
                return self._read_in(container, resolved, depth + 1)
            if member is None or not member.isfile():
                return None
            handle = tar.extractfile(member)
            return handle.read() if handle is not None else None

    def copy_out(self, container: ContainerHandle, path: str, dest: Path) -> None:
        """Copy one file out of a container to `dest` on this machine, streaming."""
        found = self.open_file(container.id, path)
        if found is None:
            raise BuildFailed(f"{path} is not a file in container {container.name}")
        with dest.open("wb") as out:
            for chunk in found[1]:
                out.write(chunk)

    def open_file(self, container_id: str, path: str) -> tuple[int, Iterator[bytes]] | None:
        """Stream one file of a (possibly stopped) container: its size and its bytes.

        Returns:
            None when there is no such file.
        """
        try:
            stream, _ = self.client.api.get_archive(container_id, path)
        except docker.errors.NotFound:
            return None
        # Closed by the generator below, once the bytes are read.
        tar = tarfile.open(fileobj=_ChunkReader(stream), mode="r|")  # noqa: SIM115
        member = tar.next()
        handle = tar.extractfile(member) if member is not None and member.isfile() else None
        if member is None or handle is None:
            tar.close()
            return None

        def chunks() -> Iterator[bytes]:
            try:
                yield from iter(lambda: handle.read(1 << 16), b"")
            finally:
                tar.close()

        return member.size, chunks()


class _ChunkReader(io.RawIOBase):
    """A file object over the chunks the SDK streams, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size
