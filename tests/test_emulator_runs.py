"""Tests for batchrunner.emulator.runs: the run lifecycle, its time model and the stores."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from conftest import MakeEmulator, call, wait_run

from batchrunner.emulator import EmulatorHandle
from batchrunner.emulator.faults import FaultInjector, FaultSpec
from batchrunner.emulator.runs import (
    SPURIOUS_MESSAGE,
    TIMEOUT_MESSAGE,
    FileStore,
    ResultFile,
    RunEngine,
    RunTiming,
    SavedQueries,
    UnknownCursor,
    new_id,
)
from batchrunner.emulator.warehouse import SqlError


@dataclass(frozen=True)
class FakeResult:
    rows: int
    bytes: int
    rows_scanned: int


class FakeWarehouse:
    """Writes a tiny CSV per query; ``fail`` SQL raises SqlError; can hold executions."""

    def __init__(self, rows_scanned: int = 10) -> None:
        self.rows_scanned = rows_scanned
        self.executed: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def execute_to_csv(self, sql: str, dest: Path, *, bom: bool = False) -> FakeResult:
        self.gate.wait(10)
        self.executed.append(sql)
        if sql == "fail":
            raise SqlError("tables which do not exist or are inaccessible: [nope]")
        data = ("\ufeff" if bom else "") + "x\n1\n"
        dest.write_text(data, "utf-8")
        return FakeResult(rows=1, bytes=len(data.encode()), rows_scanned=self.rows_scanned)


def engine_for(
    tg: anyio.abc.TaskGroup,
    tmp_path: Path,
    warehouse: FakeWarehouse,
    *,
    timing: RunTiming | None = None,
    faults: FaultSpec | None = None,
    max_concurrent: int = 20,
    files: FileStore | None = None,
    **kwargs: object,
) -> RunEngine:
    return RunEngine(
        warehouse=warehouse,
        results_dir=tmp_path,
        files=files or FileStore(),
        task_group=tg,
        timing=timing or RunTiming(time_scale=0),
        faults=FaultInjector(faults or FaultSpec(), seed=1),
        max_concurrent=max_concurrent,
        **kwargs,  # type: ignore[arg-type]
    )


def test_time_model_scales_and_times_out() -> None:
    """Modelled time is (base + per_row*rows)*factor*time_scale; over the max it times out."""
    timing = RunTiming(base_s=1.0, per_row_s=0.5, time_scale=2.0, max_run_time_s=100.0)
    assert timing.plan(4, 1.0) == (6.0, False)
    assert timing.plan(4, 1.5) == (9.0, False)
    assert timing.plan(1000, 1.0) == (200.0, True)
    instant = RunTiming(base_s=1000.0, time_scale=0.0, max_run_time_s=300.0)
    assert instant.plan(0, 1.0) == (0.0, True)


def test_jitter_stays_in_its_band() -> None:
    """Jitter factors fall within U(1-j, 1+j); zero jitter gives exactly 1."""
    import random

    rng = random.Random(1)
    factors = [RunTiming(jitter=0.3).draw(rng) for _ in range(500)]
    assert min(factors) >= 0.7 and max(factors) <= 1.3 and max(factors) - min(factors) > 0.4
    assert RunTiming(jitter=0.0).draw(rng) == 1.0


def test_ids_have_prefix_and_are_unique() -> None:
    """Ids look like Stripe's: prefix plus 24 letters and digits, no repeats."""
    ids = {new_id("qry_") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("qry_") and i[4:].isalnum() and len(i) == 28 for i in ids)


async def test_runs_beyond_the_cap_wait_pending_fifo(tmp_path: Path) -> None:
    """With a cap of 2, the 3rd..5th runs are pending, then run in creation order."""
    warehouse = FakeWarehouse()
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, warehouse, max_concurrent=2)
        runs = [engine.create(False, f"select {i}") for i in range(5)]
        assert [r.status for r in runs] == ["running"] * 2 + ["pending"] * 3
        assert engine.stats()["runs_pending"]["test"] == 3
    assert [r.status for r in runs] == ["succeeded"] * 5
    assert sorted(warehouse.executed) == [f"select {i}" for i in range(5)]
    assert engine.stats()["max_running"]["test"] == 2
    serial = FakeWarehouse()
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, serial, max_concurrent=1)
        for i in range(5):
            engine.create(False, f"select {i}")
    assert serial.executed == [f"select {i}" for i in range(5)]
    assert all(r.finalized_at is not None and r.file_id for r in runs)


async def test_cap_is_per_mode(tmp_path: Path) -> None:
    """Test and live runs have separate caps: one of each runs at once with a cap of 1."""
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, FakeWarehouse(), max_concurrent=1)
        test_run = engine.create(False, "select 1")
        live_run = engine.create(True, "select 1")
        assert test_run.status == live_run.status == "running"
        assert engine.get(True, test_run.id) is None
        assert engine.get(False, test_run.id) is test_run


async def test_sql_error_fails_the_run_with_the_warehouse_message(tmp_path: Path) -> None:
    """A SqlError ends the run failed, with the message as error.message and no file."""
    files = FileStore()
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, FakeWarehouse(), files=files)
        run = engine.create(False, "fail")
    body = json.loads(run.body())
    assert body["status"] == "failed" and body["result"] == {"file": None}
    assert body["error"] == {"message": "tables which do not exist or are inaccessible: [nope]"}
    assert body["finalized_at"] is not None
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_modelled_time_over_the_maximum_fails(tmp_path: Path) -> None:
    """A run modelled above max_run_time_s fails with the timeout message, file removed."""
    timing = RunTiming(base_s=1000.0, time_scale=0.0, max_run_time_s=300.0)
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, FakeWarehouse(), timing=timing)
        run = engine.create(False, "select 1")
    assert run.status == "failed" and run.error == TIMEOUT_MESSAGE
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_injected_run_failure_skips_execution(tmp_path: Path) -> None:
    """With run_failure=1 the run fails with the spurious message and never executes."""
    warehouse = FakeWarehouse()
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, warehouse, faults=FaultSpec(run_failure=1.0))
        run = engine.create(False, "select 1")
    assert run.status == "failed" and run.error == SPURIOUS_MESSAGE
    assert warehouse.executed == []


async def test_success_status_and_bom_are_configurable(tmp_path: Path) -> None:
    """success_status='completed' ends runs 'completed'; csv_bom reaches the warehouse."""
    files = FileStore()
    async with anyio.create_task_group() as tg:
        engine = engine_for(
            tg, tmp_path, FakeWarehouse(), files=files, success_status="completed", csv_bom=True
        )
        run = engine.create(True, "select 1")
    assert run.status == "completed" and run.file_id is not None
    file = files.get(True, run.file_id)
    assert file is not None and file.path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert file.size == file.path.stat().st_size
    assert files.get(False, run.file_id) is None


async def test_poll_body_is_cached_until_the_run_changes(tmp_path: Path) -> None:
    """The same bytes are returned while a run is unchanged, new ones after it finished."""
    warehouse = FakeWarehouse()
    warehouse.gate.clear()
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, warehouse)
        run = engine.create(False, "select 1")
        first = run.body()
        assert run.body() is first
        warehouse.gate.set()
    assert json.loads(run.body())["status"] == "succeeded"


async def test_creation_counters_by_idempotency_key(tmp_path: Path) -> None:
    """Stats count runs per idempotency key and per mode; reset zeroes the counters."""
    async with anyio.create_task_group() as tg:
        engine = engine_for(tg, tmp_path, FakeWarehouse())
        engine.create(False, "select 1", idempotency_key="a")
        engine.create(False, "select 1", idempotency_key="a")
        engine.create(True, "select 1")
    stats = engine.stats()
    assert stats["runs_created_by_idempotency_key"] == {"a": 2}
    assert stats["runs_created_without_idempotency_key"] == 1
    assert stats["query_runs_created"] == {"total": 3, "test": 2, "live": 1}
    assert stats["runs"]["succeeded"] == 3
    engine.reset_stats()
    assert engine.stats()["query_runs_created"]["total"] == 0
    assert engine.stats()["runs"]["succeeded"] == 3


def test_saved_query_pages_are_newest_first() -> None:
    """Lists run newest first; starting_after/ending_before page both ways with has_more."""
    store = SavedQueries()
    ids = [store.create(False, sql=f"select {i}", name=None).id for i in range(5)]
    newest = ids[::-1]
    page, more = store.page(False, limit=2)
    assert [q.id for q in page] == newest[:2] and more
    page, more = store.page(False, limit=2, starting_after=newest[1])
    assert [q.id for q in page] == newest[2:4] and more
    page, more = store.page(False, limit=2, starting_after=newest[3])
    assert [q.id for q in page] == newest[4:] and not more
    page, more = store.page(False, limit=2, ending_before=newest[4])
    assert [q.id for q in page] == newest[2:4] and more
    page, more = store.page(False, limit=10, ending_before=newest[2])
    assert [q.id for q in page] == newest[:2] and not more
    assert store.page(True, limit=10) == ([], False)
    with pytest.raises(UnknownCursor) as info:
        store.page(False, limit=1, starting_after="qfl_nope")
    assert info.value.param == "starting_after"


def test_file_object_points_at_the_files_host(tmp_path: Path) -> None:
    """The File object has Sigma's purpose, csv type, size and a files-host url."""
    file = ResultFile(
        id="file_1",
        livemode=False,
        path=tmp_path / "f.csv",
        size=12,
        rows=1,
        created=100,
        run_id="qry_1",
    )
    obj = file.to_dict("http://127.0.0.1:9")
    assert obj["url"] == "http://127.0.0.1:9/v1/files/file_1/contents"
    assert (obj["object"], obj["purpose"], obj["type"], obj["size"]) == (
        "file",
        "sigma_scheduled_query",
        "csv",
        12,
    )
    assert obj["expires_at"] > obj["created"] and obj["links"]["object"] == "list"


# -- over HTTP --------------------------------------------------------------------------


async def create(http: aiohttp.ClientSession, emu: EmulatorHandle, sql: str, key: str = "") -> Any:
    """POST a run and return it."""
    status, run, _ = await call(
        http,
        "POST",
        f"{emu.api_base}/v1/sigma/query_runs",
        key or emu.test_key,
        data={"sql": sql},
    )
    assert status == 200, run
    return run


async def test_runs_beyond_the_account_cap_are_pending(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """With max_concurrent_runs=1 and long runs, the second run waits pending."""
    async with make_emulator(
        max_concurrent_runs=1, time_scale=1.0, run_time_base_s=1000.0, max_run_time_s=10_000.0
    ) as emu:
        first = await create(http, emu, "select 1")
        second = await create(http, emu, "select 2")
        assert (first["status"], second["status"]) == ("running", "pending")
        url = f"{emu.api_base}/v1/sigma/query_runs/{second['id']}"
        _, again, _ = await call(http, "GET", url, emu.test_key)
        assert again["status"] == "pending" and again["finalized_at"] is None
        stats = emu.stats()
    assert stats["runs_pending"]["test"] == 1 and stats["max_running"]["test"] == 1


async def test_runs_over_the_maximum_time_fail(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """A run modelled beyond max_run_time_s fails with the timeout message (time_scale 0)."""
    async with make_emulator(run_time_base_s=1000.0, max_run_time_s=300.0) as emu:
        run = await create(http, emu, "select 1")
        done = await wait_run(http, emu, run["id"])
    assert done["status"] == "failed" and done["error"] == {"message": TIMEOUT_MESSAGE}
    assert done["result"] == {"file": None}


async def test_success_can_be_reported_as_completed(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """success_status='completed' is what Stripe's examples show; the file is still set."""
    async with make_emulator(success_status="completed") as emu:
        done = await wait_run(http, emu, (await create(http, emu, "select 1 as a"))["id"])
    assert done["status"] == "completed" and done["result"]["file"].startswith("file_")


async def test_finalized_minus_created_follows_the_model(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """A run modelled at 1.0 s (no jitter) is running at first and reports ~1 s of work."""
    async with make_emulator(
        time_scale=1.0, run_time_base_s=1.0, run_time_per_row_s=0.0, run_time_jitter=0.0
    ) as emu:
        run = await create(http, emu, "select 1")
        url = f"{emu.api_base}/v1/sigma/query_runs/{run['id']}"
        _, now, _ = await call(http, "GET", url, emu.test_key)
        assert now["status"] == "running"
        done = await wait_run(http, emu, run["id"])
    assert done["status"] == "succeeded"
    assert done["finalized_at"] - done["created"] in (1, 2)


async def test_the_warehouse_rows_scanned_drive_the_model(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """A scan-heavy run is modelled longer: with a tiny max time it fails, a cheap one not."""
    async with make_emulator(
        run_time_base_s=0.0, run_time_per_row_s=1.0, run_time_jitter=0.0, max_run_time_s=0.5
    ) as emu:
        cheap = await create(http, emu, "select 1 as x")
        heavy = await create(http, emu, "select count(*) from balance_transactions")
        cheap_done = await wait_run(http, emu, cheap["id"])
        heavy_done = await wait_run(http, emu, heavy["id"])
    assert cheap_done["status"] == "succeeded"
    assert heavy_done["status"] == "failed" and heavy_done["error"]["message"] == TIMEOUT_MESSAGE
