"""overhead: what the engine itself costs per job, with every limit out of the way.

5,000 tiny jobs (``SELECT 1``) against an emulator with its rate limits off and
``--time-scale 0`` (runs finish as fast as DuckDB answers). The runner's own pacing is
raised out of reach too: ``RunOptions.rate`` cannot lift the 24/s per-endpoint pace (Stripe's
per-endpoint limit), so this scenario builds the engine as :func:`batchrunner.run_jobs`
does, with a :class:`~batchrunner.limiter.RateConfig` of 100,000/s everywhere, and
everything else at batchrunner's defaults. The figures are jobs per wall second and this
process's CPU per job; the emulator's CPU is counted separately.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread

from batchrunner.client import ClientConfig, SigmaClient
from batchrunner.engine import Engine, RunnerConfig, RunResult
from batchrunner.jobs import Job
from batchrunner.limiter import RateConfig
from batchrunner.state import StateStore
from benchmarks.harness import (
    CpuTimer,
    EmulatorProcess,
    ScenarioResult,
    emulator_process,
    jobs_from,
)

UNLIMITED = RateConfig(api_global=100_000.0, per_endpoint=100_000.0, files=100_000.0)
#: A live key may send 100 requests/s; at the ideal three requests a job that is ~33 jobs/s.
#: The engine's own cost must allow that pace with room to spare.
GOAL_JOBS_PER_S = 100.0 / 3


async def run_engine(emu: EmulatorProcess, jobs: list[Job], out_dir: Path) -> RunResult:
    """The engine at its defaults, with client pacing out of reach."""
    state = await anyio.to_thread.run_sync(StateStore.open, out_dir / ".batchrunner/state.sqlite")
    try:
        config = ClientConfig(
            api_key=emu.test_key, api_base=emu.api_base, files_base=emu.files_base, rate=UNLIMITED
        )
        async with SigmaClient(config) as api:
            engine = Engine(
                api,
                state,
                RunnerConfig(out_dir=out_dir),
                is_congested=lambda: api.budget.api.congested,
            )
            return await engine.run(jobs)
    finally:
        await anyio.to_thread.run_sync(state.close)


def measure(*, jobs: int, workdir: Path, scale: str = "0.05") -> ScenarioResult:
    """Run ``jobs`` tiny jobs and report throughput and CPU per job."""
    batch = jobs_from(
        workdir / "jobs.toml", [{"name": "tiny", "sql": "SELECT 1 AS one", "repeat": jobs}]
    )
    args = ("--scale", scale, "--no-rate-limits", "--time-scale", "0")
    with emulator_process(
        *args, "--max-concurrent-runs", "100", log_path=workdir / "emulator.log"
    ) as emu:
        emu_cpu = emu.cpu_seconds()
        with CpuTimer() as timer:
            result = anyio.run(run_engine, emu, batch, workdir / "out")
        emu_cpu = emu.cpu_seconds() - emu_cpu
        stats = emu.stats()
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} jobs failed: {result.failed[0].error}")
    jobs_per_s = jobs / result.wall_s
    out = ScenarioResult(
        scenario="overhead",
        figures={
            "jobs_per_s": jobs_per_s,
            "cpu_ms_per_job": timer.cpu_s / jobs * 1e3,
            "emulator_cpu_ms_per_job": emu_cpu / jobs * 1e3,
        },
        references={"jobs_per_s": ("live-key pace", GOAL_JOBS_PER_S)},
        goal=f"jobs_per_s ≥ {GOAL_JOBS_PER_S:.1f} (a live key's 100 requests/s at three "
        "requests a job): the engine's own cost is never what limits a run",
        goal_met=jobs_per_s >= GOAL_JOBS_PER_S,
    )
    out.notes.append(
        f"{jobs:,} jobs in {result.wall_s:.1f} s; runner CPU {timer.cpu_s:.1f} s "
        f"({timer.cpu_s / result.wall_s:.0%} of a core), emulator CPU {emu_cpu:.1f} s "
        f"({emu_cpu / result.wall_s:.0%} of a core), {stats['http_429']} 429s; on two cores "
        "the two processes compete, so jobs_per_s is bounded by their summed CPU per job."
    )
    return out


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """5,000 tiny jobs (300 with --quick)."""
    return measure(jobs=300 if quick else 5_000, workdir=workdir)
