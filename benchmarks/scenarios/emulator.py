"""emulator: how many polls per second the emulator serves with its limits off.

One run is created and left to finish; then this process sends ``GET
/v1/sigma/query_runs/{id}`` at a fixed concurrency over one aiohttp session, and the figure
is polls answered per wall second. The emulator runs in its own process on the other core,
so the figure is the emulator's capacity unless the client's CPU says otherwise (its CPU
per poll is recorded in the notes).
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import anyio

from benchmarks.harness import EmulatorProcess, ScenarioResult, emulator_process

GOAL_POLLS_PER_S = 1000.0
CONCURRENCY = 32


async def _hammer(emu: EmulatorProcess, polls: int) -> tuple[float, float, float]:
    """(wall s, emulator CPU s, client CPU s) for ``polls`` polls of one finished run."""
    headers = {"Authorization": f"Bearer {emu.test_key}"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        base = f"{emu.api_base}/v1/sigma/query_runs"
        async with http.post(base, data={"sql": "SELECT 1 AS one"}) as resp:
            resp.raise_for_status()
            run_id = (await resp.json())["id"]
        with anyio.fail_after(60):
            while True:  # the run finishes in milliseconds at --time-scale 0
                async with http.get(f"{base}/{run_id}") as resp:
                    if (await resp.json())["status"] not in ("pending", "running"):
                        break
                await anyio.sleep(0.01)
        url = f"{base}/{run_id}"
        remaining = polls
        failures = 0

        async def worker() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                async with http.get(url) as resp:
                    await resp.read()
                    failures += resp.status != 200

        emu_cpu, cpu = emu.cpu_seconds(), time.process_time()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(worker)
        wall = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{failures} of {polls} polls were not answered 200")
        return wall, emu.cpu_seconds() - emu_cpu, time.process_time() - cpu


def run(*, quick: bool, workdir: Path) -> ScenarioResult:
    """Measure the emulator's poll capacity (limits off, instant runs)."""
    polls = 3_000 if quick else 30_000
    args = ("--scale", "0.05", "--no-rate-limits", "--time-scale", "0")
    with emulator_process(*args, log_path=workdir / "emulator.log") as emu:
        anyio.run(_hammer, emu, min(500, polls))  # warm up: connections, caches, JIT-free paths
        wall, emu_cpu, client_cpu = anyio.run(_hammer, emu, polls)
        served = emu.stats()["requests"]["GET /v1/sigma/query_runs/{id}"].get("200", 0)
    polls_per_s = polls / wall
    result = ScenarioResult(
        scenario="emulator",
        figures={
            "polls_per_s": polls_per_s,
            "emulator_cpu_us_per_poll": emu_cpu / polls * 1e6,
            "client_cpu_us_per_poll": client_cpu / polls * 1e6,
        },
        references={"polls_per_s": ("goal", GOAL_POLLS_PER_S)},
        goal=f"polls_per_s ≥ {GOAL_POLLS_PER_S:,.0f} with limits off, so no other figure is "
        "the emulator's limit",
        goal_met=polls_per_s >= GOAL_POLLS_PER_S,
    )
    result.notes.append(
        f"{polls:,} polls of one finished run at concurrency {CONCURRENCY} over one aiohttp "
        f"session in {wall:.2f} s; the emulator answered {served:,} with 200 (warm-up "
        "included). At the emulator's CPU per poll it could serve "
        f"{polls / emu_cpu:,.0f}/s if it had a core to itself."
        if emu_cpu
        else f"{polls:,} polls in {wall:.2f} s"
    )
    return result
