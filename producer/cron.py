"""Five-field cron schedules in an IANA time zone: parse, match, and step between ticks.

A thin wrapper around `cronsim <https://pypi.org/project/cronsim/>`_ (chosen over
croniter: it ships type hints, has no dependencies, and defines its daylight-saving
behaviour as Debian cron's, which is the behaviour documented below).

Fields, in order: minute (0-59), hour (0-23), day of month (1-31, ``L`` = the last day,
``LW`` = the last weekday), month (1-12 or ``jan``-``dec``), day of week (0-7 or
``sun``-``sat``, 0 and 7 both Sunday; ``mon#1`` = the first Monday of the month,
``5L`` = the last Friday). Each field is ``*``, a value, a range ``a-b``, a step ``*/n``,
``a-b/n`` or ``a/n``, or a comma-separated list of those; names are case-insensitive.
``@hourly``, ``@daily`` (``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly``
(``@annually``) stand for their usual expansions. When both day fields are restricted
(neither starts with ``*``) a day matching either is enough (Vixie cron).

Times are evaluated in the schedule's zone; every tick is returned in UTC. Across a
daylight-saving change:

- a schedule with a fixed minute and hour (neither field starts with ``*``, e.g.
  ``30 2 * * *``) runs once a day by the wall clock: a time skipped by a spring-forward
  gap runs at the first valid minute after it (02:30 -> 03:00 in Europe/Paris), and a
  time repeated by a fall-back runs once, at its first occurrence;
- a schedule whose minute or hour field starts with ``*`` (``0 * * * *``, ``*/15 * * * *``)
  follows real time: it runs at every local time that matches and exists, so it skips
  nothing in the gap and runs in both passes of a repeated hour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

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
DEFAULT_TIMEZONE = "UTC"
PERIOD_FORMAT = "%Y-%m-%dT%H:%MZ"
"""``strftime`` format of a period id, e.g. ``2026-11-23T09:00Z`` (always UTC)."""

FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_RULES = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L (last day) or LW (last weekday)",
    "month": "1-12 or jan-dec",
    "day-of-week": "0-7 or sun-sat (0 and 7 are Sunday), mon#1 (first Monday) "
                   "or 5L (last Friday)",
}
_FIELDS_RULE = (
    "5 fields (minute hour day-of-month month day-of-week) or one of "
    + ", ".join(sorted(ALIASES))
)
_TIMEZONE_RULE = "an IANA time zone name such as UTC or Europe/Paris"
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)


def parse_timezone(name: object) -> tzinfo:
    """The zone an IANA name (``Europe/Paris``) stands for; ``InvalidJob("timezone", ...)``."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidJob("timezone", _TIMEZONE_RULE, name)
    if name == DEFAULT_TIMEZONE:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidJob("timezone", f"{_TIMEZONE_RULE} (unknown zone)", name) from None


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression evaluated in ``timezone``; ticks are whole UTC minutes.

    Build one with :meth:`parse`. ``fields`` is the five-field form (aliases expanded).
    """

    expr: str
    fields: str
    timezone: str
    zone: tzinfo

    @classmethod
    def parse(cls, expr: str, timezone: str = DEFAULT_TIMEZONE) -> CronSchedule:
        """Parse ``expr`` for ``timezone``; raises ``InvalidJob`` naming ``schedule`` or
        ``timezone`` and the rule broken."""
        zone = parse_timezone(timezone)
        if not isinstance(expr, str):
            raise InvalidJob("schedule", "a cron expression (a string)", expr)
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in ALIASES:
                raise InvalidJob("schedule", f"unknown alias {text}; use {_FIELDS_RULE}", expr)
            text = ALIASES[text.lower()]
        parts = text.split()
        if len(parts) != len(FIELD_NAMES):
            raise InvalidJob("schedule", f"{_FIELDS_RULE}; got {len(parts)} fields", expr)
        fields = " ".join(parts)
        probe = datetime(2000, 1, 1, tzinfo=UTC)
        try:
            next(CronSim(fields, probe))
        except CronSimError as exc:
            raise InvalidJob("schedule", _field_problem(parts, str(exc)), expr) from None
        except StopIteration:
            raise InvalidJob("schedule", "day-of-month, month and day-of-week never coincide, "
                             "so it would never fire", expr) from None
        return cls(expr, fields, timezone, zone)

    def matches(self, dt: datetime) -> bool:
        """Whether the minute containing ``dt`` (timezone-aware) is a scheduled tick."""
        minute = _utc_minute(dt)
        return self.next(minute - _MINUTE) == minute

    def previous(self, at: datetime) -> datetime:
        """The latest tick at or before ``at`` (timezone-aware), as a UTC datetime."""
        end = _utc_minute(at)
        ticks = CronSim(self.fields, (end + _SECOND).astimezone(self.zone), reverse=True)
        tick = self._first(ticks, lambda t: t <= end)
        # Backwards, cronsim walks the wall clock: in a repeated hour it can step past a
        # tick that ran in the first pass. Forward steps find the latest one again.
        while (following := self.next(tick)) <= end:
            tick = following
        return tick

    def next(self, after: datetime) -> datetime:
        """The earliest tick strictly after ``after`` (timezone-aware), as a UTC datetime."""
        start = _utc_minute(after)
        # In the second pass of a repeated hour, the wall clock gives back ticks that
        # already ran in the first pass: skip them.
        return self._first(CronSim(self.fields, start.astimezone(self.zone)),
                           lambda t: t > start)

    def _first(self, ticks: CronSim, wanted: Callable[[datetime], bool]) -> datetime:
        """The first of ``ticks``, in UTC, that is ``wanted``."""
        try:
            while not wanted(tick := next(ticks).astimezone(UTC)):
                pass
        except StopIteration:
            raise LookupError(f"schedule {self.expr!r} has no tick within 50 years") from None
        return tick


def period_id(dt: datetime) -> str:
    """The id of the period starting at ``dt`` (timezone-aware), e.g. ``2026-11-23T09:00Z``.

    Always UTC, whatever the campaign's zone, so an id names one instant.
    """
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


def _field_problem(parts: list[str], message: str) -> str:
    """Turn cronsim's ``Bad <field>`` into a rule naming the field and its values."""
    name = message.removeprefix("Bad ")
    if name not in FIELD_NAMES:
        return f"{_FIELDS_RULE} ({message})"
    part = parts[FIELD_NAMES.index(name)]
    if name == "day-of-month" and _parses([*parts[:3], "*", parts[4]]):
        return (f"day-of-month field {part!r} never falls in month field {parts[3]!r} "
                "(e.g. 30 February), so it would never fire")
    return (f"{name} field {part!r}: use {_FIELD_RULES[name]}, as a value, a range a-b, "
            "a step */n or a-b/n, or a comma-separated list")


def _parses(parts: list[str]) -> bool:
    try:
        CronSim(" ".join(parts), datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError:
        return False
    return True


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"cron times must be timezone-aware (use UTC); got naive {dt}")
    return dt.astimezone(UTC)


def _utc_minute(dt: datetime) -> datetime:
    return _utc(dt).replace(second=0, microsecond=0)
