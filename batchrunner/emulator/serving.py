"""Running an emulator, and the handle a running emulator is known by.

:func:`serve_emulator` runs the emulator on its own event loop in a thread (a blocking
portal), like a server in another process; :func:`serve_forever` (the CLI) runs it on the
caller's loop. Either way one task group owns the query-run tasks and is cancelled at exit.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from batchrunner.emulator.auth import key_livemode
from batchrunner.emulator.config import EmulatorConfig
from batchrunner.emulator.ratelimit import Clock
from batchrunner.emulator.runs import WarehouseLike
from batchrunner.emulator.server import EmulatorServer
from batchrunner.emulator.warehouse import Warehouse

_T = TypeVar("_T")


class EmulatorHandle:
    """A running emulator: where it listens, which keys it takes, and its statistics.

    ``stats()`` and ``reset_stats()`` may be called from any thread: when the emulator runs
    on its own event-loop thread (as :func:`serve_emulator` does) they run there.
    """

    __slots__ = ("_portal", "_server", "api_base", "config", "files_base", "live_key", "test_key")

    def __init__(self, *, server: EmulatorServer, portal: BlockingPortal | None = None) -> None:
        self._server = server
        self._portal = portal
        self.api_base = server.api_base
        self.files_base = server.files_base
        self.config = server.config
        keys = self.config.keys()
        self.test_key = next((k for k in keys if key_livemode(k) is False), "")
        self.live_key = next((k for k in keys if key_livemode(k) is True), "")

    @property
    def warehouse(self) -> Warehouse:
        """The warehouse behind the runs (tests compute the expected answer with it)."""
        return cast(Warehouse, self._server.warehouse)

    def _on_loop(self, func: Callable[[], _T]) -> _T:
        portal = self._portal
        if portal is None or threading.get_ident() == self._server.loop_thread:
            return func()
        return portal.call(func)

    def stats(self, *, runs: bool = False) -> dict[str, Any]:
        """The same counters ``GET /_emulator/stats`` returns (``runs``: as ``?runs=1``)."""
        return self._on_loop(partial(self._server.stats, runs=runs))

    def reset_stats(self) -> None:
        """Zero the counters (objects and idempotency keys are kept)."""
        self._on_loop(self._server.reset_stats)

    def __repr__(self) -> str:
        return f"<EmulatorHandle api={self.api_base} files={self.files_base}>"


@asynccontextmanager
async def _serve_here(
    config: EmulatorConfig,
    *,
    warehouse: WarehouseLike | None = None,
    rate_clock: Clock | None = None,
) -> AsyncIterator[EmulatorServer]:
    """Run the emulator on the current event loop (the task group spans the ``yield``)."""
    owned = warehouse is None
    if warehouse is None:
        opened: Warehouse = await anyio.to_thread.run_sync(
            partial(
                Warehouse.open, scale=config.scale, seed=config.seed, cache_dir=config.cache_dir
            )
        )
        warehouse = opened
    temp_dir: str | None = None
    try:
        if config.results_dir is None:
            temp_dir = await anyio.to_thread.run_sync(
                partial(tempfile.mkdtemp, prefix="sigma-emulator-")
            )
            results_dir = Path(temp_dir)
        else:
            results_dir = config.results_dir
            await anyio.Path(results_dir).mkdir(parents=True, exist_ok=True)
        # An exception from the body would come out of the task group wrapped in an
        # exception group; it is unwrapped so callers see exactly what they raised.
        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                server = EmulatorServer(
                    config,
                    warehouse=warehouse,
                    results_dir=results_dir,
                    task_group=tg,
                    rate_clock=rate_clock,
                )
                try:
                    await server.start()
                    yield server
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    await server.stop()
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if body_error is None or list(group.exceptions) != [body_error]:
                raise
        if body_error is not None:
            raise body_error
    finally:
        with anyio.CancelScope(shield=True):
            if temp_dir is not None:
                await anyio.to_thread.run_sync(partial(shutil.rmtree, temp_dir, ignore_errors=True))
            if owned:
                close = getattr(warehouse, "close", None)
                if close is not None:
                    await anyio.to_thread.run_sync(close)


@asynccontextmanager
async def serve_emulator(
    config: EmulatorConfig | None = None,
    *,
    warehouse: WarehouseLike | None = None,
    rate_clock: Clock | None = None,
) -> AsyncIterator[EmulatorHandle]:
    """Run an emulator on loopback ports for the duration of the ``async with``.

    The emulator gets its own event loop in a thread, like a server in another process:
    its work never stalls the caller's loop, and entering and leaving may happen in
    different tasks (as pytest-asyncio does with async fixtures). ``warehouse`` lends an
    already open warehouse (not closed here; tests share one per session);
    ``rate_clock`` replaces the rate limiter's monotonic clock (tests freeze it to count
    refusals without depending on wall time).
    """
    config = config or EmulatorConfig()
    portal_cm = start_blocking_portal(name="sigma-emulator")
    portal = await anyio.to_thread.run_sync(portal_cm.__enter__)
    try:
        serving = portal.wrap_async_context_manager(
            _serve_here(config, warehouse=warehouse, rate_clock=rate_clock)
        )
        server = await anyio.to_thread.run_sync(serving.__enter__)
        handle = EmulatorHandle(server=server, portal=portal)
        try:
            yield handle
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(serving.__exit__, None, None, None)
            handle._portal = None  # stopped: stats() now reads the final counters directly
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(portal_cm.__exit__, None, None, None)


async def serve_forever(
    config: EmulatorConfig, *, on_ready: Callable[[EmulatorHandle], None]
) -> None:
    """Serve on the current loop until cancelled; ``on_ready`` gets the handle once bound."""
    async with _serve_here(config) as server:
        on_ready(EmulatorHandle(server=server))
        await anyio.sleep_forever()
