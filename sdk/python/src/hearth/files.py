"""The files of a sandbox: :class:`Files`, reached as ``sandbox.files``.

Uploads and downloads stream: a file object or an iterable of chunks is
sent chunk by chunk, and :meth:`Files.download` writes into a file object
as the bytes arrive, so neither needs the whole file in memory.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import httpx

from ._http import json_object
from .errors import NotFound
from .models import FileEntry, WriteResult

if TYPE_CHECKING:
    from .sandboxes import Sandbox

__all__ = ["FileData", "Files"]

# Chunk size for streamed uploads and downloads.
_CHUNK = 256 * 1024


@runtime_checkable
class _Readable(Protocol):
    """Anything with a binary ``read``, such as an open file."""

    def read(self, size: int = ...) -> bytes: ...


class _Writable(Protocol):
    """Anything with a binary ``write``, such as a file opened ``"wb"``."""

    def write(self, data: bytes) -> Any: ...


#: What :meth:`Files.write` takes: bytes, text (written as UTF-8), a binary
#: file object or an iterable of ``bytes`` chunks.
FileData = Union[bytes, bytearray, memoryview, str, _Readable, Iterable[bytes]]


class Files:
    """The files of a sandbox: ``sandbox.files``. Paths are absolute paths
    inside the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._http = sandbox._http

    @property
    def _path(self) -> str:
        return f"{self._sandbox._path}/files"

    def write(self, path: str, data: FileData) -> WriteResult:
        """Write a file, creating parent directories and replacing an
        existing file.

        ``data`` is ``bytes``, ``str`` (written as UTF-8), a binary file
        object (streamed in chunks, never read whole into memory) or an
        iterable of ``bytes`` chunks (streamed).
        """
        content: bytes | Iterator[bytes]
        if isinstance(data, str):
            content = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        elif isinstance(data, _Readable):
            content = self._chunks_of(data)
        else:
            content = (bytes(chunk) for chunk in data)
        response = self._http.request(
            "PUT",
            self._path,
            params={"path": path},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        return WriteResult.from_json(json_object(response))

    @staticmethod
    def _chunks_of(reader: _Readable) -> Iterator[bytes]:
        while True:
            chunk = reader.read(_CHUNK)
            if not chunk:
                return
            if isinstance(chunk, str):
                # A file opened in text mode: send its UTF-8 bytes.
                yield chunk.encode("utf-8")
            else:
                yield bytes(chunk)

    def read(self, path: str) -> bytes:
        """A file's contents."""
        return self._http.request("GET", self._path, params={"path": path}).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A file's contents as text."""
        return self.read(path).decode(encoding)

    def download(self, path: str, dest: _Writable) -> int:
        """Stream a file into ``dest`` (e.g. a file opened ``"wb"``) without
        holding it in memory; returns the number of bytes written."""
        total = 0
        with self._http.stream(
            "GET", self._path, params={"path": path}, timeout=self._http.timeout
        ) as response:
            try:
                for chunk in response.iter_bytes(_CHUNK):
                    dest.write(chunk)
                    total += len(chunk)
            except httpx.TransportError as exc:
                raise self._http.transport_error(exc, f"downloading {path}") from exc
        return total

    def list(self, path: str) -> builtins.list[FileEntry]:
        """The entries of a directory."""
        body = self._http.json("GET", f"{self._path}/list", params={"path": path})
        return [FileEntry.from_json(item) for item in body.get("entries", [])]

    def stat(self, path: str) -> FileEntry:
        """Metadata of a path (its ``name`` is the full path)."""
        data = self._http.json("GET", f"{self._path}/stat", params={"path": path})
        return FileEntry.from_json(data)

    def exists(self, path: str) -> bool:
        """Whether the path exists."""
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory and its contents with
        ``recursive=True``."""
        self._http.request(
            "DELETE",
            self._path,
            params={"path": path, "recursive": "true" if recursive else "false"},
        )

    def mkdir(self, path: str, *, parents: bool = True) -> FileEntry:
        """Create a directory. With ``parents`` (the default) missing
        parents are created and an existing directory is fine; without,
        an existing path is a :class:`Conflict`."""
        data = self._http.json(
            "POST", f"{self._path}/mkdir", json_body={"path": path, "parents": parents}
        )
        return FileEntry.from_json(data)

