"""CSV → Parquet: convert one Sigma result CSV into a typed, zstd-compressed Parquet file.

The CSV is cut into chunks of ``chunk_size`` bytes at record boundaries and a reading thread
feeds them to parsing threads (both by :mod:`batchrunner.csvchunks`); each chunk is parsed
with ``pyarrow.csv.read_csv``, every column pinned to a type chosen by
:mod:`batchrunner.coltypes`, and the caller's thread writes the parsed
chunks, in file order, as row groups of ``row_group_rows`` rows (or ``row_group_bytes``) with
``pq.ParquetWriter`` to a file this module opens, flushes and fsyncs. The engine renames it
into place. Memory is bounded by the chunks in flight, never by the file's size.

Why chunks: pyarrow's streaming reader (``open_csv``) parses on one thread whatever its
``use_threads`` says, so parsing and Parquet encoding shared one core. Parsing chunks on
other threads while the caller encodes uses both cores. On a 1.1 GB balance-transactions
CSV (2 cores): 4.9 s alone against 6.8 s for the streaming reader (220 against 160 MB/s);
inside ``batchrunner run``, download included, 6.0 s against 7.5 s, where the bare
streaming conversion of the downloaded file takes 6.6 s; peak RSS of the runner ~370 MB
(~325 MB before), the same for a 0.25 GB export.

Reading rules (Sigma's CSV: UTF-8, optional BOM, RFC 4180 quoting, NULL as an empty field):

* only an unquoted empty field is NULL; ``""`` stays an empty string and text such as ``N/A``,
  ``null``, ``NaN`` or ``None`` stays text (pyarrow's default null markers would erase it);
* booleans are exactly ``true``/``false``; quoted fields may hold line breaks;
* timestamps (``YYYY-MM-DD HH:MM:SS.fff``, UTC, no zone) are parsed by the CSV reader as naive
  ``timestamp[ms]`` and relabelled ``timestamp[ms, tz=UTC]`` (a zero-copy cast). Reading them
  as text and casting measured ~20% slower overall, and the reader refuses zone-less text for
  a zoned type outright.
* chunks are cut after a line feed outside quotes (RFC 4180; see :mod:`batchrunner.csvchunks`).

Two rare cases cost more than one read:

* a later value contradicts a type chosen from Sigma's schema or from the sample (an integer
  column that turns to text 3 M rows in): the conversion starts again with that column
  widened to string. A type the job gave is never widened: the value is reported instead.
* a row longer than a chunk: the chunk grows until it holds the row (memory follows the
  longest row, up to ``MAX_ROW_BYTES``).

A chunk holding a CR byte is parsed as one block, and so is one whose rows straddle more than
two blocks: this keeps clear of an Arrow bug (apache/arrow#51368, open in pyarrow 26) that
silently drops the LF of a CRLF inside a quoted field when a block boundary falls between the
CR and the LF. The streaming reader this module used before was exposed to it at any block
size. Chunks themselves are cut only after an LF outside quotes, never after a CR.

Every pyarrow and OS error is translated here into :class:`ConversionError` (the CSV) or
:class:`OutputError` (the Parquet file), with the data row, line or byte offset where possible:
each chunk knows where it starts in the file, so a failing chunk is located on its own.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchrunner.coltypes import (
    ColumnChoice,
    check_job_types,
    choose_columns,
    csv_schema_for,
    needs_sample,
    widen,
)
from batchrunner.csvchunks import Chunk, Parsed, cut_chunks, parse_ahead
from batchrunner.errors import ConversionError, OutputError
from batchrunner.growing import GrowingFile
from batchrunner.outputs import output_error

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ROW_GROUP_BYTES",
    "DEFAULT_ROW_GROUP_ROWS",
    "ConvertResult",
    "CsvHeader",
    "convert_csv_to_parquet",
    "csv_schema_for",
    "read_header",
]

log = logging.getLogger(__name__)

#: Bytes of CSV parsed as one unit. Converting the 1.1 GB CSV alone, peak RSS: 8 MiB ~390 MB;
#: 16 MiB no faster, ~+100 MB; 4 MiB (with 6 queued) ~5% slower for ~-20 MB.
DEFAULT_CHUNK_SIZE = 8 << 20
#: pyarrow's read block inside a chunk; the cancel event is looked at between the batches of
#: rows of about this many CSV bytes. 1 MiB blocks and one block per chunk parsed equally
#: fast, but one 8 MiB block held ~40 MB more RSS in the runner (431 against 383 MB).
DEFAULT_BLOCK_SIZE = 1 << 20
#: Rows per row group: ~55 MB of Arrow data for a 17-column balance-transactions result,
#: large enough for efficient scans, small enough to buffer.
DEFAULT_ROW_GROUP_ROWS = 250_000
#: ...but a wide result (80-column charges) ends its row group at this many Arrow bytes.
DEFAULT_ROW_GROUP_BYTES = 64 << 20
#: How much of the file's head is read as text to infer the open columns' types.
SAMPLE_BYTES = 4 << 20
#: A header line longer than this is not a Sigma result.
HEADER_LIMIT = 1 << 20
#: A single CSV row longer than this is refused: converting one row takes several times its
#: size in memory (the grown chunk, parsed copy, Arrow string, Parquet encoding and
#: compression buffers); a 100 MB field peaked at ~840 MB RSS (the streaming reader: ~820).
MAX_ROW_BYTES = 128 << 20

#: What to do about a result file that cannot be Sigma's: the rerun runs the query again.
REFETCH = "rerun to run the query again; if it recurs, report the query run to Stripe"

_BOM = codecs.BOM_UTF8
_MAX_SHOWN = 240
_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): (.*)", re.DOTALL)
_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")
_INVALID_VALUE = re.compile(r"invalid value '(.*)'\Z", re.DOTALL)
_STRADDLING = "straddl"  # "straddling object straddles two block boundaries"


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What one conversion produced; ``widened`` names columns re-read as string."""

    rows: int
    columns: tuple[str, ...]
    parquet_bytes: int
    csv_bytes: int
    row_groups: int
    seconds: float
    widened: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CsvHeader:
    """A CSV's column names and whether anything follows the header row's line break."""

    names: tuple[str, ...]
    has_rows: bool


@dataclass(frozen=True, slots=True)
class _Written:
    rows: int
    row_groups: int


@dataclass(frozen=True, slots=True)
class _Contradicted:
    """A later value did not parse as a column's chosen type: re-read it as string."""

    column: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Reading:
    """How the passes over one CSV read it."""

    src: Path
    header: CsvHeader
    block_size: int
    chunk_size: int
    cancel: threading.Event | None
    growing: GrowingFile | None


def convert_csv_to_parquet(
    src: Path,
    dest: Path,
    *,
    column_types: Mapping[str, str] | None = None,
    sql: str | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    block_size: int = DEFAULT_BLOCK_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression: str = "zstd",
    cancel: threading.Event | None = None,
    growing: GrowingFile | None = None,
) -> ConvertResult:
    """Convert the CSV at ``src`` into Parquet at ``dest`` (written whole and fsynced).

    Blocking; run it in a worker thread (it starts its own reading and parsing threads and
    joins them before returning). Setting ``cancel`` stops it within one read block and
    raises :class:`ConversionError`; the caller removes ``dest``. With ``growing``, ``src`` is
    still being downloaded: it is read as it grows. Example::

        result = convert_csv_to_parquet(
            Path("run.csv"), Path("run.parquet.tmp"),
            column_types={"amount": "decimal(18,2)"},
            sql="select id, amount, created from charges",
        )
    """
    if min(row_group_rows, row_group_bytes, block_size, chunk_size) < 1:
        raise ValueError(
            "row_group_rows, row_group_bytes, block_size and chunk_size must be positive"
        )
    started = time.perf_counter()
    where = str(src)
    if growing is not None:
        growing.wait_for(HEADER_LIMIT + 1)
    header = read_header(src)
    try:
        check_job_types(header.names, column_types)
    except ValueError as exc:
        raise ConversionError(where, str(exc)) from None
    reading = _Reading(src, header, block_size, chunk_size, cancel, growing)

    chosen: tuple[ColumnChoice, ...] | None = None
    widened: list[str] = []
    while True:
        choices = chosen or _choose_columns(reading, column_types, sql)
        chosen = choices
        with closing(_batches(reading, choices)) as batches:
            outcome = _write_parquet(
                batches if header.has_rows else iter(()),
                dest,
                choices,
                row_group_rows=row_group_rows,
                row_group_bytes=row_group_bytes,
                compression=compression,
                check_cancel=lambda: _check_cancel(src, cancel),
            )
        if isinstance(outcome, _Written):
            break
        # Each round widens one more column, so this ends after at most len(header) rounds.
        log.info(
            "%s: column %r does not fit its type (%s); re-reading it as string",
            where,
            outcome.column,
            outcome.detail,
        )
        widened.append(outcome.column)
        chosen = widen(choices, outcome.column)
    if growing is not None:
        growing.wait_complete()
    with _reading(where):
        csv_bytes = os.stat(src).st_size
    with _writing(str(dest)):
        parquet_bytes = os.stat(dest).st_size
    return ConvertResult(
        rows=outcome.rows,
        columns=header.names,
        parquet_bytes=parquet_bytes,
        csv_bytes=csv_bytes,
        row_groups=outcome.row_groups,
        seconds=time.perf_counter() - started,
        widened=tuple(widened),
    )


# --- the header ----------------------------------------------------------------------------

# One token of a CSV record: a quoted stretch (a doubled quote is two adjacent stretches) or a
# run of anything but quotes and line breaks.
_TOKEN = re.compile(rb'"[^"]*"|[^"\r\n]+')


def read_header(src: Path) -> CsvHeader:
    """Read and check the header row: UTF-8 (BOM dropped), unique non-empty names, CSV at all.

    Raises :class:`ConversionError` for an empty file, an HTML/JSON/binary body, a header that
    is not UTF-8, an empty or a duplicate column name.
    """
    where = str(src)
    with _reading(where), open(src, "rb") as f:
        head = f.read(HEADER_LIMIT + 1)
    truncated = len(head) > HEADER_LIMIT
    if not head:
        raise ConversionError(where, f"the file is empty (0 bytes), not a CSV result; {REFETCH}")
    body = head.removeprefix(_BOM)
    not_csv = _sniff_not_csv(body)
    if not_csv:
        raise ConversionError(where, f"{not_csv}; {REFETCH}")
    end = _record_end(body)
    if end is None or (end == len(body) and truncated):
        if truncated:
            raise ConversionError(
                where,
                f"no header row within the first {HEADER_LIMIT} bytes: not a CSV result; "
                + REFETCH,
            )
        raise ConversionError(where, f"the header row has an unterminated quoted name; {REFETCH}")
    try:
        text = body[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = len(head) - len(body) + exc.start
        raise ConversionError(
            where, f"invalid UTF-8 in the header row at byte offset {offset}; {REFETCH}"
        ) from None
    try:
        names = tuple(next(csv.reader([text]), []))
    except csv.Error as exc:
        raise ConversionError(where, f"the header row is not CSV: {exc}; {REFETCH}") from None
    _check_names(where, names)
    rest = body[end:]
    rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:]
    return CsvHeader(names=names, has_rows=truncated or bool(rest))


def _sniff_not_csv(body: bytes) -> str | None:
    start = body.lstrip()
    if not start:
        return "the file holds only whitespace: no header row"
    if b"\x00" in body[:65536]:
        return "the file holds binary data (NUL bytes), not CSV text"
    if start[:1] == b"<":
        return "the body starts with '<': it looks like HTML or XML (an error page?), not CSV"
    if start[:1] in (b"{", b"["):
        return "the body starts like JSON (an API error?), not CSV"
    return None


def _record_end(body: bytes) -> int | None:
    """Index of the line break ending the first record; len(body) if none; None if unclosed."""
    pos = 0
    while pos < len(body):
        if body[pos] in b"\r\n":
            return pos
        token = _TOKEN.match(body, pos)
        if token is None:
            return None
        pos = token.end()
    return pos


def _check_names(where: str, names: Sequence[str]) -> None:
    first_seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not name:
            raise ConversionError(
                where,
                f"column {position} of the header has an empty name; give it an alias in the SQL",
            )
        if name in first_seen:
            raise ConversionError(
                where,
                f"duplicate column name {name!r} (columns {first_seen[name]} and {position}); "
                "Parquet needs unique names: alias one of them in the SQL, e.g. "
                f"`b.{name} AS b_{name}`",
            )
        first_seen[name] = position


# --- reading ---------------------------------------------------------------------------------


def _schema(choices: Sequence[ColumnChoice]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type) for c in choices])


def _read_type(final: pa.DataType) -> pa.DataType:
    """What the CSV reader parses a column as: zoned timestamps as naive (then relabelled)."""
    if pa.types.is_timestamp(final) and final.tz is not None:
        return pa.timestamp(final.unit)
    return final


def _batches(
    reading: _Reading,
    choices: Sequence[ColumnChoice],
    *,
    limit: int | None = None,
) -> Generator[pa.RecordBatch, None, None]:
    """The data rows as batches of the final schema, in file order.

    Without ``limit``, chunks are parsed ahead on the parsing threads; with it (the
    sample), chunks of at most SAMPLE_BYTES are parsed here until ``limit`` Arrow bytes.
    Raises ``pa.ArrowInvalid`` for a value that contradicts a widenable column type (see
    :func:`_contradiction`) and :class:`ConversionError` for everything else.
    """
    src, cancel = reading.src, reading.cancel
    produced = rows_before = 0
    _check_cancel(src, cancel)
    if limit is None:
        parsed: AbstractContextManager[Iterator[Parsed]] = _parsed_ahead(reading, choices)
    else:
        chunk_size = min(reading.chunk_size, SAMPLE_BYTES)
        parsed = closing(_parsed_here(reading, choices, chunk_size))
    with parsed as outcomes:
        for outcome in outcomes:
            if outcome.error is not None:
                if outcome.chunk is None:
                    raise outcome.error
                raise _chunk_failure(outcome.error, reading, choices, outcome.chunk, rows_before)
            table = outcome.table
            assert table is not None and outcome.chunk_bytes > 0
            slice_rows = max(1, table.num_rows * reading.block_size // outcome.chunk_bytes)
            for batch in table.to_batches(max_chunksize=slice_rows):
                _check_cancel(src, cancel)
                yield batch
                produced += batch.nbytes
                if limit is not None and produced >= limit:
                    return
            rows_before += table.num_rows


def _parse_chunk(chunk: Chunk, choices: Sequence[ColumnChoice], reading: _Reading) -> pa.Table:
    """Parse one chunk into a table of the final schema (in a parsing thread)."""
    schema = _schema(choices)
    try:
        table = _read_chunk(chunk, choices, reading.block_size)
    except pa.ArrowInvalid as exc:
        if _STRADDLING not in str(exc):
            raise
        table = _read_chunk(chunk, choices, None)  # a row spans more than two blocks
    if chunk.index == 0 and tuple(table.column_names) != reading.header.names:
        raise ConversionError(
            str(reading.src),
            f"pyarrow reads the header as {table.column_names}, not "
            f"{list(reading.header.names)}; the header row is malformed",
        )
    columns = table.columns
    for i, choice in enumerate(choices):
        if choice.type != _read_type(choice.type):
            columns[i] = columns[i].cast(choice.type)
    return pa.Table.from_arrays(columns, schema=schema)


def _read_chunk(chunk: Chunk, choices: Sequence[ColumnChoice], block_size: int | None) -> pa.Table:
    """Parse a chunk in blocks of ``block_size``, or as one block (None, or a CR inside).

    One block when there is a CR: see the module's note on apache/arrow#51368.
    """
    whole = chunk.data.size + 1
    return pacsv.read_csv(
        pa.BufferReader(chunk.data),
        read_options=pacsv.ReadOptions(
            block_size=whole if block_size is None or chunk.has_cr else block_size,
            # One chunk per parsing thread: pyarrow's own threads would only contend with them.
            use_threads=False,
            column_names=None if chunk.index == 0 else [c.name for c in choices],
        ),
        # newlines_in_values: Sigma's text fields can hold line breaks. Its measured cost on a
        # CSV without any was within run-to-run noise (<10%), so it is always on.
        # A blank line is a row holding one NULL when there is one column (``SELECT NULL AS
        # x``); with more columns it cannot be a row, and is skipped.
        parse_options=pacsv.ParseOptions(
            newlines_in_values=True, ignore_empty_lines=len(choices) > 1
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c.name: _read_type(c.type) for c in choices},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["true"],
            false_values=["false"],
        ),
    )


def _parsed_here(
    reading: _Reading, choices: Sequence[ColumnChoice], chunk_size: int
) -> Generator[Parsed, None, None]:
    """Read and parse chunk after chunk in this thread (the sample: a few MB, no read-ahead)."""
    with closing(_chunks(reading, chunk_size, None)) as chunks:
        for chunk in chunks:
            try:
                table = _parse_chunk(chunk, choices, reading)
            except Exception as exc:  # translated by the caller, with the chunk
                yield Parsed(chunk, error=exc)
                return
            yield Parsed(None, table=table, chunk_bytes=chunk.data.size)


def _parsed_ahead(
    reading: _Reading, choices: Sequence[ColumnChoice]
) -> AbstractContextManager[Iterator[Parsed]]:
    """The parsed chunks in file order, parsed ahead on the parsing threads."""
    return parse_ahead(
        lambda stop: _chunks(reading, reading.chunk_size, stop),
        lambda chunk: _parse_chunk(chunk, choices, reading),
        name=f"csv-read {reading.src.name}",
    )


def _chunks(
    reading: _Reading, chunk_size: int, stop: threading.Event | None
) -> Generator[Chunk, None, None]:
    """The CSV (header first) as chunks of whole records (see :func:`cut_chunks`)."""
    src, growing = reading.src, reading.growing
    with _reading(str(src)):
        source: io.RawIOBase = (
            open(src, "rb", buffering=0) if growing is None else growing.open()  # noqa: SIM115
        )
        with source:
            yield from cut_chunks(source, str(src), chunk_size, stop, max_row_bytes=MAX_ROW_BYTES)


def _choose_columns(
    reading: _Reading, column_types: Mapping[str, str] | None, sql: str | None
) -> tuple[ColumnChoice, ...]:
    """The column types, reading a sample of the file only if the job and SQL leave some open."""
    header = reading.header
    sample = None
    if header.has_rows and needs_sample(header.names, column_types=column_types, sql=sql):
        sample = _read_sample(reading)
    try:
        return choose_columns(header.names, column_types=column_types, sql=sql, sample=sample)
    except ValueError as exc:
        raise ConversionError(str(reading.src), str(exc)) from None


def _read_sample(reading: _Reading) -> pa.Table:
    """The first ~SAMPLE_BYTES of rows, every column as text, to infer the open types from."""
    text = [ColumnChoice(name, pa.string(), "default") for name in reading.header.names]
    with closing(_batches(reading, text, limit=SAMPLE_BYTES)) as batches:
        return pa.Table.from_batches(list(batches), schema=_schema(text))


def _check_cancel(src: Path, cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ConversionError(str(src), "cancelled")


# --- writing -------------------------------------------------------------------------------


def _write_parquet(
    batches: Iterator[pa.RecordBatch],
    dest: Path,
    choices: Sequence[ColumnChoice],
    *,
    row_group_rows: int,
    row_group_bytes: int,
    compression: str,
    check_cancel: Callable[[], None],
) -> _Written | _Contradicted:
    """Write ``batches`` as row groups of ``row_group_rows`` rows (or ``row_group_bytes``).

    ``ParquetWriter.write_batch`` would end a row group per batch (thousands of tiny ones), so
    batches are buffered and each row group is written as one table.
    """
    schema = _schema(choices)
    rows = row_groups = 0
    with _writing(str(dest)), open(dest, "wb") as sink:
        writer = pq.ParquetWriter(sink, schema, compression=compression)
        try:
            pending: list[pa.RecordBatch] = []
            pending_rows = pending_bytes = 0
            try:
                for batch in batches:
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    pending_bytes += batch.nbytes
                    while pending_rows >= row_group_rows or pending_bytes >= row_group_bytes:
                        table = pa.Table.from_batches(pending, schema=schema)
                        cut = min(row_group_rows, table.num_rows)
                        check_cancel()
                        writer.write_table(table.slice(0, cut), row_group_size=cut)
                        rows += cut
                        row_groups += 1
                        rest = table.slice(cut)
                        pending = rest.to_batches()
                        pending_rows = rest.num_rows
                        pending_bytes = rest.nbytes if pending_rows else 0
            except pa.ArrowInvalid as exc:
                contradicted = _contradiction(exc, choices)
                if contradicted is None:
                    raise
                writer.close()
                return contradicted
            if pending_rows:
                check_cancel()
                writer.write_table(
                    pa.Table.from_batches(pending, schema=schema), row_group_size=pending_rows
                )
                rows += pending_rows
                row_groups += 1
        except BaseException:
            with suppress(Exception):
                writer.close()
            raise
        writer.close()
        sink.flush()
        os.fsync(sink.fileno())
    return _Written(rows=rows, row_groups=row_groups)


# --- error translation -----------------------------------------------------------------------


def _chunk_failure(
    exc: BaseException,
    reading: _Reading,
    choices: Sequence[ColumnChoice],
    chunk: Chunk,
    rows_before: int,
) -> BaseException:
    """What to raise for ``exc`` from parsing ``chunk`` (``rows_before`` data rows precede it).

    A contradiction stays a ``pa.ArrowInvalid`` for the writer to widen; ours pass through.
    """
    where = str(reading.src)
    if isinstance(exc, pa.ArrowInvalid):
        if _contradiction(exc, choices) is None:
            return _csv_failure(str(exc), reading, choices, chunk, rows_before)
    elif isinstance(exc, pa.ArrowException | OSError):
        return ConversionError(where, f"cannot read the CSV: {_shorten(str(exc))}")
    return exc


def _csv_failure(
    message: str,
    reading: _Reading,
    choices: Sequence[ColumnChoice],
    chunk: Chunk,
    rows_before: int,
) -> ConversionError:
    """The error to report for what pyarrow could not read in ``chunk``, located in the file."""
    where = str(reading.src)
    located = _Located(reading, chunk, rows_before, len(choices))
    if _RAGGED.search(message):
        ragged = located.ragged_row()
        return ConversionError(where, f"{ragged or _shorten(message)}; {REFETCH}")
    match = _COLUMN_ERROR.match(message)
    column = None
    if match is not None and int(match.group(1)) < len(choices):
        index = int(match.group(1))
        choice = choices[index]
        column = choice.name
        detail = _shorten(match.group(2))
        if "UTF8" not in detail:
            row = located.value_row(choices, index, match.group(2))
            at = f" in {row}" if row else ""
            if choice.source == "job":
                return ConversionError(
                    where,
                    f"column {column!r} is typed {choice.type} by the job's column_types, "
                    f"but a value{at} does not fit: {detail}; change or remove {column!r} in "
                    "[job.types]",
                )
            return ConversionError(where, f"column {column!r}{at}: {detail}")
    if "UTF8" in message:
        return ConversionError(where, f"{located.bad_utf8(column)}; {REFETCH}")
    return ConversionError(where, f"not valid CSV: {_shorten(message)}; {REFETCH}")


class _Located:
    """Finds where a failing chunk's bad record is in the file (failure path only).

    Only the chunk is scanned, so a bad row 1 GB in is located as quickly as one at the top;
    the line number at the chunk's start is counted from the file once, when first needed.
    """

    def __init__(self, reading: _Reading, chunk: Chunk, rows_before: int, columns: int) -> None:
        self._reading = reading
        self._chunk = chunk
        self._rows_before = rows_before
        self._columns = columns
        self._first_line: int | None = None

    def ragged_row(self) -> str | None:
        """Name the first record whose field count differs from the header's.

        None if Python's csv module cannot find it (it parses a few malformed inputs
        differently from pyarrow); the caller then reports pyarrow's own message.
        """
        try:
            for row, line, record in self._records():
                if len(record) != self._columns:
                    snippet = _shorten(",".join(record)[: _MAX_SHOWN // 2])
                    return (
                        f"data row {row} (ending on line {line}) has {len(record)} fields, "
                        f"expected {self._columns} like the header: {snippet!r}"
                    )
        except csv.Error:
            return None
        return None

    def value_row(self, choices: Sequence[ColumnChoice], index: int, detail: str) -> str | None:
        """'data row N (ending on line L)' holding the first value pyarrow could not convert."""
        invalid = _INVALID_VALUE.search(detail.strip())
        if invalid is None:
            return None
        text = [ColumnChoice(c.name, pa.string(), "default") for c in choices]
        try:
            values = _read_chunk(self._chunk, text, None).column(index)
            position = pc.index(values, invalid.group(1)).as_py()
        except (pa.ArrowException, ValueError):
            return None
        if position is None or position < 0:
            return None
        try:
            for row, line, _ in self._records():
                if row == self._rows_before + position + 1:
                    return f"data row {row} (ending on line {line})"
        except csv.Error:
            pass
        return f"data row {self._rows_before + position + 1}"

    def bad_utf8(self, column: str | None) -> str:
        """Say where the first byte that is not UTF-8 sits."""
        in_column = f" in column {column!r}" if column else ""
        data = self._chunk.data.to_pybytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            offset = self._chunk.offset + exc.start
            line = self._line_at_start() + data.count(b"\n", 0, exc.start)
            return (
                f"invalid UTF-8{in_column} at byte offset {offset} (line {line}); "
                "Sigma results must be UTF-8"
            )
        return f"invalid UTF-8{in_column}; Sigma results must be UTF-8"

    def _records(self) -> Iterator[tuple[int, int, list[str]]]:
        """(data row, line it ends on, fields) of each record of the chunk, as the file counts.

        A blank line is skipped like the reader skips it, or is one NULL if there is one column.
        """
        # Fields may be as long as a row may be (the module's default stops at 128 KiB).
        csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
        encoding = "utf-8-sig" if self._chunk.index == 0 else "utf-8"  # drop a leading BOM
        text = self._chunk.data.to_pybytes().decode(encoding, errors="replace")
        records = csv.reader(io.StringIO(text, newline=""))
        if self._chunk.index == 0:
            next(records, None)  # the header
        first_line = self._line_at_start()
        row = self._rows_before
        for record in records:
            if not record:
                if self._columns > 1:
                    continue
                record = [""]
            row += 1
            yield row, first_line - 1 + records.line_num, record

    def _line_at_start(self) -> int:
        """The line number the chunk starts on: 1 + the line feeds before it in the file."""
        if self._first_line is None:
            src, left = self._reading.src, self._chunk.offset
            line = 1
            with _reading(str(src)), open(src, "rb") as f:
                while left > 0 and (piece := f.read(min(left, 1 << 20))):
                    _check_cancel(src, self._reading.cancel)
                    line += piece.count(b"\n")
                    left -= len(piece)
            self._first_line = line
        return self._first_line


def _contradiction(exc: pa.ArrowInvalid, choices: Sequence[ColumnChoice]) -> _Contradicted | None:
    """A value that does not parse as a type we chose (not one the job gave): widen it."""
    match = _COLUMN_ERROR.match(str(exc))
    if match is None or int(match.group(1)) >= len(choices):
        return None
    choice = choices[int(match.group(1))]
    detail = _shorten(match.group(2))
    if choice.source == "job" or pa.types.is_string(choice.type) or "UTF8" in detail:
        return None
    return _Contradicted(column=choice.name, detail=detail)


@contextmanager
def _reading(where: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ConversionError(where, f"cannot read the CSV: {exc.strerror or exc}") from None


@contextmanager
def _writing(where: str) -> Iterator[None]:
    """Errors of the Parquet sink: OS errors are the output's; Arrow's are ours to report."""
    try:
        yield
    except (ConversionError, OutputError):
        raise
    except OSError as exc:  # with what to do: free space, make it writable...
        raise output_error(Path(where), exc) from None
    except pa.ArrowException as exc:
        raise ConversionError(where, f"cannot write Parquet: {_shorten(str(exc))}") from None


def _shorten(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…"
