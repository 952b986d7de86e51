"""Type choice for CSV columns: Trino names, SQL-derived Sigma types, sample inference."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchrunner.coltypes import (
    TIMESTAMP,
    ColumnChoice,
    arrow_type,
    check_job_types,
    choose_columns,
    csv_schema_for,
    infer_type,
    job_arrow_types,
    needs_sample,
    sigma_column_types,
    widen,
)
from batchrunner.sigma_tables import sigma_tables


def text(*values: str | None) -> pa.Array:
    return pa.array(values, pa.string())


# --- Trino type names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("varchar", pa.string()),
        ("VARCHAR(255)", pa.string()),
        ("bigint", pa.int64()),
        ("integer", pa.int32()),
        ("smallint", pa.int16()),
        ("tinyint", pa.int8()),
        ("double", pa.float64()),
        ("real", pa.float32()),
        ("boolean", pa.bool_()),
        ("date", pa.date32()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("timestamp(3)", pa.timestamp("ms", tz="UTC")),
        ("timestamp(6)", pa.timestamp("us", tz="UTC")),
        ("timestamp(9)", pa.timestamp("ns", tz="UTC")),
        ("decimal(38,18)", pa.decimal128(38, 18)),
        ("decimal( 10 , 2 )", pa.decimal128(10, 2)),
        ("decimal(5)", pa.decimal128(5, 0)),
    ],
)
def test_arrow_type_maps_trino_names(name: str, expected: pa.DataType) -> None:
    """Each supported Trino type name maps to the Arrow type it lands as."""
    assert arrow_type(name) == expected


@pytest.mark.parametrize(
    "name", ["text", "json", "decimal(39,2)", "decimal(2,3)", "timestamp(12)", "array(bigint)", ""]
)
def test_arrow_type_rejects_unknown_names(name: str) -> None:
    """A type name we cannot honour is a ValueError, not a silent string column."""
    with pytest.raises(ValueError, match="unsupported type"):
        arrow_type(name)


def test_job_types_error_names_the_column() -> None:
    """A bad job type says which column it was given for."""
    with pytest.raises(ValueError, match="column 'amount'"):
        job_arrow_types({"id": "varchar", "amount": "money"})


def test_job_types_for_missing_column_are_rejected() -> None:
    """A job type for a column the result lacks (a typo, a rename) is reported, not ignored."""
    with pytest.raises(ValueError, match=r"'amout'.*does not have"):
        check_job_types(["id", "amount"], {"amout": "bigint"})


# --- Sigma types from the SQL ------------------------------------------------------------------


def test_select_star_types_every_column_of_the_table() -> None:
    """``select *`` from a published table gives each of its columns its published type."""
    hints = sigma_column_types("select * from balance_transactions")
    assert hints == dict(sigma_tables()["balance_transactions"].columns)


def test_aliases_joins_and_renames_resolve_to_their_table() -> None:
    """Qualified columns resolve through table aliases and joins; a plain rename keeps its type."""
    hints = sigma_column_types(
        "select bt.id, bt.amount as amt, c.paid, c.created as charged_at "
        "from balance_transactions bt join charges c on c.id = bt.source_id"
    )
    assert hints == {
        "id": "varchar",
        "amt": "bigint",
        "paid": "boolean",
        "charged_at": "timestamp",
    }


def test_computed_and_ambiguous_columns_get_no_type() -> None:
    """Expressions, aggregates and columns two joined tables share get no Sigma type."""
    hints = sigma_column_types(
        "select amount / 100 as amount, count(*) as n, date_trunc('day', created) as day, "
        "created, bt.fee from balance_transactions bt join charges c on c.id = bt.source_id"
    )
    assert hints == {"fee": "bigint"}


def test_unqualified_column_of_a_join_resolves_when_unique() -> None:
    """An unqualified column only one joined table has still resolves to that table."""
    hints = sigma_column_types(
        "select reporting_category, paid from balance_transactions bt "
        "join charges c on c.id = bt.source_id"
    )
    assert hints == {"reporting_category": "varchar", "paid": "boolean"}


def test_ctes_and_subqueries_pass_types_through() -> None:
    """Columns passed unchanged through a CTE or a subquery keep their table's type."""
    hints = sigma_column_types(
        "with x as (select id, amount, amount * 2 as double_amount from charges) "
        "select s.id, s.amount, s.double_amount from (select * from x) s"
    )
    assert hints == {"id": "varchar", "amount": "bigint"}


def test_casts_fix_their_type() -> None:
    """``CAST``/``TRY_CAST`` to a supported type fix the column's type; others give none."""
    hints = sigma_column_types(
        "select cast(amount as double) as a, try_cast(id as decimal(10, 2)) as b, "
        "cast(created as varchar) as c, cast(created as timestamp with time zone) as d "
        "from charges"
    )
    assert hints == {"a": "double", "b": "decimal(10, 2)", "c": "varchar"}


def test_dataset_prefix_and_case_are_ignored() -> None:
    """``coreapi.charges`` is ``charges``; identifiers are case-insensitive as in Trino."""
    hints = sigma_column_types('SELECT ID, "Amount" AS Total FROM coreapi.Charges')
    assert hints == {"id": "varchar", "total": "bigint"}


@pytest.mark.parametrize(
    "sql",
    [
        None,
        "",
        "select id from charges union all select id from refunds",
        "select foo from no_such_table",
        "this is not sql (((",
        "select 1; select 2",
        "select * from",
    ],
)
def test_sql_it_cannot_follow_gives_no_hints(sql: str | None) -> None:
    """Unions, unknown tables, broken or multiple statements give no hints and never raise."""
    assert sigma_column_types(sql) == {}


# --- inference from a sample -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "-2", "0", None, "123456789012345678"], pa.int64()),
        (["true", "false", None], pa.bool_()),
        (["1.5", "2", "-0.25", "1e10", "NaN"], pa.float64()),
        (["2024-01-02 03:04:05.123", "2024-01-02 03:04:05", None], TIMESTAMP),
        (["2024-01-02", "1999-12-31"], pa.date32()),
        (["007", "12"], pa.string()),  # leading zeros are identifiers, not numbers
        (["1234567890123456789"], pa.string()),  # 19 digits may not fit int64: keep text
        (["1234567890123456.5"], pa.string()),  # a float64 would round it
        (["1", "N/A"], pa.string()),
        (["NaN", "Infinity"], pa.string()),  # no actual number: text that looks special
        (["TRUE", "False"], pa.string()),
        (["2024-13-45 00:00:00"], pa.string()),  # the right shape but not a date
        (["2024-01-02T03:04:05Z"], pa.string()),
        (["2024-01-02 03:04:05.123456"], pa.string()),  # would not fit milliseconds
        (["", "1"], pa.string()),  # a quoted empty string is text
    ],
)
def test_infer_type_uses_strict_patterns(values: list[str | None], expected: pa.DataType) -> None:
    """Only the exact formats Sigma writes become typed; anything else stays string."""
    assert infer_type(text(*values)) == expected


def test_infer_type_all_null_sample_is_open() -> None:
    """A column with no value in the sample has no inferred type (the caller picks string)."""
    assert infer_type(text(None, None)) is None
    assert infer_type(text()) is None


# --- precedence --------------------------------------------------------------------------------


def test_choose_columns_precedence_job_then_sigma_then_sample() -> None:
    """Job types beat Sigma types, which beat inference; empty columns become string."""
    sample = pa.table(
        {
            "id": text("a", "b"),
            "amount": text("1.5", "2.5"),  # Sigma says bigint; the job says decimal
            "fee": text("x", "y"),  # Sigma says bigint and wins over the sample
            "n": text("1", "2"),
            "late": text(None, None),
            "note": text("N/A", "null"),
        }
    )
    choices = choose_columns(
        ["id", "amount", "fee", "n", "late", "note"],
        column_types={"amount": "decimal(10,2)"},
        sql="select id, amount, fee, 1 as n, 'x' as late, 'y' as note from balance_transactions",
        sample=sample,
    )
    assert choices == (
        ColumnChoice("id", pa.string(), "sigma"),
        ColumnChoice("amount", pa.decimal128(10, 2), "job"),
        ColumnChoice("fee", pa.int64(), "sigma"),
        ColumnChoice("n", pa.int64(), "sample"),
        ColumnChoice("late", pa.string(), "empty"),
        ColumnChoice("note", pa.string(), "sample"),
    )


def test_choose_columns_without_sample_defaults_to_string() -> None:
    """With no sample (a header-only result) untyped columns are string."""
    choices = choose_columns(["x", "amount"], column_types=None, sql=None, sample=None)
    assert [(c.type, c.source) for c in choices] == [
        (pa.string(), "default"),
        (pa.string(), "default"),
    ]


def test_widen_turns_one_column_to_string_but_never_a_job_type() -> None:
    """Widening replaces one inferred column with string; a job-typed column refuses."""
    choices = (
        ColumnChoice("n", pa.int64(), "sample"),
        ColumnChoice("m", pa.int64(), "job"),
    )
    assert widen(choices, "n") == (
        ColumnChoice("n", pa.string(), "widened"),
        ColumnChoice("m", pa.int64(), "job"),
    )
    with pytest.raises(ValueError, match="job"):
        widen(choices, "m")


def test_needs_sample_only_when_a_column_is_open() -> None:
    """No sample is read when the job and the SQL already type every column."""
    header = ["id", "amount", "extra"]
    assert not needs_sample(header, column_types={"extra": "bigint"}, sql="select * from charges")
    assert needs_sample(header, column_types=None, sql="select * from charges")
    assert not needs_sample(
        header, column_types={"id": "varchar", "amount": "bigint", "extra": "date"}, sql=None
    )


def test_csv_schema_for_is_the_chosen_types() -> None:
    """The schema names every header column, in order, with its chosen type."""
    schema = csv_schema_for(
        ["created", "x"], column_types=None, sql="select created, 1 as x from charges", sample=None
    )
    assert schema == pa.schema([("created", TIMESTAMP), ("x", pa.string())])
