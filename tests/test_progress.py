"""Tests for batchrunner.progress: plain log lines off a terminal, counts on one."""

from __future__ import annotations

import io

from batchrunner.engine import JobEvent
from batchrunner.progress import ProgressDisplay


def test_plain_mode_prints_one_line_per_finished_job() -> None:
    """Off a terminal each finished job is one line with its count, rows and size."""
    stream = io.StringIO()
    with ProgressDisplay(2, stream=stream, live=False) as display:
        display(JobEvent("a", "submitted"))
        display(JobEvent("a", "succeeded", rows=1234, bytes=2048))
        display(JobEvent("b", "failed", error="[b] query failed"))
    lines = stream.getvalue().splitlines()
    assert lines == ["[1/2] succeeded a rows=1,234 size=2.0 KB", "[2/2] failed b: [b] query failed"]


def test_live_mode_counts_stages() -> None:
    """On a terminal the bars advance per stage and failures are counted."""
    stream = io.StringIO()
    with ProgressDisplay(3, stream=stream, live=True) as display:
        for stage in ("submitted", "downloading", "converting", "succeeded"):
            display(
                JobEvent(
                    "a",
                    stage,
                    rows=5 if stage == "succeeded" else None,  # type: ignore[arg-type]
                    bytes=10 if stage == "converting" else None,
                )
            )
        display(JobEvent("b", "failed", error="nope"))
    assert display.counts == {"submitted": 1, "finished": 1, "downloaded": 1, "done": 2}
    assert display.failed == 1 and display.rows == 5 and display.bytes == 10
    assert "nope" in stream.getvalue()
