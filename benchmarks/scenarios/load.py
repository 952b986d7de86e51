"""load: 10,000 queued jobs: memory stays flat and the event loop stays responsive.

Tiny jobs (``SELECT 1``) against an emulator with its rate limits off and ``--time-scale 0``,
so that the number of jobs, not their size, is what is measured. Two measurements:

* **Peak RSS** of ``batchrunner run`` (a child process, :func:`~benchmarks.harness.peak_rss_of`)
  for all the jobs and for a tenth of them: flat memory means the two peaks are close
  (``rss_growth_mb``), however many jobs wait in the queue. The CLI paces itself under
  Stripe's limits (24 requests/s per endpoint, 19/s on the files host), so 10,000 jobs take
  about nine minutes.
* **Event-loop responsiveness**: the engine run in this process with asyncio's debug mode
  and every pace limit lifted (so the loop is as busy as it can be), a ``ProgressDisplay``
  observing as in the CLI. asyncio logs each callback that holds the loop longer than
  ``loop.slow_callback_duration`` (set to 20 ms, to see the longest ones as well);
  ``slow_callbacks`` counts those over 100 ms, ``max_callback_ms`` is the longest seen.
  ``max_lag_ms`` is the worst lateness of a 50 ms heartbeat sleep, a second view of the same.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
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
#: Peak RSS may grow this much from a tenth of the jobs to all of them and still be "flat".
GOAL_GROWTH_MB = 50.0


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


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """10,000 queued jobs (200 with --quick)."""
    n = 200 if quick else 10_000
    rss_n = n
    jobs = jobs_from(workdir / "jobs.toml", tiny_jobs(n))
    watcher = SlowCallbacks()
    asyncio_log = logging.getLogger("asyncio")
    with emulator_process(
        *EMULATOR_ARGS, "--max-concurrent-runs", "100", log_path=workdir / "emulator.log"
    ) as emu:
        small_rss, _ = cli_peak_rss(emu, rss_n // 10, workdir)
        peak_rss, cli_wall = cli_peak_rss(emu, rss_n, workdir)
        asyncio_log.addHandler(watcher)
        try:
            result, lag = anyio.run(
                engine_in_debug_mode, emu, jobs, workdir / "out", backend_options={"debug": True}
            )
        finally:
            asyncio_log.removeHandler(watcher)
    if result.failed or result.stopped_by:
        raise RuntimeError(f"{len(result.failed)} jobs failed; stopped by {result.stopped_by}")
    slow = [d for d in watcher.durations if d > SLOW_S]
    growth = peak_rss - small_rss
    out = ScenarioResult(
        scenario="load",
        figures={
            "jobs": float(n),
            "peak_rss_mb": peak_rss,
            "peak_rss_tenth_mb": small_rss,
            "rss_growth_mb": growth,
            "slow_callbacks": float(len(slow)),
            "max_callback_ms": max(watcher.durations, default=0.0) * 1e3,
            "max_lag_ms": lag * 1e3,
            "debug_wall_s": result.wall_s,
        },
        references={"rss_growth_mb": ("flat-memory bound", GOAL_GROWTH_MB)},
        goal=f"memory flat (peak RSS grows < {GOAL_GROWTH_MB:.0f} MB from {rss_n // 10:,} to "
        f"{rss_n:,} queued jobs) and no callback blocks the loop > {SLOW_S * 1e3:.0f} ms "
        "(slow_callbacks = 0)",
        goal_met=growth < GOAL_GROWTH_MB and not slow,
    )
    out.notes.append(
        f"batchrunner run over {rss_n:,} jobs: peak RSS {peak_rss:.0f} MB in {cli_wall:.0f} s "
        f"({rss_n // 10:,} jobs: {small_rss:.0f} MB). In-process debug-mode run of {n:,} jobs "
        f"in {result.wall_s:.0f} s: {len(watcher.durations)} callbacks over "
        f"{WATCH_S * 1e3:.0f} ms, {len(slow)} over {SLOW_S * 1e3:.0f} ms."
    )
    if watcher.worst:
        out.notes.append(f"longest callback: {watcher.worst}")
    return out
