"""soak: 1,000 jobs through the emulator's ``chaos`` fault mix, at batchrunner's defaults.

The emulator (scale 1, Stripe's test-mode rate limits on) injects 10% 5xx, 5% 429 bursts, 2%
connection resets before and 2% after it acted, 2% cut and 1% slow downloads and 1%
spurious run failures (``--faults chaos``). Each job selects one day of balance transactions
(about 90 rows). batchrunner runs exactly as ``batchrunner run`` would: default pacing,
retries, polling.

Afterwards every job must have ended ``succeeded`` with a Parquet file whose row count and
amount sum equal the emulator's own answer (computed straight from its warehouse), or
``failed`` with a message; and the emulator's per-idempotency-key counts must show no query
run created twice for one submission. A second run of the same command then retries the
failures (``failed_after_rerun``, reported, not part of the goal: chaos may strike again).
"""

from __future__ import annotations

import csv
import re
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import anyio
import pyarrow.parquet as pq

from batchrunner.emulator.warehouse import Warehouse
from batchrunner.engine import RunResult
from batchrunner.jobs import Job
from batchrunner.runner import RunOptions, run_jobs
from benchmarks.harness import (
    CpuTimer,
    EmulatorProcess,
    ScenarioResult,
    emulator_process,
    jobs_from,
    total_requests,
)

SCALE, SEED = "1", "42"
_RUN_ID = re.compile(r"qry_\w+")
FIRST_DAY = date(2023, 1, 1)
EMULATOR_ARGS = (
    "--scale",
    SCALE,
    "--seed",
    SEED,
    "--faults",
    "chaos",
    "--time-scale",
    "0.05",
    "--max-concurrent-runs",
    "100",
)
DAILY_SQL = (
    "SELECT id, amount, currency, created FROM balance_transactions "
    "WHERE created >= {day_start} AND created < {day_end}"
)


def daily_spec(days: int) -> dict[str, object]:
    last = FIRST_DAY + timedelta(days=days - 1)
    grid = {"day": {"every": "day", "start": FIRST_DAY.isoformat(), "end": last.isoformat()}}
    return {"name": "soak_daily", "sql": DAILY_SQL, "grid": grid}


def expected_by_day() -> dict[str, tuple[int, int]]:
    """(rows, amount sum) per day, from the emulator's warehouse file opened read-only."""
    with (
        Warehouse.open(scale=float(SCALE), seed=int(SEED)) as warehouse,
        tempfile.TemporaryDirectory() as tmp,
    ):
        dest = Path(tmp) / "expected.csv"
        warehouse.execute_to_csv(
            "select date_format(created, '%Y-%m-%d'), count(*), sum(amount) "
            "from balance_transactions group by 1",
            dest,
        )
        with dest.open(encoding="utf-8") as f:
            return {d: (int(n), int(s)) for d, n, s in list(csv.reader(f))[1:]}


def run_once(emu: EmulatorProcess, jobs: list[Job], out_dir: Path) -> RunResult:
    options = RunOptions(
        out_dir=out_dir, api_key=emu.test_key, api_base=emu.api_base, files_base=emu.files_base
    )

    async def main() -> RunResult:
        return await run_jobs(jobs, options)

    return anyio.run(main)


def rows_and_sum(path: Path) -> tuple[int, int]:
    table = pq.read_table(path, columns=["amount"])
    return table.num_rows, sum(v for v in table.column("amount").to_pylist() if v is not None)


def duplicate_runs(stats: dict[str, Any]) -> int:
    """Runs beyond the first for any one idempotency key, plus runs made without a key."""
    by_key: dict[str, int] = stats["runs_created_by_idempotency_key"]
    return sum(n - 1 for n in by_key.values() if n > 1) + int(
        stats["runs_created_without_idempotency_key"]
    )


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """1,000 daily jobs (30 with --quick) under chaos."""
    n = 30 if quick else 1_000
    jobs = jobs_from(workdir / "jobs.toml", [daily_spec(n)])
    out_dir = workdir / "out"
    with emulator_process(*EMULATOR_ARGS, log_path=workdir / "emulator.log") as emu:
        expected = expected_by_day()
        with CpuTimer() as timer:
            first = run_once(emu, jobs, out_dir)
        stats = emu.stats()
        rerun = run_once(emu, jobs, out_dir) if first.failed else first
        rerun_stats = emu.stats()

    by_id = {job.id: job for job in jobs}
    succeeded = [r for r in first.results if r.status == "succeeded"]
    failed = [r for r in first.results if r.status == "failed"]
    mismatched = []
    for r in succeeded:
        day = str(by_id[r.job_id].params["day"])
        assert r.output is not None
        if rows_and_sum(r.output) != expected.get(day, (0, 0)):
            mismatched.append(r.job_id)
    silent = [r for r in failed if not (r.error or "").startswith(f"[{r.job_id}] ")]
    duplicates = duplicate_runs(rerun_stats)
    injected: dict[str, int] = stats["faults_injected"]
    figures = {
        "jobs": float(n),
        "succeeded": float(len(succeeded)),
        "failed": float(len(failed)),
        "failed_without_message": float(len(silent)),
        "duplicate_runs": float(duplicates),
        "rows_mismatch": float(len(mismatched)),
        "wall_s": first.wall_s,
        "failed_after_rerun": float(len(rerun.failed)),
    }
    result = ScenarioResult(
        scenario="soak",
        figures=figures,
        goal="every job succeeded with the emulator's rows and amount sum or failed with a "
        "message (succeeded + failed = jobs, failed_without_message = 0); duplicate_runs = 0; "
        "rows_mismatch = 0",
        goal_met=(
            len(succeeded) + len(failed) == n
            and not silent
            and duplicates == 0
            and not mismatched
            and first.stopped_by is None
        ),
    )
    kinds = ", ".join(f"{kind} {count}" for kind, count in injected.items() if count)
    result.notes.append(
        f"{n:,} jobs, {total_requests(stats):,} requests in {first.wall_s:.0f} s "
        f"(runner CPU {timer.cpu_s:.1f} s); faults injected: {kinds}; "
        f"{stats['idempotent_replays']} idempotent replays; "
        f"{stats['query_runs_created']['total']} runs created for {n} submissions."
    )
    reasons: dict[str, int] = {}
    for r in failed:
        reason = _RUN_ID.sub("qry_…", (r.error or "").split("] ", 1)[-1])[:120]
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        result.notes.append(
            "failures: " + "; ".join(f"{count} × {text}" for text, count in reasons.items())
        )
    if mismatched:
        result.notes.append(f"rows or sums differ for: {', '.join(mismatched[:10])}")
    return result
