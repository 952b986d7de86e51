"""Which Arrow type each CSV column becomes: pure policy, no file I/O.

A Sigma result CSV carries no types, so every column's type is chosen here, in this order:

1. the job's own ``column_types`` (Trino type names) — the user's word is final;
2. the published Sigma type of a column the query selects unchanged (``t.col``, ``col AS x``,
   ``select *``, through aliases, joins, CTEs and subqueries) or casts (``CAST(x AS bigint)``),
   found by reading the SQL with sqlglot;
3. inference from a sample of the file's first megabytes with strict patterns;
4. ``string`` for everything else (including columns that are empty throughout the sample).

Every column is pinned to an explicit type before the full read starts, because pyarrow's
streaming reader fixes its types from the first block and fails millions of rows later when
a later block disagrees (PERFORMANCE-NOTES). A later value can still contradict a type chosen
by rule 2 or 3; the converter then re-reads with that column ``widened`` to string.

Inference cannot see past its sample: a later value that pyarrow parses but the strict patterns
would have refused (``007`` in a column inferred as integer) is read as the number. Give the
job a ``varchar`` type for such columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from batchrunner.sigma_tables import column_type, sigma_tables

#: Sigma writes timestamps as UTC wall time without a zone; they land as UTC instants in ms.
TIMESTAMP = pa.timestamp("ms", tz="UTC")

ColumnSource = Literal["job", "sigma", "sample", "empty", "widened", "default"]

_SIMPLE_TYPES: Mapping[str, pa.DataType] = {
    "varchar": pa.string(),
    "char": pa.string(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "int": pa.int32(),
    "smallint": pa.int16(),
    "tinyint": pa.int8(),
    "double": pa.float64(),
    "real": pa.float32(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": TIMESTAMP,
}
_VARCHAR_N = re.compile(r"(?:var)?char\(\s*\d+\s*\)")
_TIMESTAMP_P = re.compile(r"timestamp\(\s*([0-9])\s*\)")
_DECIMAL = re.compile(r"decimal\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def arrow_type(trino_type: str) -> pa.DataType:
    """The Arrow type a Trino type name lands as; ValueError for a name we cannot honour.

    >>> arrow_type("decimal(38,18)")
    Decimal128Type(decimal128(38, 18))
    """
    name = " ".join(trino_type.lower().split())
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    if _VARCHAR_N.fullmatch(name):
        return pa.string()
    timestamp = _TIMESTAMP_P.fullmatch(name)
    if timestamp:
        # Plain ``timestamp`` is Trino's timestamp(3); a job asking for more precision gets a
        # unit that keeps it.
        precision = int(timestamp.group(1))
        return (
            TIMESTAMP if precision <= 3 else pa.timestamp("us" if precision <= 6 else "ns", "UTC")
        )
    decimal = _DECIMAL.fullmatch(name)
    if decimal:
        precision, scale = int(decimal.group(1)), int(decimal.group(2) or 0)
        if 1 <= precision <= 38 and scale <= precision:
            return pa.decimal128(precision, scale)
    raise ValueError(
        f"unsupported type {trino_type!r}; use varchar, bigint, integer, smallint, tinyint, "
        "double, real, boolean, date, timestamp, timestamp(p) with p <= 9 or decimal(p,s) "
        "with 1 <= p <= 38"
    )


def job_arrow_types(column_types: Mapping[str, str] | None) -> dict[str, pa.DataType]:
    """The job's column types as Arrow types; ValueError naming the column of a bad type."""
    result: dict[str, pa.DataType] = {}
    for column, trino_type in (column_types or {}).items():
        try:
            result[column] = arrow_type(trino_type)
        except ValueError as exc:
            raise ValueError(f"column {column!r}: {exc}") from None
    return result


# --- rule 2: published Sigma types of columns the SQL passes through unchanged --------------


@cache
def _sigma_schema() -> MappingSchema:
    """sqlglot's view of the published tables (built once: ~40 ms for 350 tables)."""
    return MappingSchema(
        {name: dict(table.columns) for name, table in sigma_tables().items()}, dialect="trino"
    )


def sigma_column_types(sql: str | None) -> dict[str, str]:
    """Output column name (lower case) → Trino type, for columns whose type the SQL fixes.

    A column gets a type when it is a published table's column selected unchanged (possibly
    renamed, through table aliases, joins, CTEs and subqueries) or an explicit ``CAST``.
    Anything computed, ambiguous, from a set operation or from an unknown table gets none.
    Never raises: SQL this cannot follow simply yields no hints.
    """
    if not sql or not sql.strip():
        return {}
    try:
        return _sigma_column_types(sql)
    except Exception:  # sqlglot can fail in many ways on SQL it does not follow; hints are optional
        return {}


def _sigma_column_types(sql: str) -> dict[str, str]:
    statements = [s for s in sqlglot.parse(sql, dialect="trino") if s is not None]
    if len(statements) != 1:
        return {}
    tree = statements[0]
    # Tables are named without their dataset in Sigma; drop a dataset/catalog prefix on a
    # published table so it matches the one-level schema.
    for table in tree.find_all(exp.Table):
        if table.name in sigma_tables() and (table.args.get("db") or table.args.get("catalog")):
            table.set("db", None)
            table.set("catalog", None)
    tree = qualify(
        tree,
        schema=_sigma_schema(),
        dialect="trino",
        validate_qualify_columns=False,
        quote_identifiers=False,
    )
    root = build_scope(tree)
    if root is None or not isinstance(root.expression, exp.Select):
        return {}
    hints: dict[str, str] = {}
    for projection in root.expression.selects:
        found = _expression_type(root, _unalias(projection))
        if found is not None:
            hints[projection.alias_or_name.lower()] = found
    return hints


def _unalias(projection: exp.Expr) -> exp.Expr:
    return projection.this if isinstance(projection, exp.Alias) else projection


def _expression_type(scope: Scope, expression: exp.Expr) -> str | None:
    if isinstance(expression, exp.Cast):  # TRY_CAST too: its type is fixed, failures are NULL
        cast_to = expression.to.sql(dialect="trino").lower()
        try:
            arrow_type(cast_to)
        except ValueError:
            return None
        return cast_to
    if isinstance(expression, exp.Column) and isinstance(expression.this, exp.Identifier):
        return _column_type_in(scope, expression.table, expression.name)
    return None


def _column_type_in(scope: Scope, source_name: str, column: str) -> str | None:
    if not source_name:  # qualify leaves ambiguous or unknown columns unqualified
        return None
    source: Any = scope.sources.get(source_name)
    if isinstance(source, exp.Table):
        return column_type(source.name, column)
    if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
        for projection in source.expression.selects:
            if projection.alias_or_name == column:
                return _expression_type(source, _unalias(projection))
    return None


# --- rule 3: inference from a sample ---------------------------------------------------------

# Strict patterns: a value that a pattern does not describe exactly keeps the column text.
# Integers have no sign but '-', no leading zeros (zip codes, ids like 007 stay text) and at most
# 18 digits, so every match fits int64. Decimals keep their integer part within 15 digits, so a
# float64 represents it exactly (a long integer never silently rounds).
_BOOL = r"^(true|false)$"
_INT = r"^-?(0|[1-9][0-9]{0,17})$"
_NUMBER = r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]+)?([eE][-+]?[0-9]{1,3})?$"
_FRACTIONAL = r"[.eE]"
_FLOAT_SPECIAL = r"^(NaN|-?Infinity)$"
_TIMESTAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def _all_match(values: pa.Array | pa.ChunkedArray, pattern: str) -> bool:
    return bool(pc.all(pc.match_substring_regex(values, pattern)).as_py())


def _casts(values: pa.Array | pa.ChunkedArray, target: pa.DataType) -> bool:
    try:
        values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def infer_type(values: pa.Array | pa.ChunkedArray) -> pa.DataType | None:
    """The type a sample of one column's text values shows, or None if the sample is all NULL.

    Only the formats Sigma writes count: ``true``/``false``, plain integers, decimals with
    ``.`` or an exponent (``NaN``/``Infinity`` allowed beside them), ``YYYY-MM-DD HH:MM:SS``
    with up to 3 fractional digits, ``YYYY-MM-DD``. Anything else is ``string``.
    """
    present = pc.drop_null(values)
    if len(present) == 0:
        return None
    if present.type != pa.string():
        present = present.cast(pa.string())
    if _all_match(present, _BOOL):
        return pa.bool_()
    if _all_match(present, _INT):
        return pa.int64()
    numeric = pc.match_substring_regex(present, _NUMBER)
    special = pc.match_substring_regex(present, _FLOAT_SPECIAL)
    if (
        pc.all(pc.or_(numeric, special)).as_py()
        and pc.any(pc.and_(numeric, pc.match_substring_regex(present, _FRACTIONAL))).as_py()
        and _casts(present, pa.float64())
    ):
        return pa.float64()
    if _all_match(present, _TIMESTAMP) and _casts(present, pa.timestamp("ms")):
        return TIMESTAMP
    if _all_match(present, _DATE) and _casts(present, pa.date32()):
        return pa.date32()
    return pa.string()


# --- putting the rules together --------------------------------------------------------------


def check_job_types(
    header: Sequence[str], column_types: Mapping[str, str] | None
) -> dict[str, pa.DataType]:
    """The job's types as Arrow types; ValueError for a bad type or a column not in ``header``."""
    job = job_arrow_types(column_types)
    missing = sorted(set(job) - set(header))
    if missing:
        raise ValueError(
            f"column_types names {', '.join(map(repr, missing))}, which the result does not "
            f"have (its columns: {', '.join(header)})"
        )
    return job


@dataclass(frozen=True, slots=True)
class ColumnChoice:
    """One column's Arrow type and which rule chose it (``job`` types are never widened)."""

    name: str
    type: pa.DataType
    source: ColumnSource


def choose_columns(
    header: Sequence[str],
    *,
    column_types: Mapping[str, str] | None,
    sql: str | None,
    sample: pa.Table | None,
) -> tuple[ColumnChoice, ...]:
    """Every header column's type by the precedence in the module docstring.

    ``sample`` holds the first rows read as text (None: no sample, columns without a job or
    Sigma type become string). Raises ValueError for a bad job type or a job type naming a
    column the result does not have.
    """
    job = check_job_types(header, column_types)
    hints = sigma_column_types(sql) if any(name not in job for name in header) else {}
    sample_names = set(sample.column_names) if sample is not None else set()
    choices = []
    for name in header:
        if name in job:
            choices.append(ColumnChoice(name, job[name], "job"))
        elif name.lower() in hints:
            choices.append(ColumnChoice(name, arrow_type(hints[name.lower()]), "sigma"))
        elif sample is not None and name in sample_names:
            inferred = infer_type(sample.column(name))
            if inferred is None:
                choices.append(ColumnChoice(name, pa.string(), "empty"))
            else:
                choices.append(ColumnChoice(name, inferred, "sample"))
        else:
            choices.append(ColumnChoice(name, pa.string(), "default"))
    return tuple(choices)


def widen(choices: Sequence[ColumnChoice], column: str) -> tuple[ColumnChoice, ...]:
    """The same choices with ``column`` read as string; ValueError if the job typed it."""
    result = []
    for choice in choices:
        if choice.name == column:
            if choice.source == "job":
                raise ValueError(f"column {column!r} has the job's type {choice.type}")
            choice = ColumnChoice(column, pa.string(), "widened")
        result.append(choice)
    return tuple(result)


def needs_sample(
    header: Sequence[str], *, column_types: Mapping[str, str] | None, sql: str | None
) -> bool:
    """Whether some column's type is still open after the job's and Sigma's types."""
    job = column_types or {}
    open_columns = [name for name in header if name not in job]
    if not open_columns:
        return False
    hints = sigma_column_types(sql)
    return any(name.lower() not in hints for name in open_columns)


def csv_schema_for(
    header: Sequence[str],
    *,
    column_types: Mapping[str, str] | None,
    sql: str | None,
    sample: pa.Table | None,
) -> pa.Schema:
    """The Parquet schema a CSV with this header gets (see :func:`choose_columns`)."""
    choices = choose_columns(header, column_types=column_types, sql=sql, sample=sample)
    return pa.schema([pa.field(choice.name, choice.type) for choice in choices])
