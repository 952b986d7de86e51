"""The emulator's data warehouse: Sigma (Trino) SQL run on synthetic data, results as CSV.

Example::

    wh = Warehouse.open(scale=0.05, seed=7, cache_dir=tmp_path)   # blocking; cached on disk
    try:
        result = wh.execute_to_csv("select id, amount from charges limit 5", tmp_path / "a.csv")
        print(result.rows, result.bytes, result.columns)
    finally:
        wh.close()

The CSV is UTF-8 with one header row, RFC 4180 quoting (only where needed, ``"`` doubled),
NULL as an empty unquoted field, the empty string as ``""``, timestamps as
``YYYY-MM-DD HH:MM:SS.fff`` in UTC, booleans ``true``/``false``, integers as plain digits, and
``\\n`` line ends; ``bom=True`` prefixes a UTF-8 byte-order mark.

``execute_to_csv`` is thread-safe: each call runs on its own DuckDB cursor over one read-only
connection, so several threads (and several processes) can query the same cache file at once.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType

import duckdb

from batchrunner.emulator.datagen import (
    DATA_END,
    DATA_LOAD_TIME,
    DATA_START,
    EMULATED_NOW,
    GENERATOR_VERSION,
    ensure_database,
)
from batchrunner.emulator.trino import SqlError, duckdb_error_message, translate
from batchrunner.sigma_tables import sigma_tables

__all__ = [
    "DATA_END",
    "DATA_LOAD_TIME",
    "DATA_START",
    "EMULATED_NOW",
    "GENERATOR_VERSION",
    "QueryResult",
    "SqlError",
    "Warehouse",
]

_BOM = "\ufeff".encode()
# DuckDB quotes only where needed, doubles quotes, and writes '' (not NULL) as "".
_COPY_OPTIONS = (
    "FORMAT csv, DELIMITER ',', QUOTE '\"', ESCAPE '\"', NULLSTR '', "
    "TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S.%g', DATEFORMAT '%Y-%m-%d', COMPRESSION 'none'"
)
# Session settings that make DuckDB behave like Trino where it matters for results.
_SESSION = (
    "SET TimeZone = 'UTC'",
    "SET integer_division = true",
    "SET enable_progress_bar = false",  # DuckDB would draw one on stdout for slow queries
)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What one query run produced."""

    rows: int  # data rows written (header excluded)
    bytes: int  # size of the CSV file written
    rows_scanned: int  # sum of the row counts of the tables the query reads
    columns: tuple[str, ...]


class Warehouse:
    """Synthetic Stripe data in DuckDB; runs Sigma SQL and writes the result as CSV."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        path: Path,
        generated: bool,
        counts: Mapping[str, int],
    ) -> None:
        """Use :meth:`open`; this wraps an already opened read-only connection."""
        self._con = con
        self._path = path
        self._generated = generated
        self._counts = MappingProxyType(dict(counts))
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active: set[duckdb.DuckDBPyConnection] = set()
        self._closed = False

    @classmethod
    def open(
        cls, *, scale: float = 1.0, seed: int = 42, cache_dir: Path | None = None
    ) -> Warehouse:
        """Open the warehouse for (scale, seed), generating and caching it on first use.

        Blocking. ``cache_dir`` defaults to ``$BATCHRUNNER_CACHE_DIR`` or
        ``~/.cache/batchrunner/emulator``.
        """
        path, generated = ensure_database(scale=scale, seed=seed, cache_dir=cache_dir)
        con = duckdb.connect(str(path), read_only=True)
        try:
            counts = _row_counts(con)
        except BaseException:
            con.close()
            raise
        return cls(con, path=path, generated=generated, counts=counts)

    @property
    def path(self) -> Path:
        """The DuckDB file behind this warehouse."""
        return self._path

    @property
    def generated(self) -> bool:
        """Whether :meth:`open` generated the data (False: it reused the cache)."""
        return self._generated

    def table_row_counts(self) -> Mapping[str, int]:
        """Rows per published table (every table, zero for the unpopulated ones)."""
        return self._counts

    def execute_to_csv(self, sql: str, dest: Path, *, bom: bool = False) -> QueryResult:
        """Run Sigma SQL and write its result to ``dest`` as CSV.

        Raises :class:`SqlError` when the query cannot run (its message is the run's error),
        ``OSError`` when ``dest`` cannot be written. Blocking and thread-safe. ``dest`` appears
        only complete (written under a temporary name in the same directory, then renamed).
        """
        translation = translate(
            sql, known_tables=self._counts.keys(), data_load_time=DATA_LOAD_TIME, now=EMULATED_NOW
        )
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
        cursor = self._checkout()
        try:
            rows, columns, header_written = self._copy(cursor, translation.sql, tmp, sql)
            if bom or not header_written:
                _prepend(tmp, _BOM if bom else b"", b"" if header_written else _header(columns))
            size = tmp.stat().st_size
            os.replace(tmp, dest)
        finally:
            self._release(cursor)
            tmp.unlink(missing_ok=True)
        scanned = sum(self._counts[t] for t in translation.tables)
        return QueryResult(rows=rows, bytes=size, rows_scanned=scanned, columns=columns)

    def close(self) -> None:
        """Interrupt running queries, wait for them to end, and close the database. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for cursor in self._active:
                cursor.interrupt()
            while self._active:
                self._idle.wait()
            self._con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _checkout(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._closed:
                raise RuntimeError("the warehouse is closed")
            cursor = self._con.cursor()
            self._active.add(cursor)
        for statement in _SESSION:
            cursor.execute(statement)
        return cursor

    def _release(self, cursor: duckdb.DuckDBPyConnection) -> None:
        cursor.close()
        with self._lock:
            self._active.discard(cursor)
            self._idle.notify_all()

    def _copy(
        self, cursor: duckdb.DuckDBPyConnection, query: str, tmp: Path, sql: str
    ) -> tuple[int, tuple[str, ...], bool]:
        """COPY the query to ``tmp``: (data rows, column names, whether the header was written).

        DuckDB renames repeated output names (``id``, ``id_1``) when it writes a header; Trino
        keeps them, so for such results the header is left to :func:`_prepend`.
        """
        target = str(tmp).replace("'", "''")
        try:
            columns = tuple(str(c) for c in cursor.sql(query).columns)  # binds, does not run
            header = len(set(columns)) == len(columns)
            options = f"{_COPY_OPTIONS}, HEADER {'true' if header else 'false'}"
            row = cursor.execute(f"COPY ({query}) TO '{target}' ({options})").fetchone()
        except duckdb.InterruptException:
            raise SqlError("Query was canceled: the warehouse is shutting down") from None
        except duckdb.IOException as err:  # the destination, not the query, is at fault
            raise OSError(f"writing {tmp}: {err}") from err
        except duckdb.Error as err:
            raise SqlError(duckdb_error_message(str(err), sql)) from None
        return (int(row[0]) if row is not None else 0), columns, header


def _row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    names = list(sigma_tables())
    union = " UNION ALL ".join(
        f"SELECT '{name}' AS name, count(*) AS n FROM \"{name}\"" for name in names
    )
    return {str(name): int(n) for name, n in con.execute(union).fetchall()}


def _header(columns: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(columns)
    return out.getvalue().encode("utf-8")


def _prepend(path: Path, *prefixes: bytes) -> None:
    """Rewrite ``path`` with ``prefixes`` in front (a BOM, a header): a copy, so used rarely."""
    rewritten = path.with_name(path.name + ".prefixed")
    try:
        with path.open("rb") as src, rewritten.open("wb") as out:
            for prefix in prefixes:
                out.write(prefix)
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(rewritten, path)
    finally:
        rewritten.unlink(missing_ok=True)
