"""Tests for batchrunner.client against the emulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from batchrunner.client import ClientConfig, SigmaClient, check_base_url
from batchrunner.emulator import EmulatorHandle, FaultSpec, RateLimits
from batchrunner.errors import (
    AuthenticationFailed,
    ConfigError,
    DownloadError,
    NotFound,
    ServerError,
)
from batchrunner.limiter import RateConfig
from batchrunner.retry import NO_WAIT, RetryPolicy

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]
FAST = RateConfig(api_global=1000.0, per_endpoint=1000.0, files=1000.0)


def client_for(emu: EmulatorHandle, **overrides: Any) -> SigmaClient:
    settings: dict[str, Any] = {
        "api_key": emu.test_key,
        "api_base": emu.api_base,
        "files_base": emu.files_base,
        "rate": FAST,
        "retry": RetryPolicy(max_attempts=12, base_s=0.0, cap_s=0.0, floor_s=0.0),
    }
    settings.update(overrides)
    return SigmaClient(ClientConfig(**settings))


async def wait_done(api: SigmaClient, run_id: str) -> Any:
    run = await api.retrieve_run(run_id)
    while run.in_progress:
        await anyio.sleep(0.02)
        run = await api.retrieve_run(run_id)
    return run


async def test_create_poll_download_round_trip(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """A run created over HTTP finishes and its CSV downloads from the files host."""
    async with client_for(emulator) as api:
        run = await api.create_run(
            sql="select id, amount from balance_transactions limit 7",
            idempotency_key="k-round-trip",
        )
        assert run.id.startswith("qry_")
        assert run.in_progress or run.succeeded
        done = await wait_done(api, run.id)
        assert done.succeeded and done.file_id and done.file_id.startswith("file_")
        assert done.finalized_at is not None and not done.livemode
        result = await api.download(done.file_id, tmp_path / "r.csv")
    rows = list(csv.reader(io.StringIO((tmp_path / "r.csv").read_text("utf-8"))))
    assert rows[0] == ["id", "amount"] and len(rows) == 8
    assert result.size == (tmp_path / "r.csv").stat().st_size


async def test_failed_query_is_a_run_status_not_an_http_error(emulator: EmulatorHandle) -> None:
    """An unknown table fails the run with Stripe's message; the create itself succeeds."""
    async with client_for(emulator) as api:
        run = await api.create_run(sql="select * from no_such_table", idempotency_key="k-bad")
        done = await wait_done(api, run.id)
    assert done.failed and not done.succeeded
    assert "tables which do not exist or are inaccessible" in (done.error_message or "")


async def test_download_never_uses_the_api_host(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """With files_base pointed at the API listener, the download is a 404: the hosts differ."""
    async with client_for(emulator) as api:
        run = await wait_done(
            api, (await api.create_run(sql="select 1 as x", idempotency_key="k-hosts")).id
        )
    async with client_for(emulator, files_base=emulator.api_base) as wrong:
        with pytest.raises(NotFound):
            await wrong.download(run.file_id, tmp_path / "x.csv")


async def test_unknown_key_is_401_without_retry_and_masked(emulator: EmulatorHandle) -> None:
    """A bad key raises AuthenticationFailed at once; the message never holds the key."""
    key = "sk_test_DistinctiveSecretValue12345"
    async with client_for(emulator, api_key=key) as api:
        with pytest.raises(AuthenticationFailed) as info:
            await api.retrieve_run("qry_123")
        assert api.stats.requests == {"GET /v1/sigma/query_runs/:id": 1}
    assert key not in str(info.value) and key not in repr(info.value)
    assert info.value.status == 401 and info.value.request_id


async def test_lost_responses_never_create_a_second_run(make_emulator: MakeEmulator) -> None:
    """Resets after the server acted and 5xx are retried with the same key: one run each."""
    faults = FaultSpec.parse("reset_after=0.3,reset_before=0.2,5xx=0.2")
    async with (
        make_emulator(faults=faults, rate_limits=RateLimits(enabled=False)) as emu,
        client_for(emu) as api,
    ):
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(
                    lambda i=i: api.create_run(
                        sql=f"select {i} as n", idempotency_key=f"k-lost-{i}"
                    )
                )
        stats = emu.stats()
        assert api.stats.retries > 0
    assert stats["query_runs_created"]["total"] == 20


async def test_rate_limited_requests_are_retried_and_slow_the_pace(
    make_emulator: MakeEmulator,
) -> None:
    """Against a 5/s server limit, a client pacing at 200/s gets 429s, slows down, succeeds."""
    limits = RateLimits(test_global=5, per_endpoint=5)
    async with (
        make_emulator(rate_limits=limits) as emu,
        client_for(
            emu,
            rate=RateConfig(api_global=200.0, per_endpoint=200.0, files=200.0),
            retry=RetryPolicy(max_attempts=20, base_s=0.05, cap_s=0.2, floor_s=0.05),
        ) as api,
    ):
        runs = [
            await api.create_run(sql=f"select {i} as n", idempotency_key=f"k-429-{i}")
            for i in range(12)
        ]
        assert api.stats.rate_limited > 0
        assert api.budget.api.slowdowns > 0
        assert len({r.id for r in runs}) == 12


async def test_cut_downloads_resume_with_range(make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Downloads cut short are resumed and end byte-identical to the server's file."""
    async with (
        make_emulator(faults=FaultSpec.parse("cut_download=0.5")) as emu,
        client_for(emu) as api,
    ):
        run = await wait_done(
            api,
            (
                await api.create_run(
                    sql="select * from balance_transactions", idempotency_key="k-cut"
                )
            ).id,
        )
        sizes = set()
        for i in range(6):
            got = await api.download(run.file_id, tmp_path / f"{i}.csv")
            sizes.add(got.size)
        reference = tmp_path / "ref.csv"
        emu.warehouse.execute_to_csv("select * from balance_transactions", reference)
    assert sizes == {reference.stat().st_size}
    assert (tmp_path / "5.csv").read_bytes() == reference.read_bytes()
    assert emu.stats()["faults_injected"].get("cut_download", 0) > 0


@asynccontextmanager
async def serve(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """A one-route loopback server standing in for a misbehaving files host."""
    app = web.Application()
    app.router.add_get("/v1/files/{id}/contents", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_files_host_answering_html_is_a_clear_error(tmp_path: Path) -> None:
    """A files response that is not CSV raises DownloadError naming the content type."""

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    async with (
        serve(html) as base,
        SigmaClient(
            ClientConfig(api_key="sk_test_x", api_base=base, files_base=base, retry=NO_WAIT)
        ) as api,
    ):
        with pytest.raises(DownloadError, match="text/html"):
            await api.download("file_1", tmp_path / "x.csv")


async def test_server_ignoring_range_restarts_the_download(tmp_path: Path) -> None:
    """When a resumed request gets 200 instead of 206, the file restarts from byte 0."""
    body = b"a,b\n" + b"1,2\n" * 50_000
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        resp = web.StreamResponse(
            headers={"Content-Type": "text/csv", "Content-Length": str(len(body))}
        )
        await resp.prepare(request)
        if calls["n"] == 1:
            await resp.write(body[:1000])
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(body)
        return resp

    async with (
        serve(flaky) as base,
        SigmaClient(
            ClientConfig(api_key="sk_test_x", api_base=base, files_base=base, retry=NO_WAIT)
        ) as api,
    ):
        got = await api.download("file_1", tmp_path / "x.csv")
    assert got.restarted == 1 and got.resumed == 0
    assert (tmp_path / "x.csv").read_bytes() == body


async def test_5xx_exhausting_retries_raises_server_error(make_emulator: MakeEmulator) -> None:
    """When every answer is a 5xx, the client gives up after max_attempts with ServerError."""
    async with (
        make_emulator(faults=FaultSpec.parse("5xx=1.0")) as emu,
        client_for(emu, retry=RetryPolicy(max_attempts=3, base_s=0, cap_s=0, floor_s=0)) as api,
    ):
        with pytest.raises(ServerError) as info:
            await api.retrieve_run("qry_x")
        assert api.stats.retries == 2
    assert info.value.request_id


async def test_cancelled_download_leaks_no_connection(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """Cancelling mid-download returns no connection to the pool half-read and closes all."""
    async with make_emulator(faults=FaultSpec.parse("slow_download=1.0")) as emu:
        api = client_for(emu)
        async with api:
            run = await wait_done(
                api,
                (
                    await api.create_run(
                        sql="select * from balance_transactions", idempotency_key="k-cancel"
                    )
                ).id,
            )
            with anyio.move_on_after(0.3) as scope:
                await api.download(run.file_id, tmp_path / "x.csv")
            assert scope.cancelled_caught
            session = api._session
            assert session is not None
            connector = session.connector
            assert connector is not None
            assert not connector._acquired  # nothing half-read is held
        assert session.closed


def test_plain_http_only_to_loopback() -> None:
    """A non-loopback base URL that is not https is refused; loopback http is fine."""
    assert check_base_url("http://127.0.0.1:1234/", what="API base") == "http://127.0.0.1:1234"
    assert check_base_url("https://api.stripe.com", what="API base")
    with pytest.raises(ConfigError, match="https"):
        check_base_url("http://api.example.com", what="API base")


def test_config_repr_hides_the_key() -> None:
    """Neither the config nor the client shows the key in its repr."""
    config = ClientConfig(api_key="sk_test_SuperSecret999")
    assert "SuperSecret" not in repr(config)
    assert "SuperSecret" not in repr(SigmaClient(config))


def test_missing_key_is_a_config_error() -> None:
    """An empty key is refused before anything is sent."""
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        ClientConfig(api_key="")
