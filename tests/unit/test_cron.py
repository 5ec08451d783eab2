"""Cron schedules: parsing, matching, previous and next ticks on known dates, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.errors import InvalidJob
from producer.cron import CronSchedule, parse_period_id, period_id


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def cron(expr: str) -> CronSchedule:
    return CronSchedule.parse(expr)


# --- parsing -------------------------------------------------------------------------------


def test_fields_lists_ranges_and_steps() -> None:
    s = cron("5-20/5,59 */6 1,15 1-3 *")
    assert s.minutes == (5, 10, 15, 20, 59)
    assert s.hours == (0, 6, 12, 18)
    assert s.days == (1, 15)
    assert s.months == (1, 2, 3)
    assert s.weekdays == tuple(range(7))


def test_start_with_step_runs_to_the_field_end() -> None:
    assert cron("10/20 * * * *").minutes == (10, 30, 50)


def test_names_are_case_insensitive_and_equal_numbers() -> None:
    named = cron("0 9 * JAN,jul Mon-Fri")
    numbered = cron("0 9 * 1,7 1-5")
    assert (named.months, named.weekdays) == (numbered.months, numbered.weekdays) == (
        (1, 7), (1, 2, 3, 4, 5))


def test_sunday_is_0_and_7() -> None:
    assert cron("0 0 * * 7").weekdays == cron("0 0 * * 0").weekdays == (0,)
    assert cron("0 0 * * 5-7").weekdays == (0, 5, 6)


@pytest.mark.parametrize(("alias", "expansion"), [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@ANNUALLY", "0 0 1 1 *"),
])
def test_aliases(alias: str, expansion: str) -> None:
    a, b = cron(alias), cron(expansion)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.minutes, b.hours, b.days, b.months, b.weekdays)
    assert a.expr == alias


@pytest.mark.parametrize(("expr", "problem"), [
    ("", "5 fields"),
    ("* * * *", "got 4 fields"),
    ("0 0 * * * 2026", "got 6 fields"),
    ("60 * * * *", "minute field '60': 60 is outside 0-59"),
    ("* 24 * * *", "hour field"),
    ("* * 0 * *", "day-of-month field '0': 0 is outside 1-31"),
    ("* * * 13 *", "month field"),
    ("* * * * 8", "day-of-week field '8': 8 is outside 0-7"),
    ("* * * * funday", "'funday' is not a number or a name (sun, mon"),
    ("* * * foo *", "month field 'foo'"),
    ("*/0 * * * *", "step 0 must be 1-60"),
    ("*/x * * * *", "step 'x' is not a number"),
    ("20-10 * * * *", "range 20-10 runs backwards"),
    ("1,,2 * * * *", "empty list item"),
    ("-5 * * * *", "minute field '-5'"),
    ("@reboot", "unknown alias @reboot"),
    ("0 0 30 2 *", "never coincide"),
    ("0 0 31 4,6,9,11 *", "never coincide"),
])
def test_bad_expressions_name_the_problem(expr: str, problem: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        cron(expr)
    assert caught.value.field == "schedule"
    assert caught.value.value == expr
    assert problem in caught.value.limit


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidJob) as caught:
        CronSchedule.parse(5)  # type: ignore[arg-type]
    assert caught.value.field == "schedule"


# --- matching ------------------------------------------------------------------------------


def test_matches_ignores_seconds_and_converts_to_utc() -> None:
    s = cron("0 9 * * mon")  # 2026-11-23 is a Monday
    assert s.matches(utc(2026, 11, 23, 9, 0, 59))
    assert not s.matches(utc(2026, 11, 23, 9, 1))
    assert not s.matches(utc(2026, 11, 24, 9, 0))
    plus_two = timezone(timedelta(hours=2))
    assert s.matches(datetime(2026, 11, 23, 11, 0, tzinfo=plus_two))


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    s = cron("0 0 13 * fri")
    assert s.days_or_weekdays
    assert s.matches(utc(2026, 1, 13))    # a Tuesday, the 13th
    assert s.matches(utc(2026, 1, 16))    # a Friday
    assert not s.matches(utc(2026, 1, 14))
    assert s.next(utc(2026, 1, 13)) == utc(2026, 1, 16)
    assert s.next(utc(2026, 2, 6)) == utc(2026, 2, 13)   # Friday the 13th, once


def test_day_fields_starting_with_star_must_both_match() -> None:
    s = cron("0 0 */2 * mon")  # odd days that are Mondays
    assert not s.days_or_weekdays
    assert not s.matches(utc(2026, 11, 25))  # odd day, a Wednesday
    assert not s.matches(utc(2026, 11, 30))  # a Monday, even day
    assert s.matches(utc(2026, 11, 23))      # a Monday, odd day
    assert s.next(utc(2026, 11, 23)) == utc(2026, 12, 7)


def test_only_day_of_week_restricted() -> None:
    s = cron("30 8 * * sat,sun")
    assert s.next(utc(2026, 11, 23)) == utc(2026, 11, 28, 8, 30)
    assert s.previous(utc(2026, 11, 23)) == utc(2026, 11, 22, 8, 30)


# --- previous and next ---------------------------------------------------------------------


def test_previous_is_inclusive_and_next_is_strict() -> None:
    s = cron("0 9 * * mon")
    tick = utc(2026, 11, 23, 9)
    assert s.previous(tick) == tick
    assert s.previous(tick + timedelta(seconds=59)) == tick
    assert s.previous(tick - timedelta(seconds=1)) == utc(2026, 11, 16, 9)
    assert s.next(tick) == utc(2026, 11, 30, 9)
    assert s.next(tick - timedelta(seconds=1)) == tick


def test_results_are_utc_whole_minutes() -> None:
    s = cron("*/5 * * * *")
    after = datetime(2026, 11, 23, 10, 2, 30, 500, tzinfo=timezone(timedelta(hours=-5)))
    got = s.next(after)
    assert got == utc(2026, 11, 23, 15, 5)
    assert got.tzinfo is UTC
    assert s.previous(after) == utc(2026, 11, 23, 15, 0)


def test_month_ends() -> None:
    s = cron("0 0 31 * *")
    assert s.next(utc(2026, 4, 15)) == utc(2026, 5, 31)
    assert s.previous(utc(2026, 4, 15)) == utc(2026, 3, 31)
    assert s.next(utc(2026, 12, 31)) == utc(2027, 1, 31)
    last_of_feb = cron("59 23 28,29 2 *")
    assert last_of_feb.next(utc(2026, 2, 28, 23, 59)) == utc(2027, 2, 28, 23, 59)


def test_leap_years() -> None:
    s = cron("0 0 29 2 *")
    assert s.next(utc(2026, 3, 1)) == utc(2028, 2, 29)
    assert s.previous(utc(2026, 3, 1)) == utc(2024, 2, 29)
    # 2100 is not a leap year: the next 29 February after 2096 is in 2104.
    assert s.next(utc(2096, 3, 1)) == utc(2104, 2, 29)
    assert s.previous(utc(2104, 2, 28)) == utc(2096, 2, 29)


def test_crossing_year_ends() -> None:
    s = cron("@yearly")
    assert s.next(utc(2026, 11, 23)) == utc(2027, 1, 1)
    assert s.previous(utc(2026, 11, 23)) == utc(2026, 1, 1)
    assert cron("59 23 31 12 *").previous(utc(2026, 6, 1)) == utc(2025, 12, 31, 23, 59)


def test_rare_tick_years_away() -> None:
    # 29 February on a Sunday ("*/7" keeps the AND rule): 2032, then 2060.
    s = cron("0 0 29 2 */7")
    assert s.next(utc(2026, 1, 1)) == utc(2032, 2, 29)
    assert s.next(utc(2032, 2, 29)) == utc(2060, 2, 29)
    assert s.previous(utc(2059, 1, 1)) == utc(2032, 2, 29)


@pytest.mark.parametrize("expr", [
    "*/7 * * * *", "13 */5 * * *", "0 9 * * mon-fri", "0 0 13 * fri", "15 3 */3 * mon",
    "0 12 1,15 * *", "45 23 * * 0", "0 6 31 * *",
])
def test_next_and_previous_agree_with_a_minute_scan(expr: str) -> None:
    s = cron(expr)
    start = utc(2026, 2, 20, 17, 43)
    scan_end = start + timedelta(days=45)
    t = start
    ticks = []
    while t < scan_end:
        if s.matches(t):
            ticks.append(t)
        t += timedelta(minutes=1)
    assert ticks, "the scan window should hold ticks"
    found = []
    t = start - timedelta(minutes=1)
    while (t := s.next(t)) < scan_end:
        found.append(t)
    assert found == ticks
    assert [s.previous(tick) for tick in ticks] == ticks
    assert [s.previous(tick - timedelta(minutes=1)) for tick in ticks[1:]] == ticks[:-1]


def test_naive_datetimes_are_refused() -> None:
    s = cron("@hourly")
    with pytest.raises(ValueError, match="timezone-aware"):
        s.next(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        s.previous(datetime(2026, 1, 1))


# --- period ids ----------------------------------------------------------------------------


def test_period_id_round_trip() -> None:
    at = datetime(2026, 11, 23, 10, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert period_id(at) == "2026-11-23T09:00Z"
    assert parse_period_id("2026-11-23T09:00Z") == utc(2026, 11, 23, 9)


@pytest.mark.parametrize("bad", ["2026-11-23", "2026-11-23T09:00", "2026-11-23T9:00Z",
                                 "2026-11-23T09:00:00Z", "yesterday", ""])
def test_bad_period_ids(bad: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        parse_period_id(bad)
    assert caught.value.field == "period"
