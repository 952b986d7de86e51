"""load: 10,000 queued jobs: memory stays flat and the event loop stays responsive.

Tiny jobs (``SELECT 1``) against an emulator with its rate limits off and ``--time-scale 0``,
so that the number of jobs, not their size, is what is measured. Two measurements:

* **Peak RSS** of ``batchrunner run`` (a child process, :func:`~benchmarks.harness.peak_rss_of`)
  for all the jobs and for a tenth of them. Flat memory means a queued job costs only its
  small records (the job, its state row, its result): ``rss_kb_per_job`` is the growth
  between the two peaks per extra job. The CLI paces itself under Stripe's limits (24
  requests/s per endpoint, 19/s on the files host), so 10,000 jobs take about nine minutes.
* **Event-loop responsiveness**: the engine run in this process with asyncio's debug mode
  and every pace limit lifted (so the loop is as busy as it can be), a ``ProgressDisplay``
  observing and the GC frozen at the start, as in the CLI. asyncio logs each callback that
  holds the loop longer than ``loop.slow_callback_duration`` (set to 20 ms, to see the
  longest ones as well); ``slow_callbacks`` counts those over 100 ms, ``max_callback_ms`` is
  the longest seen. ``max_lag_ms`` is the worst lateness of a 50 ms heartbeat sleep. Where
  Linux allows, the emulator gets a CPU of its own, so that its work does not stretch the
  runner's callbacks.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from batchrunner.client import ClientConfig, SigmaClient
from batchrunner.engine import Engine, RunnerConfig, RunResult
from batchrunner.jobs import Job
from batchrunner.limiter import RateConfig
from batchrunner.progress import ProgressDisplay
from batchrunner.state import StateStore
from benchmarks.harness import (
    EmulatorProcess,
    ScenarioResult,
    emulator_process,
    jobs_from,
    peak_rss_of,
    write_job_file,
)

EMULATOR_ARGS = ("--scale", "0.05", "--no-rate-limits", "--time-scale", "0")
UNLIMITED = RateConfig(api_global=100_000.0, per_endpoint=100_000.0, files=100_000.0)
SLOW_S = 0.1  # the bound: no callback may hold the loop longer
WATCH_S = 0.02  # what asyncio is asked to report, to see the longest callbacks too
HEARTBEAT_S = 0.05
#: Peak RSS a queued job may add: its records (job, state row, result), nothing more.
GOAL_KB_PER_JOB = 10.0


def tiny_jobs(n: int) -> list[dict[str, object]]:
    return [{"name": "load", "sql": "SELECT 1 AS one", "repeat": n}]


def cli_peak_rss(emu: EmulatorProcess, n: int, workdir: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of ``batchrunner run`` over ``n`` tiny jobs."""
    path = write_job_file(workdir / f"cli-{n}.toml", tiny_jobs(n))
    command = [sys.executable, "-m", "batchrunner", "run", str(path)]
    command += ["--out", str(workdir / f"cli-out-{n}"), "--rate", "1000"]
    code, wall, rss = peak_rss_of(command, env=emu.client_env())
    if code != 0:
        raise RuntimeError(f"batchrunner run over {n} jobs exited {code}")
    return rss, wall


class SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode 'Executing <handle> took N seconds' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.durations: list[float] = []
        self.worst = ""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if str(record.msg).startswith("Executing") and isinstance(args, tuple) and len(args) == 2:
            handle, seconds = str(args[0]), float(args[1])  # type: ignore[arg-type]
            if seconds > max(self.durations, default=0.0):
                self.worst = handle[:200]
            self.durations.append(seconds)


async def engine_in_debug_mode(
    emu: EmulatorProcess, jobs: list[Job], out_dir: Path
) -> tuple[RunResult, float]:
    """Run the engine with pacing lifted; return its result and the worst heartbeat lag."""
    asyncio.get_running_loop().slow_callback_duration = WATCH_S
    lag = 0.0
    state = await anyio.to_thread.run_sync(StateStore.open, out_dir / ".batchrunner/state.sqlite")
    try:
        config = ClientConfig(
            api_key=emu.test_key, api_base=emu.api_base, files_base=emu.files_base, rate=UNLIMITED
        )
        async with SigmaClient(config) as api, anyio.create_task_group() as tg:

            async def heartbeat() -> None:
                nonlocal lag
                while True:
                    before = time.perf_counter()
                    await anyio.sleep(HEARTBEAT_S)
                    lag = max(lag, time.perf_counter() - before - HEARTBEAT_S)

            tg.start_soon(heartbeat)
            with ProgressDisplay(len(jobs), stream=io.StringIO(), live=False) as progress:
                engine = Engine(
                    api,
                    state,
                    RunnerConfig(out_dir=out_dir),
                    observer=progress,
                    is_congested=lambda: api.budget.api.congested,
                )
                result = await engine.run(jobs)
            tg.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(state.close)
    return result, lag


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Freeze what exists out of the cyclic GC for the block, as ``batchrunner run`` does."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def separate_cpus(emu: EmulatorProcess) -> Iterator[str]:
    """Give the emulator one CPU and this process the others, where Linux lets us.

    On a small machine the emulator (DuckDB's threads included) competes for the same cores
    and stretches every callback it preempts; apart, the figure measures the runner's loop.
    Yields a note of what was done.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        yield "emulator and runner shared the CPUs"
        return
    ours = set(cpus[1:])
    before = set(cpus)
    try:
        for task in Path(f"/proc/{emu.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpus[0]})
        os.sched_setaffinity(0, ours)  # threads started from here on inherit it
    except OSError as exc:
        yield f"could not separate CPUs ({exc}); emulator and runner shared them"
        return
    try:
        yield f"emulator on CPU {cpus[0]}, runner on CPU {', '.join(map(str, sorted(ours)))}"
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def watching(logger: logging.Logger, handler: logging.Handler) -> Iterator[None]:
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """10,000 queued jobs (200 with --quick)."""
    n = 200 if quick else 10_000
    jobs = jobs_from(workdir / "jobs.toml", tiny_jobs(n))
    watcher = SlowCallbacks()
    with emulator_process(
        *EMULATOR_ARGS, "--max-concurrent-runs", "100", log_path=workdir / "emulator.log"
    ) as emu:
        small_rss, _ = cli_peak_rss(emu, n // 10, workdir)
        peak_rss, cli_wall = cli_peak_rss(emu, n, workdir)
        with (
            separate_cpus(emu) as cpu_note,
            frozen_gc(),
            watching(logging.getLogger("asyncio"), watcher),
        ):
            result, lag = anyio.run(
                engine_in_debug_mode, emu, jobs, workdir / "out", backend_options={"debug": True}
            )
    if result.failed or result.stopped_by:
        raise RuntimeError(f"{len(result.failed)} jobs failed; stopped by {result.stopped_by}")
    slow = [d for d in watcher.durations if d > SLOW_S]
    per_job_kb = (peak_rss - small_rss) * 1024 / (n - n // 10)
    out = ScenarioResult(
        scenario="load",
        figures={
            "jobs": float(n),
            "peak_rss_mb": peak_rss,
            "peak_rss_tenth_mb": small_rss,
            "rss_kb_per_job": per_job_kb,
            "slow_callbacks": float(len(slow)),
            "max_callback_ms": max(watcher.durations, default=0.0) * 1e3,
            "max_lag_ms": lag * 1e3,
            "debug_wall_s": result.wall_s,
        },
        references={
            "rss_kb_per_job": ("small-record bound", GOAL_KB_PER_JOB),
            "max_callback_ms": ("bound", SLOW_S * 1e3),
        },
        goal=f"memory flat: each queued job costs < {GOAL_KB_PER_JOB:.0f} KB of peak RSS (a "
        "small record; no task, buffer or file per job); no callback holds the event loop "
        f"> {SLOW_S * 1e3:.0f} ms (slow_callbacks = 0)",
        goal_met=per_job_kb < GOAL_KB_PER_JOB and not slow,
    )
    out.notes.append(
        f"batchrunner run over {n:,} jobs: peak RSS {peak_rss:.0f} MB in {cli_wall:.0f} s "
        f"({n // 10:,} jobs: {small_rss:.0f} MB). In-process debug-mode run of {n:,} jobs "
        f"in {result.wall_s:.0f} s ({cpu_note}): {len(watcher.durations)} callbacks over "
        f"{WATCH_S * 1e3:.0f} ms, {len(slow)} over {SLOW_S * 1e3:.0f} ms."
    )
    if quick:
        out.notes.append("--quick: runs this small are dominated by start-up; see a full run")
    if watcher.worst:
        out.notes.append(f"longest callback: {watcher.worst}")
    return out
