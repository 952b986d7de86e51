"""Tests for batchrunner.growing: reading a file while it downloads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from batchrunner.errors import DownloadError
from batchrunner.growing import GrowingFile


def read_in_thread(growing: GrowingFile) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def work() -> None:
        try:
            with growing.open() as reader:
                box["data"] = reader.read()
        except DownloadError as exc:
            box["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    return thread, box


def test_reader_sees_every_chunk_and_ends_only_when_complete(tmp_path: Path) -> None:
    """A reader started on the first chunk gets every byte, and EOF only after finish()."""
    path = tmp_path / "r.csv"
    growing = GrowingFile(path)
    chunks = [b"a,b\n", b"1,2\n" * 1000, b"3,4\n"]
    with path.open("wb", buffering=0) as out:
        out.write(chunks[0])
        growing.grew(len(chunks[0]))
        thread, box = read_in_thread(growing)
        for chunk in chunks[1:]:
            out.write(chunk)
            growing.grew(len(chunk))
        assert thread.is_alive()  # still waiting: the download has not finished
        growing.finish()
    thread.join(timeout=10)
    assert box["data"] == b"".join(chunks)


def test_failed_download_makes_the_reader_raise(tmp_path: Path) -> None:
    """A reader waiting on a download that fails raises instead of returning a short file."""
    path = tmp_path / "r.csv"
    path.write_bytes(b"a,b\n1,2\n")
    growing = GrowingFile(path)
    growing.grew(8)
    thread, box = read_in_thread(growing)
    growing.fail("connection reset")
    thread.join(timeout=10)
    assert "data" not in box
    assert "connection reset" in str(box["error"])


def test_restarted_download_is_read_correctly(tmp_path: Path) -> None:
    """Truncated and rewritten from byte 0, the same bytes reach the reader once."""
    path = tmp_path / "r.csv"
    body = b"x,y\n" + b"5,6\n" * 5000
    growing = GrowingFile(path)
    with path.open("wb", buffering=0) as out:
        out.write(body[:9000])
        growing.grew(9000)
        thread, box = read_in_thread(growing)
        out.seek(0)
        out.truncate()
        growing.grew(0)
        out.write(body)
        growing.grew(len(body))
        growing.finish()
    thread.join(timeout=10)
    assert box["data"] == body


def test_wait_for_returns_on_size_or_end(tmp_path: Path) -> None:
    """wait_for returns once enough bytes exist, or at once when the download is over."""
    path = tmp_path / "r.csv"
    path.write_bytes(b"0123456789")
    growing = GrowingFile(path)
    growing.wait_for(5)
    growing.finish()
    growing.wait_for(10**9)
    growing.wait_complete()
    failed = GrowingFile(tmp_path / "other.csv")
    failed.fail("gone")
    with pytest.raises(DownloadError, match="gone"):
        failed.wait_complete()
