"""Tests for the engine (through batchrunner.runner) against the emulator over real HTTP."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pyarrow.parquet as pq

from batchrunner.emulator import EmulatorHandle, FaultSpec
from batchrunner.engine import JobEvent
from batchrunner.jobs import load_jobs
from batchrunner.polling import PollPolicy
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, run_jobs
from batchrunner.state import JobStatus, StateStore

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]
ROOT = Path(__file__).resolve().parent.parent
FAST_POLL = PollPolicy(first_s=0.05, factor=1.5, cap_s=0.2, floor_s=0.02)
FAST_RETRY = RetryPolicy(max_attempts=10, base_s=0.01, cap_s=0.05, floor_s=0.01)


def options(emu: EmulatorHandle, out: Path, **overrides: Any) -> RunOptions:
    settings: dict[str, Any] = {
        "out_dir": out,
        "api_key": emu.test_key,
        "api_base": emu.api_base,
        "files_base": emu.files_base,
        "rate": 500.0,
        "poll": FAST_POLL,
        "retry": FAST_RETRY,
    }
    settings.update(overrides)
    return RunOptions(**settings)


def write_jobs(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def emulator_answer(emu: EmulatorHandle, sql: str, tmp: Path) -> list[list[str]]:
    """What the emulator's own engine returns for ``sql`` (header excluded)."""
    dest = tmp / "answer.csv"
    emu.warehouse.execute_to_csv(sql, dest)
    with dest.open(encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


async def test_monthly_export_matches_the_emulators_own_sql(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """The README job yields 36 Parquet files whose rows and amount sums equal the server's."""
    jobs = load_jobs([ROOT / "jobs" / "monthly_balance_transactions.toml"])
    assert len(jobs) == 36
    result = await run_jobs(jobs, options(emulator, tmp_path / "out"))
    assert result.ok, [r.error for r in result.failed]
    totals = emulator_answer(
        emulator,
        "select date_format(created, '%Y-%m') as m, count(*), sum(amount) "
        "from balance_transactions where created >= timestamp '2023-01-01 00:00:00' "
        "and created < timestamp '2026-01-01 00:00:00' group by 1 order by 1",
        tmp_path,
    )
    assert len(totals) == 36
    files = sorted((tmp_path / "out").rglob("*.parquet"))
    assert len(files) == 36
    for (month, count, amount), res in zip(totals, result.results, strict=True):
        table = pq.read_table(res.output)
        assert f"period={month}" in str(res.output)
        assert table.num_rows == int(count) == res.rows
        assert sum(v for v in table.column("amount").to_pylist() if v is not None) == int(amount)
    manifest = (tmp_path / "out" / "manifest.json").read_text("utf-8")
    assert manifest.count('"query_run_id": "qry_') == 36


async def test_a_failed_query_does_not_stop_the_others(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """One job on an unknown table fails with the server's message; its sibling succeeds."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "good"
sql = "select id, amount from charges limit 5"
[[job]]
name = "bad"
sql = "select * from not_a_table"
""",
    )
    result = await run_jobs(load_jobs([path]), options(emulator, tmp_path / "out"))
    by_id = {r.job_id: r for r in result.results}
    good = next(r for k, r in by_id.items() if k.startswith("good"))
    bad = next(r for k, r in by_id.items() if k.startswith("bad"))
    assert good.status == "succeeded" and good.rows == 5
    assert bad.status == "failed"
    assert "tables which do not exist or are inaccessible" in (bad.error or "")
    assert "bad" in (bad.error or "")  # names the job


async def test_rejected_key_stops_the_whole_run(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """A 401 stops every job at once instead of retrying each, and says why."""
    jobs = load_jobs([ROOT / "jobs" / "monthly_balance_transactions.toml"])
    opts = options(emulator, tmp_path / "out", api_key="sk_test_WrongKeyWrongKey0000")
    result = await run_jobs(jobs, opts)
    assert result.stopped_by and "401" in result.stopped_by
    assert "WrongKeyWrongKey0000" not in result.stopped_by
    created = emulator.stats()["query_runs_created"]["total"]
    assert created == 0
    assert not list((tmp_path / "out").rglob("*.parquet"))


async def test_interrupted_run_resumes_without_duplicate_runs(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """Cancel mid-run, rerun: finished jobs are skipped, in-flight runs are re-polled by id."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "r"
sql = "select id, amount from balance_transactions limit 50"
repeat = 16
""",
    )
    jobs = load_jobs([path])
    async with make_emulator(time_scale=0.3) as emu:
        opts = options(emu, tmp_path / "out", max_running=8)
        finished: list[str] = []
        with anyio.CancelScope() as scope:

            def stop_after_three(event: JobEvent) -> None:
                if event.stage == "succeeded":
                    finished.append(event.job_id)
                    if len(finished) == 3:
                        scope.cancel()

            await run_jobs(jobs, opts, observer=stop_after_three)
        assert scope.cancelled_caught
        with StateStore.open(opts.state_file) as store:
            in_flight = [
                r for r in store.all() if r.query_run_id and r.status is not JobStatus.SUCCEEDED
            ]
        assert in_flight, "the interruption should catch runs in flight"
        created_before = emu.stats()["query_runs_created"]["total"]
        result = await run_jobs(jobs, opts)
        assert result.ok
        statuses = [r.status for r in result.results]
        assert statuses.count("skipped") >= 3
        assert emu.stats()["query_runs_created"]["total"] == 16
        assert created_before <= 16
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.suffix in {".tmp", ".csv"}]
    assert not leftovers


async def test_cancellation_mid_download_leaves_no_partial_file(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """Cancelling while results stream leaves neither final nor temporary files behind."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "big"
sql = "select * from balance_transactions"
repeat = 3
""",
    )
    async with make_emulator(faults=FaultSpec.parse("slow_download=1.0")) as emu:
        with anyio.CancelScope() as scope:

            def cancel_on_download(event: JobEvent) -> None:
                if event.stage == "downloading":
                    scope.cancel()

            await run_jobs(
                load_jobs([path]), options(emu, tmp_path / "out"), observer=cancel_on_download
            )
        assert scope.cancelled_caught
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".parquet", ".csv", ".tmp"}], files


async def test_chaos_faults_end_with_every_job_correct_and_no_duplicates(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """Under the chaos mix every job ends succeeded (or failed with a message), once each."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "c"
sql = "select id, amount, currency from charges limit 40"
repeat = 30
""",
    )
    async with make_emulator(faults=FaultSpec.parse("chaos")) as emu:
        result = await run_jobs(load_jobs([path]), options(emu, tmp_path / "out"))
        stats = emu.stats()
    for r in result.results:
        if r.status == "succeeded":
            assert r.rows == 40
        else:
            assert r.error
    assert sum(r.status == "succeeded" for r in result.results) >= 25
    assert stats["query_runs_created"]["total"] <= 30 + sum(
        r.status == "failed" for r in result.results
    )


async def test_second_run_skips_everything(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """Running the same command twice sends no second create."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "s"
sql = "select id from customers limit 3"
repeat = 4
""",
    )
    jobs = load_jobs([path])
    opts = options(emulator, tmp_path / "out")
    first = await run_jobs(jobs, opts)
    second = await run_jobs(jobs, opts)
    assert [r.status for r in first.results] == ["succeeded"] * 4
    assert [r.status for r in second.results] == ["skipped"] * 4
    assert emulator.stats()["query_runs_created"]["total"] == 4
    forced = await run_jobs(jobs, options(emulator, tmp_path / "out", force=True))
    assert [r.status for r in forced.results] == ["succeeded"] * 4


async def test_download_then_convert_mode_gives_the_same_rows(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """With pipelining off the files are the same; both modes time the whole result step."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "p"
sql = "select * from balance_transactions"
""",
    )
    jobs = load_jobs([path])
    piped = await run_jobs(jobs, options(emulator, tmp_path / "a"))
    plain = await run_jobs(jobs, options(emulator, tmp_path / "b", pipeline=False))
    assert piped.ok and plain.ok
    a, b = piped.results[0], plain.results[0]
    assert a.output is not None and b.output is not None
    assert pq.read_table(a.output).equals(pq.read_table(b.output))
    assert a.rows == b.rows and a.rows
    for result in (a, b):
        assert result.timings["result"] >= result.timings["convert"]


def key_slug(job_id: str) -> str:
    """The job part of its idempotency keys (see ``new_idempotency_key``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_id)


def runs_per_job(stats: dict[str, Any]) -> dict[str, int]:
    """How many query runs the emulator created per job, read from the idempotency keys."""
    counts: dict[str, int] = {}
    for key, runs in stats["runs_created_by_idempotency_key"].items():
        job = key.removeprefix("br-").rsplit("-", 2)[0]
        counts[job] = counts.get(job, 0) + runs
    return counts


async def test_a_failed_run_is_submitted_once_more_before_the_job_fails(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """A run ending failed gets one new submission; the job fails only if that fails too."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "r"
sql = "select id, amount from balance_transactions limit 20"
repeat = 40
""",
    )
    jobs = load_jobs([path])
    async with make_emulator(faults=FaultSpec.parse("run_failure=0.5")) as emu:
        result = await run_jobs(jobs, options(emu, tmp_path / "out"))
        stats = emu.stats()
    runs = runs_per_job(stats)
    assert sum(runs.values()) == stats["query_runs_created"]["total"]
    assert stats["query_runs_created"]["total"] == 40 + stats["faults_injected"]["run_failure"] - (
        len(result.failed)
    )
    for r in result.results:
        if r.status == "failed":
            assert runs[key_slug(r.job_id)] == 2 and "failed" in (r.error or ""), r
        else:
            assert r.status == "succeeded" and r.rows == 20
            assert runs[key_slug(r.job_id)] in (1, 2)
    recovered = [
        r for r in result.results if r.status == "succeeded" and runs[key_slug(r.job_id)] == 2
    ]
    assert recovered  # at p=0.5 over 40 jobs, some first runs failed and their second did not


async def test_run_attempts_1_fails_a_job_on_its_first_failed_run(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """With run_attempts=1 a failed run fails its job at once: one run per job, no more."""
    path = write_jobs(
        tmp_path / "j.toml",
        """
[[job]]
name = "r"
sql = "select id from charges limit 3"
repeat = 3
""",
    )
    async with make_emulator(faults=FaultSpec.parse("run_failure=1.0")) as emu:
        result = await run_jobs(load_jobs([path]), options(emu, tmp_path / "out", run_attempts=1))
        stats = emu.stats()
    assert [r.status for r in result.results] == ["failed"] * 3
    assert stats["query_runs_created"]["total"] == 3
    assert set(runs_per_job(stats).values()) == {1}
