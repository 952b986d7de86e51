"""Tests for batchrunner.csvchunks: cutting a CSV at record ends and parsing chunks in order."""

from __future__ import annotations

import csv
import io
import os
import random
import sys
import threading
from collections.abc import Generator

import pyarrow as pa
import pytest

from batchrunner import csvchunks
from batchrunner.csvchunks import Chunk, Handoff, cut_chunks, last_record_end, parse_ahead
from batchrunner.errors import ConversionError

WAIT_S = 10  # a bound on waits for other threads, never reached when the code is right


def chunks_of(data: bytes, chunk_size: int, *, max_row_bytes: int = 1 << 30) -> list[Chunk]:
    """Every chunk ``cut_chunks`` makes of ``data``."""
    source = io.BytesIO(data)
    return list(cut_chunks(source, "in.csv", chunk_size, None, max_row_bytes=max_row_bytes))


def records(text: str) -> list[list[str]]:
    """The records Python's csv module reads from ``text``."""
    return list(csv.reader(io.StringIO(text, newline="")))


def tricky_csv(rows: int, seed: int) -> bytes:
    """A CSV whose fields hold quotes, commas, LF and CRLF, with LF or CRLF record ends."""
    rng = random.Random(seed)
    pieces = ["plain", 'say "hi"', "a,b", "line\nbreak", "crlf\r\ninside", "", '""', "\n"]
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text", "more"])
    for i in range(rows):
        writer.writerow([i, rng.choice(pieces) * rng.randint(1, 3), rng.choice(pieces)])
    return out.getvalue().encode()


@pytest.mark.parametrize(
    ("data", "start", "odd", "expected"),
    [
        (b"a,b\n1,2\n3", 0, False, 8),
        (b"no line end", 0, False, None),
        (b'1,"x\ny"\n2,"open\n', 0, True, 8),
        (b'1,"x\ny', 0, True, None),
        (b'1,"a""b"\n2', 0, False, 9),
        (b'1,2\n3,"\n"\n', 4, False, 10),
        (b"1,2\n3,4\n", 8, False, None),
    ],
)
def test_last_record_end_skips_line_feeds_inside_quotes(
    data: bytes, start: int, odd: bool, expected: int | None
) -> None:
    """The cut is after the last LF with an even number of quotes before it, past ``start``."""
    assert last_record_end(data, start, odd) == expected


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 1 << 20])
def test_chunks_rebuild_the_file_and_each_holds_whole_records(chunk_size: int) -> None:
    """Chunks concatenate to the input, start at their offsets, and each parses on its own."""
    data = tricky_csv(300, seed=chunk_size)
    chunks = chunks_of(data, chunk_size)
    assert b"".join(c.data.to_pybytes() for c in chunks) == data
    assert [c.index for c in chunks] == list(range(len(chunks)))
    parsed: list[list[str]] = []
    for chunk in chunks:
        body = chunk.data.to_pybytes()
        assert data[chunk.offset : chunk.offset + len(body)] == body
        assert body.endswith(b"\n")
        assert chunk.has_cr == (b"\r" in body)
        parsed += records(body.decode())
    assert parsed == records(data.decode())
    if chunk_size < 1000:
        assert len(chunks) > 10


def test_a_file_without_a_final_line_break_keeps_its_last_record() -> None:
    """The bytes after the last record end form the last chunk."""
    chunks = chunks_of(b"a,b\n1,2\n3,4", 4)
    assert [c.data.to_pybytes() for c in chunks] == [b"a,b\n", b"1,2\n", b"3,4"]


def test_an_empty_file_has_no_chunks() -> None:
    """Nothing to read gives no chunk at all."""
    assert chunks_of(b"", 8) == []


def test_a_record_longer_than_the_limit_is_refused_with_its_offset() -> None:
    """A record that outgrows ``max_row_bytes`` raises, naming the file and its offset."""
    data = b"a,b\n1,short\n2," + b"z" * 5000 + b"\n"
    with pytest.raises(ConversionError) as info:
        chunks_of(data, 16, max_row_bytes=1000)
    message = str(info.value)
    assert "in.csv" in message
    assert f"starts at byte offset {data.index(b'2,zz')}" in message


def test_a_set_stop_event_ends_the_chunks_quietly() -> None:
    """With ``stop`` set, cutting ends without a chunk or an error."""
    stop = threading.Event()
    stop.set()
    source = io.BytesIO(b"a\n1\n2\n")
    chunks = cut_chunks(source, "in.csv", 2, stop, max_row_bytes=100)
    assert list(chunks) == []


def numbered_chunks(count: int) -> Generator[Chunk, None, None]:
    """``count`` one-byte chunks, chunk ``i`` holding the byte ``i``."""
    for i in range(count):
        yield Chunk(i, i, pa.py_buffer(bytes([i])), False)


def table_of(chunk: Chunk) -> pa.Table:
    """A one-row table holding the chunk's index."""
    return pa.table({"i": [chunk.index]})


def parser_threads() -> list[str]:
    """Names of reading or parsing threads still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("test-read", "csv-parse"))]


def test_outcomes_come_in_file_order_even_when_parses_finish_out_of_order() -> None:
    """Chunk 0 finishing after chunk 1 is still handed over first."""
    second_done = threading.Event()

    def parse(chunk: Chunk) -> pa.Table:
        if chunk.index == 0:
            assert second_done.wait(WAIT_S)
        elif chunk.index == 1:
            second_done.set()
        return table_of(chunk)

    with parse_ahead(lambda stop: numbered_chunks(20), parse, name="test-read") as outcomes:
        seen = [outcome.table.column("i")[0].as_py() for outcome in outcomes if outcome.table]
    assert second_done.is_set()
    assert seen == list(range(20))
    assert parser_threads() == []


def test_a_failed_parse_ends_the_outcomes_with_its_chunk() -> None:
    """The first failing chunk comes last, with its error and bytes; later ones never come."""

    def parse(chunk: Chunk) -> pa.Table:
        if chunk.index == 5:
            raise pa.ArrowInvalid("bad row")
        return table_of(chunk)

    with parse_ahead(lambda stop: numbered_chunks(50), parse, name="test-read") as outcomes:
        got = list(outcomes)
    assert [o.chunk_bytes for o in got[:5]] == [1] * 5
    last = got[-1]
    assert len(got) == 6
    assert last.chunk is not None and last.chunk.index == 5
    assert isinstance(last.error, pa.ArrowInvalid)
    assert parser_threads() == []


def test_a_reading_error_is_handed_over_without_a_chunk() -> None:
    """An error cutting chunks (the file, the download) ends the outcomes, without a chunk."""

    def failing_chunks(stop: threading.Event) -> Generator[Chunk, None, None]:
        yield from numbered_chunks(3)
        raise OSError("disk gone")

    with parse_ahead(failing_chunks, table_of, name="test-read") as outcomes:
        got = list(outcomes)
    *parsed, last = got
    assert last.chunk is None
    assert isinstance(last.error, OSError)
    indexes = [o.table.column("i")[0].as_py() for o in parsed if o.table is not None]
    assert indexes == list(range(len(parsed)))  # parses finished before it, in order
    assert parser_threads() == []


def test_leaving_early_stops_the_reader_and_joins_every_thread() -> None:
    """A caller that stops after one outcome leaves no reading or parsing thread behind."""
    produced: list[int] = []
    closed = threading.Event()

    def endless(stop: threading.Event) -> Generator[Chunk, None, None]:
        try:
            i = 0
            while not stop.is_set():
                produced.append(i)
                yield Chunk(i, i, pa.py_buffer(b"x"), False)
                i += 1
        finally:
            closed.set()

    with parse_ahead(endless, table_of, name="test-read") as outcomes:
        first = next(outcomes)
    assert first.table is not None
    assert closed.is_set()
    assert parser_threads() == []
    assert len(produced) <= 1 + csvchunks.PARSE_THREADS + csvchunks.PARSED_AHEAD + 1


def test_handoff_close_releases_a_waiting_producer() -> None:
    """Closing the handoff makes a put waiting for room return False instead of blocking."""
    handoff: Handoff[int] = Handoff(1)
    assert handoff.put(1)
    outcome: list[bool] = []
    producer = threading.Thread(target=lambda: outcome.append(handoff.put(2)))
    producer.start()
    handoff.close()
    producer.join()
    assert outcome == [False]
    assert not handoff.put(3)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
def test_parsing_threads_run_at_lower_priority() -> None:
    """A parsing thread lowers its own priority, leaving the caller's thread untouched."""
    seen: list[int] = []

    def parse_thread() -> None:
        csvchunks.deprioritize()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=parse_thread)
    thread.start()
    thread.join()
    assert seen == [min(mine + csvchunks.PARSE_NICENESS, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
