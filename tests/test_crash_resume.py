"""Crash and resume: the real CLI killed at random points, then run again with the same command.

Each *chain* is one output directory: ``batchrunner run`` is started, killed (SIGKILL, or
SIGINT like a Ctrl-C) at a point a seeded RNG picks, checked, started again, killed again...
and finally run to completion. The kill points are aimed at phases by watching the state file
(a job ``submitting``, ``running``, ``downloading``, ``converting``) or the output directory
(a temporary Parquet file about to be renamed), plus a random jitter. After every kill:

* every file at a final path is a complete Parquet file with the right rows (never partial);
* a ``succeeded`` job has its file.

When the chain ends (the last run exits 0):

* every output holds exactly the emulator's own rows and amount sum;
* the emulator created exactly one query run per job over the whole chain (in-flight runs
  were picked up by id or replayed by idempotency key, never created again);
* a job with a run id at any kill finished with that same run (picked up by id);
* a job finished at the last kill was skipped by the final run (no finished job ran again);
* no temporary or downloaded file is left behind.

A few chains run at once against one in-process emulator; each chain's job names are its own,
so the emulator's per-idempotency-key counts tell the chains apart.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pyarrow.parquet as pq

from batchrunner.emulator import EmulatorHandle, FaultSpec, RateLimits
from batchrunner.jobs import Job, load_jobs
from batchrunner.outputs import MANIFEST_NAME

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("submitting", "running", "downloading", "converting", "renaming", "anytime")
WATCH_EVERY_S = 0.003
KILL_WAIT_S = 30.0
PARALLEL_CHAINS = 4  # the CLIs mostly wait (polls, pacing): four share two cores well


def job_file(path: Path, name: str) -> Path:
    """8 monthly jobs plus two whole-table jobs whose conversions take a little longer."""
    path.write_text(
        f"""
[[job]]
name = "{name}_m"
sql = '''
SELECT id, amount, currency, created, description FROM balance_transactions
WHERE created >= {{period_start}} AND created < {{period_end}}
'''
[job.grid.period]
every = "month"
start = "2023-01"
end = "2023-08"

[[job]]
name = "{name}_all"
sql = "SELECT * FROM charges"
repeat = 2
""",
        "utf-8",
    )
    return path


@dataclass(frozen=True, slots=True)
class Expected:
    """What each kind of job must hold: rows and amount sum, from the emulator's own SQL."""

    by_month: dict[str, tuple[int, int]]
    charges: tuple[int, int]

    def of(self, job: Job) -> tuple[int, int]:
        if "period" in job.params:
            return self.by_month.get(str(job.params["period"]), (0, 0))
        return self.charges


def expected_answers(emu: EmulatorHandle, tmp: Path) -> Expected:
    def query(sql: str) -> list[list[str]]:
        dest = tmp / "expected.csv"
        emu.warehouse.execute_to_csv(sql, dest)
        with dest.open(encoding="utf-8") as f:
            return list(csv.reader(f))[1:]

    months = query(
        "select date_format(created, '%Y-%m'), count(*), sum(amount) "
        "from balance_transactions group by 1"
    )
    ((n, s),) = query("select count(*), sum(amount) from charges")
    return Expected({m: (int(c), int(a)) for m, c, a in months}, (int(n), int(s)))


@dataclass(frozen=True, slots=True)
class JobRow:
    status: str
    query_run_id: str | None
    updated_at: float


def read_state(path: Path) -> dict[str, JobRow]:
    """The state file's job rows, read-only (empty while the file does not exist yet)."""
    if not path.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return {}
    try:
        rows = conn.execute("SELECT job_id, status, query_run_id, updated_at FROM jobs")
        return {r[0]: JobRow(r[1], r[2], r[3]) for r in rows.fetchall()}
    except sqlite3.Error:  # schema not created yet
        return {}
    finally:
        conn.close()


def temp_parquet_files(out: Path, *, since: float = 0.0) -> list[Path]:
    """Temporary Parquet files under ``out`` (modified at or after ``since``)."""
    if not out.exists():
        return []
    found = []
    for path in out.rglob(".*.tmp"):
        try:
            if path.stat().st_mtime >= since:
                found.append(path)
        except FileNotFoundError:  # renamed or swept meanwhile
            continue
    return found


def lock_holder(state_path: Path) -> int | None:
    """The pid written into the state lock file by the run holding it."""
    try:
        text = state_path.with_name(state_path.name + ".lock").read_text("ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def rows_and_sum(path: Path) -> tuple[int, int]:
    table = pq.read_table(path)
    return table.num_rows, sum(v for v in table.column("amount").to_pylist() if v is not None)


@dataclass(slots=True)
class Chain:
    """One output directory, killed again and again, then finished."""

    name: str
    workdir: Path
    jobs: list[Job]
    expected: Expected
    env: dict[str, str]
    rng: random.Random
    kills: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    run_ids_seen: dict[str, str] = field(default_factory=dict)
    invocations: int = 0

    @property
    def out(self) -> Path:
        return self.workdir / "out"

    @property
    def state_path(self) -> Path:
        return self.out / ".batchrunner" / "state.sqlite"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "batchrunner",
            "run",
            str(self.workdir / "jobs.toml"),
            "--out",
            str(self.out),
            "--max-running",
            "4",
            "--rate",
            "200",
        ]

    async def start(self) -> tuple[anyio.abc.Process, Path]:
        self.invocations += 1
        log = self.workdir / f"stderr-{self.invocations}.txt"
        with log.open("wb") as stderr:
            proc = await anyio.open_process(
                self.command(), env=self.env, stdout=stderr, stderr=stderr, cwd=self.workdir
            )
        return proc, log

    async def wait_for_phase(self, proc: anyio.abc.Process, phase: str, started: float) -> bool:
        """Return once this process is in ``phase`` (False if it ended first).

        Only what this process did counts: it must hold the state lock, and the job row (or
        temporary file) must have changed since it started; rows and files left by the run
        killed before it say nothing about this one.
        """
        with anyio.move_on_after(KILL_WAIT_S):
            while proc.returncode is None:
                if await anyio.to_thread.run_sync(lock_holder, self.state_path) == proc.pid:
                    if phase == "anytime":
                        return True
                    if phase == "renaming":
                        found = await anyio.to_thread.run_sync(
                            partial(temp_parquet_files, self.out, since=started)
                        )
                        if found:
                            return True
                    else:
                        rows = await anyio.to_thread.run_sync(read_state, self.state_path)
                        if any(
                            r.status == phase and r.updated_at >= started for r in rows.values()
                        ):
                            return True
                await anyio.sleep(WATCH_EVERY_S)
        return False

    async def kill_once(self, sig: signal.Signals, phase: str) -> bool:
        """Start the command, signal it in ``phase``; False when it finished first."""
        started = time.time()
        proc, log = await self.start()
        async with proc:
            reached = await self.wait_for_phase(proc, phase, started)
            jitter = {"running": 0.3, "anytime": 1.5, "downloading": 0.03}.get(phase, 0.005)
            await anyio.sleep(self.rng.uniform(0, jitter))
            if not reached or proc.returncode is not None:
                await proc.wait()
                assert proc.returncode == 0, log.read_text("utf-8")
                return False
            at_kill = {
                job_id: row
                for job_id, row in (
                    await anyio.to_thread.run_sync(read_state, self.state_path)
                ).items()
                if row.updated_at >= started
            }
            tmp_seen = bool(
                await anyio.to_thread.run_sync(partial(temp_parquet_files, self.out, since=started))
            )
            proc.send_signal(sig)
            with anyio.fail_after(30):
                code = await proc.wait()
        text = log.read_text("utf-8")
        if code == 0 or (code == -signal.SIGINT and "batchrunner summary" in text):
            return False  # the run had finished (and said so) before the signal landed
        if sig is signal.SIGKILL:
            assert code == -signal.SIGKILL, text
        else:
            assert code == 130, f"exit {code} after one SIGINT:\n{text}"
            assert "Interrupted. State is saved" in text, text
            assert "Traceback" not in text, text
        statuses = frozenset(
            r.status for r in at_kill.values() if r.status not in ("planned", "succeeded")
        )
        self.kills.append((phase, statuses | ({"temp-file"} if tmp_seen else set())))
        await anyio.to_thread.run_sync(self.check_after_kill, sig)
        return True

    def check_after_kill(self, sig: signal.Signals) -> None:
        """No partial file at a final path; succeeded means published; remember run ids."""
        rows = read_state(self.state_path)
        for job in self.jobs:
            final = self.out / job.output
            if final.exists():
                assert rows_and_sum(final) == self.expected.of(job), final
            row = rows.get(job.id)
            if row is None:
                continue
            if row.status == "succeeded":
                assert final.exists(), f"{job.id} succeeded but {final} is missing"
            if row.query_run_id is not None:
                previous = self.run_ids_seen.setdefault(job.id, row.query_run_id)
                assert previous == row.query_run_id, f"{job.id} changed run id"
        finals = {self.out / job.output for job in self.jobs}
        stray = [p for p in self.out.rglob("*.parquet") if p not in finals]
        assert not stray, stray
        if sig is signal.SIGINT:  # a graceful stop cleans up after itself
            assert not temp_parquet_files(self.out)
            assert not list((self.out / ".batchrunner" / "downloads").glob("*.csv"))

    async def finish(self, emu: EmulatorHandle) -> None:
        """Run the command to completion and check the whole chain's promises."""
        finished_before = {
            job_id
            for job_id, row in (await anyio.to_thread.run_sync(read_state, self.state_path)).items()
            if row.status == "succeeded"
        }
        proc, log = await self.start()
        async with proc:
            with anyio.fail_after(60):
                code = await proc.wait()
        text = log.read_text("utf-8")
        assert code == 0, text
        for job_id in finished_before:  # a finished job is not run again
            assert f"skipped {job_id}" in text, (job_id, text)
        await anyio.to_thread.run_sync(self.check_complete, emu.stats())

    def check_complete(self, stats: dict[str, Any]) -> None:
        for job in self.jobs:
            assert rows_and_sum(self.out / job.output) == self.expected.of(job), job.id
        manifest = _manifest_run_ids(self.out)
        assert set(manifest) == {job.id for job in self.jobs}
        for job_id, run_id in self.run_ids_seen.items():  # in-flight runs were picked up by id
            assert manifest[job_id] == run_id, job_id
        prefix = "br-" + self.name + "_"
        by_key = {
            k: n
            for k, n in stats["runs_created_by_idempotency_key"].items()
            if k.startswith(prefix)
        }
        assert max(by_key.values()) == 1, by_key
        assert sum(by_key.values()) == len(self.jobs), (len(by_key), len(self.jobs))
        assert len(set(manifest.values())) == len(self.jobs)  # one distinct run per job
        leftovers = [p for p in self.out.rglob("*") if p.is_file() and p.suffix in {".tmp", ".csv"}]
        assert not leftovers, leftovers


def _manifest_run_ids(out: Path) -> dict[str, str]:
    doc = json.loads((out / MANIFEST_NAME).read_text("utf-8"))
    return {job_id: entry["query_run_id"] for job_id, entry in doc["jobs"].items()}


async def run_chains(
    emu: EmulatorHandle,
    tmp: Path,
    *,
    sig: signal.Signals,
    kills_wanted: int,
    per_chain: int,
    seed: int,
) -> list[Chain]:
    """Kill ``kills_wanted`` times over chains of up to ``per_chain`` kills, a few at a time."""
    expected = expected_answers(emu, tmp)
    env = {
        **os.environ,
        "STRIPE_API_KEY": emu.test_key,
        "STRIPE_API_BASE": emu.api_base,
        "STRIPE_FILES_BASE": emu.files_base,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
    }
    master = random.Random(seed)
    chains: list[Chain] = []
    # Phases in turn (from a seeded start), so each one is aimed at several times.
    start = master.randrange(len(PHASES))
    targets = itertools.cycle(PHASES[start:] + PHASES[:start])

    def new_chain() -> Chain:
        name = f"{sig.name.lower()}{len(chains):02d}"
        workdir = tmp / name
        workdir.mkdir()
        path = job_file(workdir / "jobs.toml", name)
        chain = Chain(
            name, workdir, load_jobs([path]), expected, env, random.Random(master.random())
        )
        chains.append(chain)
        return chain

    def kills() -> int:
        return sum(len(c.kills) for c in chains)

    missed: list[str] = []  # phases a run finished before reaching: aimed at again first

    async def drive(chain: Chain) -> None:
        while len(chain.kills) < per_chain and kills() < kills_wanted:
            phase = missed.pop() if missed else next(targets)
            if not await chain.kill_once(sig, phase):
                missed.append(phase)
                break  # the run finished before the signal: nothing left to interrupt here
        await chain.finish(emu)

    async def worker() -> None:
        # A chain whose run finished by itself ends early, so new chains start until enough
        # kills have landed (bounded, so a run that can never be caught fails the test).
        while kills() < kills_wanted and len(chains) < 3 * kills_wanted:
            await drive(new_chain())

    async with anyio.create_task_group() as tg:
        for _ in range(PARALLEL_CHAINS):
            tg.start_soon(worker)
    return chains


def emulator_settings() -> dict[str, Any]:
    """Runs take ~0.3 s and some downloads crawl, so every phase lasts long enough to hit."""
    return {
        "time_scale": 0.3,
        "faults": FaultSpec.parse("slow_download=0.3,slow_bps=40000"),
        "rate_limits": RateLimits(enabled=False),
    }


def coverage(chains: list[Chain]) -> tuple[dict[str, int], dict[str, int]]:
    """How often each phase was aimed at and reached, and each job state caught at a kill."""
    aimed: dict[str, int] = {}
    caught: dict[str, int] = {}
    for chain in chains:
        for phase, statuses in chain.kills:
            aimed[phase] = aimed.get(phase, 0) + 1
            for status in statuses:
                caught[status] = caught.get(status, 0) + 1
    return aimed, caught


async def test_sigkill_at_random_points_then_rerun_completes_exactly_once(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """20+ SIGKILLs mid-run: reruns finish every output correctly, one query run per job."""
    async with make_emulator(**emulator_settings()) as emu:
        chains = await run_chains(
            emu, tmp_path, sig=signal.SIGKILL, kills_wanted=20, per_chain=4, seed=20240501
        )
    kills = sum(len(c.kills) for c in chains)
    aimed, caught = coverage(chains)
    print(f"SIGKILL: {kills} kills; phases reached {aimed}; job states at the kill {caught}")
    assert kills >= 20
    assert set(aimed) == set(PHASES), aimed  # every phase was reached and killed in


async def test_one_sigint_stops_cleanly_and_the_rerun_completes_exactly_once(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """A single Ctrl-C exits 130 with state saved and nothing partial; the rerun finishes."""
    async with make_emulator(**emulator_settings()) as emu:
        chains = await run_chains(
            emu, tmp_path, sig=signal.SIGINT, kills_wanted=10, per_chain=3, seed=20240502
        )
    kills = sum(len(c.kills) for c in chains)
    aimed, caught = coverage(chains)
    print(f"SIGINT: {kills} interrupts; phases reached {aimed}; job states at the signal {caught}")
    assert kills >= 10
    assert set(aimed) == set(PHASES), aimed
