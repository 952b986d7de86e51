"""Tests for what benchmarks read from the emulator: the slow-run tail and per-run timelines."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from click.testing import CliRunner
from conftest import MakeEmulator, call, wait_run
from test_emulator_runs import FakeWarehouse, engine_for

from batchrunner import cli
from batchrunner.emulator import EmulatorConfig, EmulatorHandle
from batchrunner.emulator.runs import RunTiming
from batchrunner.errors import ConfigError


def test_slow_draws_follow_the_fraction() -> None:
    """draw_slow gives the factor for about `fraction` of draws, never with fraction 0."""
    rng = random.Random(3)
    timing = RunTiming(slow_fraction=0.2, slow_factor=10.0)
    draws = [timing.draw_slow(rng) for _ in range(2000)]
    assert set(draws) == {1.0, 10.0}
    assert 0.15 < draws.count(10.0) / len(draws) < 0.25
    assert {RunTiming().draw_slow(rng) for _ in range(100)} == {1.0}
    assert {RunTiming(slow_fraction=1.0, slow_factor=4.0).draw_slow(rng) for _ in range(10)} == {
        4.0
    }


async def test_slow_tail_is_seeded_and_leaves_jitter_alone(tmp_path: Path) -> None:
    """With the tail on, each run's factor is its jitter or jitter×factor, the same per seed."""

    async def factors(timing: RunTiming, seed: int) -> list[float]:
        async with anyio.create_task_group() as tg:
            engine = engine_for(tg, tmp_path, FakeWarehouse(), timing=timing, seed=seed)
            drawn = [engine.create(False, f"select {i}").factor for i in range(200)]
        return drawn

    plain = await factors(RunTiming(time_scale=0), seed=5)
    tail = RunTiming(time_scale=0, slow_fraction=0.25, slow_factor=10.0)
    slow = await factors(tail, seed=5)
    assert slow == await factors(tail, seed=5)
    assert slow != await factors(tail, seed=6)
    ratios = [round(s / p, 9) for s, p in zip(slow, plain, strict=True)]
    assert set(ratios) == {1.0, 10.0}
    assert 20 < ratios.count(10.0) < 80


def test_config_refuses_a_bad_tail() -> None:
    """slow_run_fraction outside [0, 1], slow_run_factor below 1 or a negative base are errors."""
    for bad in (
        {"slow_run_fraction": 1.5},
        {"slow_run_fraction": -0.1},
        {"slow_run_factor": 0.5},
        {"run_time_base_s": -1.0},
    ):
        with pytest.raises(ConfigError):
            EmulatorConfig(**bad)  # type: ignore[arg-type]


async def _stats(http: aiohttp.ClientSession, emu: EmulatorHandle, query: str) -> Any:
    status, body, _ = await call(http, "GET", f"{emu.api_base}/_emulator/stats{query}", None)
    assert status == 200
    return body


async def test_timelines_record_each_runs_life(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """?runs=1 lists precise created ≤ started ≤ finalized ≤ first download, and polls served."""
    async with make_emulator() as emu:
        url = f"{emu.api_base}/v1/sigma/query_runs"
        status, run, _ = await call(http, "POST", url, emu.test_key, data={"sql": "select 1"})
        assert status == 200
        done = await wait_run(http, emu, run["id"])
        await call(http, "GET", f"{url}/{run['id']}", emu.test_key)
        contents = f"{emu.files_base}/v1/files/{done['result']['file']}/contents"
        for _ in range(2):
            status, _, _ = await call(http, "GET", contents, emu.test_key)
            assert status == 200
        assert "run_timelines" not in await _stats(http, emu, "")
        body = await _stats(http, emu, "?runs=1")
    [timeline] = body["run_timelines"]
    assert timeline["id"] == run["id"] and timeline["status"] == "succeeded"
    created, started = timeline["created"], timeline["started"]
    finalized, downloaded = timeline["finalized"], timeline["first_download"]
    assert isinstance(created, float) and created <= started <= finalized <= downloaded
    assert finalized <= timeline["last_poll"] <= downloaded  # polled once more, then fetched
    assert int(created) == run["created"] and int(finalized) == done["finalized_at"]
    status_polls = body["requests"]["GET /v1/sigma/query_runs/{id}"]["200"]
    assert timeline["polls"] == status_polls >= 2


async def test_handle_stats_take_runs_too(make_emulator: MakeEmulator) -> None:
    """EmulatorHandle.stats(runs=True) adds the timelines; a run never downloaded has None."""
    async with make_emulator(time_scale=0) as emu:
        async with aiohttp.ClientSession() as http:
            url = f"{emu.api_base}/v1/sigma/query_runs"
            _, run, _ = await call(http, "POST", url, emu.test_key, data={"sql": "select 2"})
            await wait_run(http, emu, run["id"])
        timelines = emu.stats(runs=True)["run_timelines"]
        assert "run_timelines" not in emu.stats()
    assert [t["id"] for t in timelines] == [run["id"]]
    assert timelines[0]["first_download"] is None and timelines[0]["polls"] >= 1
    assert timelines[0]["last_poll"] >= timelines[0]["finalized"]


def test_cli_passes_the_run_time_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """`batchrunner emulator` hands --run-time-* and --slow-run-* to EmulatorConfig."""
    seen: list[EmulatorConfig] = []

    async def fake_serve(config: EmulatorConfig, **_: Any) -> None:
        seen.append(config)

    monkeypatch.setattr("batchrunner.emulator.serve_forever", fake_serve)
    args = ["emulator", "--run-time-base", "2", "--run-time-jitter", "0.5"]
    args += ["--slow-run-fraction", "0.1", "--slow-run-factor", "12"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    [config] = seen
    assert (config.run_time_base_s, config.run_time_jitter) == (2.0, 0.5)
    assert (config.slow_run_fraction, config.slow_run_factor) == (0.1, 12.0)
    bad = CliRunner().invoke(cli.main, ["emulator", "--slow-run-factor", "0.5"])
    assert bad.exit_code == 2
