"""Stripe's published rate limits, counted exactly over sliding one-second windows.

Every window keeps the timestamps of the requests it *accepted* in a deque; a request is
accepted when, after dropping timestamps older than one window, fewer than ``limit``
remain. Refused requests (429) are not recorded: the limit bounds the accepted rate, so a
client that keeps hammering is not locked out for longer than the window, and a well-paced
client is never punished for another client's refusals. (Stripe does not publish how it
counts refusals; this is the simplest faithful reading of "N requests per second".)

The windows, all per mode (test and live are separate accounts as far as limits go):

* global: every API-host request of the mode (100/s live, 25/s test);
* per endpoint: method + path pattern across ids (25/s);
* files reads: result downloads on the files host (20/s), not counted in the global window.

A request on the API host must fit both its global and its endpoint window, and is then
recorded in both; a refusal records nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Requests accepted per sliding one-second window; ``enabled=False`` switches all off.

    Example::

        RateLimits(test_global=5)          # a stingier sandbox
        RateLimits(enabled=False)          # capacity measurements
    """

    enabled: bool = True
    live_global: int = 100
    test_global: int = 25
    per_endpoint: int = 25
    files_reads: int = 20


class SlidingWindow:
    """At most ``limit`` accepted events in any ``window``-second interval."""

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def has_room(self, now: float) -> bool:
        """Drop expired timestamps and say whether one more event fits now."""
        times = self._times
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return len(times) < self.limit

    def record(self, now: float) -> None:
        """Count one accepted event at ``now``."""
        self._times.append(now)

    def try_acquire(self, now: float) -> bool:
        """Accept and record one event if it fits."""
        if self.has_room(now):
            self._times.append(now)
            return True
        return False

    def __len__(self) -> int:
        return len(self._times)


class RateLimiter:
    """The emulator's windows, keyed by mode and endpoint; ``clock`` is injectable."""

    __slots__ = ("_clock", "_endpoint", "_files", "_global", "limits")

    def __init__(self, limits: RateLimits, *, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._global = {
            True: SlidingWindow(limits.live_global),
            False: SlidingWindow(limits.test_global),
        }
        self._files = {
            True: SlidingWindow(limits.files_reads),
            False: SlidingWindow(limits.files_reads),
        }
        self._endpoint: dict[tuple[bool, str], SlidingWindow] = {}

    def admit_api(self, livemode: bool, endpoint: str) -> bool:
        """Accept an API-host request of ``endpoint`` (e.g. ``"GET /v1/files/{id}"``)?"""
        if not self.limits.enabled:
            return True
        now = self._clock()
        glob = self._global[livemode]
        key = (livemode, endpoint)
        window = self._endpoint.get(key)
        if window is None:
            window = self._endpoint[key] = SlidingWindow(self.limits.per_endpoint)
        if glob.has_room(now) and window.has_room(now):
            glob.record(now)
            window.record(now)
            return True
        return False

    def admit_files_read(self, livemode: bool) -> bool:
        """Accept a files-host read (a result download)?"""
        if not self.limits.enabled:
            return True
        return self._files[livemode].try_acquire(self._clock())
