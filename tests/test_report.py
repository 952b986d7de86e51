"""Tests for batchrunner.report: percentiles and the report's shape."""

from __future__ import annotations

import math

import pytest

from batchrunner.engine import JobResult, RunResult
from batchrunner.report import aggregate, build_report, percentile


def test_percentile_interpolates_linearly() -> None:
    """p50 of 1..4 is 2.5; the ends are the extremes; no data gives NaN."""
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0], 0.0) == 1.0
    assert percentile([1.0, 2.0], 1.0) == 2.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        percentile([1.0], 1.5)


def test_aggregate_of_nothing_is_explicit() -> None:
    """An empty sample reports count 0 and no figures, not zeros."""
    assert aggregate([]) == {"count": 0, "p50": None, "p95": None, "max": None}
    assert aggregate([1.0, 3.0])["max"] == 3.0


def test_report_aggregates_only_jobs_that_ran() -> None:
    """Skipped jobs count in totals but not in timing aggregates."""
    results = (
        JobResult(
            "a",
            "succeeded",
            {"p": 1},
            rows=10,
            bytes=100,
            timings={"download": 1.0, "server_run": 2.0},
        ),
        JobResult(
            "b",
            "succeeded",
            {"p": 2},
            rows=5,
            bytes=50,
            timings={"download": 3.0, "server_run": 4.0},
        ),
        JobResult("c", "skipped", {"p": 3}, rows=7, bytes=70, timings={"download": 99.0}),
        JobResult("d", "failed", {"p": 4}, error="boom"),
    )
    report = build_report(RunResult(results, wall_s=5.0), extra={"polls": 3})
    assert report["counts"] == {"succeeded": 2, "failed": 1, "skipped": 1}
    assert report["rows"] == 15 and report["bytes"] == 150
    assert report["aggregates"]["download"]["max"] == 3.0
    assert report["aggregates"]["download"]["count"] == 2
    assert report["polls"] == 3
    assert [j["job_id"] for j in report["jobs"]] == ["a", "b", "c", "d"]
    assert report["jobs"][3]["error"] == "boom"
