"""Tests for the synthetic Stripe data: schema, consistency, determinism and the disk cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from batchrunner.emulator import datagen
from batchrunner.emulator.datagen import (
    DATA_END,
    DATA_START,
    POPULATED_TABLES,
    database_path,
    ensure_database,
    generate,
)
from batchrunner.sigma_tables import sigma_tables

SCALE = 0.02

_DUCK_TYPES = {
    "varchar": "VARCHAR",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
    "double": "DOUBLE",
    "timestamp": "TIMESTAMP",
    "decimal(38,18)": "DECIMAL(38,18)",
}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    path, generated = ensure_database(
        scale=SCALE, seed=7, cache_dir=tmp_path_factory.mktemp("datagen")
    )
    assert generated
    con = duckdb.connect(str(path), read_only=True)
    yield con
    con.close()


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def fingerprint(path: Path) -> list[str]:
    """One digest per populated table, over its rows in storage order."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [
            str(scalar(con, f"SELECT md5(string_agg(t::VARCHAR, '|')) FROM {name} t"))
            for name in POPULATED_TABLES
        ]
    finally:
        con.close()


def test_every_published_table_exists_with_its_types(db: duckdb.DuckDBPyConnection) -> None:
    """All 350 tables exist, each column with its published name and mapped type."""
    rows = db.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
    ).fetchall()
    actual: dict[str, dict[str, str]] = {}
    for table, column, dtype in rows:
        actual.setdefault(table, {})[column] = dtype
    expected = {
        name: {col: _DUCK_TYPES[typ] for col, typ in spec.columns.items()}
        for name, spec in sigma_tables().items()
    }
    assert len(expected) == 350
    assert {name: actual[name] for name in expected} == expected
    # the only other relations are the stored data behind the populated tables' views
    assert set(actual) - set(expected) == {f"_data_{name}" for name in POPULATED_TABLES}


def test_populated_and_empty_tables(db: duckdb.DuckDBPyConnection) -> None:
    """The core tables hold rows; every other published table is empty."""
    for name in sigma_tables():
        count = scalar(db, f'SELECT count(*) FROM "{name}"')
        assert (count != 0) == (name in POPULATED_TABLES), name


def test_scale_sets_the_size(db: duckdb.DuckDBPyConnection) -> None:
    """Scale 0.02 gives about 2,000 balance transactions (scale 1 ≈ 100,000)."""
    count = scalar(db, "SELECT count(*) FROM balance_transactions")
    assert isinstance(count, int)
    assert 1_500 <= count <= 2_600


@pytest.mark.parametrize(
    ("table", "column", "prefix"),
    [
        ("balance_transactions", "id", "txn_"),
        ("charges", "id", "ch_"),
        ("customers", "id", "cus_"),
        ("invoices", "id", "in_"),
        ("invoice_line_items", "id", "il_"),
        ("refunds", "id", "re_"),
        ("disputes", "id", "du_"),
        ("subscriptions", "id", "sub_"),
        ("subscription_items", "id", "si_"),
        ("prices", "id", "price_"),
        ("products", "id", "prod_"),
        ("payment_intents", "id", "pi_"),
        ("transfers", "id", "tr_"),
        ("transfers", "destination_id", "acct_"),
        ("charges", "payment_method_id", "pm_"),
    ],
)
def test_ids_are_stripe_shaped_and_unique(
    db: duckdb.DuckDBPyConnection, table: str, column: str, prefix: str
) -> None:
    """Ids carry Stripe's prefix, alphanumerics after it, and ids are unique per table."""
    bad = scalar(
        db,
        f"SELECT count(*) FROM {table} WHERE NOT regexp_full_match({column}, "
        f"'{prefix}[0-9A-Za-z]{{15}}')",
    )
    assert bad == 0
    if column == "id":
        assert scalar(db, f"SELECT count(*) - count(DISTINCT id) FROM {table}") == 0


@pytest.mark.parametrize(
    ("what", "sql"),
    [
        (
            "every charge's balance transaction exists and points back at the charge",
            "SELECT count(*) FROM charges c LEFT JOIN balance_transactions b"
            " ON b.id = c.balance_transaction_id"
            " WHERE c.balance_transaction_id IS NOT NULL"
            " AND (b.id IS NULL OR b.source_id <> c.id OR b.type <> 'charge')",
        ),
        (
            "failed charges have no balance transaction, succeeded ones do",
            "SELECT count(*) FROM charges"
            " WHERE (status = 'failed') = (balance_transaction_id IS NOT NULL)",
        ),
        (
            "refunds point at charges and have their own refund transaction",
            "SELECT count(*) FROM refunds r LEFT JOIN charges c ON c.id = r.charge_id"
            " LEFT JOIN balance_transactions b ON b.id = r.balance_transaction_id"
            " WHERE c.id IS NULL OR b.source_id IS DISTINCT FROM r.id OR b.type <> 'refund'"
            " OR r.amount > c.amount OR r.created < c.created",
        ),
        (
            "a charge's amount_refunded equals its refund",
            "SELECT count(*) FROM charges c LEFT JOIN refunds r ON r.charge_id = c.id"
            " WHERE c.amount_refunded <> coalesce(r.amount, 0)"
            " OR c.refunded <> (c.amount_refunded = c.amount)",
        ),
        (
            "disputes point at charges that name them",
            "SELECT count(*) FROM disputes d LEFT JOIN charges c ON c.id = d.charge_id"
            " WHERE c.id IS NULL OR c.dispute_id IS DISTINCT FROM d.id",
        ),
        (
            "dispute transactions are adjustments whose source is the dispute",
            "SELECT count(*) FROM balance_transactions b LEFT JOIN disputes d ON d.id = b.source_id"
            " WHERE b.reporting_category IN ('dispute', 'dispute_reversal')"
            " AND (d.id IS NULL OR b.type <> 'adjustment')",
        ),
        (
            "payment intents link their charge",
            "SELECT count(*) FROM charges c LEFT JOIN payment_intents p ON p.id = c.payment_intent"
            " WHERE p.id IS NULL OR p.amount <> c.amount OR p.currency <> c.currency",
        ),
        (
            "invoices link customers, subscriptions and their charge both ways",
            "SELECT count(*) FROM invoices i"
            " LEFT JOIN customers cu ON cu.id = i.customer_id"
            " LEFT JOIN subscriptions s ON s.id = i.subscription_id"
            " LEFT JOIN charges c ON c.id = i.charge_id"
            " WHERE cu.id IS NULL OR s.id IS NULL OR s.customer_id <> i.customer_id"
            " OR (i.charge_id IS NOT NULL AND c.invoice_id IS DISTINCT FROM i.id)",
        ),
        (
            "line items belong to invoices, subscription items and prices",
            "SELECT count(*) FROM invoice_line_items l"
            " LEFT JOIN invoices i ON i.id = l.invoice_id"
            " LEFT JOIN subscription_items si ON si.id = l.subscription_item_id"
            " LEFT JOIN prices p ON p.id = l.price_id"
            " WHERE i.id IS NULL OR si.id IS NULL OR p.id IS NULL OR l.amount <> i.total",
        ),
        (
            "subscriptions, items, prices and products link up",
            "SELECT count(*) FROM subscriptions s"
            " LEFT JOIN subscription_items si ON si.subscription_id = s.id"
            " LEFT JOIN prices p ON p.id = s.price_id"
            " LEFT JOIN products pr ON pr.id = p.product_id"
            " LEFT JOIN customers cu ON cu.id = s.customer_id"
            " WHERE si.id IS NULL OR p.id IS NULL OR pr.id IS NULL OR cu.id IS NULL"
            " OR si.price_id <> s.price_id",
        ),
        (
            "transfers have their transfer balance transaction",
            "SELECT count(*) FROM transfers t LEFT JOIN balance_transactions b"
            " ON b.id = t.balance_transaction_id"
            " WHERE b.source_id IS DISTINCT FROM t.id OR b.amount <> -t.amount",
        ),
        (
            "payouts pay out exactly the net of the transactions they carry",
            "SELECT count(*) FROM balance_transactions p WHERE p.type = 'payout' AND p.amount <>"
            " -(SELECT sum(net) FROM balance_transactions x"
            "   WHERE x.automatic_transfer_id = p.source_id AND x.type <> 'payout')",
        ),
        (
            "net is amount minus fee everywhere",
            "SELECT count(*) FROM balance_transactions WHERE net <> amount - fee",
        ),
        (
            "failure codes only on failed charges",
            "SELECT count(*) FROM charges WHERE (failure_code IS NULL) <> (status = 'succeeded')",
        ),
    ],
)
def test_referential_integrity(db: duckdb.DuckDBPyConnection, what: str, sql: str) -> None:
    """Keys between the populated tables are consistent (the SQL counts violations)."""
    assert scalar(db, sql) == 0, what


def test_balance_transaction_types_match_reporting_categories(
    db: duckdb.DuckDBPyConnection,
) -> None:
    """Each type maps to its reporting category and all the expected kinds occur."""
    pairs = set(
        db.execute("SELECT DISTINCT type, reporting_category FROM balance_transactions").fetchall()
    )
    assert pairs == {
        ("charge", "charge"),
        ("refund", "refund"),
        ("adjustment", "dispute"),
        ("adjustment", "dispute_reversal"),
        ("transfer", "transfer"),
        ("payout", "payout"),
        ("stripe_fee", "fee"),
    }


def test_currencies_usd_dominant(db: duckdb.DuckDBPyConnection) -> None:
    """Several currencies occur in charges, with USD the most common, and amounts are integers."""
    rows = db.execute(
        "SELECT currency, count(*) FROM charges GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    assert rows[0][0] == "usd"
    assert {r[0] for r in rows} >= {"usd", "eur", "gbp", "jpy", "cad", "aud"}
    assert db.execute("SELECT typeof(amount) FROM charges LIMIT 1").fetchall() == [("BIGINT",)]


def test_exchange_rate_mostly_null(db: duckdb.DuckDBPyConnection) -> None:
    """Only converted charges carry an exchange rate: most balance transactions have none."""
    share = scalar(db, "SELECT avg(CASE WHEN exchange_rate IS NULL THEN 1 ELSE 0 END)"
                       " FROM balance_transactions")  # fmt: skip
    assert isinstance(share, float)
    assert 0.6 < share < 1.0


def test_history_spans_three_years_with_growth(db: duckdb.DuckDBPyConnection) -> None:
    """Every month 2023-01..2025-12 has balance transactions, none outside, and volume grows."""
    months = scalar(
        db, "SELECT count(DISTINCT date_trunc('month', created)) FROM balance_transactions"
    )
    assert months == 36
    lo, hi = db.execute("SELECT min(created), max(created) FROM charges").fetchall()[0]
    assert DATA_START.replace(tzinfo=None) <= lo
    assert hi < DATA_END.replace(tzinfo=None)
    first, last = db.execute(
        "SELECT count_if(year(created) = 2023), count_if(year(created) = 2025) FROM charges"
    ).fetchall()[0]
    assert last > 1.5 * first


def test_text_has_commas_quotes_and_non_ascii(db: duckdb.DuckDBPyConnection) -> None:
    """Descriptions and names exercise CSV quoting and UTF-8."""
    assert scalar(db, "SELECT count(*) FROM charges WHERE description LIKE '%,%\"%'") != 0
    assert scalar(db, "SELECT count(*) FROM customers WHERE name <> strip_accents(name)") != 0
    assert scalar(db, "SELECT count(*) FROM charges WHERE description IS NULL") != 0


def test_determinism_and_seed_sensitivity(tmp_path: Path) -> None:
    """The same (scale, seed) generates identical tables; another seed generates other data."""
    a, b, c = tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    generate(a, scale=0.01, seed=1)
    generate(b, scale=0.01, seed=1)
    generate(c, scale=0.01, seed=2)
    assert fingerprint(a) == fingerprint(b)
    differs = [x != y for x, y in zip(fingerprint(a), fingerprint(c), strict=True)]
    assert sum(differs) >= len(POPULATED_TABLES) - 2  # products/prices may not depend on seed


def test_database_path_is_keyed_by_scale_seed_and_version(tmp_path: Path) -> None:
    """Distinct scales, seeds and generator versions never share a cache file."""
    base = database_path(scale=1, seed=42, cache_dir=tmp_path)
    assert base == database_path(scale=1.0, seed=42, cache_dir=tmp_path)
    assert base != database_path(scale=0.1, seed=42, cache_dir=tmp_path)
    assert base != database_path(scale=1, seed=43, cache_dir=tmp_path)
    assert f"v{datagen.GENERATOR_VERSION}-" in base.name


@pytest.mark.parametrize(("scale", "seed"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 1.5)])
def test_bad_arguments_are_rejected(tmp_path: Path, scale: float, seed: int) -> None:
    """Scale must be positive and finite, seed an integer."""
    with pytest.raises(ValueError, match=r"scale|seed"):
        ensure_database(scale=scale, seed=seed, cache_dir=tmp_path)


def test_cache_is_reused_and_stale_temporaries_removed(tmp_path: Path) -> None:
    """A second ensure reuses the file untouched; a crashed run's temporary file is cleaned."""
    stale = tmp_path / (database_path(scale=0.01, seed=3, cache_dir=tmp_path).name + ".9-x.tmp")
    stale.write_bytes(b"half a file")
    path, generated = ensure_database(scale=0.01, seed=3, cache_dir=tmp_path)
    assert generated
    assert not stale.exists()
    mtime = path.stat().st_mtime_ns
    again, generated_again = ensure_database(scale=0.01, seed=3, cache_dir=tmp_path)
    assert (again, generated_again) == (path, False)
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name + ".lock"])


def test_concurrent_ensure_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads opening the same cache at once generate the data exactly once."""
    calls: list[Path] = []
    real = datagen.generate

    def counting(path: Path, *, scale: float, seed: int) -> None:
        calls.append(path)
        real(path, scale=scale, seed=seed)

    monkeypatch.setattr(datagen, "generate", counting)
    results: list[tuple[Path, bool]] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        results.append(ensure_database(scale=0.01, seed=4, cache_dir=tmp_path))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(generated for _, generated in results) == [False, True]
    assert results[0][0] == results[1][0]
