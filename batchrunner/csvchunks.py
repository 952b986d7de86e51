"""Cut a CSV into chunks of whole records; parse chunks ahead on a few threads, in file order.

The two mechanisms behind :mod:`batchrunner.convert`'s use of both cores, kept apart from
what a chunk is parsed into and how errors are reported:

* :func:`cut_chunks` reads a CSV (a file, or one still being downloaded) into chunks of
  about ``chunk_size`` bytes, each ending just after a line feed outside quotes;
* :func:`parse_ahead` runs a reading thread that cuts chunks and parses them on a pool of
  ``PARSE_THREADS`` threads, handing the outcomes to the caller in file order, with memory
  bounded by the chunks in flight.

A record ends at a line feed preceded by an even number of ``"`` bytes (a doubled quote adds
two). That holds for RFC 4180, where a field holding a quote is quoted; a bare quote inside
an unquoted field (``5" screen``), which Sigma never writes, would make the parser and the
cut disagree. Line breaks are LF or CRLF (a bare CR is not a cut).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

import pyarrow as pa

from batchrunner.errors import ConversionError

__all__ = [
    "PARSED_AHEAD",
    "PARSE_NICENESS",
    "PARSE_THREADS",
    "Chunk",
    "Handoff",
    "Parsed",
    "cut_chunks",
    "last_record_end",
    "parse_ahead",
]

T = TypeVar("T")

#: Parsing threads. Parsing and reading take ~45% of a conversion's CPU, Parquet encoding
#: (one thread: the writer, which nothing can split) ~55%: the writer is the bottleneck, and
#: two parsers keep up with it even for results that are costlier to parse than to encode.
PARSE_THREADS = 2
#: How much lower (Linux nice) the parsing threads run, so that they never take the writer's
#: core, nor the event loop's while it downloads: they only need what is left, and parsed
#: chunks wait for the writer anyway. Measured in the runner on the 1.1 GB CSV, medians of
#: three: 5.9 s with, 6.4 s without (0.85 and 0.93 × the bare streaming conversion).
PARSE_NICENESS = 10
#: Parsed chunks waiting for the writer, which takes a row group (~250k rows, ~6 chunks) at a
#: time: with 2 it waited for the parsers ~1 s per GB; each one more holds ~9 MB.
PARSED_AHEAD = 4


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole records of the CSV: ``data`` starts at byte ``offset``; chunk 0 holds the header.

    ``has_cr``: whether it holds a CR byte (the converter then parses it as one block).
    """

    index: int
    offset: int
    data: pa.Buffer
    has_cr: bool


@dataclass(frozen=True, slots=True)
class Parsed:
    """One chunk's outcome, in file order: its table or the error parsing it raised.

    A failed chunk is kept to locate the error in; a parsed one is not (its bytes would stay
    in memory while its table waits for the writer). An error without a chunk is one of the
    reading itself (the file, the download).
    """

    chunk: Chunk | None
    table: pa.Table | None = None
    error: BaseException | None = None
    chunk_bytes: int = 0


# --- cutting -------------------------------------------------------------------------------


def cut_chunks(
    source: io.RawIOBase,
    where: str,
    chunk_size: int,
    stop: threading.Event | None,
    *,
    max_row_bytes: int,
) -> Generator[Chunk, None, None]:
    """``source`` (header first) as chunks of ~``chunk_size`` bytes cut after whole records.

    A record longer than a chunk makes its chunk grow (doubling) until it holds the record;
    past ``max_row_bytes`` it raises :class:`ConversionError` naming ``where`` and the
    record's byte offset. Stops early, without an error, once ``stop`` is set.
    """
    carry: bytes | bytearray = b""  # the start of a record no chunk has held yet
    carry_odd = False  # whether `carry` holds an odd number of quotes
    offset = index = 0  # the file offset of carry[0], the next chunk's number
    wanted = chunk_size
    while True:
        buffer = bytearray(len(carry) + wanted)
        buffer[: len(carry)] = carry
        filled = _fill(source, buffer, len(carry), stop)
        if stop is not None and stop.is_set():
            return
        if filled < len(buffer):  # the end of the file
            if filled:
                has_cr = buffer.find(b"\r", 0, filled) >= 0
                yield Chunk(index, offset, pa.py_buffer(buffer)[:filled], has_cr)
            return
        odd = carry_odd ^ (buffer.count(b'"', len(carry)) % 2 == 1)
        cut = last_record_end(buffer, len(carry), odd)
        if cut is None:
            if len(buffer) > max_row_bytes:
                limit = max_row_bytes >> 20
                raise ConversionError(
                    where,
                    f"a row of over {limit} MiB starts at byte offset {offset}; rows over "
                    f"{limit} MiB are refused; select less text per row, e.g. "
                    "substr(column, 1, 1000000)",
                )
            carry, carry_odd = buffer, odd
            wanted = len(buffer)  # double, so a long row is copied O(log n) times
            continue
        has_cr = buffer.find(b"\r", 0, cut) >= 0
        yield Chunk(index, offset, pa.py_buffer(buffer)[:cut], has_cr)
        # The cut sits at even parity, so the tail has the whole buffer's parity.
        carry, carry_odd = bytes(memoryview(buffer)[cut:]), odd
        offset += cut
        index += 1
        wanted = chunk_size


def _fill(source: io.RawIOBase, buffer: bytearray, start: int, stop: threading.Event | None) -> int:
    """Read into ``buffer[start:]`` until it is full or the file ends; return the bytes held."""
    view = memoryview(buffer)
    filled = start
    with view:
        while filled < len(view) and not (stop is not None and stop.is_set()):
            got = source.readinto(view[filled:])
            if not got:
                break
            filled += got
    return filled


def last_record_end(data: bytes | bytearray, start: int, odd: bool) -> int | None:
    """The index just past the last line feed outside quotes in ``data[start:]``, if any.

    ``data[:start]`` holds no record end; ``odd`` says whether all of ``data`` holds an odd
    number of quotes. Walks back from the end: a line feed with an odd number of quotes
    before it is inside a quoted field, and so is every line feed back to the quote that
    opened that field, so the walk jumps there. Each byte is looked at most twice.
    """
    end = len(data)
    while True:
        newline = data.rfind(b"\n", start, end)
        if newline < 0:
            return None
        odd ^= data.count(b'"', newline, end) % 2 == 1  # now: the quotes before `newline`
        if not odd:
            return newline + 1
        quote = data.rfind(b'"', start, newline)
        if quote < 0:
            return None
        end, odd = quote, False  # one quote fewer than before `newline`: an even count


# --- parsing ahead -------------------------------------------------------------------------


@contextmanager
def parse_ahead(
    chunks: Callable[[threading.Event], Generator[Chunk, None, None]],
    parse: Callable[[Chunk], pa.Table],
    *,
    name: str,
) -> Iterator[Iterator[Parsed]]:
    """The parsed chunks in file order, parsed ahead of the caller by a reading thread.

    The reading thread (named ``name``) runs ``chunks(stop)`` and hands each chunk to a pool
    of PARSE_THREADS running ``parse``, keeping at most that many parses in flight and
    PARSED_AHEAD results queued: memory is bounded, whatever the file's size. Leaving the
    block sets ``stop`` and joins the threads; a reading thread waiting for a growing file's
    next bytes notices at the next bytes or at the download's end. The outcomes end at the
    first error.
    """
    handoff: Handoff[Parsed] = Handoff(PARSED_AHEAD)

    def produce() -> None:
        try:
            _produce(chunks(handoff.closed), parse, handoff)
        except BaseException as exc:  # the file or the download failed: the caller raises it
            handoff.put(Parsed(None, error=exc))

    def outcomes() -> Iterator[Parsed]:
        while (outcome := handoff.get()) is not _END:
            yield outcome
            if outcome.error is not None:  # nothing follows an error
                return

    thread = threading.Thread(target=produce, name=name)
    thread.start()
    try:
        yield outcomes()
    finally:
        handoff.close()
        thread.join()


def _produce(
    chunks: Generator[Chunk, None, None],
    parse: Callable[[Chunk], pa.Table],
    handoff: Handoff[Parsed],
) -> None:
    """Parse the chunks on the pool, hand the results over in order (reading thread)."""
    pool = ThreadPoolExecutor(
        PARSE_THREADS, thread_name_prefix="csv-parse", initializer=deprioritize
    )
    with closing(chunks), pool:
        in_flight: deque[tuple[Chunk, Future[pa.Table]]] = deque()
        try:
            # The next chunk is read while the pool parses the ones before it.
            for chunk in chunks:
                if len(in_flight) >= PARSE_THREADS and not _hand_over(in_flight, handoff):
                    return
                in_flight.append((chunk, pool.submit(parse, chunk)))
            while in_flight:
                if not _hand_over(in_flight, handoff):
                    return
        finally:
            for _, future in in_flight:
                future.cancel()
    handoff.put(_END)


def deprioritize() -> None:
    """Run the calling (parsing) thread PARSE_NICENESS lower, where threads have their own."""
    if sys.platform != "linux":  # elsewhere the call would reprioritize the whole process
        return
    with suppress(OSError):
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, niceness + PARSE_NICENESS)


def _hand_over(in_flight: deque[tuple[Chunk, Future[pa.Table]]], handoff: Handoff[Parsed]) -> bool:
    """Wait for the oldest parse and queue its outcome; False once the caller has stopped."""
    chunk, future = in_flight.popleft()
    try:
        outcome = Parsed(None, table=future.result(), chunk_bytes=chunk.data.size)
    except Exception as exc:  # translated by the caller, with the chunk
        outcome = Parsed(chunk, error=exc)
    return handoff.put(outcome) and outcome.error is None


_END = Parsed(None)


class Handoff(Generic[T]):
    """A bounded queue from the reading thread to the writer; closing it stops the reader."""

    def __init__(self, capacity: int) -> None:
        self._cond = threading.Condition()
        self._items: deque[T] = deque()
        self._capacity = capacity
        self.closed = threading.Event()

    def put(self, item: T) -> bool:
        """Queue ``item``, waiting for room; False (and dropped) once closed."""
        with self._cond:
            while len(self._items) >= self._capacity and not self.closed.is_set():
                self._cond.wait()
            if self.closed.is_set():
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self) -> T:
        """The next item, waiting for one (the reading thread always ends with one)."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """Drop what is queued and refuse more: the writer has stopped."""
        with self._cond:
            self.closed.set()
            self._items.clear()
            self._cond.notify_all()
