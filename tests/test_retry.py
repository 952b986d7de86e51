"""Tests for batchrunner.retry: which answers are retried and how long to wait."""

from __future__ import annotations

import pytest

from batchrunner.retry import RetryPolicy, retry_delay, should_retry


@pytest.mark.parametrize("status", [None, 409, 429, 500, 502, 503, 504])
def test_transient_answers_are_retried(status: int | None) -> None:
    """Connection errors, 409, 429 and 5xx are worth another try."""
    assert should_retry(status, None)


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
def test_client_errors_are_not_retried(status: int) -> None:
    """A 4xx other than 409/429 would fail the same way again."""
    assert not should_retry(status, None)


def test_stripe_should_retry_header_overrides_status() -> None:
    """Stripe-Should-Retry wins over every status rule, both ways."""
    assert should_retry(400, True)
    assert not should_retry(503, False)


def test_delay_grows_exponentially_and_is_capped() -> None:
    """With rand close to 1 the delay doubles per attempt until the cap."""
    policy = RetryPolicy(base_s=0.5, cap_s=5.0, floor_s=0.0)
    delays = [retry_delay(policy, n, 0.999999) for n in range(1, 7)]
    assert delays[:4] == pytest.approx([0.5, 1.0, 2.0, 4.0], rel=1e-4)
    assert delays[4:] == pytest.approx([5.0, 5.0], rel=1e-4)


def test_full_jitter_is_floored() -> None:
    """rand = 0 would mean an immediate retry; the floor prevents it."""
    policy = RetryPolicy(base_s=0.5, cap_s=5.0, floor_s=0.5)
    assert retry_delay(policy, 3, 0.0) == 0.5
    assert retry_delay(policy, 3, 0.5) == pytest.approx(1.0)


def test_retry_after_is_honoured_when_longer() -> None:
    """A server's Retry-After beats a shorter computed delay, bounded at a minute."""
    policy = RetryPolicy()
    assert retry_delay(policy, 1, 0.5, retry_after=3.0) == 3.0
    assert retry_delay(policy, 1, 0.5, retry_after=0.1) == 0.5
    assert retry_delay(policy, 1, 0.5, retry_after=3600) == 60.0


def test_policy_rejects_nonsense() -> None:
    """A policy whose floor exceeds its cap cannot be built."""
    with pytest.raises(ValueError, match="floor_s"):
        RetryPolicy(base_s=1.0, cap_s=0.5)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
