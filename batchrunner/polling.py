"""When to poll a running query next: pure policy, no I/O.

Two regimes, one function:

- **Nothing known yet** (the first runs of a job family): an early first poll, then
  capped exponential backoff with full jitter, floored so polls never fire back to back.
- **Run times observed** (:class:`RunTimes`, fed with each finished run's duration):
  among observed runs that took longer than this one has run so far, the policy aims at
  the quantile ``q`` of their remaining time, but never further than ``detect_target_s``
  past the next observed finish, so a fast run in a bimodal family is not made to wait for
  the slow mode. When the request budget is the bottleneck (``congested``) a poll that finds
  the run still going costs a submission, so the policy aims at ``congested_quantile`` and
  drops the bound: requests matter more than detection delay then.

A run that outlives every observation is polled every ``max(detect_target_s, 5% of its
age)``: steady enough to notice it soon, sparse enough not to hammer a slow query.
Jitter only ever shortens a delay, so it never pushes a poll past its target.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

OUTLIVED_AGE_FRACTION = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class PollPolicy:
    """Poll timing knobs.

    Example::

        PollPolicy(first_s=0.5, factor=1.6, cap_s=10.0)
    """

    #: With nothing learned, a first poll sooner than this finds nearly every run still
    #: going: at 0.5 s the first wave of 100 runs cost ~0.3 wasted polls each (rate bench).
    first_s: float = 1.5
    factor: float = 1.6
    cap_s: float = 10.0
    floor_s: float = 0.25
    quantile: float = 0.5
    congested_quantile: float = 0.9
    min_samples: int = 8
    detect_target_s: float = 1.0
    fixed_s: float | None = None  # poll at a fixed interval instead (what naive clients do)

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.first_s <= self.cap_s:
            raise ValueError("need 0 < floor_s <= first_s <= cap_s")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not (0 < self.quantile < 1 and 0 < self.congested_quantile < 1):
            raise ValueError("quantiles must lie strictly between 0 and 1")


def backoff_delay(policy: PollPolicy, attempt: int, rand: float) -> float:
    """Delay before poll ``attempt`` (0 = the first poll) with no history to go on.

    The first poll comes early and unjittered; later ones are full-jitter exponential
    (``rand`` uniform in [0, 1)), floored at ``floor_s`` and capped at ``cap_s``.
    """
    if attempt <= 0:
        return policy.first_s
    ceiling = min(policy.cap_s, policy.first_s * policy.factor**attempt)
    return max(policy.floor_s, rand * ceiling)


def learned_delay(
    policy: PollPolicy,
    *,
    elapsed: float,
    history: Sequence[float],
    congested: bool,
    rand: float,
) -> float | None:
    """Delay from observed run times (sorted ascending), or None if they say nothing.

    ``elapsed`` is how long this run has been going. ``rand`` takes up to 10% off so that
    runs submitted together do not poll in lock step.
    """
    if len(history) < policy.min_samples:
        return None
    start = bisect.bisect_right(history, elapsed)
    longer = len(history) - start
    if longer == 0:
        return None
    q = policy.congested_quantile if congested else policy.quantile
    index = start + min(longer - 1, int(q * longer))
    remaining = history[index] - elapsed
    if not congested:
        next_finish = history[start] - elapsed
        remaining = min(remaining, next_finish + policy.detect_target_s)
    return _clamp(policy, remaining * (1.0 - 0.1 * rand))


def next_poll_delay(
    policy: PollPolicy,
    *,
    attempt: int,
    elapsed: float,
    history: Sequence[float] = (),
    congested: bool = False,
    rand: float = 0.5,
) -> float:
    """Seconds until the next poll of a run that has been going for ``elapsed`` seconds."""
    if policy.fixed_s is not None:
        return policy.fixed_s
    learned = learned_delay(
        policy, elapsed=elapsed, history=history, congested=congested, rand=rand
    )
    if learned is not None:
        return learned
    if len(history) >= policy.min_samples and attempt > 0:
        # Outlived every observation: steady polls, sparser as the run ages.
        steady = max(policy.detect_target_s, OUTLIVED_AGE_FRACTION * elapsed)
        return _clamp(policy, steady * (1.0 - 0.1 * rand))
    return backoff_delay(policy, attempt, rand)


def _clamp(policy: PollPolicy, delay: float) -> float:
    return min(policy.cap_s, max(policy.floor_s, delay))


class RunTimes:
    """A sliding sample of observed run times for one family of jobs, kept sorted."""

    def __init__(self, size: int = 256) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def add(self, seconds: float) -> None:
        """Record one finished run's duration."""
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._recent.append(seconds)
        bisect.insort(self._sorted, seconds)

    @property
    def sorted(self) -> Sequence[float]:
        return self._sorted

    def __len__(self) -> int:
        return len(self._sorted)


def estimate_run_time(
    *, server_seconds: float | None, last_running_s: float | None, first_done_s: float
) -> float:
    """Best estimate of a run's duration from what the client saw.

    Stripe's ``created`` and ``finalized_at`` are whole seconds, so their difference is
    unbiased but ±1 s; the client's own observations bound it: the run was still going at
    ``last_running_s`` and done by ``first_done_s`` (both measured from submission).
    """
    low = last_running_s if last_running_s is not None else 0.0
    high = first_done_s
    if server_seconds is None:
        return (low + high) / 2
    return min(high, max(low, server_seconds))
