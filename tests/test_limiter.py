"""Tests for batchrunner.limiter: even pacing, no start-up burst, priorities, slow-down."""

from __future__ import annotations

import asyncio
import itertools

import anyio
import anyio.lowlevel
import pytest

from batchrunner.limiter import Pacer, Priority, RateBudget, RateConfig


async def _stamps(pacer: Pacer, n: int, priority: Priority = Priority.HIGH) -> list[float]:
    loop = asyncio.get_running_loop()
    stamps: list[float] = []
    for _ in range(n):
        await pacer.acquire(priority)
        stamps.append(loop.time())
    return stamps


async def test_no_burst_at_start_up() -> None:
    """Consecutive acquisitions are spaced by 1/rate from the very first one."""
    rate = 200.0
    stamps = await _stamps(Pacer(rate), 10)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= (1 / rate) * 0.9


async def test_high_priority_goes_before_waiting_submissions() -> None:
    """Polls queued behind a flood of submissions are served first."""
    pacer = Pacer(100.0)
    order: list[str] = []

    async def take(tag: str, priority: Priority) -> None:
        await pacer.acquire(priority)
        order.append(tag)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(take, f"low{i}", Priority.LOW)
        await anyio.lowlevel.checkpoint()
        for i in range(3):
            tg.start_soon(take, f"high{i}", Priority.HIGH)
    lows_before_highs_done = order[: order.index("high2")]
    assert sum(tag.startswith("low") for tag in lows_before_highs_done) <= 2
    assert len(order) == 8


async def test_slow_down_halves_rate_and_recovers_later() -> None:
    """A 429 halves the pace; quiet seconds win it back step by step."""
    now = [100.0]
    pacer = Pacer(20.0, clock=lambda: now[0])
    pacer.slow_down()
    assert pacer.rate == pytest.approx(10.0)
    pacer.slow_down()  # a second 429 in the same instant does not compound
    assert pacer.rate == pytest.approx(10.0)
    now[0] += 3.0
    await pacer.acquire()
    assert pacer.rate == pytest.approx(16.0)
    now[0] += 10.0
    await pacer.acquire()
    assert pacer.rate == pytest.approx(20.0)


def test_rate_config_follows_key_mode() -> None:
    """Defaults stay under Stripe's published limits: 25/s test, 100/s live, 25/s per endpoint."""
    test = RateConfig.for_key("sk_test_abc")
    live = RateConfig.for_key("rk_live_abc")
    assert test.api_global < 25 and test.per_endpoint < 25 and test.files < 20
    assert 25 < live.api_global < 100 and live.per_endpoint < 25
    assert RateConfig.for_key("sk_live_x", rate=10).api_global == 10


async def test_budget_uses_endpoint_pacers_only_when_tighter() -> None:
    """In live mode each endpoint has its own pacer; in test mode the global one suffices."""
    live = RateBudget(RateConfig.for_key("sk_live_x"))
    await live.acquire_api("POST /x", Priority.LOW)
    assert live.endpoint("POST /x").acquired == 1
    test = RateBudget(RateConfig.for_key("sk_test_x"))
    await test.acquire_api("POST /x", Priority.LOW)
    assert test.api.acquired == 1
    assert test.endpoint("POST /x").acquired == 0
