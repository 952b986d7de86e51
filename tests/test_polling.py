"""Tests for batchrunner.polling: the pure poll schedule."""

from __future__ import annotations

import pytest

from batchrunner.polling import (
    PollPolicy,
    RunTimes,
    backoff_delay,
    estimate_run_time,
    learned_delay,
    next_poll_delay,
)

POLICY = PollPolicy(first_s=0.5, factor=2.0, cap_s=8.0, floor_s=0.25, min_samples=4)


def test_first_poll_is_early_and_unjittered() -> None:
    """With nothing known, the first poll comes after first_s whatever the dice say."""
    assert backoff_delay(POLICY, 0, 0.0) == 0.5
    assert backoff_delay(POLICY, 0, 0.99) == 0.5


def test_backoff_is_exponential_full_jitter_with_cap_and_floor() -> None:
    """Later polls draw uniformly below first_s * factor**n, capped, never under the floor."""
    assert backoff_delay(POLICY, 1, 0.999999) == pytest.approx(1.0, rel=1e-4)
    assert backoff_delay(POLICY, 3, 0.5) == pytest.approx(2.0)
    assert backoff_delay(POLICY, 10, 0.999999) == pytest.approx(8.0, rel=1e-4)
    assert backoff_delay(POLICY, 5, 0.0) == 0.25


def test_learned_delay_needs_enough_samples() -> None:
    """Fewer than min_samples observations say nothing."""
    assert learned_delay(POLICY, elapsed=0, history=[1, 2, 3], congested=False, rand=0.5) is None


def test_learned_delay_targets_the_median_of_remaining_time() -> None:
    """At submission, the next poll lands at the median observed run time (rand=0: no jitter)."""
    history = [2.0, 2.5, 3.0, 3.5, 4.0]
    assert learned_delay(
        POLICY, elapsed=0, history=history, congested=False, rand=0.0
    ) == pytest.approx(3.0)


def test_learned_delay_conditions_on_elapsed_time() -> None:
    """Only runs longer than this one has lasted count: at 3.2 s the rest is 3.5 or 4.0 s."""
    history = [2.0, 2.5, 3.0, 3.5, 4.0]
    delay = learned_delay(POLICY, elapsed=3.2, history=history, congested=False, rand=0.0)
    assert delay == pytest.approx(0.8)


def test_a_slow_mode_does_not_delay_fast_runs() -> None:
    """In a bimodal family the poll comes at most detect_target_s after the next finish."""
    history = [2.0, 2.2, 2.4, 2.6, 30.0, 30.0, 30.0, 30.0]
    calm = learned_delay(POLICY, elapsed=0, history=history, congested=False, rand=0.0)
    assert calm == pytest.approx(2.0 + POLICY.detect_target_s)


def test_jitter_only_shortens() -> None:
    """Jitter takes at most 10% off and never adds to the target."""
    history = [2.0, 2.5, 3.0, 3.5, 4.0]
    delays = [
        learned_delay(POLICY, elapsed=0, history=history, congested=False, rand=r)
        for r in (0.0, 0.5, 0.999)
    ]
    assert all(d is not None and 2.7 <= d <= 3.0 for d in delays)
    assert delays[0] == max(d for d in delays if d is not None)


def test_congestion_waits_for_a_likelier_finish() -> None:
    """When requests are scarce the policy aims at a high quantile, so fewer polls miss."""
    history = [float(x) for x in range(1, 11)]
    calm = learned_delay(POLICY, elapsed=0, history=history, congested=False, rand=0.5)
    busy = learned_delay(POLICY, elapsed=0, history=history, congested=True, rand=0.5)
    assert calm is not None and busy is not None
    assert busy > calm
    assert busy == pytest.approx(8.0)  # 0.9 quantile of 1..10 is 10, capped at 8


def test_learned_delay_is_floored() -> None:
    """A run about to finish is not polled again immediately."""
    history = [1.0, 1.0, 1.0, 1.05, 1.1]
    delay = learned_delay(POLICY, elapsed=1.04, history=history, congested=False, rand=0.5)
    assert delay == 0.25


def test_outliving_all_observations_polls_steadily_then_sparser() -> None:
    """A run older than every observation is polled every max(target, 5% of its age)."""
    history = [1.0, 1.0, 1.0, 1.0, 1.0]
    young = next_poll_delay(POLICY, attempt=3, elapsed=4.0, history=history, rand=0.0)
    old = next_poll_delay(POLICY, attempt=9, elapsed=100.0, history=history, rand=0.0)
    assert young == pytest.approx(POLICY.detect_target_s)
    assert old == pytest.approx(5.0)


def test_fixed_interval_mode() -> None:
    """fixed_s turns the policy into what naive clients do."""
    policy = PollPolicy(fixed_s=2.0)
    assert next_poll_delay(policy, attempt=0, elapsed=0.0) == 2.0
    assert next_poll_delay(policy, attempt=7, elapsed=30.0, history=[1.0] * 20) == 2.0


def test_run_times_keeps_a_sorted_sliding_window() -> None:
    """Old samples fall out as new ones arrive, and the sample stays sorted."""
    times = RunTimes(size=3)
    for value in (5.0, 1.0, 3.0, 2.0):
        times.add(value)
    assert list(times.sorted) == [1.0, 2.0, 3.0]
    assert len(times) == 3


def test_estimate_run_time_is_bounded_by_observations() -> None:
    """The server's whole-second figure is clamped to what the client saw."""
    assert estimate_run_time(server_seconds=3, last_running_s=3.4, first_done_s=4.0) == 3.4
    assert estimate_run_time(server_seconds=5, last_running_s=3.4, first_done_s=4.0) == 4.0
    assert estimate_run_time(server_seconds=None, last_running_s=2.0, first_done_s=4.0) == 3.0


def test_policy_validation() -> None:
    """Inconsistent knobs are refused."""
    with pytest.raises(ValueError, match="floor_s"):
        PollPolicy(first_s=0.1, floor_s=0.2)
    with pytest.raises(ValueError, match="quantiles"):
        PollPolicy(quantile=1.0)
