"""Query runs, saved queries and result files: the emulator's Sigma state, per mode.

A run is created ``pending``. At most ``max_concurrent`` runs per mode execute at once;
the rest wait, FIFO, in a deque that costs nothing per poll. When a run starts (status
``running``) one task in the emulator's task group executes its SQL in a worker thread
(``Warehouse.execute_to_csv`` into the results directory) and then sleeps until the run's
modelled finish time::

    modelled = (base + per_row * rows_scanned) * U(1 - jitter, 1 + jitter) [* slow_factor]
    finish   = max(start + modelled * time_scale, execution done)

where a ``slow_fraction`` of the runs, drawn from their own seeded stream, take
``slow_factor`` times longer: the long tail that polling policies must cope with.

so only *running* runs own a task (bounded by the cap) and a poll is a dict lookup plus a
cached JSON body. A run ends ``succeeded`` (or ``completed``) with a result file, or
``failed`` with ``error: {"message": ...}``: for SQL errors (the warehouse's message), for
a modelled time above ``max_run_time_s`` and for an injected ``run_failure``.

``max_run_time_s`` is compared with the *unscaled* modelled time (Stripe's seconds), and
such a run fails ``max_run_time_s * time_scale`` after it started: ``time_scale`` only
compresses time, it never changes which runs time out.
"""

from __future__ import annotations

import json
import logging
import os
import random
import string
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import anyio
import anyio.abc

from batchrunner.emulator.faults import FaultInjector
from batchrunner.emulator.warehouse import SqlError

log = logging.getLogger(__name__)

RUN_OBJECT: Final = "sigma.sigma_query_run"
SAVED_QUERY_OBJECT: Final = "sigma.sigma_api_query"
FILE_PURPOSE: Final = "sigma_scheduled_query"
TIMEOUT_MESSAGE: Final = "Query exceeded the maximum execution time"
SPURIOUS_MESSAGE: Final = (
    "An internal error occurred while running the query. Please try running it again."
)
INTERNAL_MESSAGE: Final = "An unexpected error occurred while running the query."
#: How long result files are said to be available (unconfirmed for Sigma; not enforced).
RESULT_RETENTION_S: Final = 30 * 24 * 3600

_ALPHABET: Final = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """A random Stripe-style id such as ``qry_`` + 24 letters and digits."""
    return prefix + "".join(_ALPHABET[b % 62] for b in os.urandom(length))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class ResultLike(Protocol):
    """What the engine reads from ``Warehouse.execute_to_csv``."""

    @property
    def rows(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def rows_scanned(self) -> int: ...


class WarehouseLike(Protocol):
    """The part of :class:`batchrunner.emulator.warehouse.Warehouse` the engine uses."""

    def execute_to_csv(self, sql: str, dest: Path, *, bom: bool = False) -> ResultLike: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunTiming:
    """The run-time model (seconds); see the module docstring."""

    base_s: float = 1.0
    per_row_s: float = 2e-6
    jitter: float = 0.3
    time_scale: float = 1.0
    max_run_time_s: float = 300.0
    slow_fraction: float = 0.0
    slow_factor: float = 10.0

    def draw(self, rng: random.Random) -> float:
        """A jitter factor from U(1 - jitter, 1 + jitter)."""
        return rng.uniform(1.0 - self.jitter, 1.0 + self.jitter) if self.jitter else 1.0

    def draw_slow(self, rng: random.Random) -> float:
        """``slow_factor`` for a ``slow_fraction`` of the draws, else 1.

        ``rng`` is a stream of its own, so switching the tail on leaves every run's jitter
        as it was.
        """
        if self.slow_fraction and rng.random() < self.slow_fraction:
            return self.slow_factor
        return 1.0

    def plan(self, rows_scanned: int, factor: float) -> tuple[float, bool]:
        """(seconds after start at which the run ends, whether it ends by timing out)."""
        modelled = (self.base_s + self.per_row_s * rows_scanned) * factor
        if modelled > self.max_run_time_s:
            return self.max_run_time_s * self.time_scale, True
        return modelled * self.time_scale, False


class QueryRun:
    """One query run; mutable, owned by the :class:`RunEngine` on the event loop."""

    __slots__ = (
        "_body",
        "created",
        "error",
        "factor",
        "file_id",
        "finalized_at",
        "first_download_at",
        "id",
        "idempotency_key",
        "last_poll_at",
        "livemode",
        "polls",
        "spurious_failure",
        "sql",
        "started_at",
        "status",
    )

    def __init__(
        self,
        *,
        livemode: bool,
        sql: str,
        factor: float,
        spurious_failure: bool,
        idempotency_key: str | None,
    ) -> None:
        self.id = new_id("qry_")
        self.livemode = livemode
        self.sql = sql
        self.created = time.time()
        self.status = "pending"
        self.error: str | None = None
        self.finalized_at: float | None = None
        self.file_id: str | None = None
        self.factor = factor
        self.spurious_failure = spurious_failure
        self.idempotency_key = idempotency_key
        self._body: bytes | None = None
        # The timeline benchmarks read (emulator clock, float seconds; not in the API object).
        self.started_at: float | None = None
        self.first_download_at: float | None = None
        self.last_poll_at: float | None = None
        self.polls = 0

    def to_dict(self) -> dict[str, Any]:
        """The API object."""
        return {
            "id": self.id,
            "object": RUN_OBJECT,
            "created": int(self.created),
            "error": None if self.error is None else {"message": self.error},
            "finalized_at": None if self.finalized_at is None else int(self.finalized_at),
            "livemode": self.livemode,
            "result": {"file": self.file_id},
            "sql": self.sql,
            "status": self.status,
        }

    def body(self) -> bytes:
        """The JSON body, cached until the run changes (polls cost one lookup)."""
        body = self._body
        if body is None:
            body = self._body = _dumps(self.to_dict())
        return body

    def set_status(self, status: str) -> None:
        """Move to ``status`` and drop the cached body."""
        self.status = status
        self._body = None

    def timeline(self) -> dict[str, Any]:
        """Precise times (unix seconds) of the run's life, and how often it was polled.

        ``first_download`` is when the first request for its result file arrived, so
        ``first_download - finalized`` is how long a client took to notice the run ended;
        ``last_poll`` (usually the poll that found it ended) splits that delay into polling
        and the client's own latency.
        """
        return {
            "id": self.id,
            "status": self.status,
            "created": self.created,
            "started": self.started_at,
            "finalized": self.finalized_at,
            "first_download": self.first_download_at,
            "last_poll": self.last_poll_at,
            "polls": self.polls,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultFile:
    """A result CSV on disk and its File object fields."""

    id: str
    livemode: bool
    path: Path
    size: int
    rows: int
    created: int
    run_id: str

    @property
    def filename(self) -> str:
        """The file name the File object reports."""
        return f"{self.run_id}.csv"

    def to_dict(self, files_base: str) -> dict[str, Any]:
        """The File object; ``url`` points at the files host."""
        return {
            "id": self.id,
            "object": "file",
            "created": self.created,
            "expires_at": self.created + RESULT_RETENTION_S,
            "filename": self.filename,
            "links": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/file_links?file={self.id}",
            },
            "purpose": FILE_PURPOSE,
            "size": self.size,
            "title": None,
            "type": "csv",
            "url": f"{files_base}/v1/files/{self.id}/contents",
        }


class FileStore:
    """Result files by id, visible only in their own mode."""

    __slots__ = ("_files", "files_base")

    def __init__(self) -> None:
        self.files_base = ""
        self._files: dict[str, ResultFile] = {}

    def add(self, file: ResultFile) -> None:
        """Register a finished result."""
        self._files[file.id] = file

    def get(self, livemode: bool, file_id: str) -> ResultFile | None:
        """The file if it exists in this mode."""
        file = self._files.get(file_id)
        return file if file is not None and file.livemode == livemode else None


class SavedQuery:
    """A saved query (``qfl_``)."""

    __slots__ = ("created", "id", "livemode", "name", "sql")

    def __init__(self, *, livemode: bool, sql: str, name: str | None) -> None:
        self.id = new_id("qfl_")
        self.livemode = livemode
        self.created = int(time.time())
        self.sql = sql
        self.name = name

    def to_dict(self) -> dict[str, Any]:
        """The API object."""
        return {
            "id": self.id,
            "object": SAVED_QUERY_OBJECT,
            "created": self.created,
            "livemode": self.livemode,
            "name": self.name,
            "sql": self.sql,
        }


class UnknownCursor(LookupError):
    """A list cursor (``starting_after``/``ending_before``) names no object."""

    def __init__(self, param: str, object_id: str) -> None:
        super().__init__(object_id)
        self.param = param
        self.object_id = object_id


class SavedQueries:
    """Saved queries per mode, listed newest first like every Stripe list."""

    __slots__ = ("_by_mode",)

    def __init__(self) -> None:
        self._by_mode: dict[bool, OrderedDict[str, SavedQuery]] = {
            False: OrderedDict(),
            True: OrderedDict(),
        }

    def create(self, livemode: bool, *, sql: str, name: str | None) -> SavedQuery:
        """Save a new query."""
        query = SavedQuery(livemode=livemode, sql=sql, name=name)
        self._by_mode[livemode][query.id] = query
        return query

    def get(self, livemode: bool, query_id: str) -> SavedQuery | None:
        """The saved query, if it exists in this mode."""
        return self._by_mode[livemode].get(query_id)

    def delete(self, livemode: bool, query_id: str) -> bool:
        """Delete; False when there was nothing to delete."""
        return self._by_mode[livemode].pop(query_id, None) is not None

    def page(
        self,
        livemode: bool,
        *,
        limit: int,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> tuple[list[SavedQuery], bool]:
        """One page (newest first) and whether more lie beyond it in that direction."""
        newest_first = list(reversed(self._by_mode[livemode].values()))
        ids = [q.id for q in newest_first]
        if starting_after is not None:
            if starting_after not in self._by_mode[livemode]:
                raise UnknownCursor("starting_after", starting_after)
            start = ids.index(starting_after) + 1
            return newest_first[start : start + limit], start + limit < len(ids)
        if ending_before is not None:
            if ending_before not in self._by_mode[livemode]:
                raise UnknownCursor("ending_before", ending_before)
            end = ids.index(ending_before)
            return newest_first[max(0, end - limit) : end], end - limit > 0
        return newest_first[:limit], limit < len(ids)


SuccessStatus = Literal["succeeded", "completed"]


class RunEngine:
    """Creates runs, keeps the per-mode cap, executes and finishes them.

    ``create`` is synchronous (no await), so a create request cannot interleave with
    another; execution happens in tasks started in ``task_group``.
    """

    def __init__(
        self,
        *,
        warehouse: WarehouseLike,
        results_dir: Path,
        files: FileStore,
        task_group: anyio.abc.TaskGroup,
        timing: RunTiming,
        faults: FaultInjector,
        max_concurrent: int,
        success_status: SuccessStatus = "succeeded",
        csv_bom: bool = False,
        seed: int = 42,
        execution_threads: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._warehouse = warehouse
        self._results_dir = results_dir
        self._files = files
        self._tg = task_group
        self._timing = timing
        self._faults = faults
        self._max_concurrent = max_concurrent
        self._success_status = success_status
        self._csv_bom = csv_bom
        self._jitter_rng = random.Random(f"run-jitter:{seed}")
        self._slow_rng = random.Random(f"run-slow:{seed}")
        self._limiter = anyio.CapacityLimiter(execution_threads)
        self._clock = clock
        self._runs: dict[str, QueryRun] = {}
        self._pending: dict[bool, deque[QueryRun]] = {False: deque(), True: deque()}
        self._running: dict[bool, int] = {False: 0, True: 0}
        self._closing = False
        # Current runs by status per mode (state, never reset).
        self._status_counts: dict[bool, dict[str, int]] = {False: {}, True: {}}
        self.reset_stats()

    # -- statistics -------------------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the creation counters (current statuses are state and stay)."""
        self.created: dict[str, int] = {"test": 0, "live": 0}
        self.created_by_idempotency_key: dict[str, int] = {}
        self.created_without_idempotency_key = 0
        self.max_running: dict[str, int] = {
            "test": self._running[False],
            "live": self._running[True],
        }

    def stats(self) -> dict[str, Any]:
        """Counters for ``/_emulator/stats``."""
        by_status: dict[str, int] = {}
        for mode_counts in self._status_counts.values():
            for status, n in mode_counts.items():
                by_status[status] = by_status.get(status, 0) + n
        return {
            "query_runs_created": {"total": sum(self.created.values()), **self.created},
            "runs": by_status,
            "runs_by_mode": {
                "test": dict(self._status_counts[False]),
                "live": dict(self._status_counts[True]),
            },
            "runs_running": {"test": self._running[False], "live": self._running[True]},
            "runs_pending": {
                "test": len(self._pending[False]),
                "live": len(self._pending[True]),
            },
            "max_running": dict(self.max_running),
            "runs_created_by_idempotency_key": dict(self.created_by_idempotency_key),
            "runs_created_without_idempotency_key": self.created_without_idempotency_key,
        }

    def _count(self, run: QueryRun, old: str | None, new: str) -> None:
        counts = self._status_counts[run.livemode]
        if old is not None:
            counts[old] -= 1
        counts[new] = counts.get(new, 0) + 1

    # -- lifecycle --------------------------------------------------------------------

    def get(self, livemode: bool, run_id: str) -> QueryRun | None:
        """The run if it exists in this mode."""
        run = self._runs.get(run_id)
        return run if run is not None and run.livemode == livemode else None

    def timelines(self) -> list[dict[str, Any]]:
        """Every run's :meth:`QueryRun.timeline`, oldest first."""
        return [run.timeline() for run in self._runs.values()]

    def note_poll(self, run: QueryRun) -> None:
        """``run`` was polled successfully (counted, and its time kept)."""
        run.polls += 1
        run.last_poll_at = self._clock()

    def note_download(self, run_id: str) -> None:
        """A request for the result file of ``run_id`` arrived (the first one is kept)."""
        run = self._runs.get(run_id)
        if run is not None and run.first_download_at is None:
            run.first_download_at = self._clock()

    def create(self, livemode: bool, sql: str, *, idempotency_key: str | None = None) -> QueryRun:
        """Create a run: it starts now if the mode has a free slot, else waits ``pending``."""
        run = QueryRun(
            livemode=livemode,
            sql=sql,
            factor=self._timing.draw(self._jitter_rng) * self._timing.draw_slow(self._slow_rng),
            spurious_failure=self._faults.for_run(),
            idempotency_key=idempotency_key,
        )
        self._runs[run.id] = run
        self._count(run, None, "pending")
        self.created["live" if livemode else "test"] += 1
        if idempotency_key is None:
            self.created_without_idempotency_key += 1
        else:
            by_key = self.created_by_idempotency_key
            by_key[idempotency_key] = by_key.get(idempotency_key, 0) + 1
        self._pending[livemode].append(run)
        self._admit(livemode)
        return run

    def close(self) -> None:
        """Stop starting pending runs (the task group is being cancelled)."""
        self._closing = True

    def _admit(self, livemode: bool) -> None:
        pending = self._pending[livemode]
        while pending and self._running[livemode] < self._max_concurrent and not self._closing:
            run = pending.popleft()
            run.started_at = self._clock()
            self._running[livemode] += 1
            mode = "live" if livemode else "test"
            self.max_running[mode] = max(self.max_running[mode], self._running[livemode])
            self._count(run, run.status, "running")
            run.set_status("running")
            self._tg.start_soon(self._execute, run, name=f"query run {run.id}")

    def _finish(
        self, run: QueryRun, *, error: str | None = None, file_id: str | None = None
    ) -> None:
        run.finalized_at = max(self._clock(), run.created)
        run.error = error
        run.file_id = file_id
        new = self._success_status if error is None else "failed"
        self._count(run, run.status, new)
        run.set_status(new)

    async def _execute(self, run: QueryRun) -> None:
        try:
            await self._work(run)
        except Exception:  # a bug must fail the run, not the emulator
            log.exception("query run %s crashed", run.id)
            if run.status == "running":
                self._finish(run, error=INTERNAL_MESSAGE)
        finally:
            self._running[run.livemode] -= 1
            self._admit(run.livemode)

    async def _work(self, run: QueryRun) -> None:
        started = anyio.current_time()
        timing = self._timing
        if run.spurious_failure:
            await anyio.sleep_until(started + timing.plan(0, run.factor)[0])
            self._finish(run, error=SPURIOUS_MESSAGE)
            return
        file_id = new_id("file_")
        dest = self._results_dir / f"{file_id}.csv"
        execute = partial(self._warehouse.execute_to_csv, run.sql, dest, bom=self._csv_bom)
        try:
            result = await anyio.to_thread.run_sync(execute, limiter=self._limiter)
        except SqlError as exc:
            await anyio.Path(dest).unlink(missing_ok=True)
            await anyio.sleep_until(started + timing.plan(0, run.factor)[0])
            self._finish(run, error=exc.message)
            return
        delay, timed_out = timing.plan(result.rows_scanned, run.factor)
        await anyio.sleep_until(started + delay)
        if timed_out:
            await anyio.Path(dest).unlink(missing_ok=True)
            self._finish(run, error=TIMEOUT_MESSAGE)
            return
        # The size on disk, not the warehouse's count: Content-Length must match the file.
        size = (await anyio.Path(dest).stat()).st_size
        self._files.add(
            ResultFile(
                id=file_id,
                livemode=run.livemode,
                path=dest,
                size=size,
                rows=result.rows,
                created=int(self._clock()),
                run_id=run.id,
            )
        )
        self._finish(run, file_id=file_id)
