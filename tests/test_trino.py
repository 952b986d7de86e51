"""Tests for the Trino -> DuckDB translation, its checks and its Trino-like messages."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest

from batchrunner.emulator.trino import (
    SqlError,
    Translation,
    duckdb_error_message,
    joda_to_strftime,
    translate,
)

KNOWN = frozenset({"charges", "refunds", "balance_transactions", "customers"})
LOAD = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)


def tr(sql: str) -> Translation:
    return translate(sql, known_tables=KNOWN, data_load_time=LOAD, now=NOW)


def run(sql: str) -> list[tuple[object, ...]]:
    """Translate ``sql`` and run it on an empty in-memory DuckDB with the warehouse's settings."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET integer_division = true")
        return con.execute(tr(sql).sql).fetchall()
    finally:
        con.close()


def error_of(sql: str) -> str:
    with pytest.raises(SqlError) as info:
        tr(sql)
    return info.value.message


def test_reports_the_tables_a_query_reads() -> None:
    """The translation lists each published table once, sorted, and ignores CTE names."""
    result = tr(
        "with r as (select charge_id from refunds) "
        "select c.id from charges c join r on r.charge_id = c.id join charges c2 on c2.id = c.id"
    )
    assert result.tables == ("charges", "refunds")


def test_unknown_table_uses_stripes_wording_and_lists_all_missing() -> None:
    """Unknown tables fail with a positioned message naming every missing table."""
    message = error_of("select * from charges join nope on true\njoin other_missing on true")
    assert message.startswith("line 1:28: Table 'nope' does not exist")
    assert "tables which do not exist or are inaccessible: [nope, other_missing]" in message


def test_table_names_are_case_insensitive_and_qualified_names_unknown() -> None:
    """`FROM Charges` resolves; a dataset-qualified name is not a published table name."""
    assert tr("select id from Charges").tables == ("charges",)
    assert "inaccessible: [coreapi.charges]" in error_of("select id from coreapi.charges")


def test_cte_shadowing_a_missing_name_is_fine() -> None:
    """A CTE may have any name, including one that is not a table."""
    assert tr("with daily as (select 1 as x) select x from daily").tables == ()


def test_parse_error_is_trino_shaped() -> None:
    """A syntax error reports line and column of the offending token like Trino."""
    message = error_of("select *\nform charges")
    assert message.startswith("line 2:6: mismatched input 'charges'.")


def test_unterminated_string_is_an_sql_error() -> None:
    """Tokenizer failures become SqlError too, not a crash."""
    assert error_of("select 'abc from charges").startswith("line 1:1:")


@pytest.mark.parametrize(
    "sql",
    [
        "insert into charges select * from charges",
        "delete from charges",
        "update charges set amount = 1",
        "create table x as select 1",
        "drop table charges",
        "set session x = 1",
        "show tables",
        "explain select 1",
    ],
)
def test_only_select_queries_are_allowed(sql: str) -> None:
    """Statements other than queries are refused before anything runs."""
    assert error_of(sql) == "only SELECT queries are supported"


def test_empty_and_multiple_statements_are_refused() -> None:
    """An empty text and two statements in one query both fail."""
    assert "mismatched input '<EOF>'" in error_of("  ;")
    assert "one statement" in error_of("select 1; select 2")


def test_table_functions_are_refused() -> None:
    """DuckDB table functions (file access) are not reachable from Sigma SQL."""
    assert "Table function 'read_csv' not registered" in error_of(
        "select * from read_csv('/etc/passwd')"
    )


def test_values_and_set_operations_are_queries() -> None:
    """VALUES and UNION queries pass the statement check."""
    assert run("values (1), (2)") == [(1,), (2,)]
    assert run("select 1;") == [(1,)]
    assert run("select 1 union all select 2 order by 1") == [(1,), (2,)]


def test_data_load_time_and_clock_are_fixed() -> None:
    """data_load_time, current_date and now() resolve to the emulated instants."""
    rows = run("select data_load_time, current_date, now(), current_timestamp")
    assert rows == [(datetime(2026, 1, 1), datetime(2026, 1, 1).date(), datetime(2026, 1, 1, 3),
                     datetime(2026, 1, 1, 3))]  # fmt: skip


def test_data_load_time_keeps_its_name_and_arithmetic() -> None:
    """`select data_load_time` is named data_load_time; interval arithmetic on it works."""
    result = tr("select data_load_time, data_load_time - interval '1' month as start")
    assert '"data_load_time"' in result.sql
    assert run("select data_load_time - interval '1' month") == [(datetime(2025, 12, 1),)]


def test_unnamed_outputs_are_col_n_and_names_lower_case() -> None:
    """Output names follow Trino: _colN for expressions, lower-case aliases and columns."""
    sql = tr("select ID, count(*), amount AS Total, 1 + 1 from charges group by 1, 3").sql
    assert '"id"' in sql
    assert '"_col1"' in sql
    assert '"total"' in sql
    assert '"_col3"' in sql


def test_integer_division_truncates_like_trino() -> None:
    """5 / 2 is 2 and -7 / 2 is -3, while decimals still divide exactly."""
    assert run("select 5 / 2, -7 / 2, 5.0 / 2") == [(2, -3, pytest.approx(2.5))]


def test_date_diff_counts_whole_units() -> None:
    """date_diff counts complete units (23 hours is 0 days), as in Trino."""
    rows = run(
        "select date_diff('day', timestamp '2024-01-01 23:00:00', timestamp '2024-01-02 22:00:00'),"
        " date_diff('month', timestamp '2024-01-31 00:00:00', timestamp '2024-03-01 00:00:00')"
    )
    assert rows == [(0, 1)]


def test_date_helpers_translate() -> None:
    """date_add, date_trunc, date_format, from_unixtime and date literals run on DuckDB."""
    rows = run(
        "select date_add('month', 1, timestamp '2024-01-31 10:00:00'),"
        " date_trunc('month', timestamp '2024-05-17 10:00:00'),"
        " date_format(timestamp '2024-05-07 08:09:10', '%Y-%m-%d %H:%i:%s'),"
        " to_unixtime(timestamp '2024-01-01 00:00:00'),"
        " date '2024-01-01' < timestamp '2024-01-01 00:00:01'"
    )
    assert rows == [(datetime(2024, 2, 29, 10), datetime(2024, 5, 1), "2024-05-07 08:09:10",
                     1704067200.0, True)]  # fmt: skip
    (stamp,) = run("select from_unixtime(1700000000)")[0]
    assert isinstance(stamp, datetime)
    assert stamp.astimezone(UTC).replace(tzinfo=None) == datetime(2023, 11, 14, 22, 13, 20)


def test_at_time_zone_gives_local_wall_clock() -> None:
    """`ts AT TIME ZONE 'America/New_York'` yields New York local time (EST is UTC-5)."""
    rows = run(
        "select timestamp '2024-01-15 12:00:00' at time zone 'America/New_York',"
        " date(timestamp '2024-01-15 02:00:00' at time zone 'America/New_York')"
    )
    assert rows == [(datetime(2024, 1, 15, 7), datetime(2024, 1, 14).date())]


def test_aggregates_and_conditionals_translate() -> None:
    """approx_distinct, count_if, try_cast, if and unnest(sequence()) run."""
    rows = run(
        "select approx_distinct(x), count_if(x > 1), try_cast('a' as bigint),"
        " if(count(*) > 2, 'y', 'n') from unnest(sequence(1, 3)) as t(x)"
    )
    assert rows == [(3, 2, None, "y")]


def test_window_functions_and_ignore_nulls_translate() -> None:
    """A window with IGNORE NULLS (Trino's placement) translates to DuckDB's."""
    rows = run(
        "select x, last_value(y) ignore nulls over (order by x rows between unbounded preceding"
        " and current row) from (values (1, 10), (2, null), (3, 30)) as t(x, y) order by x"
    )
    assert rows == [(1, 10), (2, 10), (3, 30)]


def test_json_parse_to_map_and_subscript() -> None:
    """A JSON object cast to MAP(VARCHAR, DOUBLE) can be indexed by key."""
    rows = run(
        "select cast(json_parse('{\"usd\": 1.0, \"eur\": 0.5}') as map(varchar, double))['eur']"
    )
    assert rows == [(0.5,)]


def test_decimalize_amount_helpers() -> None:
    """decimalize_amount(_no_display) divides by the currency's minor unit and rounds."""
    rows = run(
        "select decimalize_amount('usd', 12345, 2), decimalize_amount('jpy', 12345, 2),"
        " decimalize_amount_no_display('KWD', 12345, 3), decimalize_amount('usd', -5, 1)"
    )
    assert [str(v) for v in rows[0]] == ["123.45", "12345.00", "12.345", "-0.1"]


def test_format_datetime_and_to_iso8601() -> None:
    """Joda patterns of format_datetime and to_iso8601 produce Trino's text."""
    rows = run(
        "select format_datetime(timestamp '2024-03-05 14:07:09.250', 'yyyy-MM-dd HH:mm:ss.SSS'),"
        " to_iso8601(timestamp '2024-03-05 14:07:09.250')"
    )
    assert rows == [("2024-03-05 14:07:09.250", "2024-03-05T14:07:09.250")]


@pytest.mark.parametrize(
    ("joda", "strftime"),
    [
        ("yyyy-MM-dd", "%Y-%m-%d"),
        ("HH:mm:ss.SSS", "%H:%M:%S.%g"),
        ("EEE, d MMM yyyy", "%a, %-d %b %Y"),
        ("yyyy'T'HH 'o''clock'", "%YT%H o'clock"),
        ("'100%' yyyy", "100%% %Y"),
        ("h:mm a", "%-I:%M %p"),
    ],
)
def test_joda_to_strftime(joda: str, strftime: str) -> None:
    """Joda-Time letters, quoted literals and percent signs convert to strftime."""
    assert joda_to_strftime(joda) == strftime


@pytest.mark.parametrize(
    ("duck", "sql", "expected"),
    [
        (
            'Binder Error: Referenced column "foo" not found in FROM clause!\n'
            "Candidate bindings: ...\n\nLINE 1: select foo from charges\n       ^",
            "select id,\n  foo from charges",
            "line 2:3: Column 'foo' cannot be resolved",
        ),
        (
            "Catalog Error: Scalar Function with name frobnicate does not exist!\nDid you mean ...",
            "select frobnicate(1)",
            "line 1:8: Function 'frobnicate' not registered",
        ),
        (
            'Binder Error: Table "c" does not have a column named "nope"',
            "select c.nope from charges c",
            "line 1:8: Column 'c.nope' cannot be resolved",
        ),
        (
            "Conversion Error: Could not convert string 'x' to INT64\n\nLINE 1: ...",
            "select cast('x' as bigint)",
            "Could not convert string 'x' to INT64",
        ),
    ],
)
def test_duckdb_errors_become_trino_like(duck: str, sql: str, expected: str) -> None:
    """DuckDB's messages lose their prefix and context lines and gain Trino's wording."""
    assert duckdb_error_message(duck, sql) == expected
