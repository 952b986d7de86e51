"""The engine: jobs in, Parquet files out, through one event loop.

Each job goes submit → poll → download → convert → publish. Work flows through bounded
stages so that memory stays flat however many jobs are queued:

- a *pipeline* semaphore bounds how many jobs are alive at once (a feeder starts a job
  task only when a place is free), so 10,000 queued jobs are 10,000 small records, not
  10,000 tasks;
- a *running* semaphore bounds the runs in flight on Sigma (``max_running``);
- a *download* semaphore bounds concurrent downloads, and an anyio capacity limiter the
  conversion worker threads.

Everything lives in one anyio task group: cancelling the run cancels every stage, and each
stage cleans up after itself (temporary files are removed, connections returned). The
engine talks to the query API only through :class:`batchrunner.api.QueryApi` and never
sees HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from batchrunner.api import QueryApi, QueryRun
from batchrunner.convert import ConvertResult, convert_csv_to_parquet
from batchrunner.errors import (
    AuthenticationFailed,
    BatchrunnerError,
    ConversionError,
    InvalidRequest,
    NotFound,
    OutputError,
    PermissionDenied,
    QueryFailed,
    QueryTimedOut,
)
from batchrunner.growing import GrowingFile
from batchrunner.jobs import Job
from batchrunner.outputs import atomic_output, output_error, sweep_stale_temps
from batchrunner.polling import PollPolicy, RunTimes, estimate_run_time, next_poll_delay
from batchrunner.state import (
    JobRecord,
    JobStatus,
    ResumeAction,
    StateStore,
    new_idempotency_key,
    resume_action,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Stage = Literal[
    "queued",
    "submitted",
    "running",
    "downloading",
    "converting",
    "succeeded",
    "failed",
    "skipped",
]
WORK_DIR = ".batchrunner"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerConfig:
    """How the engine paces and bounds its work.

    Example::

        RunnerConfig(out_dir=Path("out"), max_running=50, max_downloads=4)
    """

    out_dir: Path
    max_running: int = 100
    max_downloads: int = 4
    convert_workers: int = 2
    poll: PollPolicy = PollPolicy()
    force: bool = False
    deadline_s: float = 6 * 3600.0
    pipeline: bool = True  # convert while downloading (False: download, then convert)
    #: Runs per job in one invocation when a run ends ``failed``: Stripe gives no way to
    #: tell a transient internal failure from a query error, so one more run (a new
    #: submission with a new idempotency key) is cheap insurance; 1 turns it off.
    run_attempts: int = 2

    def __post_init__(self) -> None:
        for name in ("max_running", "max_downloads", "convert_workers", "run_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job moved to a new stage (what progress displays and logs consume)."""

    job_id: str
    stage: Stage
    rows: int | None = None
    bytes: int | None = None
    error: str | None = None


Observer = Callable[[JobEvent], None]


@dataclass(frozen=True, slots=True)
class JobResult:
    """How one job ended in this invocation."""

    job_id: str
    status: Literal["succeeded", "failed", "skipped"]
    params: Mapping[str, Any]
    output: Path | None = None
    query_run_id: str | None = None
    rows: int | None = None
    bytes: int | None = None
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunResult:
    """Every job's result, in job order, plus whether the run was cut short."""

    results: tuple[JobResult, ...]
    wall_s: float
    stopped_by: str | None = None  # an auth failure that stopped the run

    @property
    def failed(self) -> tuple[JobResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped_by is None


class _StopRun(Exception):
    """Raised inside the task group to stop every job at once (auth failures)."""

    def __init__(self, error: BatchrunnerError) -> None:
        super().__init__(str(error))
        self.error = error


class Engine:
    """Runs jobs against a :class:`QueryApi`, recording everything in a state store."""

    def __init__(
        self,
        api: QueryApi,
        state: StateStore,
        config: RunnerConfig,
        *,
        observer: Observer | None = None,
        is_congested: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.state = state
        self.config = config
        self._observer = observer or (lambda event: None)
        self._is_congested = is_congested
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._run_times: defaultdict[str, RunTimes] = defaultdict(RunTimes)
        self._running = anyio.Semaphore(config.max_running)
        self._downloads = anyio.Semaphore(config.max_downloads)
        self._converters = anyio.CapacityLimiter(config.convert_workers)
        self._state_thread = anyio.CapacityLimiter(1)  # SQLite writes, one at a time
        self._results: dict[str, JobResult] = {}
        self.work_dir = config.out_dir / WORK_DIR
        self.polls = 0

    # -- the whole run -------------------------------------------------------------------

    async def run(self, jobs: Sequence[Job]) -> RunResult:
        """Run every job; return when all have ended (or re-raise cancellation)."""
        started = self._clock()
        await anyio.to_thread.run_sync(self._prepare_dirs)
        pipeline = anyio.Semaphore(
            self.config.max_running + self.config.max_downloads + self.config.convert_workers
        )
        stopped_by: str | None = None
        try:
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    await pipeline.acquire()
                    tg.start_soon(self._job_task, job, pipeline)
        except* _StopRun as group:
            stopped_by = str(_first_stop(group).error)
        results = tuple(
            self._results.get(job.id)
            or JobResult(job.id, "failed", job.params, error="not run: the run was stopped")
            for job in jobs
        )
        return RunResult(results, self._clock() - started, stopped_by)

    def _prepare_dirs(self) -> None:
        downloads = self.work_dir / "downloads"
        try:
            downloads.mkdir(parents=True, exist_ok=True)
            probe = downloads / f".probe-{os.getpid()}"  # writable? ask before any query runs
            probe.touch()
            probe.unlink()
            sweep_stale_temps(self.config.out_dir)
            for leftover in downloads.glob("*.csv"):
                leftover.unlink(missing_ok=True)
        except OSError as exc:  # a read-only or full output directory: say so, send nothing
            raise output_error(Path(exc.filename or downloads), exc) from exc

    async def _job_task(self, job: Job, pipeline: anyio.Semaphore) -> None:
        try:
            await self._run_job(job)
        finally:
            pipeline.release()

    # -- one job -------------------------------------------------------------------------

    async def _run_job(self, job: Job) -> None:
        timings: dict[str, float] = {}
        enqueued = self._clock()
        record = await self._db(self.state.ensure_planned, job.id, job.sql_hash)
        final = self.config.out_dir / job.output
        if self.config.force and record.status is not JobStatus.PLANNED:
            await self._db(self.state.reset, job.id)
            record = await self._db(self.state.ensure_planned, job.id, job.sql_hash)
        action = resume_action(record, output_exists=final.exists())
        if action is ResumeAction.SKIP:
            self._finish(
                JobResult(
                    job.id,
                    "skipped",
                    job.params,
                    final,
                    record.query_run_id,
                    record.rows,
                    record.bytes,
                    timings=record.timings,
                ),
                "skipped",
            )
            return
        run: QueryRun | None = None
        try:
            if action is ResumeAction.RETRY:
                await self._db(self.state.reset, job.id)
                record = await self._db(self.state.ensure_planned, job.id, job.sql_hash)
            async with self._running:
                timings["queue_wait"] = self._clock() - enqueued
                run, since = await self._submitted_run(job, record, action)
                run = await self._poll_until_done(job, run, since)
                for _ in range(1, self.config.run_attempts):
                    if run.succeeded or run.in_progress:
                        break
                    log.info(
                        "%s: query run %s %s (%s); submitting it once more",
                        job.id,
                        run.id,
                        run.status,
                        run.error_message or "no message",
                    )
                    # Forget the failed run (a crash now resumes with a fresh submission).
                    await self._db(self.state.reset, job.id)
                    record = await self._db(self.state.ensure_planned, job.id, job.sql_hash)
                    run, since = await self._submitted_run(job, record, ResumeAction.SUBMIT)
                    run = await self._poll_until_done(job, run, since)
            server_run = (run.finalized_at - run.created) if run.finalized_at else None
            if server_run is not None:
                timings["server_run"] = float(server_run)
            if not run.succeeded:
                raise QueryFailed(run.id, run.error_message or "no message", status=run.status)
            result = await self._fetch_and_convert(job, run, final, timings)
        except (AuthenticationFailed, PermissionDenied) as exc:
            exc.with_job(job.id)
            await self._fail(job, exc, run, timings)
            raise _StopRun(exc) from exc
        except QueryTimedOut as exc:
            exc.with_job(job.id)
            await self._db(self.state.set_status, job.id, JobStatus.RUNNING, error=str(exc))
            self._finish(
                JobResult(
                    job.id,
                    "failed",
                    job.params,
                    query_run_id=exc.run_id,
                    error=str(exc),
                    timings=timings,
                ),
                "failed",
            )
        except BatchrunnerError as exc:
            exc.with_job(job.id)
            await self._fail(job, exc, run, timings)
        else:
            await self._db(
                self.state.set_status,
                job.id,
                JobStatus.SUCCEEDED,
                output=str(job.output),
                rows=result.rows,
                bytes=result.parquet_bytes,
                timings=timings,
                error=None,
            )
            self._finish(
                JobResult(
                    job.id,
                    "succeeded",
                    job.params,
                    final,
                    run.id,
                    result.rows,
                    result.parquet_bytes,
                    timings=timings,
                ),
                "succeeded",
                rows=result.rows,
                size=result.parquet_bytes,
            )

    async def _submitted_run(
        self, job: Job, record: JobRecord, action: ResumeAction
    ) -> tuple[QueryRun, float]:
        """The job's run on the server: found again by id, or created (exactly once)."""
        if action is ResumeAction.POLL and record.query_run_id is not None:
            run = await self.api.retrieve_run(record.query_run_id)
            age = max(0.0, self._wall() - run.created)
            self._emit(JobEvent(job.id, "running"))
            return run, self._clock() - age
        key = record.idempotency_key
        if action is not ResumeAction.RESUBMIT or key is None:
            key = new_idempotency_key(job.id, record.attempts + 1)
        # The key is durable before the request leaves: a crash after this point resends
        # the same key and Stripe replays the first answer instead of making a second run.
        await self._db(self.state.begin_submit, job.id, key)
        try:
            run = await self.api.create_run(
                sql=job.sql, saved_query=job.saved_query, idempotency_key=key
            )
        except (InvalidRequest, NotFound) as exc:  # Stripe refused this query: say what to fix
            if job.saved_query is not None:
                raise _hinted(
                    exc,
                    f"check the saved query id {job.saved_query} (test and live keys see "
                    "different saved queries)",
                ) from None
            raise _hinted(exc, "fix the job's SQL and rerun") from None
        since = self._clock()
        await self._db(self.state.record_run, job.id, run.id)
        self._emit(JobEvent(job.id, "submitted"))
        return run, since

    async def _poll_until_done(self, job: Job, run: QueryRun, since: float) -> QueryRun:
        """Poll on the job's own schedule until the run leaves pending/running."""
        deadline = job.deadline_s or self.config.deadline_s
        history = self._run_times[job.name]
        attempt = 0
        last_running: float | None = None
        with anyio.move_on_after(deadline) as scope:
            while run.in_progress:
                delay = next_poll_delay(
                    self.config.poll,
                    attempt=attempt,
                    elapsed=self._clock() - since,
                    history=history.sorted,
                    congested=self._is_congested(),
                    rand=self._rng.random(),
                )
                await anyio.sleep(delay)
                sent = self._clock() - since
                run = await self.api.retrieve_run(run.id)
                self.polls += 1
                attempt += 1
                if run.in_progress:
                    last_running = sent
        if scope.cancelled_caught and run.in_progress:
            raise QueryTimedOut(run.id, deadline)
        if attempt:  # a run seen finishing teaches the policy how long such runs take
            server = (run.finalized_at - run.created) if run.finalized_at else None
            history.add(
                estimate_run_time(
                    server_seconds=server,
                    last_running_s=last_running,
                    first_done_s=self._clock() - since,
                )
            )
        return run

    async def _fetch_and_convert(
        self, job: Job, run: QueryRun, final: Path, timings: dict[str, float]
    ) -> ConvertResult:
        if run.file_id is None:
            raise QueryFailed(
                run.id, "the run succeeded but names no result file", status=run.status
            )
        file_id = run.file_id
        csv_path = self.work_dir / "downloads" / f"{_file_key(job.id)}.csv"
        # The converter reads the CSV while it downloads (see batchrunner.growing): the
        # download hides behind the conversion instead of adding to it.
        growing = GrowingFile(csv_path)
        downloading = anyio.Event()
        fetched = anyio.Event()
        fetch_errors: list[BatchrunnerError] = []

        async def fetch() -> None:
            try:
                async with self._downloads:
                    downloading.set()
                    started = self._clock()
                    if run.finalized_at:
                        timings["detect_delay"] = max(0.0, self._wall() - run.finalized_at)
                    await self._db(
                        self.state.set_status, job.id, JobStatus.DOWNLOADING, file_id=file_id
                    )
                    self._emit(JobEvent(job.id, "downloading"))
                    try:
                        download = await self.api.download(file_id, csv_path, on_bytes=growing.grew)
                    except NotFound as exc:
                        raise _hinted(
                            exc,
                            "the result file is no longer available: rerun to run the query again",
                        ) from None
                    timings["download"] = self._clock() - started
                await self._db(self.state.set_status, job.id, JobStatus.CONVERTING)
                self._emit(JobEvent(job.id, "converting", bytes=download.size))
            except BatchrunnerError as exc:
                fetch_errors.append(exc)
                growing.fail(str(exc))
            except BaseException:
                growing.fail("cancelled")
                raise
            else:
                growing.finish()
            finally:
                downloading.set()
                fetched.set()

        convert_error: BatchrunnerError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fetch)
                await downloading.wait()
                window = self._clock()
                if not self.config.pipeline:
                    await fetched.wait()
                started = self._clock()
                try:
                    result = await _run_cancellable(
                        partial(
                            _convert_and_publish,
                            csv_path,
                            final,
                            job,
                            growing=growing if self.config.pipeline else None,
                        ),
                        limiter=self._converters,
                    )
                except BatchrunnerError as exc:
                    convert_error = exc
                    tg.cancel_scope.cancel()  # no use finishing a download nobody will read
            if fetch_errors:
                raise fetch_errors[0]
            if isinstance(convert_error, ConversionError):
                # Name the run, not the downloaded copy (deleted below), in the message.
                detail = convert_error.message.removeprefix(f"converting {convert_error.path}: ")
                raise ConversionError(f"the result of query run {run.id}", detail) from None
            if isinstance(convert_error, OutputError):  # name the output, not its temp file
                detail = convert_error.message.removeprefix(f"writing {convert_error.path}: ")
                raise OutputError(str(final), detail) from None
            if convert_error is not None:
                raise convert_error
            timings["convert"] = self._clock() - started
            timings["result"] = self._clock() - window  # download start → Parquet published
            return result
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_quietly, csv_path)

    # -- bookkeeping ---------------------------------------------------------------------

    async def _fail(
        self, job: Job, exc: BatchrunnerError, run: QueryRun | None, timings: dict[str, float]
    ) -> None:
        message = str(exc)
        with anyio.CancelScope(shield=True):
            await self._db(
                self.state.set_status, job.id, JobStatus.FAILED, error=message, timings=timings
            )
        self._finish(
            JobResult(
                job.id,
                "failed",
                job.params,
                query_run_id=run.id if run else None,
                error=message,
                timings=timings,
            ),
            "failed",
            error=message,
        )

    def _finish(
        self,
        result: JobResult,
        stage: Stage,
        *,
        rows: int | None = None,
        size: int | None = None,
        error: str | None = None,
    ) -> None:
        self._results[result.job_id] = result
        self._emit(JobEvent(result.job_id, stage, rows=rows, bytes=size, error=error))

    def _emit(self, event: JobEvent) -> None:
        self._observer(event)

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A state-store call, off the event loop, one at a time.

        A state write the disk refuses stops the whole run: a job whose progress cannot be
        recorded must not go on (its next step could be a second query run).
        """
        try:
            return await anyio.to_thread.run_sync(
                partial(fn, *args, **kwargs), limiter=self._state_thread
            )
        except OutputError as exc:
            raise _StopRun(exc) from exc


def _first_stop(group: BaseExceptionGroup[_StopRun]) -> _StopRun:
    """The first _StopRun of a group, however deeply nested (a job's own task groups)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, _StopRun)
    return first


def _hinted(exc: BatchrunnerError, hint: str) -> BatchrunnerError:
    """Add what to do to an error's message."""
    exc.message = f"{exc.message}; {hint}"
    exc.args = (exc.message,)
    return exc


def _remove_quietly(path: Path) -> None:
    # A leftover download is swept at the next start; failing to remove it (a disk gone
    # read-only) must not hide the error that ended the job.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _file_key(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:24]


def _convert_and_publish(
    csv_path: Path,
    final: Path,
    job: Job,
    *,
    growing: GrowingFile | None = None,
    cancel: threading.Event,
) -> ConvertResult:
    """In a worker thread: CSV → Parquet under a temporary name, then rename into place."""
    with atomic_output(final) as tmp:
        result = convert_csv_to_parquet(
            csv_path,
            tmp,
            column_types=job.column_types,
            sql=job.sql,
            cancel=cancel,
            growing=growing,
        )
    return result


async def _run_cancellable(fn: Callable[..., T], *, limiter: anyio.CapacityLimiter) -> T:
    """Run blocking ``fn(cancel=event)`` in a thread; cancellation sets the event.

    The thread is never abandoned: we wait for it to notice the event and unwind, so its
    temporary file is gone before cancellation propagates.
    """
    cancel = threading.Event()

    async def set_on_cancel() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancel.set()

    # The thread's error is kept out of the task group: raised inside it, it would come out
    # wrapped in an ExceptionGroup that the engine's ``except BatchrunnerError`` cannot see.
    error: BaseException | None = None
    stopped_by_cancel = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(set_on_cancel)
        try:
            result = await anyio.to_thread.run_sync(partial(fn, cancel=cancel), limiter=limiter)
        except BaseException as exc:
            error = exc
            stopped_by_cancel = cancel.is_set()
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        if stopped_by_cancel:
            # The thread gave up because we are being cancelled: propagate the cancellation,
            # not its "cancelled" error (which would record an interrupted job as failed).
            await anyio.lowlevel.checkpoint_if_cancelled()
        raise error
    return result
