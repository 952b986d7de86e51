"""The library's front door: job files in, a :class:`RunResult` out.

:func:`run` loads and expands the job files, opens the state file, picks the API (the
real one when a key is given, otherwise the embedded emulator), runs the engine, and
writes the manifest and the optional report. :func:`run_sync` is the same for callers
without an event loop. The CLI is a thin layer over these.

Every entry point goes through :func:`run_jobs`, which keeps the objects that exist when
the run starts (modules, the expanded jobs) out of the cyclic garbage collector for the
run's duration (see :func:`_frozen_gc`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from batchrunner.client import (
    STRIPE_API_BASE,
    STRIPE_FILES_BASE,
    ClientConfig,
    SigmaClient,
)
from batchrunner.engine import Engine, Observer, RunnerConfig, RunResult
from batchrunner.errors import ConfigError
from batchrunner.jobs import Job, load_jobs
from batchrunner.limiter import RateConfig
from batchrunner.outputs import Manifest, ManifestEntry, write_json_atomic
from batchrunner.polling import PollPolicy
from batchrunner.report import build_report
from batchrunner.retry import RetryPolicy
from batchrunner.state import StateStore

DEFAULT_KEY_ENV = "STRIPE_API_KEY"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Everything a run can be told; every field has a sane default.

    Example::

        RunOptions(out_dir=Path("out"), max_running=20, api_key=os.environ.get("STRIPE_API_KEY"))
    """

    out_dir: Path = Path("out")
    state_path: Path | None = None  # default: OUT/.batchrunner/state.sqlite
    only: str | None = None
    force: bool = False
    max_running: int = 100
    max_downloads: int = 4
    convert_workers: int = 2
    rate: float | None = None
    api_key: str | None = field(default=None, repr=False)  # None: the embedded emulator
    api_base: str = STRIPE_API_BASE
    files_base: str = STRIPE_FILES_BASE
    report_path: Path | None = None
    poll: PollPolicy = PollPolicy()
    retry: RetryPolicy = RetryPolicy()
    pipeline: bool = True
    run_attempts: int = 2  # runs per job when a run ends failed (see RunnerConfig)
    emulator_scale: float = 1.0

    @property
    def state_file(self) -> Path:
        return self.state_path or self.out_dir / ".batchrunner" / "state.sqlite"


def api_key_from_env(name: str = DEFAULT_KEY_ENV) -> str | None:
    """The API key from the environment, or None when unset or empty."""
    return os.environ.get(name) or None


@asynccontextmanager
async def open_api(
    options: RunOptions, *, announce: Callable[[str], None] = lambda line: None
) -> AsyncIterator[SigmaClient]:
    """A client for the real API, or for an embedded emulator when there is no key."""
    async with AsyncExitStack() as stack:
        if options.api_key:
            config = ClientConfig(
                api_key=options.api_key,
                api_base=options.api_base,
                files_base=options.files_base,
                rate=RateConfig.for_key(options.api_key, rate=options.rate),
                retry=options.retry,
            )
        else:
            if (options.api_base, options.files_base) != (STRIPE_API_BASE, STRIPE_FILES_BASE):
                # A host without a key is a mistake, not a request for the emulator.
                raise ConfigError(
                    f"no API key, but the API base is {options.api_base} and the files base "
                    f"{options.files_base}: pass api_key for that host, or leave both bases "
                    "at their defaults to use the embedded emulator"
                )
            from batchrunner.emulator import EmulatorConfig, serve_emulator

            emulator = await stack.enter_async_context(
                serve_emulator(EmulatorConfig(scale=options.emulator_scale))
            )
            announce(
                f"No API key given: running against the embedded Sigma emulator at "
                f"{emulator.api_base} (synthetic data, scale {options.emulator_scale:g})."
            )
            key = emulator.test_key
            config = ClientConfig(
                api_key=key,
                api_base=emulator.api_base,
                files_base=emulator.files_base,
                rate=RateConfig.for_key(key, rate=options.rate),
                retry=options.retry,
            )
        yield await stack.enter_async_context(SigmaClient(config))


async def run(
    job_files: Sequence[Path],
    options: RunOptions = RunOptions(),
    *,
    observer: Observer | None = None,
    announce: Callable[[str], None] = lambda line: None,
) -> RunResult:
    """Run every job of ``job_files`` (filtered by ``options.only``) to Parquet."""
    jobs = load_jobs(list(job_files), only=options.only)
    return await run_jobs(jobs, options, observer=observer, announce=announce)


async def run_jobs(
    jobs: Sequence[Job],
    options: RunOptions = RunOptions(),
    *,
    observer: Observer | None = None,
    announce: Callable[[str], None] = lambda line: None,
) -> RunResult:
    """Run already-expanded jobs."""
    with _frozen_gc():
        return await _run_jobs(jobs, options, observer=observer, announce=announce)


@contextmanager
def _frozen_gc() -> Iterator[None]:
    """Freeze what exists now out of the cyclic GC for the ``with`` body; leave GC as found.

    What exists when a run starts (modules, the expanded jobs) lives through the run, yet
    every full collection walks it: with 10,000 jobs queued that held the event loop for
    over 100 ms. ``gc.freeze()`` moves it to the permanent generation, so collections walk
    only what the run creates. The one ``gc.collect()`` first keeps existing garbage out of
    the permanent generation (it runs once, before any request is sent).

    ``gc.unfreeze()`` cannot tell whose objects it thaws: it moves the whole permanent
    generation back. So this only acts when nothing is frozen yet (and the GC is enabled),
    and then unfreezes at exit. When the caller (or an overlapping run) froze objects
    already, it neither freezes nor unfreezes: their freeze stays exactly as it was, at the
    cost of this run's pause saving. Overlapping runs in one process stay correct: only
    the run that froze unfreezes, and the others run unfrozen once it has finished.
    """
    if not gc.isenabled() or gc.get_freeze_count() > 0:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _run_jobs(
    jobs: Sequence[Job],
    options: RunOptions,
    *,
    observer: Observer | None,
    announce: Callable[[str], None],
) -> RunResult:
    state = await anyio.to_thread.run_sync(StateStore.open, options.state_file)
    try:
        async with open_api(options, announce=announce) as api:
            engine = Engine(
                api,
                state,
                RunnerConfig(
                    out_dir=options.out_dir,
                    max_running=options.max_running,
                    max_downloads=options.max_downloads,
                    convert_workers=options.convert_workers,
                    poll=options.poll,
                    force=options.force,
                    pipeline=options.pipeline,
                    run_attempts=options.run_attempts,
                ),
                observer=observer,
                is_congested=lambda: api.budget.api.congested,
            )
            try:
                result = await engine.run(jobs)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_write_manifest, options.out_dir, jobs, state)
            if options.report_path is not None:
                extra = {
                    "requests": dict(api.stats.requests),
                    "retries": api.stats.retries,
                    "http_429": api.stats.rate_limited,
                    "polls": engine.polls,
                }
                report = build_report(result, extra=extra)
                await anyio.to_thread.run_sync(write_json_atomic, options.report_path, report)
            return result
    finally:
        with anyio.CancelScope(shield=True):  # release the state lock even when cancelled
            await anyio.to_thread.run_sync(state.close)


def _write_manifest(out_dir: Path, jobs: Sequence[Job], state: StateStore) -> None:
    """Record every finished output of these jobs in OUT/manifest.json."""
    manifest = Manifest.load(out_dir)
    changed = False
    for job in jobs:
        record = state.get(job.id)
        if record is None or record.status != "succeeded" or record.output is None:
            continue
        entry = ManifestEntry(
            job_id=job.id,
            params=_params(job),
            query_run_id=record.query_run_id or "",
            output=record.output,
            rows=record.rows or 0,
            bytes=record.bytes or 0,
            sql_hash=job.sql_hash,
            timings=dict(record.timings),
            finished_at=datetime.fromtimestamp(record.updated_at, UTC).isoformat(
                timespec="seconds"
            ),
        )
        if manifest.get(job.id) != entry:
            manifest.upsert(entry)
            changed = True
    if changed:  # a run that finished nothing new leaves the file (and a read-only disk) alone
        manifest.save()


def _params(job: Job) -> dict[str, Any]:
    return {
        k: v if v is None or isinstance(v, bool | int | float | str) else str(v)
        for k, v in job.params.items()
    }


def run_sync(
    job_files: Sequence[Path],
    options: RunOptions = RunOptions(),
    *,
    observer: Observer | None = None,
) -> RunResult:
    """:func:`run` for code without an event loop."""

    async def main() -> RunResult:
        return await run(job_files, options, observer=observer)

    return anyio.run(main)
