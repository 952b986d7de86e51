"""Tests for batchrunner.emulator.ratelimit: exact sliding windows with an injected clock."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
from conftest import MakeEmulator, assert_stripe_error, call, wait_run

from batchrunner.emulator.ratelimit import RateLimiter, RateLimits, SlidingWindow


class FakeClock:
    """A clock the test moves by hand (``step`` > 0 advances it on every reading)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_window_accepts_exactly_the_limit_then_refuses() -> None:
    """With 3 per second, the 4th event in the same instant is refused."""
    window = SlidingWindow(3)
    assert [window.try_acquire(5.0) for _ in range(5)] == [True, True, True, False, False]


def test_window_slides_rather_than_resetting_on_second_boundaries() -> None:
    """Events leave the window one second after they entered it, one by one."""
    window = SlidingWindow(2)
    assert window.try_acquire(0.0)
    assert window.try_acquire(0.6)
    assert not window.try_acquire(0.99)
    assert window.try_acquire(1.0)  # the event at 0.0 has left
    assert not window.try_acquire(1.5)  # 0.6 and 1.0 are still inside
    assert window.try_acquire(1.61)


def test_refusals_are_not_counted() -> None:
    """Refused events do not extend the window: the client is free again after one second."""
    window = SlidingWindow(1)
    assert window.try_acquire(0.0)
    for t in (0.1, 0.5, 0.9):
        assert not window.try_acquire(t)
    assert window.try_acquire(1.0)
    assert len(window) == 1


def test_test_mode_global_limit_spans_endpoints() -> None:
    """25/s in test mode is shared by all endpoints; live mode has its own 100/s."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(per_endpoint=1000), clock=clock)
    results = [limiter.admit_api(False, f"GET /e{i % 3}") for i in range(30)]
    assert results.count(True) == 25
    live = [limiter.admit_api(True, f"GET /e{i % 3}") for i in range(120)]
    assert live.count(True) == 100


def test_per_endpoint_limit_is_per_pattern() -> None:
    """Each endpoint gets 25/s; in live mode two endpoints can take 25 each."""
    limiter = RateLimiter(RateLimits(), clock=FakeClock())
    polls = [limiter.admit_api(True, "GET /v1/sigma/query_runs/{id}") for _ in range(30)]
    creates = [limiter.admit_api(True, "POST /v1/sigma/query_runs") for _ in range(30)]
    assert polls.count(True) == 25 and creates.count(True) == 25


def test_endpoint_refusal_does_not_consume_global_budget() -> None:
    """A request refused by its endpoint window is not recorded in the global window."""
    limiter = RateLimiter(RateLimits(live_global=30, per_endpoint=5), clock=FakeClock())
    hammered = [limiter.admit_api(True, "GET /a") for _ in range(50)]
    others = [limiter.admit_api(True, f"GET /b{i}") for i in range(25)]
    assert hammered.count(True) == 5
    assert others.count(True) == 25


def test_files_reads_have_their_own_window() -> None:
    """Downloads count 20/s on their own and leave the API's global window untouched."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(), clock=clock)
    reads = [limiter.admit_files_read(False) for _ in range(25)]
    assert reads.count(True) == 20
    api = [limiter.admit_api(False, f"GET /x{i}") for i in range(25)]
    assert all(api)
    clock.now += 1.0
    assert limiter.admit_files_read(False)


def test_disabled_limits_admit_everything() -> None:
    """enabled=False switches every window off."""
    limiter = RateLimiter(RateLimits(enabled=False), clock=FakeClock())
    assert all(limiter.admit_api(False, "GET /a") for _ in range(500))
    assert all(limiter.admit_files_read(False) for _ in range(500))


# -- over HTTP --------------------------------------------------------------------------


async def burst(
    http: aiohttp.ClientSession, urls: list[str], key: str, **kwargs: Any
) -> list[tuple[int, Any]]:
    """Send all requests at once; return (status, body) for each."""
    results: list[tuple[int, Any]] = []

    async def one(url: str) -> None:
        status, body, headers = await call(http, "GET", url, key, **kwargs)
        assert headers["Request-Id"].startswith("req_")
        results.append((status, body))

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(one, url)
    return results


async def test_test_mode_burst_gets_exactly_the_excess_refused(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """40 requests inside one window against 25/s: exactly 15 get Stripe's 429."""
    clock = FakeClock()
    async with make_emulator(rate_clock=clock) as emu:
        urls = [f"{emu.api_base}/v1/sigma/query_runs/qry_{i}" for i in range(40)]
        results = await burst(http, urls, emu.test_key)
        refused = [body for status, body in results if status == 429]
        assert len(refused) == 15
        assert sorted({status for status, _ in results}) == [404, 429]
        error = assert_stripe_error(refused[0])
        assert error["code"] == "rate_limit" and "rate limit" in error["message"]
        stats = emu.stats()
        assert stats["http_429"] == 15 and stats["rate_limited"] == 15
        assert stats["requests"]["GET /v1/sigma/query_runs/{id}"] == {"404": 25, "429": 15}
        clock.now += 1.0
        assert (await call(http, "GET", urls[0], emu.test_key))[0] == 404


async def test_live_mode_limits_per_endpoint_not_globally_at_40(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """Live: one endpoint caps at 25/s; 20 + 20 over two endpoints all pass under 100/s."""
    async with make_emulator(rate_clock=FakeClock()) as emu:
        polls = [f"{emu.api_base}/v1/sigma/query_runs/qry_{i}" for i in range(40)]
        results = await burst(http, polls, emu.live_key)
        assert sum(status == 429 for status, _ in results) == 15
    async with make_emulator(rate_clock=FakeClock()) as emu:
        mixed = [f"{emu.api_base}/v1/sigma/query_runs/qry_{i}" for i in range(20)]
        mixed += [f"{emu.api_base}/v1/files/file_{i}" for i in range(20)]
        results = await burst(http, mixed, emu.live_key)
        assert [status for status, _ in results] == [404] * 40
        # The same 40 in test mode exceed the 25/s global limit.
        results = await burst(http, mixed, emu.test_key)
        assert sum(status == 429 for status, _ in results) == 15


async def test_files_reads_are_limited_separately(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """25 downloads at once: 5 refused; the API host's global window is unaffected."""
    clock = FakeClock()
    clock.step = 0.1  # while setting up, time flows: at most 10 requests per window
    async with make_emulator(rate_clock=clock) as emu:
        _, run, _ = await call(
            http,
            "POST",
            f"{emu.api_base}/v1/sigma/query_runs",
            emu.test_key,
            data={"sql": "select 1 as x"},
        )
        file_id = (await wait_run(http, emu, run["id"]))["result"]["file"]
        clock.step, clock.now = 0.0, clock.now + 5.0
        url = f"{emu.files_base}/v1/files/{file_id}/contents"
        results = await burst(http, [url] * 25, emu.test_key)
        assert sorted(status for status, _ in results) == [200] * 20 + [429] * 5
        polls = [f"{emu.api_base}/v1/sigma/query_runs/{run['id']}"] * 25
        assert [status for status, _ in await burst(http, polls, emu.test_key)] == [200] * 25


async def test_rate_limiting_runs_before_idempotency(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """A 429 for a POST with a key is not saved: after the window, the key executes."""
    clock = FakeClock()
    async with make_emulator(rate_clock=clock, rate_limits=RateLimits(test_global=1)) as emu:
        url = f"{emu.api_base}/v1/sigma/query_runs"
        await call(http, "GET", f"{url}/qry_x", emu.test_key)
        status, _, _ = await call(
            http,
            "POST",
            url,
            emu.test_key,
            data={"sql": "select 1"},
            headers={"Idempotency-Key": "k"},
        )
        assert status == 429
        clock.now += 1.0
        status, _, headers = await call(
            http,
            "POST",
            url,
            emu.test_key,
            data={"sql": "select 1"},
            headers={"Idempotency-Key": "k"},
        )
        assert status == 200 and "Idempotent-Replayed" not in headers
        assert emu.stats()["runs_created_by_idempotency_key"] == {"k": 1}


async def test_limits_can_be_switched_off(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """With RateLimits(enabled=False), 100 simultaneous test-mode requests all pass."""
    async with make_emulator(rate_clock=FakeClock(), rate_limits=RateLimits(enabled=False)) as emu:
        urls = [f"{emu.api_base}/v1/sigma/query_runs/qry_{i}" for i in range(100)]
        assert {status for status, _ in await burst(http, urls, emu.test_key)} == {404}
