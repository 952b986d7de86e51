"""A file that is still being downloaded, readable by a converter thread as it grows.

Conversion is the slow half of a result's journey (~150 MB/s on one core against several
hundred MB/s for the download), so the converter starts on the first bytes instead of
waiting for the last: end-to-end time becomes about the conversion's alone.

The downloader (on the event loop) calls :meth:`GrowingFile.grew` after each chunk it
writes, then :meth:`finish` or :meth:`fail`; readers (worker threads) block on a condition
until there is more to read, never on a sleep. A download that restarts from byte 0 rewrites
the same bytes at the same offsets, so a reader part-way through simply waits until the file
has grown past its position again.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Literal

from batchrunner.errors import DownloadError

State = Literal["growing", "done", "failed"]


class GrowingFile:
    """The shared state of one download in progress and the readers of its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._version = 0
        self._state: State = "growing"
        self._reason = ""

    # -- the writer's side (event loop) ---------------------------------------------------

    def grew(self, nbytes: int) -> None:
        """More bytes are on disk."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def finish(self) -> None:
        """The download is complete and checked."""
        self._end("done", "")

    def fail(self, reason: str = "the download did not complete") -> None:
        """The download failed or was cancelled: readers raise instead of waiting."""
        self._end("failed", reason)

    def _end(self, state: State, reason: str) -> None:
        with self._cond:
            if self._state == "growing":
                self._state, self._reason = state, reason
            self._cond.notify_all()

    # -- the readers' side (worker threads) -------------------------------------------------

    def wait_for(self, nbytes: int) -> None:
        """Block until the file holds ``nbytes`` or the download has ended."""
        with self._cond:
            while self._state == "growing" and self._size() < nbytes:
                self._cond.wait()
            self._raise_if_failed()

    def wait_complete(self) -> None:
        """Block until the download has ended; raise if it failed."""
        with self._cond:
            while self._state == "growing":
                self._cond.wait()
            self._raise_if_failed()

    def open(self) -> GrowingReader:
        """A reader from byte 0 that waits for data instead of seeing a premature end."""
        self.wait_for(1)  # the downloader has created the file by now
        return GrowingReader(self)

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def _raise_if_failed(self) -> None:
        if self._state == "failed":
            raise DownloadError(self.path.name, self._reason)

    def _wait_for_change(self, seen: int) -> bool:
        """Wait until more bytes arrive; False once the download is complete."""
        with self._cond:
            while self._state == "growing" and self._version == seen:
                self._cond.wait()
            self._raise_if_failed()
            return self._state == "growing"

    def _snapshot(self) -> int:
        with self._cond:
            return self._version


class GrowingReader(io.RawIOBase):
    """Sequential reads of a :class:`GrowingFile`; end of file only when it is complete."""

    def __init__(self, growing: GrowingFile) -> None:
        super().__init__()
        self._growing = growing
        self._file = open(growing.path, "rb")  # noqa: SIM115 - closed in close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while True:
            seen = self._growing._snapshot()
            got = self._file.readinto(buffer)
            if got:
                return got
            if not self._growing._wait_for_change(seen):
                # Complete: whatever arrived between our read and the end is there now.
                return self._file.readinto(buffer) or 0

    def close(self) -> None:
        self._file.close()
        super().close()
