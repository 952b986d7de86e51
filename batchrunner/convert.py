"""CSV → Parquet: stream one Sigma result CSV into a typed, zstd-compressed Parquet file.

The CSV is read with ``pyarrow.csv.open_csv`` (memory does not grow with the file) with every
column pinned to a type chosen by :mod:`batchrunner.coltypes`, buffered into row groups of
``row_group_rows`` rows (or ``row_group_bytes``), and written with ``pq.ParquetWriter`` to a
file this module opens, flushes and fsyncs. The engine renames it into place.

Reading rules (Sigma's CSV: UTF-8, optional BOM, RFC 4180 quoting, NULL as an empty field):

* only an unquoted empty field is NULL; ``""`` stays an empty string and text such as ``N/A``,
  ``null``, ``NaN`` or ``None`` stays text (pyarrow's default null markers would erase it);
* booleans are exactly ``true``/``false``; quoted fields may hold line breaks;
* timestamps (``YYYY-MM-DD HH:MM:SS.fff``, UTC, no zone) are parsed by the CSV reader as naive
  ``timestamp[ms]`` and relabelled ``timestamp[ms, tz=UTC]`` (a zero-copy cast). Reading them
  as text and casting measured ~20% slower overall, and the reader refuses zone-less text for
  a zoned type outright.

Two rare cases cost a second read instead of a failed job:

* a later value contradicts a type chosen from Sigma's schema or from the sample (an integer
  column that turns to text 3 M rows in): the conversion starts again with that column
  widened to string. A type the job gave is never widened: the value is reported instead.
* a row longer than a read block (the streaming reader cannot hold a row across more than two
  blocks): the file is scanned for its long rows, which are then read on their own with a
  block that fits them, so memory follows the longest row, not the file.

Every pyarrow and OS error is translated here into :class:`ConversionError` (the CSV) or
:class:`OutputError` (the Parquet file), with the row, line or byte offset where possible.
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
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
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
from batchrunner.errors import ConversionError, OutputError
from batchrunner.growing import GrowingFile
from batchrunner.outputs import output_error

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_ROW_GROUP_BYTES",
    "DEFAULT_ROW_GROUP_ROWS",
    "ConvertResult",
    "CsvHeader",
    "convert_csv_to_parquet",
    "csv_schema_for",
    "read_header",
]

log = logging.getLogger(__name__)

#: CSV read block. PERFORMANCE-NOTES measured 8 MiB blocks ~25% faster than 1 MiB, but that
#: run wrote one row group per block, so bigger blocks also meant fewer, larger row groups.
#: With row groups buffered to a fixed size the block size no longer moved throughput here
#: (1 MiB 126–139 MB/s, 8 MiB 127–131 MB/s, three runs each on a 434 MB Stripe-like CSV),
#: while the streaming reader reads up to 32 blocks ahead: ~40 MB held at 1 MiB, ~300 MB at
#: 8 MiB. 1 MiB keeps two concurrent conversions of any size well below 512 MB RSS each.
DEFAULT_BLOCK_SIZE = 1 << 20
#: Rows per row group: ~55 MB of Arrow data for a 17-column balance-transactions result,
#: large enough for efficient scans, small enough to buffer (peak RSS ~300 MB).
DEFAULT_ROW_GROUP_ROWS = 250_000
#: ...but a wide result (80-column charges) ends its row group at this many Arrow bytes.
DEFAULT_ROW_GROUP_BYTES = 64 << 20
#: How much of the file's head is read as text to infer the open columns' types.
SAMPLE_BYTES = 4 << 20
#: A header line longer than this is not a Sigma result.
HEADER_LIMIT = 1 << 20
#: A single CSV row longer than this is refused: converting one row takes ~5x its size in
#: memory (read block, parsed copy, Arrow string, Parquet encoding and compression buffers);
#: a 100 MB field peaked at ~660 MB RSS.
MAX_ROW_BYTES = 128 << 20

#: What to do about a result file that cannot be Sigma's: the rerun runs the query again.
REFETCH = "rerun to run the query again; if it recurs, report the query run to Stripe"

_BOM = codecs.BOM_UTF8
_MAX_SHOWN = 240
_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): (.*)", re.DOTALL)
_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")
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
class _Stretch:
    """Bytes ``[start, end)`` of the data rows, read with blocks of ``block_size``."""

    start: int
    end: int
    block_size: int


@dataclass(frozen=True, slots=True)
class _Written:
    rows: int
    row_groups: int


@dataclass(frozen=True, slots=True)
class _Contradicted:
    """A later value did not parse as a column's chosen type: re-read it as string."""

    column: str
    detail: str


class _RowTooLong(Exception):
    """Internal signal: a row spans more than two blocks; re-read with a row layout."""


def convert_csv_to_parquet(
    src: Path,
    dest: Path,
    *,
    column_types: Mapping[str, str] | None = None,
    sql: str | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str = "zstd",
    cancel: threading.Event | None = None,
    growing: GrowingFile | None = None,
) -> ConvertResult:
    """Convert the CSV at ``src`` into Parquet at ``dest`` (written whole and fsynced).

    Blocking; run it in a worker thread. Setting ``cancel`` stops it within one block and
    raises :class:`ConversionError`; the caller removes ``dest``. With ``growing``, ``src`` is
    still being downloaded: the streaming passes read it as it grows, and the rare passes
    that need the whole file (long-row layout, sizes) wait for the download. Example::

        result = convert_csv_to_parquet(
            Path("run.csv"), Path("run.parquet.tmp"),
            column_types={"amount": "decimal(18,2)"},
            sql="select id, amount, created from charges",
        )
    """
    if row_group_rows < 1 or row_group_bytes < 1 or block_size < 1:
        raise ValueError("row_group_rows, row_group_bytes and block_size must be positive")
    started = time.perf_counter()
    where = str(src)
    if growing is not None:
        growing.wait_for(HEADER_LIMIT + 1)
    header = read_header(src)
    try:
        check_job_types(header.names, column_types)
    except ValueError as exc:
        raise ConversionError(where, str(exc)) from None

    layout: tuple[_Stretch, ...] | None = None  # None: one stream of `block_size` blocks
    chosen: tuple[ColumnChoice, ...] | None = None
    widened: list[str] = []
    while True:
        try:
            choices = chosen or _choose_columns(
                src,
                header,
                column_types,
                sql,
                block_size=block_size,
                layout=layout,
                cancel=cancel,
                growing=growing,
            )
            chosen = choices
            with closing(
                _batches(src, header, choices, block_size, layout, cancel, growing=growing)
            ) as batches:
                outcome = _write_parquet(
                    batches if header.has_rows else iter(()),
                    dest,
                    choices,
                    row_group_rows=row_group_rows,
                    row_group_bytes=row_group_bytes,
                    compression=compression,
                    check_cancel=lambda: _check_cancel(src, cancel),
                )
        except _RowTooLong:
            if layout is not None:  # pragma: no cover - the layout sizes blocks to their rows
                raise ConversionError(where, "a row does not fit its read block") from None
            log.info("%s: a row is longer than %d bytes; re-reading by rows", where, block_size)
            if growing is not None:
                growing.wait_complete()
            layout = _row_layout(src, block_size, cancel)
            continue
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


def _open_csv(
    source: str | io.RawIOBase,
    choices: Sequence[ColumnChoice],
    *,
    block_size: int,
    with_header: bool,
) -> pacsv.CSVStreamingReader:
    names = [c.name for c in choices]
    return pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(
            block_size=block_size,
            use_threads=False,
            column_names=None if with_header else names,
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


def _batches(
    src: Path,
    header: CsvHeader,
    choices: Sequence[ColumnChoice],
    block_size: int,
    layout: Sequence[_Stretch] | None,
    cancel: threading.Event | None,
    *,
    limit: int | None = None,
    growing: GrowingFile | None = None,
) -> Generator[pa.RecordBatch, None, None]:
    """The data rows as batches of the final schema; stops after ``limit`` Arrow bytes.

    Raises ``_RowTooLong`` (a row spans more than two blocks), ``pa.ArrowInvalid`` for a value
    that contradicts a widenable column type (see :func:`_contradiction`), and
    :class:`ConversionError` for everything else.
    """
    schema = _schema(choices)
    relabel = [i for i, c in enumerate(choices) if c.type != _read_type(c.type)]
    if layout is None:
        stretches: Sequence[_Stretch | None] = [None]
    else:
        stretches = layout
    produced = 0
    with _csv_errors(src, choices, cancel):
        for stretch in stretches:
            if stretch is None:
                source = str(src) if growing is None else growing.open()
                reader = _open_csv(source, choices, block_size=block_size, with_header=True)
                if tuple(reader.schema.names) != header.names:
                    reader.close()
                    raise ConversionError(
                        str(src),
                        f"pyarrow reads the header as {list(reader.schema.names)}, not "
                        f"{list(header.names)}; the header row is malformed",
                    )
            else:
                reader = _open_csv(
                    _FileRange(src, stretch.start, stretch.end),
                    choices,
                    block_size=stretch.block_size,
                    with_header=False,
                )
            with closing(reader):
                while True:
                    _check_cancel(src, cancel)
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    if relabel:
                        columns = batch.columns
                        for i in relabel:
                            columns[i] = columns[i].cast(schema.field(i).type)
                        batch = pa.RecordBatch.from_arrays(columns, schema=schema)
                    yield batch
                    produced += batch.get_total_buffer_size()
                    if limit is not None and produced >= limit:
                        return


def _choose_columns(
    src: Path,
    header: CsvHeader,
    column_types: Mapping[str, str] | None,
    sql: str | None,
    *,
    block_size: int,
    layout: Sequence[_Stretch] | None,
    cancel: threading.Event | None,
    growing: GrowingFile | None = None,
) -> tuple[ColumnChoice, ...]:
    """The column types, reading a sample of the file only if the job and SQL leave some open."""
    sample = None
    if header.has_rows and needs_sample(header.names, column_types=column_types, sql=sql):
        sample = _read_sample(src, header, block_size, layout, cancel, growing)
    try:
        return choose_columns(header.names, column_types=column_types, sql=sql, sample=sample)
    except ValueError as exc:
        raise ConversionError(str(src), str(exc)) from None


def _read_sample(
    src: Path,
    header: CsvHeader,
    block_size: int,
    layout: Sequence[_Stretch] | None,
    cancel: threading.Event | None,
    growing: GrowingFile | None = None,
) -> pa.Table:
    """The first ~SAMPLE_BYTES of rows, every column as text, to infer the open types from."""
    text = [ColumnChoice(name, pa.string(), "default") for name in header.names]
    with closing(
        _batches(src, header, text, block_size, layout, cancel, limit=SAMPLE_BYTES, growing=growing)
    ) as batches:
        return pa.Table.from_batches(list(batches), schema=_schema(text))


class _FileRange(io.RawIOBase):
    """Bytes ``[start, end)`` of a file as a stream (one stretch of a row layout)."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._left)
        if wanted <= 0:
            return 0
        got = self._file.readinto(view[:wanted])
        self._left -= got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def _row_layout(src: Path, block_size: int, cancel: threading.Event | None) -> tuple[_Stretch, ...]:
    """Split the data rows so rows longer than a block are read alone with a block that fits.

    A rare path (a row over ``block_size``): one pass over the file's lines, tracking quote
    parity to find where each row ends.
    """
    stretches: list[_Stretch] = []
    offset = row_start = stretch_start = 0
    in_quotes = False
    header_done = False
    with _reading(str(src)), open(src, "rb") as f:
        for number, line in enumerate(f):
            if number % 65536 == 0:
                _check_cancel(src, cancel)
            offset += len(line)
            if line.count(b'"') % 2:
                in_quotes = not in_quotes
            if in_quotes:
                continue
            if not header_done:
                header_done = True
                stretch_start = offset
            elif offset - row_start > block_size:
                length = offset - row_start
                if length > MAX_ROW_BYTES:
                    raise ConversionError(
                        str(src),
                        f"a row of {length / 2**20:.0f} MiB starts at byte offset {row_start}; "
                        f"rows over {MAX_ROW_BYTES >> 20} MiB are refused; select less text "
                        "per row, e.g. substr(column, 1, 1000000)",
                    )
                if stretch_start < row_start:
                    stretches.append(_Stretch(stretch_start, row_start, block_size))
                fit = length + (1 << 20)
                last = stretches[-1] if stretches else None
                if last is not None and last.end == row_start and last.block_size > block_size:
                    stretches[-1] = _Stretch(last.start, offset, max(last.block_size, fit))
                else:
                    stretches.append(_Stretch(row_start, offset, fit))
                stretch_start = offset
            row_start = offset
    if stretch_start < offset:
        stretches.append(_Stretch(stretch_start, offset, block_size))
    return tuple(stretches)


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
                    pending_bytes += batch.get_total_buffer_size()
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
                        pending_bytes = rest.get_total_buffer_size() if pending_rows else 0
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
def _csv_errors(
    src: Path, choices: Sequence[ColumnChoice], cancel: threading.Event | None
) -> Iterator[None]:
    """Translate what reading the CSV raises, keeping contradictions for the writer to see."""
    where = str(src)
    try:
        yield
    except (ConversionError, OutputError):
        raise
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if _contradiction(exc, choices) is not None:
            raise
        if _STRADDLING in message:
            raise _RowTooLong from None
        raise _csv_failure(message, src, choices, cancel) from None
    except (pa.ArrowException, OSError) as exc:
        raise ConversionError(where, f"cannot read the CSV: {_shorten(str(exc))}") from None


def _csv_failure(
    message: str, src: Path, choices: Sequence[ColumnChoice], cancel: threading.Event | None
) -> ConversionError:
    """The error to report for what pyarrow could not read, located where possible."""
    where = str(src)
    if _RAGGED.search(message):
        located = _ragged_message(src, len(choices), cancel)
        return ConversionError(where, f"{located or _shorten(message)}; {REFETCH}")
    match = _COLUMN_ERROR.match(message)
    column = None
    if match is not None and int(match.group(1)) < len(choices):
        choice = choices[int(match.group(1))]
        column = choice.name
        detail = _shorten(match.group(2))
        if "UTF8" not in detail:
            if choice.source == "job":
                return ConversionError(
                    where,
                    f"column {column!r} is typed {choice.type} by the job's column_types, "
                    f"but a value does not fit: {detail}; change or remove {column!r} in "
                    "[job.types]",
                )
            return ConversionError(where, f"column {column!r}: {detail}")
    if "UTF8" in message:
        return ConversionError(where, f"{_bad_utf8_message(src, cancel, column=column)}; {REFETCH}")
    return ConversionError(where, f"not valid CSV: {_shorten(message)}; {REFETCH}")


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


def _ragged_message(src: Path, expected: int, cancel: threading.Event | None) -> str | None:
    """Find the first record whose field count differs from the header's (failure path only).

    Returns None if Python's csv module cannot find it (it parses a few malformed inputs
    differently from pyarrow); the caller then reports pyarrow's own message.
    """
    # Fields may be as long as a row may be (the module's default stops at 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
    with _reading(str(src)), open(src, encoding="utf-8-sig", errors="replace", newline="") as f:
        records = csv.reader(f)
        data_row = 0
        try:
            next(records, None)
            for record in records:
                if not record:  # a blank line: skipped by the reader, or one NULL if one column
                    if expected > 1:
                        continue
                    record = [""]
                data_row += 1
                if data_row % 65536 == 0:
                    _check_cancel(src, cancel)
                if len(record) != expected:
                    snippet = _shorten(",".join(record)[: _MAX_SHOWN // 2])
                    return (
                        f"data row {data_row} (ending on line {records.line_num}) has "
                        f"{len(record)} fields, expected {expected} like the header: {snippet!r}"
                    )
        except csv.Error:
            return None
    return None


def _bad_utf8_message(src: Path, cancel: threading.Event | None, *, column: str | None) -> str:
    """Say where the first byte that is not UTF-8 sits (failure path only)."""
    in_column = f" in column {column!r}" if column else ""
    found = _first_bad_utf8(src, cancel)
    if found is None:
        return f"invalid UTF-8{in_column}; Sigma results must be UTF-8"
    offset, line = found
    return (
        f"invalid UTF-8{in_column} at byte offset {offset} (line {line}); "
        "Sigma results must be UTF-8"
    )


def _first_bad_utf8(src: Path, cancel: threading.Event | None) -> tuple[int, int] | None:
    carry = b""
    base = 0  # file offset of carry[0]
    line = 1
    with open(src, "rb") as f:
        while chunk := f.read(1 << 20):
            _check_cancel(src, cancel)
            data = carry + chunk
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data" or exc.end != len(data):
                    return base + exc.start, line + data.count(b"\n", 0, exc.start)
                good = exc.start  # a sequence cut by the chunk boundary: finish it next round
            else:
                good = len(data)
            line += data.count(b"\n", 0, good)
            base += good
            carry = data[good:]
    return (base, line) if carry else None
