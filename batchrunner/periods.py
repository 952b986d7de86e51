"""The period grid: whole calendar periods between two bounds, as pure functions.

A bound names a span of days: ``"2023"`` (a year), ``"2023-Q1"``, ``"2023-01"``,
``"2023-W05"`` (an ISO week, Monday to Sunday) or ``"2023-01-05"`` / a :class:`datetime.date`
(one day). A grid runs from the period containing the *first* day of ``start`` to the period
containing the *last* day of ``end``, so both bounds are inclusive and periods are always whole:
``every="month", start="2023", end="2025"`` is the 36 months of 2023 to 2025, and
``every="week", start="2023-01-01"`` begins with ISO week 2022-W52 (Monday 2022-12-26),
the week that contains that Sunday.

Each :class:`Period` is half-open, ``[start, end)``, which is what ``created >= start AND
created < end`` wants. Invalid input raises :class:`ValueError` (:class:`TypeError` for a
bound that is neither a string nor a date) with a message fit for a user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

GRANULARITIES: Final = ("day", "week", "month", "quarter", "year")
"""The values ``every`` accepts, finest first."""

MAX_PERIODS: Final = 100_000
"""A grid longer than this is a typo (a day grid over centuries), not a job."""

_LAST_YEAR: Final = 9998  # the period after Dec 9999 would start in year 10000, which date lacks

_YEAR = re.compile(r"(\d{4})")
_QUARTER = re.compile(r"(\d{4})-[Qq](\d)")
_WEEK = re.compile(r"(\d{4})-W(\d{2})")
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_FORMS: Final = "YYYY, YYYY-Qn, YYYY-MM, YYYY-Www (ISO week) or YYYY-MM-DD"


@dataclass(frozen=True, slots=True)
class Period:
    """One calendar period: its label and its half-open span of days ``[start, end)``."""

    label: str
    start: date
    end: date

    @property
    def start_ts(self) -> datetime:
        """Midnight at the start of the period (naive, read as UTC)."""
        return datetime(self.start.year, self.start.month, self.start.day)

    @property
    def end_ts(self) -> datetime:
        """Midnight at the start of the next period: the exclusive upper bound."""
        return datetime(self.end.year, self.end.month, self.end.day)


def _year(year: int) -> int:
    if not 1 <= year <= _LAST_YEAR:
        raise ValueError(f"year {year} is out of range 0001..{_LAST_YEAR}")
    return year


def _month_span(year: int, month: int) -> tuple[date, date]:
    first = date(year, month, 1)
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return first, following - timedelta(days=1)


def parse_bound(bound: str | date) -> tuple[date, date]:
    """The inclusive span of days ``(first, last)`` a grid bound names.

    >>> parse_bound("2024-02")
    (datetime.date(2024, 2, 1), datetime.date(2024, 2, 29))
    """
    if isinstance(bound, datetime):
        # A datetime would carry a time the grid ignores; make the user say a date.
        raise TypeError(f"expected a date, not a date and time ({bound.isoformat()})")
    if isinstance(bound, date):
        _year(bound.year)
        return bound, bound
    if not isinstance(bound, str):
        raise TypeError(f"expected a date or a string like {_FORMS}, got {bound!r}")
    text = bound.strip()
    if m := _YEAR.fullmatch(text):
        year = _year(int(m[1]))
        return date(year, 1, 1), date(year, 12, 31)
    if m := _QUARTER.fullmatch(text):
        year, quarter = _year(int(m[1])), int(m[2])
        if not 1 <= quarter <= 4:
            raise ValueError(f"{bound!r}: quarter {quarter} is not 1..4")
        first, _ = _month_span(year, 3 * quarter - 2)
        _, last = _month_span(year, 3 * quarter)
        return first, last
    if m := _WEEK.fullmatch(text):
        year, week = _year(int(m[1])), int(m[2])
        try:
            monday = date.fromisocalendar(year, week, 1)
        except ValueError:
            raise ValueError(f"{bound!r}: ISO year {year} has no week {week}") from None
        return monday, monday + timedelta(days=6)
    if m := _MONTH.fullmatch(text):
        year, month = _year(int(m[1])), int(m[2])
        if not 1 <= month <= 12:
            raise ValueError(f"{bound!r}: month {month} is not 1..12")
        return _month_span(year, month)
    if m := _DAY.fullmatch(text):
        year, month, day = _year(int(m[1])), int(m[2]), int(m[3])
        try:
            parsed = date(year, month, day)
        except ValueError as exc:
            raise ValueError(f"{bound!r}: {exc}") from None
        return parsed, parsed
    raise ValueError(f"{bound!r} is not a date; expected {_FORMS}")


def period_containing(day: date, every: str) -> Period:
    """The period of granularity ``every`` that contains ``day``."""
    if every == "day":
        return Period(day.isoformat(), day, day + timedelta(days=1))
    if every == "week":
        iso_year, week, weekday = day.isocalendar()
        monday = day - timedelta(days=weekday - 1)
        return Period(f"{iso_year:04d}-W{week:02d}", monday, monday + timedelta(days=7))
    if every == "month":
        first, last = _month_span(day.year, day.month)
        return Period(f"{day.year:04d}-{day.month:02d}", first, last + timedelta(days=1))
    if every == "quarter":
        quarter = (day.month - 1) // 3 + 1
        first, _ = _month_span(day.year, 3 * quarter - 2)
        _, last = _month_span(day.year, 3 * quarter)
        return Period(f"{day.year:04d}-Q{quarter}", first, last + timedelta(days=1))
    if every == "year":
        return Period(f"{day.year:04d}", date(day.year, 1, 1), date(day.year + 1, 1, 1))
    raise ValueError(f"every must be one of {', '.join(GRANULARITIES)}, got {every!r}")


def period_grid(
    *, every: str, start: str | date, end: str | date, max_periods: int = MAX_PERIODS
) -> tuple[Period, ...]:
    """Every whole period from the one containing ``start`` to the one containing ``end``.

    >>> [p.label for p in period_grid(every="quarter", start="2023-02", end="2023-07-01")]
    ['2023-Q1', '2023-Q2', '2023-Q3']
    """
    if every not in GRANULARITIES:
        raise ValueError(f"every must be one of {', '.join(GRANULARITIES)}, got {every!r}")
    first, _ = parse_bound(start)
    _, last = parse_bound(end)
    if first > last:
        raise ValueError(f"start {_show(start)} is after end {_show(end)}: the grid would be empty")
    periods: list[Period] = []
    period = period_containing(first, every)
    while period.start <= last:
        if len(periods) == max_periods:
            raise ValueError(f"the grid has more than {max_periods} {every} periods")
        periods.append(period)
        period = period_containing(period.end, every)
    return tuple(periods)


def _show(bound: str | date) -> str:
    return repr(bound) if isinstance(bound, str) else bound.isoformat()
