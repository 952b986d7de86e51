"""rate: rate-bound fan-out, 1,000 jobs of small results under Stripe's test-mode limits.

Each job selects one day of balance transactions (about 90 rows at scale 1). The emulator
enforces the limits Stripe publishes for test mode (25 requests/s on the API host, 25/s per
endpoint, 20 reads/s on the files host) and models run times of 1-3 s
(``--time-scale 1.667 --run-time-jitter 0.5``: (1 s + 2 µs × 93,551 rows scanned) ×
U(0.5, 1.5) × 1.667). Stripe publishes no limit on concurrent runs; the emulator's is set to
200, out of the way, so that the request limits are what binds.

``lower_bound_s`` is the least time those limits allow for the ideal three requests a job:
one create and one poll on the API host (2 × 1,000 / 25 = 80 s), one download on the files
host. batchrunner runs with its defaults (24 requests/s for a test key).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from benchmarks.harness import (
    ScenarioResult,
    emulator_process,
    jobs_from,
    quantiles,
    rate_lower_bound_s,
    run_batchrunner,
    spread,
    timelines,
    total_requests,
)

GOAL_BOUND_RATIO = 0.90
FIRST_DAY = date(2023, 1, 1)
EMULATOR_ARGS = (
    "--scale",
    "1",
    "--time-scale",
    "1.667",
    "--run-time-jitter",
    "0.5",
    "--max-concurrent-runs",
    "200",
)
DAILY_SQL = (
    "SELECT id, amount, fee, net, currency, type, reporting_category, created "
    "FROM balance_transactions WHERE created >= {day_start} AND created < {day_end}"
)


def daily_jobs(name: str, days: int) -> dict[str, object]:
    """One job spec: ``days`` consecutive days of balance transactions from 2023-01-01."""
    last = FIRST_DAY + timedelta(days=days - 1)
    grid = {"day": {"every": "day", "start": FIRST_DAY.isoformat(), "end": last.isoformat()}}
    return {"name": name, "sql": DAILY_SQL, "grid": grid}


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """1,000 daily jobs (60 with --quick) at batchrunner's defaults."""
    n = 60 if quick else 1_000
    jobs = jobs_from(workdir / "jobs.toml", [daily_jobs("rate_daily", n)])
    with emulator_process(*EMULATOR_ARGS, log_path=workdir / "emulator.log") as emu:
        emu.reset_stats()
        batch = run_batchrunner(emu, jobs, workdir / "out")
        stats = emu.stats()
        lines = timelines(emu, batch.run_ids, save_to=workdir / "timelines.json")
    wall = batch.result.wall_s
    bound = rate_lower_bound_s(n)
    requests = total_requests(stats)
    polls = sum(t.polls for t in lines)
    http_429 = int(stats["http_429"])
    result = ScenarioResult(
        scenario="rate",
        figures={
            "wall_s": wall,
            "lower_bound_s": bound,
            "bound_ratio": bound / wall,
            "http_429": http_429,
            "requests_per_job": requests / n,
            "polls_per_job": polls / n,
        },
        references={
            "wall_s": ("lower bound", bound),
            "bound_ratio": ("goal", GOAL_BOUND_RATIO),
            "requests_per_job": ("ideal", 3.0),
            "polls_per_job": ("ideal", 1.0),
        },
        goal=f"bound_ratio ≥ {GOAL_BOUND_RATIO:.2f} and no 429",
        goal_met=bound / wall >= GOAL_BOUND_RATIO and http_429 == 0,
    )
    run_times = [t.run_time for t in lines if t.run_time is not None]
    delays = [d for t in lines if (d := t.detection_delay) is not None]
    p50, p95 = quantiles(delays)
    result.notes += [
        f"{n:,} jobs; server run times (s): {spread(run_times)}; detection delay p50 "
        f"{p50:.2f} s, p95 {p95:.2f} s; runner CPU {batch.cpu_s:.1f} s.",
        f"requests by endpoint: {_by_endpoint(stats)}; client retries "
        f"{batch.report.get('retries')}.",
    ]
    return result


def _by_endpoint(stats: dict[str, object]) -> str:
    requests = stats["requests"]
    assert isinstance(requests, dict)
    return "; ".join(
        f"{label} {sum(by_status.values()):,}" for label, by_status in sorted(requests.items())
    )
