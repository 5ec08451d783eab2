"""Five-field cron schedules, in UTC: parse, match, and step to the previous or next tick.

Fields, in order: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
``jan``-``dec``), day of week (0-7 or ``sun``-``sat``; 0 and 7 are both Sunday).
Each field is ``*``, a number or name, a range ``a-b``, a step ``*/n``, ``a-b/n`` or
``a/n`` (``a`` to the field's end), or a comma-separated list of those. Names are
case-insensitive. The aliases ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``,
``@monthly`` and ``@yearly`` (``@annually``) stand for their usual expansions.

Day matching follows Vixie cron: when both the day-of-month and the day-of-week field
are restricted (neither starts with ``*``), a day matches if *either* matches; otherwise
both must. So ``0 0 13 * fri`` fires on every 13th and on every Friday, while
``0 0 */2 * mon`` fires on odd-numbered days that are Mondays.

A schedule that can never fire (``0 0 30 2 *``) is refused when parsed. Searches skip
whole months, days and hours that cannot match, so finding a tick years away (a
29 February) costs a few hundred steps, not a scan of every minute.
"""

from __future__ import annotations

import bisect
import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from common.errors import InvalidJob

ALIASES: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
PERIOD_FORMAT = "%Y-%m-%dT%H:%MZ"
"""``strftime`` format of a period id, e.g. ``2026-11-23T09:00Z``."""

# The Gregorian calendar repeats every 400 years, so a schedule that has not fired
# within that span never will.
_SEARCH_YEARS = 400
_FIELDS_RULE = (
    "5 fields (minute hour day-of-month month day-of-week) or one of "
    + ", ".join(sorted(ALIASES))
)
_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: Mapping[str, int]


_MONTH_NAMES = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_SPECS = (
    _FieldSpec("minute", 0, 59, {}),
    _FieldSpec("hour", 0, 23, {}),
    _FieldSpec("day-of-month", 1, 31, {}),
    _FieldSpec("month", 1, 12, _MONTH_NAMES),
    _FieldSpec("day-of-week", 0, 7, _DAY_NAMES),
)


class _FieldError(ValueError):
    """A problem in one field; ``CronSchedule.parse`` turns it into ``InvalidJob``."""


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression; all times are UTC and whole minutes.

    Build one with :meth:`parse`. The value tuples are sorted; ``weekdays`` uses
    0 = Sunday .. 6 = Saturday (a 7 in the expression is stored as 0).
    """

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    days_or_weekdays: bool
    """True when both day fields are restricted, so a day matching either is enough."""

    @classmethod
    def parse(cls, expr: str) -> CronSchedule:
        """Parse ``expr``; raises ``InvalidJob("schedule", rule, expr)`` naming the problem."""
        if not isinstance(expr, str):
            raise InvalidJob("schedule", "a cron expression (a string)", expr)
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in ALIASES:
                raise InvalidJob("schedule", f"unknown alias {text}; use {_FIELDS_RULE}", expr)
            text = ALIASES[text.lower()]
        parts = text.split()
        if len(parts) != len(_SPECS):
            raise InvalidJob("schedule", f"{_FIELDS_RULE}; got {len(parts)} fields", expr)
        values: list[tuple[int, ...]] = []
        for part, spec in zip(parts, _SPECS, strict=True):
            try:
                values.append(_parse_field(part, spec))
            except _FieldError as exc:
                raise InvalidJob("schedule", f"{spec.name} field {part!r}: {exc}", expr) from None
        minutes, hours, days, months, weekdays = values
        schedule = cls(expr, minutes, hours, days, months, weekdays,
                       days_or_weekdays=not parts[2].startswith("*")
                       and not parts[4].startswith("*"))
        try:
            schedule._forward(datetime(2000, 1, 1, tzinfo=UTC))
        except LookupError:
            raise InvalidJob("schedule", "day-of-month, month and day-of-week never coincide "
                             "(e.g. 30 February), so it would never fire", expr) from None
        return schedule

    def matches(self, dt: datetime) -> bool:
        """Whether the minute containing ``dt`` (timezone-aware) is a scheduled tick."""
        t = _utc(dt)
        return (t.minute in self.minutes and t.hour in self.hours
                and t.month in self.months and self._day_matches(t))

    def previous(self, at: datetime) -> datetime:
        """The latest tick at or before ``at`` (timezone-aware), as a UTC datetime."""
        return self._backward(_utc(at).replace(second=0, microsecond=0))

    def next(self, after: datetime) -> datetime:
        """The earliest tick strictly after ``after`` (timezone-aware), as a UTC datetime."""
        return self._forward(_utc(after).replace(second=0, microsecond=0) + _MINUTE)

    def _day_matches(self, t: datetime) -> bool:
        in_month = t.day in self.days
        in_week = t.isoweekday() % 7 in self.weekdays
        if self.days_or_weekdays:
            return in_month or in_week
        return in_month and in_week

    def _forward(self, t: datetime) -> datetime:
        """The earliest tick at or after ``t`` (a whole UTC minute)."""
        last_year = t.year + _SEARCH_YEARS
        while t.year <= last_year:
            day = t.replace(hour=0, minute=0)
            if t.month not in self.months:
                month = _after(self.months, t.month)
                t = (datetime(t.year, month, 1, tzinfo=UTC) if month is not None
                     else datetime(t.year + 1, self.months[0], 1, tzinfo=UTC))
            elif not self._day_matches(t):
                t = day + _DAY
            elif t.hour not in self.hours:
                hour = _after(self.hours, t.hour)
                t = t.replace(hour=hour, minute=0) if hour is not None else day + _DAY
            elif t.minute not in self.minutes:
                minute = _after(self.minutes, t.minute)
                t = (t.replace(minute=minute) if minute is not None
                     else t.replace(minute=0) + timedelta(hours=1))
            else:
                return t
        raise LookupError(f"schedule {self.expr!r} has no tick within {_SEARCH_YEARS} years")

    def _backward(self, t: datetime) -> datetime:
        """The latest tick at or before ``t`` (a whole UTC minute)."""
        first_year = t.year - _SEARCH_YEARS
        while t.year >= first_year:
            day = t.replace(hour=0, minute=0)
            if t.month not in self.months:
                month = _before(self.months, t.month)
                t = (_month_end(t.year, month) if month is not None
                     else _month_end(t.year - 1, self.months[-1]))
            elif not self._day_matches(t):
                t = day - _MINUTE
            elif t.hour not in self.hours:
                hour = _before(self.hours, t.hour)
                t = t.replace(hour=hour, minute=59) if hour is not None else day - _MINUTE
            elif t.minute not in self.minutes:
                minute = _before(self.minutes, t.minute)
                t = (t.replace(minute=minute) if minute is not None
                     else t.replace(minute=0) - _MINUTE)
            else:
                return t
        raise LookupError(f"schedule {self.expr!r} has no tick within {_SEARCH_YEARS} years")


def period_id(dt: datetime) -> str:
    """The id of the period starting at ``dt`` (timezone-aware), e.g. ``2026-11-23T09:00Z``."""
    return _utc(dt).strftime(PERIOD_FORMAT)


def parse_period_id(period: str) -> datetime:
    """The UTC minute a period id names; raises ``InvalidJob("period", ...)`` otherwise."""
    rule = "a period id like 2026-11-23T09:00Z (UTC, whole minutes)"
    if not isinstance(period, str):
        raise InvalidJob("period", rule, period)
    try:
        dt = datetime.strptime(period, PERIOD_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidJob("period", rule, period) from None
    if period_id(dt) != period:  # strptime also takes unpadded numbers
        raise InvalidJob("period", rule, period)
    return dt


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"cron times must be timezone-aware (use UTC); got naive {dt}")
    return dt.astimezone(UTC)


def _month_end(year: int, month: int) -> datetime:
    return datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, tzinfo=UTC)


def _after(values: tuple[int, ...], current: int) -> int | None:
    """The smallest value greater than ``current``, if any."""
    i = bisect.bisect_right(values, current)
    return values[i] if i < len(values) else None


def _before(values: tuple[int, ...], current: int) -> int | None:
    """The largest value less than ``current``, if any."""
    i = bisect.bisect_left(values, current)
    return values[i - 1] if i > 0 else None


def _parse_field(text: str, spec: _FieldSpec) -> tuple[int, ...]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _FieldError("empty list item")
        values |= _parse_item(item, spec)
    if spec.name == "day-of-week" and 7 in values:
        values = (values - {7}) | {0}
    return tuple(sorted(values))


def _parse_item(item: str, spec: _FieldSpec) -> set[int]:
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not (step_text.isascii() and step_text.isdigit()):
            raise _FieldError(f"step {step_text!r} is not a number")
        step = int(step_text)
        if not 1 <= step <= spec.high - spec.low + 1:
            raise _FieldError(f"step {step} must be 1-{spec.high - spec.low + 1}")
    if span == "*":
        low, high = spec.low, spec.high
    elif "-" in span:
        first, _, last = span.partition("-")
        low, high = _value(first, spec), _value(last, spec)
        if low > high:
            raise _FieldError(f"range {span} runs backwards (start after end)")
    else:
        low = _value(span, spec)
        high = spec.high if slash else low
    return set(range(low, high + 1, step))


def _value(text: str, spec: _FieldSpec) -> int:
    if text.isascii() and text.isdigit():
        value = int(text)
    elif text.lower() in spec.names:
        return spec.names[text.lower()]
    else:
        hint = f" or a name ({', '.join(spec.names)})" if spec.names else ""
        raise _FieldError(f"{text!r} is not a number{hint}")
    if not spec.low <= value <= spec.high:
        raise _FieldError(f"{value} is outside {spec.low}-{spec.high}")
    return value
