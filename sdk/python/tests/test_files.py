"""Files in a sandbox: upload, download, list, stat, mkdir, remove."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from hearth import Conflict, InvalidArgument, NotFound, Sandbox

ROOT = "/tmp/sdk-files"


def test_binary_round_trip_of_a_mebibyte(sandbox: Sandbox) -> None:
    data = os.urandom(1024 * 1024)
    written = sandbox.files.write(f"{ROOT}/blob.bin", data)
    assert (written.path, written.size) == (f"{ROOT}/blob.bin", len(data))
    assert sandbox.files.read(f"{ROOT}/blob.bin") == data
    # The guest sees the same bytes.
    digest = sandbox.exec(["sha256sum", f"{ROOT}/blob.bin"]).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()


def test_streamed_upload_and_download(sandbox: Sandbox) -> None:
    data = os.urandom(700_000)
    assert sandbox.files.write(f"{ROOT}/from-file.bin", io.BytesIO(data)).size == len(data)
    chunks = [b"one,", b"two,", b"three"]
    assert sandbox.files.write(f"{ROOT}/from-chunks.txt", iter(chunks)).size == 13
    sink = io.BytesIO()
    assert sandbox.files.download(f"{ROOT}/from-file.bin", sink) == len(data)
    assert sink.getvalue() == data
    assert sandbox.files.read_text(f"{ROOT}/from-chunks.txt") == "one,two,three"


def test_text_written_is_seen_by_commands(sandbox: Sandbox) -> None:
    sandbox.files.write(f"{ROOT}/hello.txt", "héllo\n")
    assert sandbox.exec(["cat", f"{ROOT}/hello.txt"]).stdout == "héllo\n"
    sandbox.exec(["sh", "-c", f"echo made-inside > {ROOT}/inside.txt"])
    assert sandbox.files.read(f"{ROOT}/inside.txt") == b"made-inside\n"


def test_list_stat_mkdir_remove(sandbox: Sandbox) -> None:
    base = f"{ROOT}/tree"
    made = sandbox.files.mkdir(f"{base}/a/b")
    assert made.is_dir and made.name == f"{base}/a/b"
    sandbox.files.mkdir(f"{base}/a/b")  # parents=True: existing is fine
    with pytest.raises(Conflict):
        sandbox.files.mkdir(f"{base}/a/b", parents=False)
    sandbox.files.write(f"{base}/a/file.txt", b"12345")

    entries = {e.name: e for e in sandbox.files.list(f"{base}/a")}
    assert set(entries) == {"b", "file.txt"}
    assert entries["b"].type == "dir"
    assert entries["file.txt"].is_file and entries["file.txt"].size == 5

    stat = sandbox.files.stat(f"{base}/a/file.txt")
    assert (stat.name, stat.type, stat.size) == (f"{base}/a/file.txt", "file", 5)
    assert stat.mode & 0o777 == 0o644
    assert stat.modified_ms > 0
    assert sandbox.files.exists(f"{base}/a/file.txt")

    sandbox.files.remove(f"{base}/a/file.txt")
    assert not sandbox.files.exists(f"{base}/a/file.txt")
    with pytest.raises(Conflict) as caught:
        sandbox.files.remove(base)  # not empty
    assert caught.value.code == "not_empty"
    sandbox.files.remove(base, recursive=True)
    with pytest.raises(NotFound):
        sandbox.files.stat(base)


def test_file_errors(sandbox: Sandbox) -> None:
    with pytest.raises(NotFound):
        sandbox.files.read("/no/such/file")
    with pytest.raises(Conflict) as caught:
        sandbox.files.read("/tmp")
    assert caught.value.code == "is_a_directory"
    with pytest.raises(InvalidArgument) as bad:
        sandbox.files.write("relative.txt", b"x")
    assert bad.value.field == "path"
    with pytest.raises(NotFound):
        sandbox.files.list("/no/such/dir")
