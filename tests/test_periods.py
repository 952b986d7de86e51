"""The period grid: bounds, granularities, labels and inclusive ends."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta

import pytest

from batchrunner.periods import (
    GRANULARITIES,
    Period,
    parse_bound,
    period_containing,
    period_grid,
)


@pytest.mark.parametrize(
    ("bound", "first", "last"),
    [
        ("2023", date(2023, 1, 1), date(2023, 12, 31)),
        ("2023-Q1", date(2023, 1, 1), date(2023, 3, 31)),
        ("2023-q4", date(2023, 10, 1), date(2023, 12, 31)),
        ("2023-01", date(2023, 1, 1), date(2023, 1, 31)),
        ("2024-02", date(2024, 2, 1), date(2024, 2, 29)),
        ("2023-02", date(2023, 2, 1), date(2023, 2, 28)),
        ("1900-02", date(1900, 2, 1), date(1900, 2, 28)),
        ("2000-02", date(2000, 2, 1), date(2000, 2, 29)),
        ("2023-W01", date(2023, 1, 2), date(2023, 1, 8)),
        ("2020-W53", date(2020, 12, 28), date(2021, 1, 3)),
        ("2023-01-05", date(2023, 1, 5), date(2023, 1, 5)),
        (" 2023-01-05 ", date(2023, 1, 5), date(2023, 1, 5)),
        (date(2024, 2, 29), date(2024, 2, 29), date(2024, 2, 29)),
    ],
)
def test_parse_bound_spans(bound: str | date, first: date, last: date) -> None:
    """Each bound form names the inclusive span of days it means."""
    assert parse_bound(bound) == (first, last)


@pytest.mark.parametrize(
    ("bound", "message"),
    [
        ("2023-13", "month 13 is not 1..12"),
        ("2023-00", "month 0 is not 1..12"),
        ("2023-02-30", "day is out of range"),
        ("2023-Q5", "quarter 5 is not 1..4"),
        ("2021-W53", "has no week 53"),
        ("2023-W00", "has no week 0"),
        ("23-01", "is not a date"),
        ("2023/01", "is not a date"),
        ("", "is not a date"),
        ("0000", "out of range"),
        ("9999-12", "out of range"),
    ],
)
def test_parse_bound_rejects(bound: str, message: str) -> None:
    """A malformed or impossible bound raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_bound(bound)


def test_parse_bound_refuses_datetimes_and_other_types() -> None:
    """A date-and-time or a number is not a grid bound."""
    with pytest.raises(TypeError, match="not a date and time"):
        parse_bound(datetime(2023, 1, 1, 12))
    with pytest.raises(TypeError, match="expected a date or a string"):
        parse_bound(2023)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("day", "every", "expected"),
    [
        (date(2023, 1, 5), "day", Period("2023-01-05", date(2023, 1, 5), date(2023, 1, 6))),
        (date(2024, 2, 29), "day", Period("2024-02-29", date(2024, 2, 29), date(2024, 3, 1))),
        # 2023-01-01 is a Sunday: it belongs to ISO week 52 of 2022, which starts on Monday.
        (date(2023, 1, 1), "week", Period("2022-W52", date(2022, 12, 26), date(2023, 1, 2))),
        (date(2023, 1, 2), "week", Period("2023-W01", date(2023, 1, 2), date(2023, 1, 9))),
        (date(2024, 12, 31), "week", Period("2025-W01", date(2024, 12, 30), date(2025, 1, 6))),
        (date(2024, 2, 10), "month", Period("2024-02", date(2024, 2, 1), date(2024, 3, 1))),
        (date(2023, 12, 31), "month", Period("2023-12", date(2023, 12, 1), date(2024, 1, 1))),
        (date(2023, 5, 17), "quarter", Period("2023-Q2", date(2023, 4, 1), date(2023, 7, 1))),
        (date(2023, 12, 1), "quarter", Period("2023-Q4", date(2023, 10, 1), date(2024, 1, 1))),
        (date(2024, 7, 4), "year", Period("2024", date(2024, 1, 1), date(2025, 1, 1))),
    ],
)
def test_period_containing(day: date, every: str, expected: Period) -> None:
    """The containing period has the documented label and a half-open [start, end) span."""
    assert period_containing(day, every) == expected


def test_weeks_start_on_monday() -> None:
    """Every week period starts on a Monday and lasts seven days, whatever day is asked about."""
    for offset in range(800):
        day = date(2023, 1, 1) + timedelta(days=offset)
        period = period_containing(day, "week")
        assert period.start.weekday() == 0
        assert period.end - period.start == timedelta(days=7)
        assert period.start <= day < period.end


def test_monthly_grid_of_three_years() -> None:
    """Month grid 2023-01..2025-12 has 36 periods, the last one being December 2025."""
    grid = period_grid(every="month", start="2023-01", end="2025-12")
    assert len(grid) == 36
    assert grid[0] == Period("2023-01", date(2023, 1, 1), date(2023, 2, 1))
    assert grid[-1] == Period("2025-12", date(2025, 12, 1), date(2026, 1, 1))
    assert [p.label for p in grid[:3]] == ["2023-01", "2023-02", "2023-03"]


def test_bounds_snap_to_whole_periods() -> None:
    """A bound inside a period includes that whole period; a coarse end covers all of it."""
    grid = period_grid(every="month", start="2023-01-15", end="2023-03-02")
    assert [p.label for p in grid] == ["2023-01", "2023-02", "2023-03"]
    assert grid[0].start == date(2023, 1, 1)
    by_year = period_grid(every="month", start="2023", end="2024")
    assert len(by_year) == 24
    quarters = period_grid(every="quarter", start="2023-02", end="2023-07-01")
    assert [p.label for p in quarters] == ["2023-Q1", "2023-Q2", "2023-Q3"]


def test_grid_counts_per_granularity() -> None:
    """Each granularity gives the number of periods the calendar says, leap day included."""
    assert len(period_grid(every="day", start="2024", end="2024")) == 366
    assert len(period_grid(every="day", start="2023", end="2023")) == 365
    assert len(period_grid(every="week", start="2024-W01", end="2024-W13")) == 13
    assert len(period_grid(every="week", start="2020", end="2020")) == 53
    assert len(period_grid(every="quarter", start="2023", end="2025")) == 12
    assert [p.label for p in period_grid(every="year", start="2023-06", end="2025-01-01")] == [
        "2023",
        "2024",
        "2025",
    ]
    single = period_grid(every="day", start=date(2023, 3, 1), end=date(2023, 3, 1))
    assert single == (Period("2023-03-01", date(2023, 3, 1), date(2023, 3, 2)),)


@pytest.mark.parametrize("every", GRANULARITIES)
def test_grid_is_contiguous_and_covers_the_bounds(every: str) -> None:
    """Periods follow each other without gaps or overlaps and cover start..end inclusive."""
    grid = period_grid(every=every, start="2023-02-27", end="2024-03-01")
    for before, after in itertools.pairwise(grid):
        assert before.end == after.start
    assert grid[0].start <= date(2023, 2, 27) < grid[0].end
    assert grid[-1].start <= date(2024, 3, 1) < grid[-1].end
    assert len({p.label for p in grid}) == len(grid)


def test_timestamps_are_midnight() -> None:
    """start_ts and end_ts are naive midnights of the first day and of the day after the end."""
    period = period_grid(every="month", start="2024-02", end="2024-02")[0]
    assert period.start_ts == datetime(2024, 2, 1)
    assert period.end_ts == datetime(2024, 3, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": "month", "start": "2025-01", "end": "2024-12"}, "is after end"),
        ({"every": "monthly", "start": "2023", "end": "2023"}, "every must be one of"),
        ({"every": "day", "start": "2023-01-10", "end": "2023-01-09"}, "grid would be empty"),
        (
            {"every": "day", "start": "2000", "end": "2000", "max_periods": 100},
            "more than 100 day periods",
        ),
    ],
)
def test_period_grid_rejects(kwargs: dict[str, object], message: str) -> None:
    """Empty, unknown-granularity and oversized grids raise ValueError."""
    with pytest.raises(ValueError, match=message):
        period_grid(**kwargs)  # type: ignore[arg-type]


def test_week_grid_from_a_sunday_starts_the_monday_before() -> None:
    """A week grid starting on Sunday 2023-01-01 begins with the ISO week containing it."""
    grid = period_grid(every="week", start="2023-01-01", end="2023-01-08")
    assert [p.label for p in grid] == ["2022-W52", "2023-W01"]
    assert grid[0].start == date(2022, 12, 26)
