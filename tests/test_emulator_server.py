"""Tests for batchrunner.emulator.server over real HTTP on 127.0.0.1: endpoints and conventions."""

from __future__ import annotations

import csv
import io
import logging
import threading
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from conftest import MakeEmulator, assert_stripe_error, bearer, call, wait_run

from batchrunner.emulator import EmulatorConfig, EmulatorHandle, FaultSpec, serve_forever
from batchrunner.emulator.server import byte_range

SQL = "SELECT * FROM balance_transactions LIMIT 10"


async def test_the_guides_flow_end_to_end(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The guide's flow (create, poll, File, download) yields the emulator's own answer."""
    status, run, headers = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        emulator.test_key,
        data=f"sql={SQL}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and headers["Request-Id"].startswith("req_")
    assert run["object"] == "sigma.sigma_query_run" and run["id"].startswith("qry_")
    assert set(run) == {
        "id",
        "object",
        "created",
        "error",
        "finalized_at",
        "livemode",
        "result",
        "sql",
        "status",
    }
    assert run["status"] in ("pending", "running") and run["result"] == {"file": None}
    assert run["sql"] == SQL and run["livemode"] is False and run["finalized_at"] is None
    done = await wait_run(http, emulator, run["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["finalized_at"] >= done["created"]
    file_id = done["result"]["file"]
    assert file_id.startswith("file_")

    status, file, _ = await call(
        http, "GET", f"{emulator.api_base}/v1/files/{file_id}", emulator.test_key
    )
    assert status == 200 and file["object"] == "file" and file["id"] == file_id
    assert file["purpose"] == "sigma_scheduled_query" and file["type"] == "csv"
    assert file["url"] == f"{emulator.files_base}/v1/files/{file_id}/contents"

    async with http.get(file["url"], headers=bearer(emulator.test_key)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert int(resp.headers["Content-Length"]) == file["size"]
        assert resp.headers["Request-Id"].startswith("req_")
        body = await resp.read()
    expected = tmp_path / "answer.csv"
    emulator.warehouse.execute_to_csv(SQL, expected)
    assert body == expected.read_bytes()
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
    assert len(rows) == 11
    assert emulator.stats()["bytes_served"] == len(body)


async def test_create_needs_exactly_one_of_sql_and_saved_query(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Neither, both, or an empty sql is a 400 naming the parameter; nothing is created."""
    url = f"{emulator.api_base}/v1/sigma/query_runs"
    status, body, headers = await call(http, "POST", url, emulator.test_key, data={})
    assert status == 400 and headers["Stripe-Should-Retry"] == "false"
    assert assert_stripe_error(body)["param"] == "sql"
    assert "Missing required param: sql" in body["error"]["message"]
    status, body, _ = await call(
        http, "POST", url, emulator.test_key, data={"sql": "select 1", "from_saved_query": "qfl_1"}
    )
    assert status == 400 and body["error"]["code"] == "parameters_exclusive"
    status, body, _ = await call(http, "POST", url, emulator.test_key, data={"sql": ""})
    assert status == 400 and body["error"]["param"] == "sql"
    status, body, _ = await call(http, "POST", url, emulator.test_key, data={"sql": "x" * 100_001})
    assert status == 400 and body["error"]["param"] == "sql"
    assert emulator.stats()["query_runs_created"]["total"] == 0


async def test_unknown_parameter_is_named(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """An unknown form or query parameter is a 400 with param set to its name."""
    status, body, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        emulator.test_key,
        data={"sql": "select 1", "x": "1"},
    )
    error = assert_stripe_error(body)
    assert status == 400 and error["param"] == "x"
    assert error["message"] == "Received unknown parameter: x"
    status, body, _ = await call(
        http, "GET", f"{emulator.api_base}/v1/sigma/query_runs/qry_1?color=red", emulator.test_key
    )
    assert status == 400 and body["error"]["param"] == "color"


async def test_json_bodies_are_refused(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Stripe takes form-encoded bodies only: a JSON body is a 400."""
    status, body, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        emulator.test_key,
        json={"sql": "select 1"},
    )
    assert status == 400 and "Content-Type" in assert_stripe_error(body)["message"]
    assert emulator.stats()["query_runs_created"]["total"] == 0


async def test_unknown_ids_and_routes_are_404_with_request_id(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Unknown ids are resource_missing 404s; unknown routes and methods are 404s too."""
    status, body, headers = await call(
        http, "GET", f"{emulator.api_base}/v1/sigma/query_runs/qry_x", emulator.test_key
    )
    error = assert_stripe_error(body)
    assert status == 404 and error["code"] == "resource_missing" and error["param"] == "id"
    assert error["message"] == "No such query run: 'qry_x'"
    assert headers["Request-Id"].startswith("req_")
    assert error["request_log_url"].endswith(headers["Request-Id"])
    for method, path in [
        ("GET", "/v1/nothing"),
        ("DELETE", "/v1/sigma/query_runs/qry_x"),
        ("GET", "/"),
    ]:
        status, body, headers = await call(
            http, method, emulator.api_base + path, emulator.test_key
        )
        assert status == 404 and headers["Request-Id"].startswith("req_")
        assert "Unrecognized request URL" in assert_stripe_error(body)["message"]


async def test_files_listener_and_api_listener_never_overlap(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Contents only on the files base; every other route only on the API base."""
    assert emulator.files_base != emulator.api_base
    _, run, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        emulator.test_key,
        data={"sql": "select 1 as x"},
    )
    file_id = (await wait_run(http, emulator, run["id"]))["result"]["file"]
    key = emulator.test_key
    assert (await call(http, "GET", f"{emulator.api_base}/v1/files/{file_id}/contents", key))[
        0
    ] == 404
    assert (await call(http, "GET", f"{emulator.files_base}/v1/files/{file_id}/contents", key))[
        0
    ] == 200
    for path in [f"/v1/files/{file_id}", f"/v1/sigma/query_runs/{run['id']}"]:
        assert (await call(http, "GET", emulator.files_base + path, key))[0] == 404
        assert (await call(http, "GET", emulator.api_base + path, key))[0] == 200


async def test_files_on_the_api_listener_when_configured(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """files_port=None serves downloads on the API listener and says so in the File url."""
    async with make_emulator(files_port=None) as emu:
        assert emu.files_base == emu.api_base
        _, run, _ = await call(
            http,
            "POST",
            f"{emu.api_base}/v1/sigma/query_runs",
            emu.test_key,
            data={"sql": "select 1 as x"},
        )
        file_id = (await wait_run(http, emu, run["id"]))["result"]["file"]
        status, file, _ = await call(
            http, "GET", f"{emu.api_base}/v1/files/{file_id}", emu.test_key
        )
        assert file["url"].startswith(emu.api_base)
        status, body, _ = await call(http, "GET", file["url"], emu.test_key)
        assert status == 200 and body == "x\n1\n"


async def test_saved_query_lifecycle(emulator: EmulatorHandle, http: aiohttp.ClientSession) -> None:
    """Create, retrieve, update, run, delete a saved query, as the guide's commands do."""
    base, key = f"{emulator.api_base}/v1/sigma/saved_queries", emulator.test_key
    status, saved, _ = await call(http, "POST", base, key, data={"sql": "select 1 as a"})
    assert status == 200 and saved["id"].startswith("qfl_")
    assert saved["object"] == "sigma.sigma_api_query" and saved["name"] is None
    assert set(saved) == {"id", "object", "created", "livemode", "name", "sql"}
    status, got, _ = await call(http, "GET", f"{base}/{saved['id']}", key)
    assert status == 200 and got == saved
    status, updated, _ = await call(
        http, "POST", f"{base}/{saved['id']}", key, data={"sql": "select 2 as b", "name": "two"}
    )
    assert status == 200 and (updated["sql"], updated["name"]) == ("select 2 as b", "two")

    status, run, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        key,
        data={"from_saved_query": saved["id"]},
    )
    assert status == 200 and run["sql"] == "select 2 as b"
    assert (await wait_run(http, emulator, run["id"]))["status"] == "succeeded"

    status, deleted, _ = await call(http, "DELETE", f"{base}/{saved['id']}", key)
    assert status == 200
    assert deleted == {"id": saved["id"], "object": "sigma.sigma_api_query", "deleted": True}
    status, body, _ = await call(http, "GET", f"{base}/{saved['id']}", key)
    assert status == 404 and body["error"]["code"] == "resource_missing"
    status, body, _ = await call(http, "DELETE", f"{base}/{saved['id']}", key)
    assert status == 404


async def test_saved_query_limits_and_unknown_references(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """sql is capped at 100,000 chars, name at 5,000; unknown from_saved_query is a 400."""
    base, key = f"{emulator.api_base}/v1/sigma/saved_queries", emulator.test_key
    _, saved, _ = await call(http, "POST", base, key, data={"sql": "select 1", "name": "n"})
    status, body, _ = await call(
        http, "POST", f"{base}/{saved['id']}", key, data={"sql": "s" * 100_001}
    )
    assert status == 400 and body["error"]["param"] == "sql"
    status, body, _ = await call(
        http, "POST", f"{base}/{saved['id']}", key, data={"name": "n" * 5_001}
    )
    assert status == 400 and body["error"]["param"] == "name"
    status, ok, _ = await call(
        http, "POST", f"{base}/{saved['id']}", key, data={"sql": "s" * 100_000, "name": "n" * 5_000}
    )
    assert status == 200 and len(ok["sql"]) == 100_000
    status, body, _ = await call(http, "POST", f"{base}/qfl_missing", key, data={"sql": "select 1"})
    assert status == 404
    status, body, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        key,
        data={"from_saved_query": "qfl_missing"},
    )
    error = assert_stripe_error(body)
    assert status == 400 and error["param"] == "from_saved_query"
    assert error["code"] == "resource_missing"


async def test_saved_query_list_pages(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """The list is Stripe's shape, newest first, limit 1-100 (default 10), with cursors."""
    base, key = f"{emulator.api_base}/v1/sigma/saved_queries", emulator.test_key
    ids = []
    for i in range(12):
        ids.append((await call(http, "POST", base, key, data={"sql": f"select {i}"}))[1]["id"])
    newest = ids[::-1]
    status, page, _ = await call(http, "GET", base, key)
    assert status == 200 and page["object"] == "list" and page["url"] == "/v1/sigma/saved_queries"
    assert [q["id"] for q in page["data"]] == newest[:10] and page["has_more"] is True
    _, page, _ = await call(http, "GET", f"{base}?limit=5&starting_after={newest[9]}", key)
    assert [q["id"] for q in page["data"]] == newest[10:] and page["has_more"] is False
    _, page, _ = await call(http, "GET", f"{base}?limit=3&ending_before={newest[3]}", key)
    assert [q["id"] for q in page["data"]] == newest[:3] and page["has_more"] is False
    for bad in ["limit=0", "limit=101", "limit=x", "starting_after=qfl_nope"]:
        status, body, _ = await call(http, "GET", f"{base}?{bad}", key)
        assert status == 400 and body["error"]["param"] == bad.split("=")[0]
    status, body, _ = await call(
        http, "GET", f"{base}?starting_after={ids[0]}&ending_before={ids[1]}", key
    )
    assert status == 400
    _, page, _ = await call(http, "GET", base, emulator.live_key)
    assert page["data"] == [] and page["has_more"] is False


async def test_sql_errors_fail_the_run_not_the_request(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """An unknown table: the create is a 200, the run ends failed with a message."""
    status, run, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        emulator.test_key,
        data={"sql": "select * from no_such_table"},
    )
    assert status == 200
    done = await wait_run(http, emulator, run["id"])
    assert done["status"] == "failed" and done["result"] == {"file": None}
    assert done["error"]["message"] and done["finalized_at"] is not None


async def test_range_requests(emulator: EmulatorHandle, http: aiohttp.ClientSession) -> None:
    """Ranges get 206 with Content-Range; unsatisfiable ones 416; bytes served are counted."""
    _, run, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/query_runs",
        emulator.test_key,
        data={"sql": SQL},
    )
    file_id = (await wait_run(http, emulator, run["id"]))["result"]["file"]
    url = f"{emulator.files_base}/v1/files/{file_id}/contents"
    key = emulator.test_key
    _, full, _ = await call(http, "GET", url, key)
    data = full.encode()
    size = len(data)
    emulator.reset_stats()
    async with http.get(url, headers={**bearer(key), "Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-19/{size}"
        assert await resp.read() == data[10:20]
    async with http.get(url, headers={**bearer(key), "Range": "bytes=-5"}) as resp:
        assert resp.status == 206 and await resp.read() == data[-5:]
    async with http.get(url, headers={**bearer(key), "Range": f"bytes={size - 3}-"}) as resp:
        assert resp.status == 206 and await resp.read() == data[-3:]
    async with http.get(url, headers={**bearer(key), "Range": f"bytes={size}-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{size}"
        assert resp.headers["Request-Id"].startswith("req_")
        assert_stripe_error(await resp.json())
    stats = emulator.stats()
    assert stats["bytes_served"] == 10 + 5 + 3
    assert stats["requests"]["GET /v1/files/{id}/contents"] == {"206": 3, "416": 1}


async def test_a_client_dropping_a_download_is_not_a_server_error(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up mid-download leaves one INFO line, no ERROR, and a live server."""
    caplog.set_level(logging.INFO)
    server_log = logging.getLogger("batchrunner.emulator.server")
    gone_event = threading.Event()  # set on the emulator's thread when it logs the hang-up
    handler = _OnMessage("the client went away", gone_event)
    server_log.addHandler(handler)
    faults = FaultSpec.parse("slow_download=1.0,slow_bps=4096")  # ~100 s for the whole file
    try:
        async with make_emulator(faults=faults) as emu:
            stats = await _drop_a_download_then_range(emu, http, gone_event)
    finally:
        server_log.removeHandler(handler)
    assert stats["downloads"] == {"started": 2, "cut": 0, "slow": 2, "dropped": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    gone = [r for r in caplog.records if "the client went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].exc_info is None


class _OnMessage(logging.Handler):
    """Sets ``event`` when a record containing ``text`` is logged (from any thread)."""

    def __init__(self, text: str, event: threading.Event) -> None:
        super().__init__()
        self.text = text
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def _drop_a_download_then_range(
    emu: EmulatorHandle, http: aiohttp.ClientSession, gone_event: threading.Event
) -> dict[str, Any]:
    """Hang up on a slow download after its headers, then fetch a short range; the stats."""
    _, run, _ = await call(
        http,
        "POST",
        f"{emu.api_base}/v1/sigma/query_runs",
        emu.test_key,
        data={"sql": "select * from balance_transactions"},
    )
    file_id = (await wait_run(http, emu, run["id"]))["result"]["file"]
    url = f"{emu.files_base}/v1/files/{file_id}/contents"
    host, _, port = url.split("/")[2].rpartition(":")
    request = (
        f"GET /v1/files/{file_id}/contents HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {emu.test_key}\r\n\r\n"
    )
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
        assert head.startswith(b"HTTP/1.1 200")
    # The server notices on its next write (a tenth of a second later at 4096 B/s).
    assert await anyio.to_thread.run_sync(gone_event.wait, 10.0)
    # The server keeps serving: a short (throttled) range arrives whole.
    async with http.get(url, headers={**bearer(emu.test_key), "Range": "bytes=0-99"}) as resp:
        assert resp.status == 206 and len(await resp.read()) == 100
    return emu.stats()


@pytest.mark.parametrize(
    ("start", "stop", "size", "expected"),
    [
        (None, None, 10, (0, 10)),
        (2, 5, 10, (2, 3)),
        (2, None, 10, (2, 8)),
        (2, 50, 10, (2, 8)),
        (-3, None, 10, (7, 3)),
        (-30, None, 10, (0, 10)),
        (10, None, 10, None),
        (0, None, 0, None),
    ],
)
def test_byte_range(start: int | None, stop: int | None, size: int, expected: Any) -> None:
    """Range slices map to (offset, count) or None when unsatisfiable."""
    assert byte_range(start, stop, size) == expected


async def test_stripe_version_is_echoed(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """A Stripe-Version header is accepted and echoed; without one the preview version is sent."""
    url = f"{emulator.api_base}/v1/sigma/query_runs/qry_x"
    _, _, headers = await call(
        http, "GET", url, emulator.test_key, headers={"Stripe-Version": "2025-07-30.preview"}
    )
    assert headers["Stripe-Version"] == "2025-07-30.preview"
    _, _, headers = await call(
        http, "GET", url, emulator.test_key, headers={"Stripe-Version": "2024-06-20"}
    )
    assert headers["Stripe-Version"] == "2024-06-20"


async def test_stats_endpoint_on_both_listeners(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """/_emulator/stats needs no key, counts requests by pattern and status, and resets."""
    key = emulator.test_key
    await call(http, "GET", f"{emulator.api_base}/v1/sigma/query_runs/qry_a", key)
    await call(http, "GET", f"{emulator.api_base}/v1/sigma/query_runs/qry_b", key)
    await call(
        http, "POST", f"{emulator.api_base}/v1/sigma/query_runs", key, data={"sql": "select 1"}
    )
    for base in (emulator.api_base, emulator.files_base):
        status, stats, headers = await call(http, "GET", f"{base}/_emulator/stats", None)
        assert status == 200 and headers["Request-Id"].startswith("req_")
        assert stats["requests"]["GET /v1/sigma/query_runs/{id}"] == {"404": 2}
        assert stats["requests"]["POST /v1/sigma/query_runs"] == {"200": 1}
        assert stats["query_runs_created"] == {"total": 1, "test": 1, "live": 0}
        for member in (
            "http_429",
            "idempotent_replays",
            "bytes_served",
            "faults_injected",
            "runs",
            "runs_created_by_idempotency_key",
        ):
            assert member in stats
    status, _, _ = await call(http, "POST", f"{emulator.api_base}/_emulator/reset-stats", None)
    assert status == 200
    assert emulator.stats()["requests"] == {}
    assert sum(emulator.stats()["runs"].values()) == 1  # runs are state, not counters


async def test_serve_forever_reports_ready_and_stops_when_cancelled(
    emulator_config: EmulatorConfig, emulator_warehouse: Any, http: aiohttp.ClientSession
) -> None:
    """serve_forever calls on_ready with a live handle and returns when its scope is cancelled."""
    ready: list[EmulatorHandle] = []
    got = anyio.Event()

    def on_ready(handle: EmulatorHandle) -> None:
        ready.append(handle)
        got.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve_forever, emulator_config, on_ready=on_ready))
        with anyio.fail_after(60):
            await got.wait()
        status, _, _ = await call(http, "GET", f"{ready[0].api_base}/_emulator/stats", None)
        assert status == 200
        tg.cancel_scope.cancel()
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "GET", f"{ready[0].api_base}/_emulator/stats", None)


async def test_body_errors_come_out_unwrapped(make_emulator: MakeEmulator) -> None:
    """An exception raised inside ``async with serve_emulator`` is not wrapped in a group."""
    with pytest.raises(KeyError):
        async with make_emulator():
            raise KeyError("mine")


async def test_the_guides_curl_commands_work_unchanged(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Every command of Stripe's Sigma guide, with curl's exact bodies, works unchanged."""
    api, files = emulator.api_base, emulator.files_base
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    key = emulator.test_key

    async def curl(method: str, url: str, body: str | None = None) -> tuple[int, Any]:
        status, out, _ = await call(
            http, method, url, key, data=body, headers=form if body is not None else {}
        )
        return status, out

    status, run = await curl(
        "POST", f"{api}/v1/sigma/query_runs", "sql=SELECT * FROM balance_transactions LIMIT 10"
    )
    assert status == 200 and run["status"] in ("pending", "running")
    done = await wait_run(http, emulator, run["id"])
    assert done["status"] == "succeeded"
    status, csv_text = await curl("GET", f"{files}/v1/files/{done['result']['file']}/contents")
    assert status == 200 and len(csv_text.splitlines()) == 11
    status, saved = await curl("POST", f"{api}/v1/sigma/saved_queries", "sql=SELECT 1 AS one")
    assert status == 200 and saved["id"].startswith("qfl_")
    qfl = f"{api}/v1/sigma/saved_queries/{saved['id']}"
    status, updated = await curl("POST", qfl, "sql=SELECT 2 AS two")
    assert status == 200 and updated["sql"] == "SELECT 2 AS two"
    status, got = await curl("GET", qfl)
    assert status == 200 and got == updated
    status, from_saved = await curl(
        "POST", f"{api}/v1/sigma/query_runs", f"from_saved_query={saved['id']}"
    )
    assert status == 200 and from_saved["sql"] == "SELECT 2 AS two"
    status, deleted = await curl("DELETE", qfl)
    assert status == 200 and deleted["deleted"] is True


async def test_stats_stay_readable_after_exit(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """After the emulator stopped, stats() returns the final counters."""
    async with make_emulator() as emu:
        await call(http, "GET", f"{emu.api_base}/v1/sigma/query_runs/qry_1", emu.test_key)
    assert emu.stats()["requests"] == {"GET /v1/sigma/query_runs/{id}": {"404": 1}}
