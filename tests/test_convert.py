"""CSV → Parquet: typing, NULL rules, row groups, odd and broken inputs, cancellation."""

from __future__ import annotations

import csv
import io
import os
import random
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchrunner import convert
from batchrunner.coltypes import arrow_type, sigma_column_types
from batchrunner.convert import ConvertResult, convert_csv_to_parquet, read_header
from batchrunner.emulator.warehouse import Warehouse
from batchrunner.errors import ConversionError, DownloadError, OutputError
from batchrunner.growing import GrowingFile

TS = pa.timestamp("ms", tz="UTC")


def write_csv(path: Path, rows: list[list[Any]], *, header: list[str] | None = None) -> Path:
    """Write rows the way Sigma does: RFC 4180 quoting where needed, None as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def run(tmp_path: Path, data: bytes | str, **kwargs: Any) -> tuple[ConvertResult, pa.Table]:
    """Convert ``data`` and read the Parquet file back."""
    src = tmp_path / "in.csv"
    src.write_bytes(data.encode() if isinstance(data, str) else data)
    dest = tmp_path / "out.parquet"
    result = convert_csv_to_parquet(src, dest, **kwargs)
    return result, pq.read_table(dest)


def fail(tmp_path: Path, data: bytes | str, **kwargs: Any) -> str:
    """Convert ``data`` expecting a ConversionError; return its message."""
    with pytest.raises(ConversionError) as info:
        run(tmp_path, data, **kwargs)
    return str(info.value)


@pytest.fixture
def small_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sample only the first ~2 KB, so 'later in the file' needs few rows."""
    monkeypatch.setattr(convert, "SAMPLE_BYTES", 2048)


# --- types -------------------------------------------------------------------------------------


def test_sigma_shaped_csv_gets_typed_columns(tmp_path: Path) -> None:
    """Integers, decimals, booleans, timestamps and text get their types and exact values."""
    result, table = run(
        tmp_path,
        "id,amount,rate,paid,created,note\n"
        "ch_1,1200,0.5,true,2024-01-02 03:04:05.123,hello\n"
        "ch_2,-5,,false,2024-02-29 23:59:59.999,\n",
    )
    assert table.schema == pa.schema(
        [
            ("id", pa.string()),
            ("amount", pa.int64()),
            ("rate", pa.float64()),
            ("paid", pa.bool_()),
            ("created", TS),
            ("note", pa.string()),
        ]
    )
    assert table.to_pylist() == [
        {
            "id": "ch_1",
            "amount": 1200,
            "rate": 0.5,
            "paid": True,
            "created": datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
            "note": "hello",
        },
        {
            "id": "ch_2",
            "amount": -5,
            "rate": None,
            "paid": False,
            "created": datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
            "note": None,
        },
    ]
    assert result.rows == 2
    assert result.columns == ("id", "amount", "rate", "paid", "created", "note")
    assert result.parquet_bytes == (tmp_path / "out.parquet").stat().st_size
    assert result.csv_bytes == (tmp_path / "in.csv").stat().st_size


def test_timestamps_are_utc_milliseconds(tmp_path: Path) -> None:
    """Zone-less Sigma timestamps land as timestamp[ms, tz=UTC], with or without fractions."""
    _, table = run(tmp_path, "t\n2024-01-02 03:04:05\n1970-01-01 00:00:00.001\n")
    assert table.schema.field("t").type == TS
    assert table.column("t").cast(pa.int64()).to_pylist() == [1704164645000, 1]


@pytest.mark.parametrize("marker", ["N/A", "null", "NULL", "NaN", "nan", "None", "-nan", "#N/A"])
def test_null_looking_text_stays_text(tmp_path: Path, marker: str) -> None:
    """Only an empty field is NULL: text such as N/A or NaN is kept verbatim."""
    _, table = run(tmp_path, f'name,n\n{marker},1\n"{marker}",2\n,3\n"",4\n')
    assert table.column("name").to_pylist() == [marker, marker, None, ""]


def test_quoted_empty_string_is_not_null(tmp_path: Path) -> None:
    """``""`` is an empty string; an unquoted empty field is NULL."""
    _, table = run(tmp_path, 'a,b\n"",x\n,y\n')
    assert table.column("a").to_pylist() == ["", None]


def test_sigma_types_from_the_sql(tmp_path: Path) -> None:
    """A column the SQL selects from a published table gets its type even when always empty."""
    _, table = run(
        tmp_path,
        "id,amount,captured_at,cents\nch_1,,,7\nch_2,,,8\n",
        sql="select id, amount, captured_at, amount * 100 as cents from charges",
    )
    assert table.schema == pa.schema(
        [("id", pa.string()), ("amount", pa.int64()), ("captured_at", TS), ("cents", pa.int64())]
    )
    assert table.column("amount").null_count == 2


def test_sigma_types_through_aliases_and_joins(tmp_path: Path) -> None:
    """Join aliases resolve to each table; a computed column is typed by inference only."""
    _, table = run(
        tmp_path,
        "id,fee,refunded,total\ntxn_1,,,1.5\n",
        sql="select bt.id, bt.fee, c.refunded, bt.amount + c.amount as total "
        "from balance_transactions bt join charges c on c.id = bt.source_id",
    )
    assert table.schema.types == [pa.string(), pa.int64(), pa.bool_(), pa.float64()]


def test_job_column_types_override_everything(tmp_path: Path) -> None:
    """The job's types win over Sigma's and over inference."""
    _, table = run(
        tmp_path,
        "amount,code,day\n12.50,007,2024-03-01\n",
        sql="select amount, code, day from charges",
        column_types={"amount": "decimal(10,2)", "code": "varchar", "day": "date"},
    )
    assert table.schema.types == [pa.decimal128(10, 2), pa.string(), pa.date32()]
    assert table.to_pylist() == [
        {"amount": Decimal("12.50"), "code": "007", "day": date(2024, 3, 1)}
    ]


def test_unknown_job_type_names_the_column(tmp_path: Path) -> None:
    """A job type we cannot honour is a ConversionError naming the column."""
    message = fail(tmp_path, "a,b\n1,2\n", column_types={"b": "money"})
    assert "'b'" in message
    assert "money" in message


def test_job_type_contradicted_by_a_value_is_an_error(tmp_path: Path) -> None:
    """A value that does not fit the job's type is reported, not widened."""
    message = fail(tmp_path, "n\n1\n2\nabc\n", column_types={"n": "bigint"})
    assert "column 'n'" in message
    assert "abc" in message


# --- types that change later in the file -------------------------------------------------------


def test_column_empty_in_the_sample_and_filled_later(tmp_path: Path) -> None:
    """A column empty through the whole sample (first MBs) is string and keeps later values."""
    rows = [[i, f"row {i} padding to make the file longer", None] for i in range(120_000)]
    rows += [[120_000 + i, "late", f"value {i}"] for i in range(3)]
    src = write_csv(tmp_path / "in.csv", rows, header=["id", "note", "late"])
    # The sample holds SAMPLE_BYTES of Arrow data, more per row than the CSV takes here.
    assert src.stat().st_size > convert.SAMPLE_BYTES + (1 << 20)
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("late").type == pa.string()
    assert table.column("late").to_pylist()[-3:] == ["value 0", "value 1", "value 2"]
    assert result.rows == 120_003
    assert result.widened == ()


def test_integer_column_with_text_late_is_widened(tmp_path: Path) -> None:
    """An inferred int column meeting text past the sample is re-read as string, losslessly."""
    rows = [[i, i * 10] for i in range(400_000)] + [[400_000, "abc"], [400_001, "0042"]]
    src = write_csv(tmp_path / "in.csv", rows, header=["id", "n"])
    assert src.stat().st_size > convert.SAMPLE_BYTES + (1 << 20)
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet", block_size=64 << 10)
    table = pq.read_table(tmp_path / "out.parquet")
    assert result.widened == ("n",)
    assert table.schema.types == [pa.int64(), pa.string()]
    assert table.column("n").to_pylist()[:3] == ["0", "10", "20"]
    assert table.column("n").to_pylist()[-2:] == ["abc", "0042"]
    assert result.rows == 400_002 == table.num_rows


@pytest.mark.usefixtures("small_sample")
def test_sigma_type_contradicted_later_is_widened(tmp_path: Path) -> None:
    """A published type the data contradicts (a value with a fraction) falls back to string."""
    rows = [[f"ch_{i}", i] for i in range(2000)] + [["ch_x", "12.5"]]
    src = write_csv(tmp_path / "in.csv", rows, header=["id", "amount"])
    result = convert_csv_to_parquet(
        src, tmp_path / "out.parquet", sql="select id, amount from charges", block_size=4096
    )
    table = pq.read_table(tmp_path / "out.parquet")
    assert result.widened == ("amount",)
    assert table.column("amount").to_pylist()[-1] == "12.5"
    assert table.num_rows == 2001


@pytest.mark.usefixtures("small_sample")
def test_two_contradicted_columns_are_both_widened(tmp_path: Path) -> None:
    """Each contradicted column is widened in turn until the file reads."""
    rows = [[i, "true", "2024-01-01"] for i in range(2000)] + [[1, "yes", "soon"]]
    src = write_csv(tmp_path / "in.csv", rows, header=["n", "flag", "day"])
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet", block_size=4096)
    table = pq.read_table(tmp_path / "out.parquet")
    assert sorted(result.widened) == ["day", "flag"]
    assert table.schema.types == [pa.int64(), pa.string(), pa.string()]
    assert table.column("flag").to_pylist()[-2:] == ["true", "yes"]


# --- shape of the CSV --------------------------------------------------------------------------


def test_utf8_bom_is_dropped_from_the_first_name(tmp_path: Path) -> None:
    """A leading BOM is tolerated and not part of the first column's name."""
    result, table = run(tmp_path, "\ufeffid,n\nx,1\n".encode())
    assert table.column_names == ["id", "n"]
    assert result.columns == ("id", "n")
    assert read_header(tmp_path / "in.csv").names == ("id", "n")


def test_quoted_fields_with_newlines_commas_and_quotes(tmp_path: Path) -> None:
    """RFC 4180 quoting: line breaks, commas and doubled quotes survive inside fields."""
    values = ["two\nlines", 'say "hi", then go', "crlf\r\ninside", "plain"]
    src = write_csv(tmp_path / "in.csv", [[i, v] for i, v in enumerate(values)], header=["i", "v"])
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").column("v").to_pylist() == values
    assert result.rows == 4


def test_crlf_line_endings(tmp_path: Path) -> None:
    """CRLF line endings read like LF ones."""
    _, table = run(tmp_path, "a,b\r\n1,x\r\n2,y\r\n")
    assert table.to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_single_column_blank_line_is_a_null_row(tmp_path: Path) -> None:
    """With one column a blank line is a row holding NULL (``SELECT NULL AS x``)."""
    result, table = run(tmp_path, "x\na\n\nb\n")
    assert table.column("x").to_pylist() == ["a", None, "b"]
    assert result.rows == 3


@pytest.mark.parametrize("body", ["id,amount\n", "id,amount", "id,amount\r\n"])
def test_header_only_gives_an_empty_typed_file(tmp_path: Path, body: str) -> None:
    """A header-only result is a valid Parquet file with its columns and zero rows."""
    result, table = run(tmp_path, body, sql="select id, amount from charges")
    assert table.num_rows == 0
    assert table.schema == pa.schema([("id", pa.string()), ("amount", pa.int64())])
    assert (result.rows, result.row_groups) == (0, 0)


def test_header_only_without_hints_is_all_string(tmp_path: Path) -> None:
    """With no type source a zero-row result's columns are string (job types still apply)."""
    _, table = run(tmp_path, "a,b\n", column_types={"b": "date"})
    assert table.schema == pa.schema([("a", pa.string()), ("b", pa.date32())])


def test_rows_written_equal_data_rows(tmp_path: Path) -> None:
    """The row count returned and stored equals the CSV's data rows, multi-line ones included."""
    rows = [[i, f"line {i}\nsecond" if i % 7 == 0 else f"v{i}", i % 3 == 0] for i in range(5000)]
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "text", "flag"])
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet", block_size=8192)
    metadata = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert result.rows == metadata.num_rows == 5000
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("i").to_pylist() == list(range(5000))
    assert table.column("text").to_pylist()[7] == "line 7\nsecond"


# --- row groups --------------------------------------------------------------------------------


def test_row_groups_follow_row_group_rows_not_blocks(tmp_path: Path) -> None:
    """300k rows at 100k per row group is 3 row groups, however many read blocks it took."""
    src = write_csv(tmp_path / "in.csv", [[i, i % 10] for i in range(300_000)], header=["a", "b"])
    result = convert_csv_to_parquet(
        src, tmp_path / "out.parquet", row_group_rows=100_000, block_size=64 << 10
    )
    metadata = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert src.stat().st_size > 20 * (64 << 10)  # many blocks
    assert result.row_groups == metadata.num_row_groups == 3
    assert [metadata.row_group(i).num_rows for i in range(3)] == [100_000] * 3


def test_row_groups_also_end_at_row_group_bytes(tmp_path: Path) -> None:
    """A wide result ends row groups at row_group_bytes before reaching row_group_rows."""
    src = write_csv(tmp_path / "in.csv", [[i, "x" * 500] for i in range(4000)], header=["a", "b"])
    result = convert_csv_to_parquet(
        src, tmp_path / "out.parquet", row_group_bytes=256 << 10, block_size=32 << 10
    )
    metadata = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert 4 <= metadata.num_row_groups == result.row_groups < 40
    assert sum(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)) == 4000


def test_output_is_zstd_compressed(tmp_path: Path) -> None:
    """Every column chunk is zstd-compressed."""
    run(tmp_path, "a,b\n1,x\n2,y\n")
    column = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0).column(1)
    assert column.compression == "ZSTD"


def test_output_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Parquet file is fsynced before the converter returns."""
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    result, _ = run(tmp_path, "a\n1\n")
    assert synced == [result.parquet_bytes]


# --- long rows ---------------------------------------------------------------------------------


def test_field_of_20_mb_converts(tmp_path: Path) -> None:
    """A single 20 MB field (far over a read block) converts intact."""
    big = ("x" * 1000 + ', "quoted"\n') * 20_000  # ~20 MB with commas, quotes, line breaks
    src = write_csv(tmp_path / "in.csv", [[1, "short"], [2, big], [3, "x"]], header=["i", "v"])
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("v").to_pylist() == ["short", big, "x"]
    assert result.rows == 3


def test_long_rows_among_short_ones_keep_their_order(tmp_path: Path) -> None:
    """Rows over a block, alone or adjacent, are read in place among ordinary rows."""
    rows: list[list[Any]] = [[i, f"v{i}"] for i in range(3000)]
    rows[10][1] = "x" * 20_000
    rows[11][1] = "y\n" * 15_000
    rows[2500][1] = "z" * 50_000
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "v"])
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet", block_size=4096)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("i").to_pylist() == list(range(3000))
    assert table.column("v").to_pylist() == [row[1] for row in rows]
    assert result.rows == 3000


# --- broken inputs -----------------------------------------------------------------------------


def test_empty_file_is_not_csv(tmp_path: Path) -> None:
    """A 0-byte body is a ConversionError, not an empty table."""
    assert "empty (0 bytes)" in fail(tmp_path, b"")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("<!DOCTYPE html>\n<html><body>Bad gateway, sorry</body></html>\n", "HTML"),
        ("  <html>\n<p>a,b</p>\n", "HTML"),
        ('{"error": {"message": "No such file", "type": "invalid_request_error"}}\n', "JSON"),
        ('[{"a": 1}, {"a": 2}]', "JSON"),
        (b"PK\x03\x04\x00\x00binary", "binary"),
        ("\n\n  \n", "whitespace"),
    ],
)
def test_a_body_that_is_not_csv_is_named(tmp_path: Path, body: str | bytes, said: str) -> None:
    """HTML, JSON, binary or blank bodies are refused with a message saying what they look like."""
    assert said in fail(tmp_path, body)


def test_row_with_too_many_fields_names_the_row(tmp_path: Path) -> None:
    """A ragged row is reported with its row and line number and the field counts."""
    message = fail(tmp_path, 'a,b,c\n1,2,3\n"x\ny",5,6\n7,8,9,10\n')
    assert "data row 3" in message
    assert "line 5" in message
    assert "4 fields, expected 3" in message


def test_row_with_too_few_fields_names_the_row(tmp_path: Path) -> None:
    """A short row deep in a file is located even past the sample and many blocks."""
    rows = "".join(f"{i},{i},x\n" for i in range(50_000))
    message = fail(tmp_path, f"a,b,c\n{rows}50000,1\n", block_size=16 << 10)
    assert "data row 50001" in message
    assert "2 fields, expected 3" in message


def test_invalid_utf8_says_where(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with the column, byte offset and line."""
    body = b"id,name\n1,ok\n2,caf\xe9\n"
    message = fail(tmp_path, body)
    assert "invalid UTF-8" in message
    assert "column 'name'" in message
    bad = body.index(b"\xe9")
    assert f"byte offset {bad}" in message
    assert "line 3" in message


def test_invalid_utf8_in_the_header(tmp_path: Path) -> None:
    """A header that is not UTF-8 is reported as such."""
    assert "invalid UTF-8 in the header" in fail(tmp_path, b"id,n\xffme\n1,2\n")


def test_duplicate_column_names_are_refused(tmp_path: Path) -> None:
    """Duplicate names (Parquet needs unique ones) name the column and suggest an alias."""
    message = fail(tmp_path, "id,amount,id\n1,2,3\n")
    assert "duplicate column name 'id'" in message
    assert "alias" in message


def test_empty_column_name_is_refused(tmp_path: Path) -> None:
    """A header with an empty name asks for an alias."""
    assert "column 2" in fail(tmp_path, "a,,c\n1,2,3\n")


def test_missing_source_is_a_conversion_error(tmp_path: Path) -> None:
    """A CSV that does not exist is reported as a ConversionError."""
    with pytest.raises(ConversionError, match="cannot read"):
        convert_csv_to_parquet(tmp_path / "nope.csv", tmp_path / "out.parquet")


def test_unwritable_destination_is_an_output_error(tmp_path: Path) -> None:
    """A destination that cannot be created is an OutputError naming it."""
    src = write_csv(tmp_path / "in.csv", [[1]], header=["a"])
    with pytest.raises(OutputError, match="missing-dir"):
        convert_csv_to_parquet(src, tmp_path / "missing-dir" / "out.parquet")


# --- cancellation ------------------------------------------------------------------------------


class CancelAfter(threading.Event):
    """An event that reads as set after ``checks`` looks: cancellation mid-way, no timing."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.checks or super().is_set()


def test_cancel_mid_way_stops_and_raises(tmp_path: Path) -> None:
    """Setting the cancel event mid-conversion stops it at the next block with an error."""
    src = write_csv(tmp_path / "in.csv", [[i, "x"] for i in range(100_000)], header=["a", "b"])
    cancel = CancelAfter(checks=5)
    with pytest.raises(ConversionError, match="cancelled"):
        convert_csv_to_parquet(
            src,
            tmp_path / "out.parquet",
            block_size=16 << 10,
            column_types={"a": "bigint"},
            cancel=cancel,
        )
    assert cancel.looks == cancel.checks + 1  # stopped at the first look after it was set


def test_cancel_already_set_raises_before_reading(tmp_path: Path) -> None:
    """A conversion whose cancel event is already set does no work and raises."""
    src = write_csv(tmp_path / "in.csv", [[1, 2]], header=["a", "b"])
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ConversionError, match="cancelled"):
        convert_csv_to_parquet(src, tmp_path / "out.parquet", cancel=cancel)


# --- the emulator's CSV ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "bom"),
    [
        ("select * from balance_transactions", False),
        ("select * from charges", True),
        ("select c.id, c.amount / 100.0 as dollars, c.created, c.paid from charges c", False),
    ],
)
def test_emulator_results_land_with_sigma_types(
    tmp_path: Path, emulator_warehouse: Warehouse, sql: str, bom: bool
) -> None:
    """A result CSV from the emulator converts with every published column's Sigma type."""
    src = tmp_path / "result.csv"
    written = emulator_warehouse.execute_to_csv(sql, src, bom=bom)
    result = convert_csv_to_parquet(src, tmp_path / "out.parquet", sql=sql)
    table = pq.read_table(tmp_path / "out.parquet")
    assert result.rows == written.rows == table.num_rows > 0
    assert result.columns == written.columns
    hints = sigma_column_types(sql)
    assert hints  # the SQL names published columns
    for name in table.column_names:
        if name in hints:
            assert table.schema.field(name).type == arrow_type(hints[name]), name
    assert result.widened == ()


# --- chunked, parallel parsing -------------------------------------------------------------------

# What every conversion must equal, whatever the chunk size: one pyarrow read of the whole file
# with the reading rules (the streaming reader the converter used before chunks, same options).
_REFERENCE_CONVERT = {
    "null_values": [""],
    "strings_can_be_null": True,
    "quoted_strings_can_be_null": False,
    "true_values": ["true"],
    "false_values": ["false"],
}


def reference_table(src: Path, schema: pa.Schema) -> pa.Table:
    """The whole file read at once by pyarrow's own reader with the reading rules."""
    naive = {
        f.name: pa.timestamp(f.type.unit) if pa.types.is_timestamp(f.type) else f.type
        for f in schema
    }
    table = pacsv.read_csv(
        src,
        parse_options=pacsv.ParseOptions(
            newlines_in_values=True, ignore_empty_lines=len(schema) > 1
        ),
        convert_options=pacsv.ConvertOptions(column_types=naive, **_REFERENCE_CONVERT),
    )
    return table.cast(schema)


def converter_threads() -> list[str]:
    """Names of the converter's reading and parsing threads still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("csv-read", "csv-parse"))]


def tricky_rows(count: int, *, seed: int = 7) -> list[list[Any]]:
    """Rows whose text fields hold line breaks, commas, doubled quotes, CRLF and empties."""
    pieces = ["a", "\n", '"', ",", "\r\n", "é", "x" * 30, '""', " "]
    rnd = random.Random(seed)
    rows: list[list[Any]] = []
    for i in range(count):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 8)))
        rows.append([i, text if i % 5 else None, rnd.choice(["true", "false", None]), i * 7])
    return rows


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_chunk_boundaries_anywhere_in_quoted_fields(tmp_path: Path, chunk_size: int) -> None:
    """Chunks cut anywhere (inside quotes, doubled quotes, CRLF) give the reference table."""
    src = write_csv(tmp_path / "in.csv", tricky_rows(400), header=["i", "text", "flag", "n"])
    dest = tmp_path / "out.parquet"
    result = convert_csv_to_parquet(src, dest, chunk_size=chunk_size, block_size=256)
    table = pq.read_table(dest)
    assert table.schema.types == [pa.int64(), pa.string(), pa.bool_(), pa.int64()]
    assert table.equals(reference_table(src, table.schema))
    assert table.column("i").to_pylist() == list(range(400))
    assert result.rows == 400
    assert converter_threads() == []


def test_random_csv_equals_the_whole_file_read(tmp_path: Path) -> None:
    """Random Sigma-shaped CSVs convert to the reference table at several chunk sizes."""
    rnd = random.Random(11)
    for attempt in range(5):
        rows = tricky_rows(rnd.randrange(1, 300), seed=attempt)
        src = write_csv(tmp_path / f"in{attempt}.csv", rows, header=["i", "text", "flag", "n"])
        for chunk_size in (rnd.randrange(1, 50), rnd.randrange(50, 2000)):
            dest = tmp_path / f"out{attempt}-{chunk_size}.parquet"
            convert_csv_to_parquet(src, dest, chunk_size=chunk_size, row_group_rows=37)
            table = pq.read_table(dest)
            assert table.equals(reference_table(src, table.schema)), (attempt, chunk_size)


def test_emulator_result_is_the_same_at_any_chunk_size(
    tmp_path: Path, emulator_warehouse: Warehouse
) -> None:
    """A realistic result converts to the same rows, schema and values in small or large chunks."""
    sql = "select * from balance_transactions"
    src = tmp_path / "result.csv"
    emulator_warehouse.execute_to_csv(sql, src)
    tables = []
    for chunk_size in (1000, 16 << 10, convert.DEFAULT_CHUNK_SIZE):
        dest = tmp_path / f"out-{chunk_size}.parquet"
        result = convert_csv_to_parquet(src, dest, sql=sql, chunk_size=chunk_size)
        assert result.widened == ()
        tables.append(pq.read_table(dest))
    assert src.stat().st_size > 10 * (16 << 10)  # many chunks at the smaller sizes
    assert tables[0].equals(tables[1])
    assert tables[1].equals(tables[2])
    assert tables[2].equals(reference_table(src, tables[2].schema))


def test_rows_longer_than_a_chunk_keep_their_place(tmp_path: Path) -> None:
    """A row many chunks long grows its chunk, is read whole, and stays in order."""
    rows: list[list[Any]] = [[i, f"v{i}"] for i in range(200)]
    rows[0][1] = 'first "long" row\n' * 400
    rows[50][1] = "y" * 30_000
    rows[199][1] = "last,\n" * 3000
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "v"])
    dest = tmp_path / "out.parquet"
    result = convert_csv_to_parquet(src, dest, chunk_size=100, block_size=64)
    table = pq.read_table(dest)
    assert table.column("v").to_pylist() == [row[1] for row in rows]
    assert result.rows == 200


def test_a_row_over_the_limit_is_refused_with_its_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row longer than MAX_ROW_BYTES is refused, naming the byte offset where it starts."""
    monkeypatch.setattr(convert, "MAX_ROW_BYTES", 10_000)
    rows: list[list[Any]] = [[i, "short"] for i in range(100)] + [[100, "z" * 50_000]]
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "v"])
    start = src.read_bytes().index(b"100,zzz")
    message = fail_file(src, tmp_path, chunk_size=1000)
    assert f"starts at byte offset {start}" in message
    assert "substr" in message
    assert converter_threads() == []


def fail_file(src: Path, tmp_path: Path, **kwargs: Any) -> str:
    """Convert ``src`` expecting a ConversionError; return its message."""
    with pytest.raises(ConversionError) as info:
        convert_csv_to_parquet(src, tmp_path / "out.parquet", **kwargs)
    return str(info.value)


def multiline_rows(count: int) -> tuple[list[list[Any]], list[int]]:
    """Rows of 1-3 lines each, and the line each data row ends on (the header is line 1)."""
    rows: list[list[Any]] = []
    ends: list[int] = []
    line = 1
    for i in range(count):
        text = "\n".join(["part"] * (i % 3 + 1))
        rows.append([i, text, i])
        line += i % 3 + 1
        ends.append(line)
    return rows, ends


def test_ragged_row_in_a_late_chunk_names_its_row_and_line(tmp_path: Path) -> None:
    """A ragged row far into the file is located by data row and line, counted from the top."""
    rows, ends = multiline_rows(2000)
    rows[1500] = [1500, "part", 1500, "extra"]
    ends[1500] = ends[1499] + 1
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "text", "n"])
    message = fail_file(src, tmp_path, chunk_size=512, column_types={"i": "bigint"})
    assert "data row 1501 " in message
    assert f"(ending on line {ends[1500]})" in message
    assert "4 fields, expected 3" in message
    assert converter_threads() == []


def test_bad_value_in_a_late_chunk_names_its_row_and_line(tmp_path: Path) -> None:
    """A value that does not fit the job's type is reported with its data row and line."""
    rows, ends = multiline_rows(3000)
    rows[2222][2] = "12x"
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "text", "n"])
    message = fail_file(src, tmp_path, chunk_size=1024, column_types={"n": "bigint"})
    assert "column 'n' is typed int64 by the job's column_types" in message
    assert f"data row 2223 (ending on line {ends[2222]})" in message
    assert "'12x'" in message


def test_bad_utf8_in_a_late_chunk_names_its_byte_offset_and_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 deep in the file are located by absolute offset and line."""
    rows, ends = multiline_rows(1000)
    body = bytearray(write_csv(tmp_path / "in.csv", rows, header=["i", "text", "n"]).read_bytes())
    bad = body.index(b"\n900,") + 1  # the first byte of data row 901
    body[bad + 5] = 0xFF  # inside its quoted text, after the opening quote
    src = tmp_path / "in.csv"
    src.write_bytes(bytes(body))
    message = fail_file(src, tmp_path, chunk_size=777)
    assert "invalid UTF-8 in column 'text'" in message
    assert f"byte offset {bad + 5}" in message
    assert f"(line {ends[899] + 1})" in message


def test_widening_in_a_late_chunk_rereads_and_stops_the_threads(
    tmp_path: Path, small_sample: None
) -> None:
    """A contradiction found chunks in stops the parsing threads and the re-read is complete."""
    rows = [[i, i] for i in range(20_000)] + [[20_000, "n/a"]]
    src = write_csv(tmp_path / "in.csv", rows, header=["i", "n"])
    dest = tmp_path / "out.parquet"
    result = convert_csv_to_parquet(src, dest, chunk_size=4096)
    table = pq.read_table(dest)
    assert result.widened == ("n",)
    assert table.column("n").to_pylist()[-2:] == ["19999", "n/a"]
    assert table.num_rows == 20_001
    assert converter_threads() == []


def test_cancel_with_many_chunks_in_flight_stops_every_thread(tmp_path: Path) -> None:
    """Cancelling while chunks are parsed ahead raises and leaves no converter thread behind."""
    src = write_csv(tmp_path / "in.csv", [[i, "x"] for i in range(50_000)], header=["a", "b"])
    cancel = CancelAfter(checks=20)
    with pytest.raises(ConversionError, match="cancelled"):
        convert_csv_to_parquet(
            src,
            tmp_path / "out.parquet",
            chunk_size=2048,
            block_size=1024,
            column_types={"a": "bigint", "b": "varchar"},
            cancel=cancel,
        )
    assert cancel.looks == cancel.checks + 1
    assert converter_threads() == []


def feed(path: Path, growing: GrowingFile, data: bytes, pieces: int) -> None:
    """Append ``data`` to ``path`` in ``pieces`` writes, telling ``growing`` after each."""
    size = -(-len(data) // pieces)
    with path.open("ab", buffering=0) as out:
        for start in range(0, len(data), size):
            written = out.write(data[start : start + size])
            growing.grew(written or 0)


def test_growing_file_is_converted_while_it_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``growing``, chunks wait for the download's bytes and the result is complete."""
    monkeypatch.setattr(convert, "HEADER_LIMIT", 64)  # start reading after the first bytes
    rows = tricky_rows(3000)
    whole = write_csv(tmp_path / "whole.csv", rows, header=["i", "text", "flag", "n"])
    data = whole.read_bytes()
    src = tmp_path / "in.csv"
    growing = GrowingFile(src)
    feed(src, growing, data[:100], 1)
    box: dict[str, Any] = {}

    def convert_it() -> None:
        box["result"] = convert_csv_to_parquet(
            src, tmp_path / "out.parquet", chunk_size=5000, growing=growing
        )

    thread = threading.Thread(target=convert_it)
    thread.start()
    feed(src, growing, data[100:], 97)
    growing.finish()
    thread.join()
    table = pq.read_table(tmp_path / "out.parquet")
    assert box["result"].rows == 3000
    assert box["result"].csv_bytes == len(data)
    assert table.equals(reference_table(whole, table.schema))


def test_failed_download_fails_the_conversion_and_stops_its_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download that fails part-way makes the conversion raise DownloadError, threads joined."""
    monkeypatch.setattr(convert, "HEADER_LIMIT", 64)
    data = write_csv(tmp_path / "whole.csv", tricky_rows(3000), header=["i", "t", "f", "n"])
    src = tmp_path / "in.csv"
    growing = GrowingFile(src)
    feed(src, growing, data.read_bytes()[:20_000], 10)
    box: dict[str, BaseException] = {}

    def convert_it() -> None:
        try:
            convert_csv_to_parquet(src, tmp_path / "out.parquet", chunk_size=4096, growing=growing)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=convert_it)
    thread.start()
    growing.fail("connection reset")
    thread.join()
    assert isinstance(box["error"], DownloadError)
    assert "connection reset" in str(box["error"])
    assert converter_threads() == []


@pytest.mark.parametrize("block_size", range(1, 16))
def test_crlf_inside_quotes_survives_any_block_boundary(tmp_path: Path, block_size: int) -> None:
    """A quoted CRLF keeps its LF wherever a read block ends (apache/arrow#51368)."""
    _, table = run(tmp_path, 'a,b\n1,"x\r\ny"\n2,"c\r\n\r\nd"\r\n3,e\n', block_size=block_size)
    assert table.column("b").to_pylist() == ["x\r\ny", "c\r\n\r\nd", "e"]
