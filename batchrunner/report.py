"""Per-job timings and their aggregates: what ``--report`` writes and benchmarks read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from batchrunner.engine import JobResult, RunResult

TIMING_KEYS = ("queue_wait", "server_run", "detect_delay", "download", "convert")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation; NaN for no values."""
    if not 0 <= q <= 1:
        raise ValueError("q must lie in [0, 1]")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def aggregate(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p95 and max of a sample (None where there is no sample)."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.5), 4),
        "p95": round(percentile(values, 0.95), 4),
        "max": round(max(values), 4),
    }


def _job_entry(result: JobResult) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "status": result.status,
        "params": {k: _jsonable(v) for k, v in result.params.items()},
        "query_run_id": result.query_run_id,
        "output": str(result.output) if result.output else None,
        "rows": result.rows,
        "bytes": result.bytes,
        "error": result.error,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def build_report(result: RunResult, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report of one run."""
    ran = [r for r in result.results if r.status != "skipped"]
    aggregates: dict[str, Any] = {
        key: aggregate([r.timings[key] for r in ran if key in r.timings]) for key in TIMING_KEYS
    }
    aggregates["rows"] = aggregate([float(r.rows) for r in ran if r.rows is not None])
    aggregates["bytes"] = aggregate([float(r.bytes) for r in ran if r.bytes is not None])
    counts = {
        s: sum(1 for r in result.results if r.status == s)
        for s in ("succeeded", "failed", "skipped")
    }
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(result.wall_s, 3),
        "stopped_by": result.stopped_by,
        "counts": counts,
        "rows": sum(r.rows or 0 for r in result.results if r.status == "succeeded"),
        "bytes": sum(r.bytes or 0 for r in result.results if r.status == "succeeded"),
        "aggregates": aggregates,
        "jobs": [_job_entry(r) for r in result.results],
    }
    if extra:
        report.update(extra)
    return report
