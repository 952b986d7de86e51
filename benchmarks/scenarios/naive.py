"""naive: batchrunner against what users write today, on the same 200 jobs.

The baseline is :mod:`benchmarks.naive_script` (requests, ``time.sleep(2)`` polling,
``pandas.read_csv`` + ``to_parquet``), run once sequentially and once in a pool of 16
threads, each as its own process. All three runs get the same 200 daily queries (the rate
scenario's SQL) and an emulator with the same settings (test-mode limits on, run times of
1-3 s, up to 200 concurrent runs), started fresh for each so that the n-th run created takes the
same time in every run. Requests are counted by the emulator, 429s included; wall times
exclude interpreter start-up and imports on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from batchrunner.jobs import Job
from benchmarks.harness import (
    EmulatorProcess,
    ScenarioResult,
    emulator_process,
    jobs_from,
    run_batchrunner,
    total_requests,
)
from benchmarks.scenarios.rate import EMULATOR_ARGS, daily_jobs

GOAL_SPEEDUP = 10.0
THREADS = 16
ROOT = Path(__file__).resolve().parents[2]


def naive(emu: EmulatorProcess, jobs: list[Job], workdir: Path, threads: int) -> dict[str, Any]:
    """Run the naive script over ``jobs``; its own JSON line (wall_s, http_429)."""
    spec = workdir / f"naive-{threads}.json"
    spec.write_text(json.dumps([{"sql": j.sql, "output": str(j.output)} for j in jobs]))
    out = workdir / f"out-naive-{threads}"
    cmd = [sys.executable, "-m", "benchmarks.naive_script", str(spec), str(out)]
    cmd += ["--threads", str(threads)]
    done = subprocess.run(
        cmd, env=emu.client_env(), cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the naive script failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """200 jobs (4 at a third of the run time with --quick), three ways."""
    n = 4 if quick else 200
    args: tuple[str, ...] = EMULATOR_ARGS
    if quick:  # run times of 0.3-0.9 s
        args = tuple("0.5" if a == "1.667" else a for a in args)
    jobs = jobs_from(workdir / "jobs.toml", [daily_jobs("naive_daily", n)])
    walls: dict[str, float] = {}
    requests: dict[str, float] = {}
    notes: list[str] = []
    for way in ("batchrunner", "threads", "sequential"):
        with emulator_process(*args, log_path=workdir / f"emulator-{way}.log") as emu:
            emu.reset_stats()
            if way == "batchrunner":
                batch = run_batchrunner(emu, jobs, workdir / "out")
                walls[way] = batch.result.wall_s
            else:
                answer = naive(emu, jobs, workdir, THREADS if way == "threads" else 1)
                walls[way] = float(answer["wall_s"])
            stats = emu.stats()
        requests[way] = total_requests(stats) / n
        notes.append(
            f"{way}: {walls[way]:.1f} s, {requests[way]:.2f} requests/job, "
            f"{stats['http_429']} answered 429."
        )
    speedup_seq = walls["sequential"] / walls["batchrunner"]
    speedup_thr = walls["threads"] / walls["batchrunner"]
    result = ScenarioResult(
        scenario="naive",
        figures={
            "speedup_vs_sequential": speedup_seq,
            "speedup_vs_threads": speedup_thr,
            "requests_per_job": requests["batchrunner"],
            "requests_per_job_threads": requests["threads"],
            "requests_per_job_sequential": requests["sequential"],
            "wall_s": walls["batchrunner"],
            "wall_s_threads": walls["threads"],
            "wall_s_sequential": walls["sequential"],
        },
        references={
            "speedup_vs_sequential": ("goal", GOAL_SPEEDUP),
            "speedup_vs_threads": ("goal", 1.0),
            "requests_per_job": ("threads", requests["threads"]),
        },
        goal=f"speedup_vs_sequential ≥ {GOAL_SPEEDUP:.0f}, speedup_vs_threads > 1 and "
        "requests_per_job < requests_per_job_threads",
        goal_met=speedup_seq >= GOAL_SPEEDUP
        and speedup_thr > 1
        and requests["batchrunner"] < requests["threads"],
        notes=notes,
    )
    return result
