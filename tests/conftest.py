"""Shared fixtures: a Sigma emulator on loopback ports, with its data generated once per session.

* ``emulator_config``: scale 0.02, seed 7, ``time_scale=0`` (runs finish as fast as DuckDB),
  warehouse cache in a session temp dir.
* ``emulator``: a running :class:`EmulatorHandle` built from ``emulator_config``.
* ``make_emulator(**overrides)``: an async context manager factory for emulators with other
  settings, e.g. ``async with make_emulator(faults=FaultSpec.parse("5xx=1.0")) as emu``.
  ``rate_clock=`` replaces the rate limiter's clock (freeze it to count 429s exactly).
* ``http``: an ``aiohttp.ClientSession`` closed after the test.

Plain helpers for raw HTTP tests (``from conftest import call, ...``): ``bearer(key)``,
``call(http, method, url, key, **kw) -> (status, body, headers)``, ``wait_run(http, emu,
run_id)`` and ``assert_stripe_error(body)``.

Emulators built with the default scale, seed and cache share one session-wide warehouse, so
starting one costs only the bind of two listeners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from multidict import CIMultiDictProxy

from batchrunner.emulator import EmulatorConfig, EmulatorHandle, serve_emulator
from batchrunner.emulator.warehouse import Warehouse

EMULATOR_SCALE = 0.02
EMULATOR_SEED = 7

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]


@pytest.fixture(scope="session")
def emulator_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the emulator's generated data is cached for the whole session."""
    return tmp_path_factory.mktemp("sigma-warehouse-cache")


@pytest.fixture(scope="session")
def emulator_config(emulator_cache_dir: Path) -> EmulatorConfig:
    """The test emulator's settings: small data, instant runs, session cache."""
    return EmulatorConfig(
        scale=EMULATOR_SCALE, seed=EMULATOR_SEED, time_scale=0, cache_dir=emulator_cache_dir
    )


@pytest.fixture(scope="session")
def emulator_warehouse(emulator_config: EmulatorConfig) -> Iterator[Warehouse]:
    """One warehouse for every emulator of the session that uses the default data."""
    warehouse = Warehouse.open(
        scale=emulator_config.scale,
        seed=emulator_config.seed,
        cache_dir=emulator_config.cache_dir,
    )
    try:
        yield warehouse
    finally:
        warehouse.close()


@pytest.fixture
def make_emulator(emulator_config: EmulatorConfig, emulator_warehouse: Warehouse) -> MakeEmulator:
    """Factory: ``make_emulator(**config_overrides, rate_clock=None)`` -> async CM of a handle."""

    def make(**overrides: Any) -> AbstractAsyncContextManager[EmulatorHandle]:
        rate_clock = overrides.pop("rate_clock", None)
        config = dataclasses.replace(emulator_config, **overrides)
        same_data = (config.scale, config.seed, config.cache_dir) == (
            emulator_config.scale,
            emulator_config.seed,
            emulator_config.cache_dir,
        )
        return serve_emulator(
            config,
            warehouse=emulator_warehouse if same_data else None,
            rate_clock=rate_clock,
        )

    return make


@pytest.fixture
async def emulator(make_emulator: MakeEmulator) -> AsyncIterator[EmulatorHandle]:
    """A running emulator with the default test settings."""
    async with make_emulator() as handle:
        yield handle


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session for talking HTTP to the emulator."""
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    key: str | None,
    **kwargs: Any,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """One request; returns (status, parsed JSON or text, headers)."""
    headers = {**(bearer(key) if key else {}), **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        body: Any = await resp.text()
        if resp.content_type == "application/json":
            body = await resp.json()
        return resp.status, body, resp.headers


async def wait_run(
    http: aiohttp.ClientSession, emu: EmulatorHandle, run_id: str, *, key: str | None = None
) -> Any:
    """Poll like a client until the run leaves pending/running; returns the run.

    Polls every 20 ms and backs off on 429 (the emulator's limits stay on in tests).
    """
    url = f"{emu.api_base}/v1/sigma/query_runs/{run_id}"
    with anyio.fail_after(20):
        while True:
            status, run, _ = await call(http, "GET", url, key or emu.test_key)
            if status == 429:
                await anyio.sleep(0.2)
                continue
            assert status == 200, run
            if run["status"] not in ("pending", "running"):
                return run
            await anyio.sleep(0.02)


def assert_stripe_error(body: Any, *, type_: str = "invalid_request_error") -> dict[str, Any]:
    """``body`` is Stripe's error shape with every member present; returns the error."""
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param", "doc_url", "request_log_url"}
    assert error["type"] == type_
    return dict(error)
