"""Cron schedules: parsing, matching, previous and next ticks, time zones and DST, bad input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from common.errors import InvalidJob
from producer.cron import CronSchedule, parse_period_id, period_id


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def cron(expr: str) -> CronSchedule:
    return CronSchedule.parse(expr)


# --- parsing -------------------------------------------------------------------------------


def ticks(s: CronSchedule, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = s.next(after)
        found.append(after)
    return found


def test_fields_lists_ranges_and_steps() -> None:
    s = cron("5-20/5,59 */6 1,15 1-3 *")
    hour = [5, 10, 15, 20, 59]
    assert ticks(s, utc(2026, 1, 1) - timedelta(minutes=1), 7) == [
        *(utc(2026, 1, 1, 0, m) for m in hour), utc(2026, 1, 1, 6, 5), utc(2026, 1, 1, 6, 10)]
    assert s.next(utc(2026, 1, 1, 18, 59)) == utc(2026, 1, 15, 0, 5)
    assert s.next(utc(2026, 3, 15, 18, 59)) == utc(2027, 1, 1, 0, 5)


def test_start_with_step_runs_to_the_field_end() -> None:
    assert ticks(cron("10/20 * * * *"), utc(2026, 1, 1), 3) == [
        utc(2026, 1, 1, 0, 10), utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 0, 50)]


def test_names_are_case_insensitive_and_equal_numbers() -> None:
    start = utc(2026, 1, 1)
    assert ticks(cron("0 9 * JAN,jul Mon-Fri"), start, 30) == ticks(
        cron("0 9 * 1,7 1-5"), start, 30)
    assert cron("0 9 * * fri").next(start) == utc(2026, 1, 2, 9)  # a Friday
    assert cron("0 9 * Feb *").next(start) == utc(2026, 2, 1, 9)


def test_sunday_is_0_and_7() -> None:
    start = utc(2026, 1, 1)  # a Thursday
    assert ticks(cron("0 0 * * 7"), start, 5) == ticks(cron("0 0 * * 0"), start, 5)
    assert cron("0 0 * * 7").next(start) == utc(2026, 1, 4)
    assert ticks(cron("0 0 * * 5-7"), start, 3) == [utc(2026, 1, 2), utc(2026, 1, 3),
                                                    utc(2026, 1, 4)]


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
    assert a.fields == expansion
    assert ticks(a, utc(2026, 11, 23, 9, 7), 5) == ticks(b, utc(2026, 11, 23, 9, 7), 5)
    assert a.expr == alias


def test_last_day_of_month() -> None:
    s = cron("0 9 L * *")
    assert ticks(s, utc(2026, 1, 1), 4) == [utc(2026, 1, 31, 9), utc(2026, 2, 28, 9),
                                           utc(2026, 3, 31, 9), utc(2026, 4, 30, 9)]
    assert s.next(utc(2028, 2, 1)) == utc(2028, 2, 29, 9)  # a leap year
    assert s.previous(utc(2026, 3, 15)) == utc(2026, 2, 28, 9)
    assert cron("0 9 LW * *").next(utc(2026, 1, 1)) == utc(2026, 1, 30, 9)  # 31st: Saturday


def test_nth_and_last_weekday_of_month() -> None:
    first_monday = cron("0 9 * * MON#1")
    assert ticks(first_monday, utc(2026, 1, 1), 3) == [
        utc(2026, 1, 5, 9), utc(2026, 2, 2, 9), utc(2026, 3, 2, 9)]
    assert first_monday.previous(utc(2026, 2, 1)) == utc(2026, 1, 5, 9)
    assert cron("30 18 * * thu#3").next(utc(2026, 11, 1)) == utc(2026, 11, 19, 18, 30)
    last_friday = cron("0 9 * * 5L")
    assert ticks(last_friday, utc(2026, 1, 1), 2) == [utc(2026, 1, 30, 9), utc(2026, 2, 27, 9)]


@pytest.mark.parametrize(("expr", "problem"), [
    ("", "5 fields"),
    ("* * * *", "got 4 fields"),
    ("0 0 * * * 2026", "got 6 fields"),
    ("0 0 0 * * *", "got 6 fields"),  # cronsim's seconds field is not cron
    ("60 * * * *", "minute field '60': use 0-59"),
    ("* 24 * * *", "hour field '24': use 0-23"),
    ("* * 0 * *", "day-of-month field '0': use 1-31, L"),
    ("* * * 13 *", "month field '13': use 1-12 or jan-dec"),
    ("* * * * 8", "day-of-week field '8': use 0-7 or sun-sat"),
    ("* * * * funday", "day-of-week field 'funday'"),
    ("* * * foo *", "month field 'foo'"),
    ("* * * * MON#6", "mon#1 (first Monday)"),
    ("*/0 * * * *", "minute field '*/0'"),
    ("*/x * * * *", "minute field '*/x'"),
    ("20-10 * * * *", "minute field '20-10'"),
    ("1,,2 * * * *", "minute field '1,,2'"),
    ("-5 * * * *", "minute field '-5'"),
    ("? * * * *", "minute field '?'"),
    ("@reboot", "unknown alias @reboot"),
    ("0 0 30 2 *", "day-of-month field '30' never falls in month field '2'"),
    ("0 0 31 4,6,9,11 *", "never falls in month field '4,6,9,11'"),
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
    assert s.matches(utc(2026, 1, 13))    # a Tuesday, the 13th
    assert s.matches(utc(2026, 1, 16))    # a Friday
    assert not s.matches(utc(2026, 1, 14))
    assert s.next(utc(2026, 1, 13)) == utc(2026, 1, 16)
    assert s.next(utc(2026, 2, 6)) == utc(2026, 2, 13)   # Friday the 13th, once


def test_day_fields_starting_with_star_must_both_match() -> None:
    s = cron("0 0 */2 * mon")  # odd days that are Mondays
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


# Independent of cronsim: what each schedule means, as a test on the local wall clock.
SCANNED: dict[str, Callable[[datetime], bool]] = {
    "*/7 * * * *": lambda t: t.minute % 7 == 0,
    "13 */5 * * *": lambda t: t.minute == 13 and t.hour % 5 == 0,
    "0 9 * * mon-fri": lambda t: (t.hour, t.minute) == (9, 0) and t.isoweekday() <= 5,
    "0 0 13 * fri": lambda t: (t.hour, t.minute) == (0, 0) and (t.day == 13
                                                                or t.isoweekday() == 5),
    "15 3 */3 * mon": lambda t: (t.hour, t.minute) == (3, 15) and t.day % 3 == 1
    and t.isoweekday() == 1,
    "0 12 1,15 * *": lambda t: (t.hour, t.minute) == (12, 0) and t.day in (1, 15),
    "45 23 * * 0": lambda t: (t.hour, t.minute) == (23, 45) and t.isoweekday() == 7,
    "0 6 31 * *": lambda t: (t.hour, t.minute) == (6, 0) and t.day == 31,
    "0 7 L * *": lambda t: (t.hour, t.minute) == (7, 0) and (t + timedelta(days=1)).day == 1,
    "0 7 * * tue#2": lambda t: (t.hour, t.minute) == (7, 0) and t.isoweekday() == 2
    and 8 <= t.day <= 14,
    # Minute or hour starting with '*': real time, so every pass of a repeated hour.
    "20 * * * *": lambda t: t.minute == 20,
    "*/30 1-3 * * *": lambda t: t.minute % 30 == 0 and 1 <= t.hour <= 3,
}


def scan(zone: str, expr: str, start: datetime, days: int) -> list[datetime]:
    matches = SCANNED[expr]
    local = ZoneInfo(zone)
    minutes = (start + timedelta(minutes=i) for i in range(days * 24 * 60))
    return [t for t in minutes if matches(t.astimezone(local))]


def check_against_scan(s: CronSchedule, ticks: list[datetime], start: datetime,
                       end: datetime) -> None:
    assert ticks, "the scan window should hold ticks"
    found = []
    t = start - timedelta(minutes=1)
    while (t := s.next(t)) < end:
        found.append(t)
    assert found == ticks
    sample = ticks[:: max(1, len(ticks) // 200)]
    assert [s.previous(tick) for tick in sample] == sample
    assert [s.previous(tick + timedelta(seconds=59)) for tick in sample] == sample
    earlier = {tick: ticks[i - 1] for i, tick in enumerate(ticks) if i}
    assert [s.previous(t - timedelta(minutes=1)) for t in sample if t in earlier] == [
        earlier[t] for t in sample if t in earlier]
    assert all(s.matches(tick) for tick in sample)
    assert not any(s.matches(tick - timedelta(minutes=1)) for tick in sample
                   if tick - timedelta(minutes=1) not in earlier.values())


@pytest.mark.parametrize("expr", sorted(SCANNED))
def test_next_and_previous_agree_with_a_minute_scan(expr: str) -> None:
    start = utc(2026, 2, 20, 17, 43)
    ticks = scan("UTC", expr, start, 45)
    check_against_scan(cron(expr), ticks, start, start + timedelta(days=45))


@pytest.mark.parametrize("expr", ["*/7 * * * *", "20 * * * *", "*/30 1-3 * * *",
                                  "0 9 * * mon-fri", "0 7 L * *"])
@pytest.mark.parametrize(("zone", "start"), [
    ("Europe/Paris", utc(2026, 3, 20)), ("Europe/Paris", utc(2026, 10, 20)),
    ("America/New_York", utc(2026, 10, 25)), ("Australia/Lord_Howe", utc(2026, 3, 30)),
])
def test_a_zone_agrees_with_a_minute_scan_across_a_clock_change(
        expr: str, zone: str, start: datetime) -> None:
    """Wildcard schedules follow real time; the fixed ones here avoid the changed hours."""
    ticks = scan(zone, expr, start, 20)
    check_against_scan(CronSchedule.parse(expr, zone), ticks, start,
                       start + timedelta(days=20))


# --- time zones and daylight saving -------------------------------------------------------
# Europe/Paris: 2026-03-29 02:00 CET jumps to 03:00 CEST; 2026-10-25 03:00 CEST goes back
# to 02:00 CET. America/New_York: 2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00.

PARIS = ZoneInfo("Europe/Paris")


def paris(expr: str) -> CronSchedule:
    return CronSchedule.parse(expr, "Europe/Paris")


def test_nine_in_paris_is_eight_utc_in_winter_and_seven_in_summer() -> None:
    s = paris("0 9 * * mon")
    assert s.next(utc(2026, 11, 20)) == utc(2026, 11, 23, 8)
    assert s.next(utc(2026, 7, 1)) == utc(2026, 7, 6, 7)
    assert ticks(s, utc(2026, 3, 20), 2) == [utc(2026, 3, 23, 8), utc(2026, 3, 30, 7)]
    assert ticks(s, utc(2026, 10, 20), 2) == [utc(2026, 10, 26, 8), utc(2026, 11, 2, 8)]
    assert s.previous(utc(2026, 3, 30, 7, 30)) == utc(2026, 3, 30, 7)
    assert s.previous(utc(2026, 3, 30, 6, 59)) == utc(2026, 3, 23, 8)
    assert s.matches(utc(2026, 7, 6, 7)) and not s.matches(utc(2026, 7, 6, 8))
    assert s.timezone == "Europe/Paris" and s.zone == PARIS


def test_a_time_skipped_by_spring_forward_runs_at_the_first_minute_after() -> None:
    s = paris("30 2 * * *")
    assert [t.astimezone(PARIS).strftime("%d %H:%M") for t in ticks(s, utc(2026, 3, 27), 3)] \
        == ["27 02:30", "28 02:30", "29 03:00"]
    assert s.next(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)     # 03:00 CEST, once
    assert s.next(utc(2026, 3, 29, 1)) == utc(2026, 3, 30, 0, 30)  # back to 02:30
    assert s.previous(utc(2026, 3, 29, 1)) == utc(2026, 3, 29, 1)
    assert s.previous(utc(2026, 3, 29, 0, 59)) == utc(2026, 3, 28, 1, 30)
    assert s.previous(utc(2026, 3, 29, 12)) == utc(2026, 3, 29, 1)
    assert s.matches(utc(2026, 3, 29, 1))
    new_york = CronSchedule.parse("30 2 * * *", "America/New_York")
    assert new_york.next(utc(2026, 3, 8)) == utc(2026, 3, 8, 7)    # 03:00 EDT


def test_a_time_repeated_by_fall_back_runs_once_at_its_first_occurrence() -> None:
    s = paris("30 2 * * *")
    day = ticks(s, utc(2026, 10, 24, 12), 2)
    assert day == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]  # CEST, then CET
    assert not s.matches(utc(2026, 10, 25, 1, 30))                       # 02:30 CET
    # In the second pass of the hour, the run that already happened is the current one.
    for now in (utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 15), utc(2026, 10, 25, 1, 45),
                utc(2026, 10, 25, 12)):
        assert s.previous(now) == utc(2026, 10, 25, 0, 30)
        assert s.next(now) == utc(2026, 10, 26, 1, 30)
    new_york = CronSchedule.parse("30 1 * * *", "America/New_York")
    assert ticks(new_york, utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_hourly_schedules_follow_real_time_across_clock_changes() -> None:
    s = paris("30 * * * *")
    back = [t.astimezone(PARIS).strftime("%H:%M%z") for t in ticks(s, utc(2026, 10, 24, 23), 4)]
    assert back == ["01:30+0200", "02:30+0200", "02:30+0100", "03:30+0100"]
    forward = [t.astimezone(PARIS).strftime("%H:%M%z") for t in ticks(s, utc(2026, 3, 28, 23), 3)]
    assert forward == ["00:30+0100", "01:30+0100", "03:30+0200"]
    assert s.previous(utc(2026, 10, 25, 1, 40)) == utc(2026, 10, 25, 1, 30)


def test_utc_by_default() -> None:
    s = cron("0 9 * * mon")
    assert s.timezone == "UTC" and s.zone is UTC
    assert s.next(utc(2026, 7, 1)) == utc(2026, 7, 6, 9)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "  ", "../../etc/passwd",
                                  "/etc/localtime", "Europe/", 5, None])
def test_unknown_zones_are_refused(zone: object) -> None:
    with pytest.raises(InvalidJob) as caught:
        CronSchedule.parse("0 9 * * *", zone)  # type: ignore[arg-type]
    assert caught.value.field == "timezone"
    assert "IANA time zone name" in caught.value.limit


def test_naive_datetimes_are_refused() -> None:
    s = cron("@hourly")
    with pytest.raises(ValueError, match="timezone-aware"):
        s.next(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        s.previous(datetime(2026, 1, 1))


# --- period ids ----------------------------------------------------------------------------


def test_period_ids_are_utc_whatever_the_zone() -> None:
    tick = paris("0 9 * * mon").next(utc(2026, 11, 20))
    assert period_id(tick) == "2026-11-23T08:00Z"
    assert period_id(tick.astimezone(PARIS)) == "2026-11-23T08:00Z"
    assert parse_period_id("2026-11-23T08:00Z") == tick


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
