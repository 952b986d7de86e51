"""Chaos soak: 200 jobs through the engine against the emulator's ``chaos`` fault mix.

The 1,000-job version is ``python -m benchmarks soak`` (benchmarks/scenarios/soak.py). Here
the emulator's own rate limits are off, runs finish as fast as DuckDB, and the client retries
with tiny waits, so the whole soak takes seconds while every fault kind still fires.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pyarrow.parquet as pq

from batchrunner.client import ClientConfig, SigmaClient
from batchrunner.emulator import EmulatorHandle, FaultSpec, RateLimits
from batchrunner.engine import Engine, RunnerConfig, RunResult
from batchrunner.jobs import Job, load_jobs
from batchrunner.limiter import RateConfig
from batchrunner.polling import PollPolicy
from batchrunner.retry import RetryPolicy
from batchrunner.state import StateStore

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]

JOBS = 200
FIRST_DAY = "2023-01-01"
LAST_DAY = "2023-07-19"  # 200 days, inclusive
# The chaos preset (10% 5xx, 5% 429 bursts, 2% resets before and after the server acted, 2%
# cut and 1% slow downloads, 1% spurious run failures), with the rare kinds raised so that
# each one surely fires within 200 jobs: the issue asks for "at least" these rates.
FAULTS = "chaos,reset_before=0.03,reset_after=0.03,cut_download=0.05,run_failure=0.03"
FAST_POLL = PollPolicy(first_s=0.02, factor=1.5, cap_s=0.1, floor_s=0.01)
FAST_RATE = RateConfig(api_global=2000.0, per_endpoint=2000.0, files=2000.0)
# Stripe's SDK schedule (8 attempts) with the waits shrunk: the count is what matters here.
FAST_RETRY = RetryPolicy(max_attempts=8, base_s=0.002, cap_s=0.02, floor_s=0.001)

# Messages the emulator sends for the faults it injects; a failed job must carry one.
SERVER_MESSAGES = (
    "An internal error occurred while running the query",  # spurious run failure
    "An unknown error occurred while processing your request",  # 5xx after every retry
    "Request rate limit exceeded",  # 429 after every retry
)
TRANSPORT_MESSAGES = ("reset", "disconnected", "cut short", "gave up after")


def write_day_jobs(path: Path, first: str, last: str) -> Path:
    """One job per day: that day's balance transactions."""
    path.write_text(
        f"""
[[job]]
name = "daily_bt"
sql = '''
SELECT id, amount, currency, created FROM balance_transactions
WHERE created >= {{day_start}} AND created < {{day_end}}
'''
[job.grid.day]
every = "day"
start = {first}
end = {last}
""",
        "utf-8",
    )
    return path


def expected_by_day(emu: EmulatorHandle, tmp: Path) -> dict[str, tuple[int, int]]:
    """The emulator's own (row count, amount sum) per day, straight from its warehouse."""
    dest = tmp / "expected.csv"
    emu.warehouse.execute_to_csv(
        "select date_format(created, '%Y-%m-%d') as d, count(*) as n, sum(amount) as s "
        "from balance_transactions group by 1",
        dest,
    )
    with dest.open(encoding="utf-8") as f:
        return {d: (int(n), int(s)) for d, n, s in list(csv.reader(f))[1:]}


async def run_engine(emu: EmulatorHandle, jobs: list[Job], out: Path) -> RunResult:
    """The engine as runner.run_jobs wires it, but with a fast pace and fast retries."""
    config = ClientConfig(
        api_key=emu.test_key,
        api_base=emu.api_base,
        files_base=emu.files_base,
        rate=FAST_RATE,
        retry=FAST_RETRY,
    )
    state = await anyio.to_thread.run_sync(StateStore.open, out / ".batchrunner" / "state.sqlite")
    try:
        async with SigmaClient(config) as api:
            engine = Engine(
                api,
                state,
                RunnerConfig(out_dir=out, max_running=50, poll=FAST_POLL),
                is_congested=lambda: api.budget.api.congested,
            )
            return await engine.run(jobs)
    finally:
        await anyio.to_thread.run_sync(state.close)


def parquet_rows_and_sum(path: Path) -> tuple[int, int]:
    table = pq.read_table(path)
    return table.num_rows, sum(v for v in table.column("amount").to_pylist() if v is not None)


async def test_chaos_soak_every_job_correct_or_failed_with_the_servers_message(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """200 jobs under chaos: each ends with a correct Parquet or the server's message, once."""
    jobs = load_jobs([write_day_jobs(tmp_path / "daily.toml", FIRST_DAY, LAST_DAY)])
    assert len(jobs) == JOBS
    out = tmp_path / "out"
    async with make_emulator(
        faults=FaultSpec.parse(FAULTS), rate_limits=RateLimits(enabled=False)
    ) as emu:
        expected = expected_by_day(emu, tmp_path)
        result = await run_engine(emu, jobs, out)
        stats = emu.stats()

    assert result.stopped_by is None
    assert len(result.results) == JOBS
    succeeded = [r for r in result.results if r.status == "succeeded"]
    failed = [r for r in result.results if r.status == "failed"]
    assert len(succeeded) + len(failed) == JOBS, {r.status for r in result.results}
    for r in succeeded:
        day = str(r.params["day"])
        assert r.output is not None and r.output.is_file()
        assert parquet_rows_and_sum(r.output) == expected.get(day, (0, 0)), r.job_id
        assert r.rows == expected.get(day, (0, 0))[0]
    for r in failed:
        error = r.error or ""
        assert error.startswith(f"[{r.job_id}] "), error  # names the job
        assert any(m in error for m in SERVER_MESSAGES + TRANSPORT_MESSAGES), error
    # A spurious run failure gets one new submission: a job fails only if that fails too
    # (or its transport retries run out), so failures are far fewer than failed runs.
    spurious = stats["faults_injected"]["run_failure"]
    assert len(failed) <= spurious // 2 + 3, [r.error for r in failed]
    assert len(succeeded) >= JOBS * 0.9

    # Every submission made at most one run: lost answers were replayed, never re-created.
    by_key: dict[str, int] = stats["runs_created_by_idempotency_key"]
    assert by_key and max(by_key.values()) == 1
    assert stats["runs_created_without_idempotency_key"] == 0
    assert stats["query_runs_created"]["total"] == len(by_key) <= JOBS + spurious
    run_ids = [r.query_run_id for r in succeeded]
    assert len(set(run_ids)) == len(run_ids)
    assert stats["idempotent_replays"] > 0  # resets after the server acted did happen

    # The mix really was chaotic: every fault kind fired.
    injected: dict[str, Any] = stats["faults_injected"]
    for kind in ("5xx", "429", "reset_before", "reset_after", "cut_download", "run_failure"):
        assert injected[kind] > 0, (kind, injected)
    requests = sum(sum(by_status.values()) for by_status in stats["requests"].values())
    assert injected["5xx"] >= 0.05 * requests
    # Cut downloads were resumed from where they stopped (206 answers to a Range request).
    assert stats["requests"]["GET /v1/files/{id}/contents"].get("206", 0) > 0

    # Nothing half-done is left behind: no temporary Parquet, no downloaded CSV.
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".tmp", ".csv"}]
    assert not leftovers
    parquet = sorted(out.rglob("*.parquet"))
    assert len(parquet) == len(succeeded)
    assert sum(r.rows or 0 for r in succeeded) > JOBS // 2  # the days really held data

    # The state file agrees: a rerun would skip the successes and retry only the failures.
    with StateStore.open(out / ".batchrunner" / "state.sqlite") as store:
        records = {rec.job_id: rec for rec in store.all()}
    assert {k: str(v.status) for k, v in records.items()} == {
        r.job_id: r.status for r in result.results
    }


async def test_a_download_cut_every_time_fails_without_a_short_parquet(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """When every response is cut short, the job fails after its retries; no file is left."""
    path = tmp_path / "j.toml"
    path.write_text('[[job]]\nname = "cut"\nsql = "select * from balance_transactions"\n', "utf-8")
    out = tmp_path / "out"
    async with make_emulator(
        faults=FaultSpec.parse("cut_download=1.0"), rate_limits=RateLimits(enabled=False)
    ) as emu:
        result = await run_engine(emu, load_jobs([path]), out)
        stats = emu.stats()
    (only,) = result.results
    assert only.status == "failed"
    assert only.error is not None and only.error.startswith("[cut] download of file_")
    assert f"gave up after {FAST_RETRY.max_attempts} attempts" in only.error
    downloads = stats["requests"]["GET /v1/files/{id}/contents"]
    assert downloads.get("206", 0) == FAST_RETRY.max_attempts - 1  # each retry resumed
    outputs = [p for p in out.rglob("*") if p.is_file() and ".batchrunner" not in p.parts]
    assert not outputs  # no Parquet, short or otherwise, and no temporary file
    assert not list((out / ".batchrunner" / "downloads").iterdir())  # the partial CSV is gone
