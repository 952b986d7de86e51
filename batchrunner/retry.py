"""When to retry a failed request, and how long to wait: pure policy, no I/O.

Stripe's SDKs retry connection errors, 409 and 5xx with waits from 0.5 s doubling to
5 s, jittered and never under 0.5 s; a ``Stripe-Should-Retry`` header overrides every
other rule. We add 429 (which Stripe's limiter answers and which clears by itself) and
honour ``Retry-After`` when a server sends one.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to retry one request.

    Example::

        RetryPolicy(max_attempts=8, base_s=0.5, cap_s=5.0)
    """

    max_attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 5.0
    floor_s: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.floor_s <= self.base_s <= self.cap_s:
            raise ValueError("need 0 <= floor_s <= base_s <= cap_s")


NO_WAIT = RetryPolicy(base_s=0.0, cap_s=0.0, floor_s=0.0)
"""Retries without waiting: for tests that must not depend on the clock."""


def should_retry(status: int | None, should_retry_header: bool | None) -> bool:
    """Whether an answer (``status`` None = no HTTP answer at all) is worth retrying."""
    if should_retry_header is not None:
        return should_retry_header
    return status is None or status in RETRYABLE_STATUSES


def retry_delay(
    policy: RetryPolicy, attempt: int, rand: float, *, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    Capped exponential backoff with full jitter (``rand`` is uniform in [0, 1)), floored
    at ``policy.floor_s`` so that a retry is never fired straight back; a server's
    ``Retry-After`` wins when it asks for longer.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** (attempt - 1))
    delay = max(policy.floor_s, rand * ceiling)
    if retry_after is not None and retry_after > delay:
        return min(retry_after, 60.0)
    return delay
