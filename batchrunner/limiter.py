"""Client-side pacing under Stripe's published rate limits.

Stripe counts requests in a sliding one-second window, so a bucket that lets a burst
through at start-up (``AsyncLimiter(100, 1)`` admits 199 in the first second) earns
429s. Each :class:`Pacer` is an ``aiolimiter`` bucket of size one, which spaces
requests evenly at the configured rate with no burst. On top of it:

- **priority**: polls of running queries go ahead of new submissions, so a flood of
  submissions can never starve the polls (at most one low-priority request waits
  inside the bucket at a time);
- **adaptive slow-down**: a 429 halves the pace (at most once a second, never below a
  quarter of the configured rate, so a burst of 429s cannot stall the run); every quiet
  second afterwards wins back a tenth of the configured rate until it is restored.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from aiolimiter import AsyncLimiter


class Priority(enum.IntEnum):
    """Who goes first when the pace binds."""

    HIGH = 0  # polls and downloads of work already paid for
    LOW = 1  # new submissions


class _AdjustableLimiter(AsyncLimiter):
    """A one-slot aiolimiter bucket whose leak rate can change while in use."""

    def set_rate(self, rate: float) -> None:
        self._leak()  # settle the level at the old rate first
        self.time_period = 1.0 / rate
        self._rate_per_sec = rate  # aiolimiter derives its drip rate from this


class Pacer:
    """Spaces acquisitions at ``rate`` per second, with priorities and slow-down."""

    def __init__(
        self,
        rate: float,
        *,
        name: str = "",
        min_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.name = name
        self.configured_rate = rate
        self.rate = rate
        self.min_rate = min_rate if min_rate is not None else rate / 4
        self._bucket = _AdjustableLimiter(1, 1.0 / rate)
        self._low_gate = anyio.Lock()
        self._high_waiting = 0
        self._high_drained = anyio.Event()
        self._high_drained.set()
        self._clock = clock
        self._last_slowdown = -1e9
        self._last_recovery = clock()
        self.acquired = 0
        self.slowdowns = 0

    @property
    def congested(self) -> bool:
        """True when requests are queueing for this pacer."""
        return self._high_waiting > 0 or self._low_gate.locked()

    async def acquire(self, priority: Priority = Priority.HIGH) -> None:
        """Wait for this request's turn."""
        self._maybe_recover()
        if priority is Priority.HIGH:
            self._high_waiting += 1
            if self._high_waiting == 1:
                self._high_drained = anyio.Event()
            try:
                await self._bucket.acquire()
            finally:
                self._high_waiting -= 1
                if self._high_waiting == 0:
                    self._high_drained.set()
        else:
            async with self._low_gate:
                while self._high_waiting:
                    await self._high_drained.wait()
                await self._bucket.acquire()
        self.acquired += 1

    def slow_down(self) -> None:
        """A 429 came back: halve the pace (at most once a second: one burst, one step)."""
        now = self._clock()
        if now - self._last_slowdown < 1.0:
            return
        self._last_slowdown = now
        self._last_recovery = now
        self.slowdowns += 1
        self._set_rate(max(self.min_rate, self.rate / 2))

    def _maybe_recover(self) -> None:
        if self.rate >= self.configured_rate:
            return
        now = self._clock()
        quiet_seconds = now - self._last_recovery
        if quiet_seconds >= 1.0:
            self._last_recovery = now
            step = self.configured_rate / 10 * int(quiet_seconds)
            self._set_rate(min(self.configured_rate, self.rate + step))

    def _set_rate(self, rate: float) -> None:
        self.rate = rate
        self._bucket.set_rate(rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateConfig:
    """Requests per second for each budget Stripe publishes, kept a little under it.

    Example::

        RateConfig.for_key("sk_live_...")          # 95/s global, 24/s per endpoint
        RateConfig.for_key("sk_test_...", rate=10)  # a user's own --rate
    """

    api_global: float
    per_endpoint: float
    files: float

    @classmethod
    def for_key(cls, api_key: str, *, rate: float | None = None) -> RateConfig:
        live = "_live_" in api_key
        api_global = rate if rate is not None else (95.0 if live else 24.0)
        return cls(api_global=api_global, per_endpoint=min(24.0, api_global), files=19.0)


class RateBudget:
    """All pacers of one client: the API host, each endpoint on it, the files host."""

    def __init__(self, config: RateConfig) -> None:
        self.config = config
        self.api = Pacer(config.api_global, name="api")
        self.files = Pacer(config.files, name="files")
        self._endpoints: dict[str, Pacer] = {}

    def endpoint(self, name: str) -> Pacer:
        """The pacer of one endpoint (method + path pattern)."""
        pacer = self._endpoints.get(name)
        if pacer is None:
            pacer = self._endpoints[name] = Pacer(self.config.per_endpoint, name=name)
        return pacer

    async def acquire_api(self, endpoint: str, priority: Priority) -> None:
        """Wait for both the endpoint's and the host's turn."""
        if self.config.per_endpoint < self.config.api_global:
            await self.endpoint(endpoint).acquire(priority)
        await self.api.acquire(priority)

    def slow_down_api(self, endpoint: str) -> None:
        self.api.slow_down()
        if self.config.per_endpoint < self.config.api_global:
            self.endpoint(endpoint).slow_down()
