"""Trino literals for parameters, and the template tokenizer that places them."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from batchrunner.literals import (
    Placeholder,
    TemplateError,
    is_identifier,
    parse_sql_template,
    parse_template,
    render_sql,
    render_text,
    trino_literal,
)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "NULL"),
        (True, "TRUE"),
        (False, "FALSE"),
        (0, "0"),
        (42, "42"),
        (-5, "(-5)"),
        (2**63 - 1, "9223372036854775807"),
        (-(2**63), "(-9223372036854775808)"),
        (1.5, "1.5e0"),
        (0.1, "0.1e0"),
        (-2.25, "(-2.25e0)"),
        (1e300, "1e+300"),
        (1e-7, "1e-07"),
        ("usd", "'usd'"),
        ("", "''"),
        ("it's", "'it''s'"),
        ("''", "''''''"),
        ("a\\b", "'a\\b'"),
        ("line\nbreak", "'line\nbreak'"),
        ("café ☕", "'café ☕'"),
        (date(2023, 1, 1), "DATE '2023-01-01'"),
        (date(999, 12, 31), "DATE '0999-12-31'"),
        (datetime(2023, 1, 1), "TIMESTAMP '2023-01-01 00:00:00.000'"),
        (datetime(2023, 1, 1, 13, 4, 5, 123000), "TIMESTAMP '2023-01-01 13:04:05.123'"),
        (datetime(2023, 1, 1, 13, 4, 5, 123456), "TIMESTAMP '2023-01-01 13:04:05.123456'"),
        (datetime(2023, 1, 1, tzinfo=UTC), "TIMESTAMP '2023-01-01 00:00:00.000'"),
        (
            datetime(2023, 1, 1, 2, 30, tzinfo=timezone(timedelta(hours=2))),
            "TIMESTAMP '2023-01-01 00:30:00.000'",
        ),
        (
            datetime(2023, 1, 1, 20, tzinfo=timezone(timedelta(hours=-5))),
            "TIMESTAMP '2023-01-02 01:00:00.000'",
        ),
        (["usd", "eur"], "('usd', 'eur')"),
        ((1, -2), "(1, (-2))"),
        ([date(2023, 1, 1)], "(DATE '2023-01-01')"),
    ],
)
def test_literal_for_each_type(value: object, literal: str) -> None:
    """Each supported type renders as the documented Trino literal."""
    assert trino_literal(value) == literal


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (float("nan"), ValueError, "only finite numbers"),
        (float("inf"), ValueError, "only finite numbers"),
        (float("-inf"), ValueError, "only finite numbers"),
        (2**63, ValueError, "64-bit range"),
        (-(2**63) - 1, ValueError, "64-bit range"),
        ("a\x00b", ValueError, "NUL"),
        ("\udc80", ValueError, "surrogate"),
        ([], ValueError, "empty list"),
        ([["a"]], TypeError, "lists of lists"),
        ({"a": 1}, TypeError, "dict value cannot"),
        (b"bytes", TypeError, "bytes value cannot"),
        (time(12, 0), TypeError, "time value cannot"),
    ],
)
def test_literal_rejects(value: object, error: type[Exception], message: str) -> None:
    """Values with no safe Trino literal are refused, not approximated."""
    with pytest.raises(error, match=message):
        trino_literal(value)


INJECTIONS = [
    "'; DROP TABLE x; --",
    "' OR 1=1 --",
    "x' OR 'a'='a",
    "/* */ SELECT 1; /*",
    "*/ DROP TABLE x; /*",
    "a'';DELETE FROM t;--",
    "\\'; DROP TABLE x; --",
    "line\n; DROP TABLE x\n--",
    "{period_start}",
    '"; DROP TABLE x; --',
    "$$; DROP TABLE x; $$",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_renders_as_one_inert_literal(payload: str) -> None:
    """A hostile value stays one string literal: one statement, value round-trips."""
    sql = render_sql(
        parse_sql_template("SELECT id FROM charges WHERE description = {v} AND amount > {n}"),
        {"v": payload, "n": 5},
    )
    (statement,) = sqlglot.parse(sql, read="trino")
    assert statement is not None
    where = statement.find(exp.Where)
    assert where is not None
    equals = where.find(exp.EQ)
    assert equals is not None
    assert isinstance(equals.expression, exp.Literal)
    assert equals.expression.is_string
    assert equals.expression.this == payload
    strings = [lit.this for lit in statement.find_all(exp.Literal) if lit.is_string]
    assert strings == [payload]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_in_list_renders_inertly(payload: str) -> None:
    """Every element of an IN list is its own escaped literal."""
    sql = render_sql(parse_sql_template("SELECT 1 FROM t WHERE c IN {cs}"), {"cs": (payload, "x")})
    (statement,) = sqlglot.parse(sql, read="trino")
    assert statement is not None
    in_ = statement.find(exp.In)
    assert in_ is not None
    assert [e.this for e in in_.expressions] == [payload, "x"]


def _evaluate(sql: str) -> tuple[object, ...] | None:
    """The one row a SELECT returns, computed by a real SQL engine (DuckDB)."""
    with duckdb.connect() as con:
        row: tuple[object, ...] | None = con.execute(sql).fetchone()
        return row


def test_negative_number_after_minus_is_not_a_comment() -> None:
    """`1 -{n}` with n = -5 computes 1 - (-5) instead of starting a `--` comment."""
    sql = render_sql(parse_sql_template("SELECT 1 -{n} AS v"), {"n": -5})
    assert sql == "SELECT 1 -(-5) AS v"
    assert _evaluate(sql) == (6,)


def test_literals_evaluate_to_their_values() -> None:
    """Rendered literals evaluate back to the Python values (checked by a SQL engine)."""
    values = {
        "s": "it's -- /* x */",
        "f": 0.1,
        "b": True,
        "d": date(2024, 2, 29),
        "t": datetime(2023, 1, 2, 3, 4, 5, 6000),
        "n": None,
    }
    sql = render_sql(
        parse_sql_template("SELECT {s}, {f}, {b}, {d}, {t}, {n}"),
        values,
    )
    assert _evaluate(sql) == tuple(values.values())


def test_float_renders_as_double_not_decimal() -> None:
    """Floats carry an exponent so Trino types them DOUBLE (0.1 alone would be DECIMAL)."""
    parsed = sqlglot.parse_one(f"SELECT {trino_literal(0.1)}", read="trino")
    literal = parsed.find(exp.Literal)
    assert literal is not None
    assert float(literal.this) == 0.1
    assert "e" in literal.this


def test_parse_template_splits_and_unescapes() -> None:
    """Literal text keeps doubled braces as single braces; placeholders carry positions."""
    template = parse_template("a {{b}} {x}\n  {y}}} {x}")
    assert template.parts == (
        "a {b} ",
        Placeholder("x", 1, 9),
        "\n  ",
        Placeholder("y", 2, 3),
        "} ",
        Placeholder("x", 2, 9),
    )
    assert template.names == ("x", "y")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{x.__class__}", "is not a placeholder"),
        ("{x[0]}", "is not a placeholder"),
        ("{x!r}", "is not a placeholder"),
        ("{x:>10}", "is not a placeholder"),
        ("{}", "is not a placeholder"),
        ("{ x }", "is not a placeholder"),
        ("{1x}", "is not a placeholder"),
        ("{x-y}", "is not a placeholder"),
        ("{é}", "is not a placeholder"),
        ("{a{b}", "is not a placeholder"),
        ("abc {x", "never closed"),
        ("a } b", "single '}'"),
    ],
)
def test_parse_template_rejects_anything_but_names(text: str, message: str) -> None:
    """Only {identifier} is a placeholder; attribute access, indexes and format specs fail."""
    with pytest.raises(TemplateError, match=message):
        parse_template(text)


def test_template_error_names_line_and_column() -> None:
    """A template error says where in the template it is."""
    with pytest.raises(TemplateError, match=r"\(line 3, column 7 of the template\)") as info:
        parse_template("SELECT\n  1\nWHERE {x.y}")
    assert (info.value.line, info.value.column) == (3, 7)


def test_identifiers() -> None:
    """Placeholder names are ASCII identifiers."""
    assert is_identifier("period_start")
    assert is_identifier("_x1")
    assert not is_identifier("1x")
    assert not is_identifier("a.b")
    assert not is_identifier("")
    assert not is_identifier("naïve")


@pytest.mark.parametrize(
    ("sql", "context"),
    [
        ("SELECT '{x}'", "a string literal"),
        ("SELECT 'a {x} b'", "a string literal"),
        ("SELECT 'it''s {x}'", "a string literal"),
        ('SELECT "{x}"', "a quoted identifier"),
        ("SELECT 1 -- {x}", "a -- comment"),
        ("SELECT 1 /* {x} */", "a /\\* \\*/ comment"),
        ("SELECT 1 /* a\n {x} */", "a /\\* \\*/ comment"),
    ],
)
def test_placeholder_inside_quotes_or_comments_is_rejected(sql: str, context: str) -> None:
    """A placeholder inside a string, quoted identifier or comment is refused by context."""
    with pytest.raises(TemplateError, match=f"inside {context}"):
        parse_sql_template(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'a' = {x}",
        "SELECT 'it''s' = {x}",
        "SELECT '--' = {x}",
        "SELECT '/*' = {x}",
        'SELECT "col""x" = {x}',
        "SELECT 1 -- note\nWHERE a = {x}",
        "SELECT 1 /* note */ WHERE a = {x}",
        "SELECT {x}, ({x}), {x}+1, -{x}, a IN {x}",
        "SELECT '{{not a placeholder}}' = {x}",
    ],
)
def test_placeholder_in_code_is_accepted(sql: str) -> None:
    """Strings, identifiers and comments that have closed do not capture later placeholders."""
    assert parse_sql_template(sql).names == ("x",)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT {a}{b}",
        "SELECT x{a}",
        "SELECT {a}x",
        "SELECT {a}.5",
        "SELECT 1.{a}",
        "SELECT 'x'{a}",
        "SELECT {a}'x'",
        "SELECT {a}_b",
    ],
)
def test_placeholder_touching_a_token_is_rejected(sql: str) -> None:
    """A placeholder glued to a letter, digit, dot, quote or placeholder would fuse tokens."""
    with pytest.raises(TemplateError, match="touches"):
        parse_sql_template(sql)


def test_escaped_braces_render_inside_strings() -> None:
    """Doubled braces become single braces wherever they are, strings included."""
    sql = render_sql(parse_sql_template("SELECT '{{\"a\": 1}}' AS j, {x} AS x"), {"x": 1})
    assert sql == "SELECT '{\"a\": 1}' AS j, 1 AS x"


def test_render_sql_reports_missing_and_bad_values() -> None:
    """Rendering names a missing placeholder (with position) and a value with no literal."""
    template = parse_sql_template("SELECT {a},\n {b}")
    with pytest.raises(
        TemplateError, match=r"\{b\} has no value \(line 2, column 2 of the template\)"
    ):
        render_sql(template, {"a": 1})
    with pytest.raises(TemplateError, match=r"parameter 'a': .*only finite numbers"):
        render_sql(template, {"a": float("nan"), "b": 1})


def test_render_text_inserts_text_verbatim() -> None:
    """render_text substitutes pre-rendered text and keeps literal braces."""
    assert render_text(parse_template("{a}/{{x}}/{b}"), {"a": "1", "b": "2"}) == "1/{x}/2"
