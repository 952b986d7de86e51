"""Tests for the warehouse: Sigma SQL on synthetic data, written as CSV exactly as specified."""

from __future__ import annotations

import csv
import io
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batchrunner.emulator.warehouse import (
    DATA_END,
    DATA_LOAD_TIME,
    DATA_START,
    QueryResult,
    SqlError,
    Warehouse,
)
from batchrunner.sigma_tables import sigma_tables

SCALE = 0.02
SEED = 11
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warehouse-cache")


@pytest.fixture(scope="module")
def wh(cache_dir: Path) -> Iterator[Warehouse]:
    warehouse = Warehouse.open(scale=SCALE, seed=SEED, cache_dir=cache_dir)
    yield warehouse
    warehouse.close()


def run(wh: Warehouse, tmp_path: Path, sql: str, *, bom: bool = False) -> tuple[QueryResult, str]:
    dest = tmp_path / "out.csv"
    result = wh.execute_to_csv(sql, dest, bom=bom)
    return result, dest.read_bytes().decode("utf-8")


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def sql_error(wh: Warehouse, tmp_path: Path, sql: str) -> str:
    with pytest.raises(SqlError) as info:
        wh.execute_to_csv(sql, tmp_path / "never.csv")
    assert not (tmp_path / "never.csv").exists()
    return info.value.message


def test_constants_describe_three_years() -> None:
    """DATA_START..DATA_END is 2023-01-01 to 2026-01-01 UTC; data_load_time is its end."""
    assert (DATA_START.isoformat(), DATA_END.isoformat()) == (
        "2023-01-01T00:00:00+00:00",
        "2026-01-01T00:00:00+00:00",
    )
    assert DATA_LOAD_TIME == DATA_END


def test_row_counts_cover_every_table(wh: Warehouse) -> None:
    """table_row_counts has all 350 published tables and real counts for populated ones."""
    counts = wh.table_row_counts()
    assert set(counts) == set(sigma_tables())
    assert counts["balance_transactions"] > 1000
    assert counts["issuing_cards"] == 0


def test_stripe_documented_query_runs(wh: Warehouse, tmp_path: Path) -> None:
    """Stripe's first documented Sigma query returns five refund transactions, newest first."""
    result, text = run(
        wh,
        tmp_path,
        "select date_format(created, '%Y-%m-%d') as day, id, amount, currency, source_id "
        "from balance_transactions where type = 'refund' order by day desc limit 5",
    )
    rows = parse(text)
    assert rows[0] == ["day", "id", "amount", "currency", "source_id"]
    assert result.columns == tuple(rows[0])
    assert result.rows == len(rows) - 1 == 5
    assert result.bytes == len(text.encode("utf-8"))
    assert result.rows_scanned == wh.table_row_counts()["balance_transactions"]
    for day, txn, amount, _, source in rows[1:]:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day)
        assert txn.startswith("txn_")
        assert int(amount) < 0
        assert source.startswith("re_")
    days = [r[0] for r in rows[1:]]
    assert days == sorted(days, reverse=True)


EXAMPLES = {
    "monthly volume by currency": """
        select date_trunc('month', created) as month, currency, count(*) as n, sum(amount) as gross
        from balance_transactions where type = 'charge' group by 1, 2 order by 1, 2""",
    "net by reporting category since a date": """
        select reporting_category, sum(net) as net from balance_transactions
        where created >= date '2024-01-01' and created < timestamp '2025-01-01 00:00:00'
        group by 1 order by 1""",
    "refund rate per month with a CTE and joins": """
        with charged as (
          select date_trunc('month', c.created) as month, count(*) as charges,
                 count(r.id) as refunds
          from charges c left join refunds r on r.charge_id = c.id
          where c.status = 'succeeded' group by 1)
        select month, charges, refunds, round(100.0 * refunds / charges, 2) as refund_pct
        from charged order by month""",
    "customer lifetime value with window rank": """
        select cu.id, cu.email, sum(c.amount) as total,
               rank() over (order by sum(c.amount) desc) as rnk
        from charges c join customers cu on cu.id = c.customer_id
        where c.paid group by 1, 2 order by rnk limit 20""",
    "fees per charge from balance transactions": """
        select c.id, c.amount, b.fee, b.net, b.exchange_rate
        from charges c join balance_transactions b on b.id = c.balance_transaction_id
        order by c.created desc limit 50""",
    "last month relative to data_load_time": """
        select id, amount, fee, currency from balance_transactions
        where created < data_load_time and created >= data_load_time - interval '1' month
        order by created desc limit 10""",
    "date_add, date_diff and from_unixtime": """
        select id, date_diff('day', created, available_on) as days_to_available,
               date_add('day', 7, created) as plus_week,
               from_unixtime(to_unixtime(created)) as roundtrip
        from balance_transactions limit 20""",
    "approx_distinct, count_if and try_cast": """
        select currency, approx_distinct(customer_id) as customers,
               count_if(status = 'failed') as failures, try_cast(currency as bigint) as never
        from charges group by 1 order by 1""",
    "local days in New York": """
        select date(created at time zone 'America/New_York') as ny_day, count(*) as n
        from charges group by 1 order by 1 desc limit 7""",
    "disputes with their charge and outcome": """
        select d.id, d.status, d.reason, c.amount, c.currency,
               case when d.status = 'won' then 'recovered' else 'lost or open' end as result
        from disputes d join charges c on c.id = d.charge_id order by d.created""",
    "subscriptions by product and price": """
        select p.name as product, pr.recurring_interval, s.status, count(*) as subs
        from subscriptions s join prices pr on pr.id = s.price_id
        join products p on p.id = pr.product_id group by 1, 2, 3 order by 1, 2, 3""",
    "invoice collection with line items": """
        select i.status, count(distinct i.id) as invoices, sum(l.amount) as billed
        from invoices i join invoice_line_items l on l.invoice_id = i.id group by 1 order by 1""",
    "daily calendar from sequence": """
        with days as (select day from unnest(sequence(date '2025-12-01', date '2025-12-31',
                      interval '1' day)) as t(day))
        select days.day, count(b.id) as txns from days
        left join balance_transactions b on date(b.created) = days.day
        group by 1 order by 1""",
    "amounts in major units with Sigma's helper": """
        select currency, decimalize_amount_no_display(currency, sum(amount), 2) as total
        from charges group by currency order by 1""",
    "MRR-style running total with fx map": """
        with fx as (select date, cast(json_parse(buy_currency_exchange_rates)
                                      as map(varchar, double)) as rate
                    from exchange_rates_from_usd),
        changes as (select date_trunc('day', event_timestamp) as day, currency,
                           sum(mrr_change) as delta
                    from subscription_item_change_events_v2_beta group by 1, 2)
        select c.day, c.currency,
               sum(c.delta) over (partition by c.currency order by c.day) as mrr,
               round(sum(c.delta) over (partition by c.currency order by c.day)
                     / fx.rate[c.currency]) as mrr_usd
        from changes c join fx on fx.date = c.day order by 1, 2""",
    "payouts and the transactions they carry": """
        select p.source_id as payout, p.amount, count(t.id) as carried
        from balance_transactions p
        join balance_transactions t on t.automatic_transfer_id = p.source_id and t.type <> 'payout'
        where p.type = 'payout' group by 1, 2 order by 1 limit 10""",
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_queries_run(wh: Warehouse, tmp_path: Path, name: str) -> None:
    """Sigma-style example queries (CTEs, joins, windows, Trino functions) run and return rows."""
    result, text = run(wh, tmp_path, EXAMPLES[name])
    rows = parse(text)
    assert result.rows == len(rows) - 1 > 0
    assert result.columns == tuple(rows[0])
    assert all(len(r) == len(rows[0]) for r in rows)


def test_refund_example_reports_rows_scanned_of_both_tables(wh: Warehouse, tmp_path: Path) -> None:
    """rows_scanned sums the row counts of every table the query reads (CTE names excluded)."""
    result, _ = run(wh, tmp_path, EXAMPLES["refund rate per month with a CTE and joins"])
    counts = wh.table_row_counts()
    assert result.rows_scanned == counts["charges"] + counts["refunds"]


def test_monthly_grid_has_36_months(wh: Warehouse, tmp_path: Path) -> None:
    """A monthly grid over 2023-01..2025-12 finds activity in each of the 36 months."""
    _, text = run(
        wh,
        tmp_path,
        "select date_format(created, '%Y-%m') as m, count(*) from charges group by 1 order by 1",
    )
    months = [r[0] for r in parse(text)[1:]]
    assert len(months) == 36
    assert (months[0], months[-1]) == ("2023-01", "2025-12")


def test_csv_quoting_nulls_and_types(wh: Warehouse, tmp_path: Path) -> None:
    """Quotes, commas, newlines and UTF-8 round-trip; NULL is empty, '' is quoted; typed text."""
    result, text = run(
        wh,
        tmp_path,
        "select 'a,b' as comma, 'say \"hi\"' as quote, 'Café Zürich – 東京' as utf8, "
        "'line1' || chr(10) || 'line2' as newline, '' as empty, cast(null as varchar) as nothing, "
        "true as yes, false as no, 42 as n, cast(-7 as bigint) as neg, "
        "timestamp '2024-02-03 04:05:06.789' as ts, cast(1.5 as double) as dbl, "
        "cast(12.5 as decimal(38, 18)) as dec, date '2024-02-03' as d",
    )
    lines = text.split("\n")
    assert lines[0] == "comma,quote,utf8,newline,empty,nothing,yes,no,n,neg,ts,dbl,dec,d"
    assert text == (
        lines[0] + "\n"
        '"a,b","say ""hi""",Café Zürich – 東京,"line1\nline2","",,true,false,42,-7,'
        "2024-02-03 04:05:06.789,1.5,12.500000000000000000,2024-02-03\n"
    )
    assert parse(text)[1][:6] == ["a,b", 'say "hi"', "Café Zürich – 東京", "line1\nline2", "", ""]
    assert result.rows == 1


def test_real_data_round_trips_through_csv(wh: Warehouse, tmp_path: Path) -> None:
    """Descriptions with quotes and commas read back equal to the data; timestamps formatted."""
    _, text = run(
        wh,
        tmp_path,
        "select id, description, created, captured, failure_code from charges "
        "where description like '%\"%' order by id limit 20",
    )
    rows = parse(text)[1:]
    assert len(rows) == 20
    for _, description, created, captured, failure in rows:
        assert '"' in description
        assert TIMESTAMP.match(created)
        assert captured in ("true", "false")
        assert (failure == "") == (captured == "true")


def test_timestamp_with_time_zone_written_in_utc(wh: Warehouse, tmp_path: Path) -> None:
    """from_unixtime (a zoned timestamp) is written in UTC with milliseconds and no zone."""
    _, text = run(wh, tmp_path, "select from_unixtime(1700000000.25) as t")
    assert parse(text)[1] == ["2023-11-14 22:13:20.250"]


def test_bom_prefix(wh: Warehouse, tmp_path: Path) -> None:
    """bom=True writes a UTF-8 byte-order mark first; size and header still right."""
    result, _ = run(wh, tmp_path, "select id from customers limit 3", bom=True)
    raw = (tmp_path / "out.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid\n")
    assert result.bytes == len(raw)
    assert result.columns == ("id",)
    assert result.rows == 3


def test_repeated_column_names_are_kept(wh: Warehouse, tmp_path: Path) -> None:
    """Like Trino, a result may repeat a column name; the header keeps both (no renaming)."""
    result, text = run(
        wh, tmp_path, "select c.id, r.id from charges c join refunds r on r.charge_id = c.id"
    )
    rows = parse(text)
    assert rows[0] == ["id", "id"]
    assert result.columns == ("id", "id")
    assert result.rows == len(rows) - 1 == wh.table_row_counts()["refunds"]
    assert all(c.startswith("ch_") and r.startswith("re_") for c, r in rows[1:])


def test_unwritable_destination_is_not_an_sql_error(wh: Warehouse, tmp_path: Path) -> None:
    """A destination that cannot be written raises OSError, not SqlError."""
    with pytest.raises(OSError, match="writing"):
        wh.execute_to_csv("select 1", tmp_path / "missing" / "x.csv")


def test_zero_rows_still_has_header(wh: Warehouse, tmp_path: Path) -> None:
    """A query without results writes just the header line."""
    result, text = run(wh, tmp_path, "select id, amount from charges where amount < 0")
    assert text == "id,amount\n"
    assert (result.rows, result.columns) == (0, ("id", "amount"))


def test_empty_table_exists_and_answers(wh: Warehouse, tmp_path: Path) -> None:
    """An unpopulated published table is queryable and empty."""
    result, text = run(wh, tmp_path, "select * from issuing_cards")
    assert result.rows == 0
    assert text.split(",")[0] == parse(text)[0][0]
    assert result.rows_scanned == 0


def test_select_star_has_published_columns(wh: Warehouse, tmp_path: Path) -> None:
    """`select *` returns every published column of the table, typed NULLs where unmodelled."""
    result, _ = run(wh, tmp_path, "select * from charges limit 1")
    assert set(result.columns) == set(sigma_tables()["charges"].columns)


def test_unknown_table_message(wh: Warehouse, tmp_path: Path) -> None:
    """An unknown table fails the query with Stripe's wording listing the missing names."""
    message = sql_error(wh, tmp_path, "select * from charges c join payouts p on true")
    assert "tables which do not exist or are inaccessible: [payouts]" in message


def test_parse_and_statement_errors(wh: Warehouse, tmp_path: Path) -> None:
    """Syntax errors are positioned; non-SELECT statements are refused."""
    assert sql_error(wh, tmp_path, "select id fro charges").startswith(
        "line 1:15: mismatched input"
    )
    assert sql_error(wh, tmp_path, "drop table charges") == "only SELECT queries are supported"


def test_execution_errors_are_cleaned(wh: Warehouse, tmp_path: Path) -> None:
    """A DuckDB binder error surfaces as a Trino-like one-line message."""
    message = sql_error(wh, tmp_path, "select nope from charges")
    assert message == "line 1:8: Column 'nope' cannot be resolved"
    assert "\n" not in sql_error(wh, tmp_path, "select cast('x' as bigint) from charges")


def test_failed_query_leaves_no_files(wh: Warehouse, tmp_path: Path) -> None:
    """A query failing while writing leaves neither the destination nor a temporary file."""
    with pytest.raises(SqlError):
        wh.execute_to_csv("select cast(description as bigint) from charges", tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


def test_determinism_and_seeds(wh: Warehouse, tmp_path: Path) -> None:
    """Same (scale, seed) gives byte-identical results from a fresh cache; another seed differs."""
    sql = "select * from balance_transactions"
    _, first = run(wh, tmp_path, sql)
    with Warehouse.open(scale=SCALE, seed=SEED, cache_dir=tmp_path / "again") as again:
        assert again.generated
        _, second = run(again, tmp_path, sql)
    with Warehouse.open(scale=SCALE, seed=SEED + 1, cache_dir=tmp_path / "other") as other:
        _, third = run(other, tmp_path, sql)
    assert first == second
    assert first != third


def test_cache_is_reused(wh: Warehouse, cache_dir: Path) -> None:
    """Opening the same (scale, seed) again reuses the file without regenerating it."""
    mtime = wh.path.stat().st_mtime_ns
    with Warehouse.open(scale=SCALE, seed=SEED, cache_dir=cache_dir) as again:
        assert not again.generated
        assert again.path == wh.path
    assert wh.path.stat().st_mtime_ns == mtime


def test_threads_query_at_once(wh: Warehouse, tmp_path: Path) -> None:
    """Several threads running queries at once each get the same result as alone."""
    queries = [
        "select * from charges order by id",
        "select currency, sum(amount) from balance_transactions group by 1 order by 1",
        "select c.id, r.id from charges c join refunds r on r.charge_id = c.id order by 1",
        "select * from customers order by id",
    ] * 3
    alone = [run(wh, tmp_path, q)[1] for q in queries[:4]]
    barrier = threading.Barrier(len(queries))

    def job(index: int) -> str:
        barrier.wait()
        dest = tmp_path / f"t{index}.csv"
        wh.execute_to_csv(queries[index], dest)
        return dest.read_text(encoding="utf-8")

    with ThreadPoolExecutor(len(queries)) as pool:
        together = list(pool.map(job, range(len(queries))))
    assert together == alone * 3


def test_close_is_idempotent_and_final(cache_dir: Path, tmp_path: Path) -> None:
    """After close, queries are refused; closing twice is fine."""
    warehouse = Warehouse.open(scale=SCALE, seed=SEED, cache_dir=cache_dir)
    warehouse.close()
    warehouse.close()
    with pytest.raises(RuntimeError, match="closed"):
        warehouse.execute_to_csv("select 1", tmp_path / "x.csv")
