"""The local state file: what happened to every job, so an interrupted run resumes safely.

One SQLite file (WAL mode) holds a row per job. The engine reads it at start-up to decide,
job by job, what to do (:func:`resume_action` spells the rules out):

==========================================  =================================================
record                                      on resume
==========================================  =================================================
``succeeded`` and its output file exists    skip it
``failed``                                  :meth:`StateStore.reset`, then submit with a new
                                            idempotency key
has a ``query_run_id``                      poll that run by id; never create another
``submitting`` without a run id             send the create again with the *stored* key: the
                                            first request may have reached Stripe, which
                                            replays the answer to a repeated key for 24 h
``planned``                                 submit with a new key
==========================================  =================================================

Two writes decide whether a job can ever run twice, so both commit at once with a full
sync: the idempotency key, *before* the create request is sent (:meth:`StateStore.begin_submit`),
and the query run id, as soon as the create returns (:meth:`StateStore.record_run`). Every
other write commits immediately too but with ``synchronous=NORMAL``, which survives a killed
process (the WAL is in the OS's hands) though not necessarily a power cut.

Every write is one SQLite transaction, so a ``kill -9`` at any moment leaves each row either
before or after a write, never half-way. Only one running batchrunner may use a state file:
:meth:`StateStore.open` takes an exclusive ``flock`` on ``<state>.lock``, which the kernel drops
when the process dies, so a killed run never leaves the file locked.

The store is synchronous; SQLite calls are small. The engine may call it from one worker
thread or directly from the event loop for these tiny writes; a lock serialises callers, so
it is safe (though not concurrent) to use from several threads.

There is deliberately no column for credentials: errors and timings are stored, API keys
never are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

from batchrunner.errors import ConfigError, OutputError

if sys.platform == "win32":  # pragma: no cover - the project runs on POSIX; kept for honesty
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        # flock (not fcntl/POSIX locks) belongs to the open file description, so a second
        # open in the *same* process is refused too, and the kernel releases it on death.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


SCHEMA_VERSION: Final = 1
_FORMAT: Final = "batchrunner-state"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_MAX_KEY_LEN: Final = 255  # Stripe's limit on Idempotency-Key


class JobStatus(StrEnum):
    """Where a job is in its life; stored as the lower-case value."""

    PLANNED = "planned"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    CONVERTING = "converting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ResumeAction(StrEnum):
    """What the engine should do with a job it finds in the state file."""

    SKIP = "skip"
    """Finished, and its output is on disk."""
    POLL = "poll"
    """A run exists on the server: retrieve it by id, never create another."""
    RESUBMIT = "resubmit"
    """A create may have reached the server: send it again with the stored key."""
    SUBMIT = "submit"
    """Nothing was sent yet: submit with a new key."""
    RETRY = "retry"
    """It failed: :meth:`StateStore.reset` it, then submit with a new key."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job's row in the state file."""

    job_id: str
    status: JobStatus
    sql_hash: str
    idempotency_key: str | None
    query_run_id: str | None
    file_id: str | None
    attempts: int
    error: str | None
    output: str | None
    rows: int | None
    bytes: int | None
    created_at: float
    updated_at: float
    timings: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Seconds spent per phase: queue_wait, server_run, detect_delay, download, convert..."""


def resume_action(record: JobRecord, *, output_exists: bool) -> ResumeAction:
    """Decide what to do with a job found in the state file (see the module docstring).

    ``output_exists`` tells whether ``record.output`` is on disk; a succeeded job whose
    output was deleted is fetched again through its run, not run again.
    """
    if record.status is JobStatus.FAILED:
        return ResumeAction.RETRY
    if record.status is JobStatus.SUCCEEDED and output_exists:
        return ResumeAction.SKIP
    if record.query_run_id is not None:
        return ResumeAction.POLL
    if record.idempotency_key is not None:
        return ResumeAction.RESUBMIT
    return ResumeAction.SUBMIT


def new_idempotency_key(job_id: str, attempt: int) -> str:
    """A fresh ``Idempotency-Key`` for one submission of a job: ``br-<job>-<attempt>-<uuid4>``.

    The job id and attempt only make Stripe's request logs readable; the uuid4 makes the
    key unique. Characters outside ``[A-Za-z0-9._-]`` become ``_`` so the key is a safe
    header value, and the job part is cut so the key never exceeds 255 characters.
    """
    tail = f"-{attempt}-{uuid.uuid4().hex}"
    room = _MAX_KEY_LEN - len("br-") - len(tail)
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[: max(room, 0)]
    return f"br-{slug}{tail}"[:_MAX_KEY_LEN]


def hash_sql(sql: str) -> str:
    """The fingerprint stored as ``sql_hash``: SHA-256 of the UTF-8 text, hex."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


_SCHEMA: Final = f"""
CREATE TABLE batchrunner_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO batchrunner_meta (key, value) VALUES
    ('format', '{_FORMAT}'), ('schema_version', '{SCHEMA_VERSION}');
CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in JobStatus)})),
    sql_hash        TEXT NOT NULL,
    idempotency_key TEXT,
    query_run_id    TEXT,
    file_id         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    output          TEXT,
    rows            INTEGER,
    bytes           INTEGER,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    timings         TEXT NOT NULL DEFAULT '{{}}'
);
"""

# Everything a job carries besides its identity, cleared when it must run from scratch.
_CLEARED_ON_RESET: Final = (
    "idempotency_key = NULL, query_run_id = NULL, file_id = NULL, error = NULL, "
    "output = NULL, rows = NULL, bytes = NULL, timings = '{}'"
)


class _FileLock:
    """An exclusive, non-blocking lock on ``<state>.lock``, released by close or death.

    The lock file is left in place on close: deleting it would let a process that opened
    the old file and one that creates a new one both believe they hold the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, state_path: Path) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the lock file {self.path} for state file {state_path}: "
                f"{exc.strerror or exc}; make that directory writable (or pass --state) and rerun"
            ) from exc
        if not _try_lock(fd):
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise ConfigError(
                f"state file {state_path} is in use by another running batchrunner{who}; "
                "wait for it to finish, or use a different state file"
            )
        # The pid is only for the message above; the lock itself is the flock (so a full
        # disk, which refuses these few bytes, is no reason to refuse the lock).
        with suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _row_to_record(row: sqlite3.Row) -> JobRecord:
    timings: dict[str, float] = json.loads(row["timings"]) if row["timings"] else {}
    return JobRecord(
        job_id=row["job_id"],
        status=JobStatus(row["status"]),
        sql_hash=row["sql_hash"],
        idempotency_key=row["idempotency_key"],
        query_run_id=row["query_run_id"],
        file_id=row["file_id"],
        attempts=row["attempts"],
        error=row["error"],
        output=row["output"],
        rows=row["rows"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        timings=MappingProxyType(timings),
    )


class StateStore:
    """The job table of one state file. Open with :meth:`open`, finish with :meth:`close`.

    Example::

        store = StateStore.open(Path("out/.batchrunner/state.db"))
        try:
            rec = store.ensure_planned("daily-2024-01-01", hash_sql(sql))
            key = new_idempotency_key(rec.job_id, rec.attempts + 1)
            store.begin_submit(rec.job_id, key)        # durable before the POST
            run = await api.create_run(sql=sql, idempotency_key=key)
            store.record_run(rec.job_id, run.id)       # durable as soon as it returns
        finally:
            store.close()
    """

    def __init__(
        self, path: Path, conn: sqlite3.Connection, lock: _FileLock, clock: Callable[[], float]
    ) -> None:
        self._path = path
        self._conn = conn
        self._file_lock = lock
        self._clock = clock
        self._mutex = threading.Lock()
        self._closed = False

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> StateStore:
        """Open (creating if needed) the state file at ``path`` for this process alone.

        Raises :class:`~batchrunner.errors.ConfigError` when the path is not a batchrunner
        state file, was written by a newer batchrunner, or is in use by another running
        batchrunner.
        """
        path = Path(path)
        _check_looks_like_sqlite(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the directory for state file {path}: {exc.strerror or exc}; "
                "choose a writable output directory (or pass --state) and rerun"
            ) from exc
        lock = _FileLock(path.with_name(path.name + ".lock"))
        lock.acquire(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            _prepare(conn, path)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            lock.release()
            if _disk_refused(exc):  # the file may be fine: the disk is full or read-only
                raise _write_failed(path, exc) from exc
            raise ConfigError(f"{path} is not a usable batchrunner state file: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            raise
        return cls(path, conn, lock, clock)

    @property
    def path(self) -> Path:
        """The state file."""
        return self._path

    def close(self) -> None:
        """Close the database and release the lock; safe to call twice."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            finally:
                self._file_lock.release()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if the state file has never seen it."""
        with self._mutex:
            return self._get(job_id)

    def all(self) -> list[JobRecord]:
        """Every job, in the order they were first planned."""
        with self._mutex:
            self._check_open()
            rows = self._conn.execute("SELECT * FROM jobs ORDER BY rowid").fetchall()
        return [_row_to_record(r) for r in rows]

    def summary(self) -> Mapping[JobStatus, int]:
        """How many jobs are in each status (every status present, zeros included)."""
        with self._mutex:
            self._check_open()
            rows = self._conn.execute(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status"
            ).fetchall()
        counts = {status: 0 for status in JobStatus}
        for status, n in rows:
            counts[JobStatus(status)] = n
        return MappingProxyType(counts)

    # -- writing -------------------------------------------------------------------------

    def ensure_planned(self, job_id: str, sql_hash: str) -> JobRecord:
        """Add the job as ``planned`` if new; if its SQL changed, start it over.

        A job whose stored ``sql_hash`` differs is reset to ``planned`` with no key, run id,
        output or error (its old run answered a different question); ``attempts`` is kept
        as history. A known job with the same hash is returned unchanged.
        """
        with self._mutex, self._transaction():
            row = self._fetch(job_id)
            now = self._clock()
            if row is None:
                self._conn.execute(
                    "INSERT INTO jobs (job_id, status, sql_hash, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (job_id, JobStatus.PLANNED.value, sql_hash, now, now),
                )
            elif row["sql_hash"] != sql_hash:
                self._conn.execute(
                    f"UPDATE jobs SET status = ?, sql_hash = ?, {_CLEARED_ON_RESET},"
                    " updated_at = ? WHERE job_id = ?",
                    (JobStatus.PLANNED.value, sql_hash, now, job_id),
                )
            record = self._get(job_id)
        assert record is not None
        return record

    def begin_submit(self, job_id: str, idempotency_key: str) -> None:
        """Record the key about to be sent and count the attempt; durable on return.

        Call it *before* the create request. Refused (``ValueError``) when the job already
        has a run, or is mid-submission under a different key: either could create a
        second run on the server. :meth:`reset` first to run such a job again.
        """
        if not idempotency_key or len(idempotency_key) > _MAX_KEY_LEN:
            raise ValueError(f"idempotency key must be 1 to {_MAX_KEY_LEN} characters")
        with self._mutex, self._transaction(durable=True):
            row = self._require(job_id)
            if row["query_run_id"] is not None:
                raise ValueError(
                    f"job {job_id!r} already has query run {row['query_run_id']}; "
                    "poll it, or reset() the job to run it again"
                )
            stored = row["idempotency_key"]
            if stored is not None and stored != idempotency_key:
                raise ValueError(
                    f"job {job_id!r} may already have been created with key {stored!r}; "
                    "resubmit with that key, or reset() the job to use a new one"
                )
            self._conn.execute(
                "UPDATE jobs SET status = ?, idempotency_key = ?, attempts = attempts + 1,"
                " updated_at = ? WHERE job_id = ?",
                (JobStatus.SUBMITTING.value, idempotency_key, self._clock(), job_id),
            )

    def record_run(self, job_id: str, query_run_id: str) -> None:
        """Record the run the create returned and mark the job ``running``; durable on return."""
        with self._mutex, self._transaction(durable=True):
            self._require(job_id)
            self._conn.execute(
                "UPDATE jobs SET status = ?, query_run_id = ?, updated_at = ? WHERE job_id = ?",
                (JobStatus.RUNNING.value, query_run_id, self._clock(), job_id),
            )

    def set_status(
        self,
        job_id: str,
        status: JobStatus,
        *,
        file_id: str | None = None,
        error: str | None = None,
        output: str | None = None,
        rows: int | None = None,
        bytes: int | None = None,  # shadows the builtin on purpose: it is the column's name
        timings: Mapping[str, float] | None = None,
    ) -> None:
        """Move the job to ``status``; fields given (not None) are set, others kept.

        ``timings`` are merged into the stored ones, a phase given again is overwritten.
        """
        status = JobStatus(status)
        with self._mutex, self._transaction():
            row = self._require(job_id)
            merged: dict[str, float] = json.loads(row["timings"]) if row["timings"] else {}
            if timings:
                merged.update({str(k): float(v) for k, v in timings.items()})
            self._conn.execute(
                "UPDATE jobs SET status = ?, file_id = COALESCE(?, file_id),"
                " error = COALESCE(?, error), output = COALESCE(?, output),"
                " rows = COALESCE(?, rows), bytes = COALESCE(?, bytes), timings = ?,"
                " updated_at = ? WHERE job_id = ?",
                (
                    status.value,
                    file_id,
                    error,
                    output,
                    rows,
                    bytes,
                    _dump_timings(merged),
                    self._clock(),
                    job_id,
                ),
            )

    def reset(self, job_id: str) -> None:
        """Make the job ``planned`` again (``--force``, or retrying a failure).

        Clears key, run id, file, error, output and timings; ``attempts`` keeps counting.
        """
        with self._mutex, self._transaction(durable=True):
            self._require(job_id)
            self._conn.execute(
                f"UPDATE jobs SET status = ?, {_CLEARED_ON_RESET}, updated_at = ? WHERE job_id = ?",
                (JobStatus.PLANNED.value, self._clock(), job_id),
            )

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"state store {self._path} is closed")

    @contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[None]:
        """One write transaction; ``durable`` makes its commit fsync the WAL.

        A write the disk refuses (full, read-only, I/O error) is rolled back, so the table
        stays as it was, and raised as :class:`~batchrunner.errors.OutputError`.
        """
        self._check_open()
        try:
            if durable:
                self._conn.execute("PRAGMA synchronous = FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.OperationalError as exc:
            raise _write_failed(self._path, exc) from exc

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
        with suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def _fetch(self, job_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        return row

    def _require(self, job_id: str) -> sqlite3.Row:
        row = self._fetch(job_id)
        if row is None:
            raise KeyError(f"no job {job_id!r} in state file {self._path}")
        return row

    def _get(self, job_id: str) -> JobRecord | None:
        self._check_open()
        row = self._fetch(job_id)
        return None if row is None else _row_to_record(row)


_WRITABLE = "make the state file and its directory writable (or pass --state) and rerun"
_SQLITE_HINTS: Final = {
    13: "free space and rerun",  # SQLITE_FULL
    8: _WRITABLE,  # SQLITE_READONLY
    14: _WRITABLE,  # SQLITE_CANTOPEN
    3: _WRITABLE,  # SQLITE_PERM
    10: "make sure that disk has free space and is writable, then rerun",  # SQLITE_IOERR
}


def _disk_refused(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because of the disk (full, read-only, I/O), not the file."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return isinstance(exc, sqlite3.OperationalError) and code in _SQLITE_HINTS


def _write_failed(path: Path, exc: sqlite3.Error) -> OutputError:
    """The error for a state write the disk refused; the job table is unchanged."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    hint = _SQLITE_HINTS.get(code, "fix the problem and rerun")
    return OutputError(str(path), f"cannot record job state: {exc}; {hint}: finished jobs are kept")


def _dump_timings(timings: Mapping[str, float]) -> str:
    # NaN/inf are not JSON; a phase that could not be measured is simply left out.
    return json.dumps({k: v for k, v in timings.items() if math.isfinite(v)}, sort_keys=True)


def _check_looks_like_sqlite(path: Path) -> None:
    """Refuse, before touching anything, a path that is clearly not a state file."""
    if path.is_dir():
        raise ConfigError(f"state file {path} is a directory")
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    if head and head != _SQLITE_MAGIC:
        raise ConfigError(
            f"{path} is not a batchrunner state file (not an SQLite database); "
            "point the state option at a new or existing batchrunner state file"
        )


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check the file is ours and current, then set WAL mode and create the schema if new."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if tables:
        # Read-only checks first, so a foreign database is never switched to WAL.
        if "batchrunner_meta" not in tables:
            raise ConfigError(
                f"{path} is an SQLite database but not a batchrunner state file; "
                "use a different state file"
            )
        meta: dict[str, Any] = dict(conn.execute("SELECT key, value FROM batchrunner_meta"))
        version = str(meta.get("schema_version", ""))
        if meta.get("format") != _FORMAT or not version.isdigit():
            raise ConfigError(f"{path} is not a batchrunner state file (bad format marker)")
        if int(version) > SCHEMA_VERSION:
            raise ConfigError(
                f"state file {path} was written by a newer batchrunner (schema version "
                f"{version}; this one understands up to {SCHEMA_VERSION}); upgrade batchrunner"
                " or use a different state file"
            )
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if not tables:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
