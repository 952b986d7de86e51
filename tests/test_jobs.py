"""Job files: loading, validation errors, expansion, stable ids, filtering and the examples."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from batchrunner.errors import JobFileError
from batchrunner.jobs import (
    Job,
    expand,
    load_job_file,
    load_jobs,
    normalize_column_type,
    parse_duration,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "jobs"
_ID_CHARS = re.compile(r"[A-Za-z0-9_.\-@,=%#~]+")

BASIC = """
[[job]]
name = "report"
sql = '''
SELECT * FROM charges WHERE created >= {period_start} AND created < {period_end}
AND currency = {currency}'''
[job.grid.period]
every = "month"
start = "2023-01"
end = "2023-03"
[job.grid]
currency = ["usd", "eur"]
"""


def write(tmp_path: Path, text: str, name: str = "jobs.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> JobFileError:
    path = write(tmp_path, text)
    with pytest.raises(JobFileError) as info:
        load_jobs([path])
    assert str(path) in str(info.value)
    return info.value


def job(body: str, *, name: str = "j", sql: str = "SELECT 1") -> str:
    """One [[job]] table; body lines go after name and sql."""
    return f'[[job]]\nname = "{name}"\nsql = """{sql}"""\n' + textwrap.dedent(body)


# --- the example job files ---------------------------------------------------------------


def test_monthly_example_has_36_monthly_outputs() -> None:
    """The README's main job expands to the 36 months 2023-01..2025-12, one file each."""
    jobs = load_jobs([EXAMPLES / "monthly_balance_transactions.toml"])
    assert len(jobs) == 36
    months = [f"{y}-{m:02d}" for y in (2023, 2024, 2025) for m in range(1, 13)]
    assert [j.params["period"] for j in jobs] == months
    assert [j.output for j in jobs] == [
        Path(f"monthly_balance_transactions/period={m}/part-0.parquet") for m in months
    ]
    assert jobs[0].id == "monthly_balance_transactions@period=2023-01"
    assert jobs[0].sql is not None
    assert "created >= TIMESTAMP '2023-01-01 00:00:00.000'" in jobs[0].sql
    assert "created < TIMESTAMP '2023-02-01 00:00:00.000'" in jobs[0].sql
    last = jobs[-1].sql
    assert last is not None
    assert "created < TIMESTAMP '2026-01-01 00:00:00.000'" in last
    assert jobs[0].deadline_s == 1800


def test_weekly_example_is_13_weeks_by_3_currencies() -> None:
    """The weekly report expands to 13 ISO weeks x 3 currencies, weeks outer."""
    jobs = load_jobs([EXAMPLES / "weekly_revenue_by_currency.toml"])
    assert len(jobs) == 39
    assert [j.params["currency"] for j in jobs[:3]] == ["usd", "eur", "gbp"]
    assert jobs[0].params["week"] == "2024-W01"
    assert jobs[-1].params["week"] == "2024-W13"
    assert jobs[0].output == Path(
        "weekly_revenue_by_currency/week=2024-W01/currency=usd/part-0.parquet"
    )
    assert jobs[0].column_types["gross_amount"] == "bigint"


def test_latency_example_repeats_five_queries_twenty_times() -> None:
    """The benchmark has 5 queries x 20 repeats with distinct ids and part-<r> outputs."""
    jobs = load_jobs([EXAMPLES / "latency_benchmark.toml"])
    assert len(jobs) == 100
    assert len({j.name for j in jobs}) == 5
    first = [j for j in jobs if j.name == "latency_count_balance_transactions"]
    assert [j.repeat_index for j in first] == list(range(20))
    assert first[3].id == "latency_count_balance_transactions#r3"
    assert first[3].output == Path("latency_count_balance_transactions/part-3.parquet")
    assert len({j.sql_hash for j in first}) == 1


def test_all_examples_load_together_and_render_valid_trino() -> None:
    """The examples directory loads as one set; every rendered SQL is one Trino statement."""
    jobs = load_jobs([EXAMPLES])
    assert len(jobs) == 36 + 39 + 100
    assert len({j.id for j in jobs}) == len(jobs)
    assert len({j.output for j in jobs}) == len(jobs)
    for sql in {j.sql for j in jobs}:
        assert sql is not None
        assert len(sqlglot.parse(sql, read="trino")) == 1


# --- expansion ----------------------------------------------------------------------------


def test_expansion_order_ids_and_outputs(tmp_path: Path) -> None:
    """Grid axes expand in declared order (periods ascending) with Hive-style default paths."""
    jobs = load_jobs([write(tmp_path, BASIC)])
    assert [j.id for j in jobs] == [
        "report@period=2023-01,currency=usd",
        "report@period=2023-01,currency=eur",
        "report@period=2023-02,currency=usd",
        "report@period=2023-02,currency=eur",
        "report@period=2023-03,currency=usd",
        "report@period=2023-03,currency=eur",
    ]
    assert jobs[1].output == Path("report/period=2023-01/currency=eur/part-0.parquet")
    assert dict(jobs[1].params) == {
        "period": "2023-01",
        "period_start": datetime(2023, 1, 1),
        "period_end": datetime(2023, 2, 1),
        "currency": "eur",
    }
    assert jobs[1].sql == (
        "SELECT * FROM charges WHERE created >= TIMESTAMP '2023-01-01 00:00:00.000' "
        "AND created < TIMESTAMP '2023-02-01 00:00:00.000'\nAND currency = 'eur'"
    )
    assert jobs[1].sql_hash == hashlib.sha256(jobs[1].sql.encode()).hexdigest()


def test_repeats_are_innermost_with_distinct_ids(tmp_path: Path) -> None:
    """repeat = N gives N runs per grid point, ids #r0.., outputs part-0..part-N-1."""
    path = write(tmp_path, job("repeat = 3\n[job.grid]\nx = [1, 2]\n", sql="SELECT {x}"))
    jobs = load_jobs([path])
    assert [j.id for j in jobs] == [
        "j@x=1#r0",
        "j@x=1#r1",
        "j@x=1#r2",
        "j@x=2#r0",
        "j@x=2#r1",
        "j@x=2#r2",
    ]
    assert [j.output.as_posix() for j in jobs[:3]] == [
        "j/x=1/part-0.parquet",
        "j/x=1/part-1.parquet",
        "j/x=1/part-2.parquet",
    ]


def test_params_render_as_typed_literals(tmp_path: Path) -> None:
    """Fixed parameters of every TOML type render as typed literals; lists as IN lists."""
    body = """
    [job.params]
    s = "it's"
    i = -3
    f = 2.5
    b = true
    d = 2024-02-29
    t = 2024-01-01T10:00:00+02:00
    l = ["usd", "eur"]
    """
    sql = "SELECT {s}, {i}, {f}, {b}, {d}, {t} WHERE c IN {l}"
    (spec,) = load_job_file(write(tmp_path, job(body, sql=sql)))
    (only,) = expand(spec)
    assert only.sql == (
        "SELECT 'it''s', (-3), 2.5e0, TRUE, DATE '2024-02-29', "
        "TIMESTAMP '2024-01-01 08:00:00.000' WHERE c IN ('usd', 'eur')"
    )
    assert only.params["t"] == datetime(2024, 1, 1, 8)
    assert only.params["l"] == ("usd", "eur")
    assert only.id == "j"
    assert only.output == Path("j/part-0.parquet")


def test_injection_through_a_job_file_stays_one_literal(tmp_path: Path) -> None:
    """A hostile grid value from a job file renders as one inert string literal."""
    payload = "'; DROP TABLE x; --"
    body = f'[job.grid]\nv = [{json.dumps(payload)}, "/* */"]\n'
    jobs = load_jobs([write(tmp_path, job(body, sql="SELECT * FROM t WHERE d = {v}"))])
    for j, value in zip(jobs, [payload, "/* */"], strict=True):
        assert j.sql is not None
        (statement,) = sqlglot.parse(j.sql, read="trino")
        assert statement is not None
        strings = [lit.this for lit in statement.find_all(exp.Literal) if lit.is_string]
        assert strings == [value]
    assert jobs[0].id == "j@v=%27%3B%20DROP%20TABLE%20x%3B%20--"
    assert jobs[0].output.parts[1] == "v=%27%3B%20DROP%20TABLE%20x%3B%20--"


def test_hostile_path_values_stay_inside(tmp_path: Path) -> None:
    """Grid values like ../ or absolute paths are encoded inside one path segment."""
    body = '[job.grid]\nv = ["../../etc", "/abs", "a/b", ".", "é ü"]\n'
    jobs = load_jobs([write(tmp_path, job(body, sql="SELECT {v}"))])
    for j in jobs:
        assert len(j.output.parts) == 3
        assert (tmp_path / j.output).resolve().is_relative_to(tmp_path)
        assert _ID_CHARS.fullmatch(j.id)
    assert [j.output.parts[1] for j in jobs] == [
        "v=%2E.%2F..%2Fetc",
        "v=%2Fabs",
        "v=a%2Fb",
        "v=%2E",
        "v=%C3%A9%20%C3%BC",
    ]


def test_custom_output_template(tmp_path: Path) -> None:
    """An output template may use {job}, {repeat}, grid and fixed parameters."""
    body = """
    output = "reports/{job}/{period}-{kind}-{repeat}.parquet"
    [job.params]
    kind = "full"
    [job.grid.period]
    every = "quarter"
    start = "2023"
    end = "2023"
    """
    sql = "SELECT {kind} WHERE c >= {period_start}"
    jobs = load_jobs([write(tmp_path, job(body, sql=sql))])
    assert [j.output.as_posix() for j in jobs] == [
        f"reports/j/2023-Q{q}-full-0.parquet" for q in range(1, 5)
    ]


def test_template_omitting_a_grid_axis_is_a_duplicate_output(tmp_path: Path) -> None:
    """An output template that drops a grid axis makes two jobs share a path: an error."""
    body = 'output = "{job}/part.parquet"\n[job.grid]\nx = [1, 2]\n'
    error = load_error(tmp_path, job(body, sql="SELECT {x}"))
    assert error.field == "output"
    assert "'j@x=1' and 'j@x=2' would both write j/part.parquet" in str(error)


def test_outputs_differing_only_by_case_collide(tmp_path: Path) -> None:
    """Paths that differ only in letter case count as the same file (macOS, Windows)."""
    body = '[job.grid]\nc = ["usd", "USD"]\n'
    error = load_error(tmp_path, job(body, sql="SELECT {c}"))
    assert "would both write j/c=usd/part-0.parquet and j/c=USD/part-0.parquet" in str(error)
    assert "differing only in letter case" in str(error)


def test_repeat_without_repeat_placeholder_collides(tmp_path: Path) -> None:
    """repeat > 1 with an output template lacking {repeat} is reported."""
    error = load_error(tmp_path, job('repeat = 2\noutput = "{job}.parquet"\n'))
    assert "would both write j.parquet" in str(error)


def test_saved_query_job(tmp_path: Path) -> None:
    """A saved-query job has no SQL and a hash of the saved query id."""
    path = write(tmp_path, '[[job]]\nname = "s"\nsaved_query = "qfl_123abc"\nrepeat = 2\n')
    jobs = load_jobs([path])
    assert [(j.id, j.sql, j.saved_query) for j in jobs] == [
        ("s#r0", None, "qfl_123abc"),
        ("s#r1", None, "qfl_123abc"),
    ]
    assert jobs[0].sql_hash == hashlib.sha256(b"saved_query:qfl_123abc").hexdigest()


def test_jobs_are_frozen_and_hashable(tmp_path: Path) -> None:
    """Job is an immutable value usable in sets."""
    jobs = load_jobs([write(tmp_path, BASIC)])
    assert len(set(jobs)) == len(jobs)
    with pytest.raises(AttributeError):
        jobs[0].id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        jobs[0].params["currency"] = "x"  # type: ignore[index]


# --- stable ids ---------------------------------------------------------------------------


def test_ids_are_stable_across_loads_and_locations(tmp_path: Path) -> None:
    """The same content gives the same ids and hashes, wherever the file lives."""
    first = load_jobs([write(tmp_path, BASIC)])
    (tmp_path / "elsewhere").mkdir()
    second = load_jobs([write(tmp_path / "elsewhere", BASIC, name="other.toml")])
    assert [(j.id, j.sql_hash, j.output) for j in first] == [
        (j.id, j.sql_hash, j.output) for j in second
    ]


def test_ids_do_not_depend_on_hash_randomization(tmp_path: Path) -> None:
    """Ids are identical in interpreters with different hash seeds."""
    path = write(
        tmp_path,
        BASIC + "\n" + job('[job.grid]\nv = ["a,b=c", "x#y"]\n', name="k", sql="SELECT {v}"),
    )
    script = (
        "import sys, json; from pathlib import Path; from batchrunner.jobs import load_jobs; "
        "print(json.dumps([(j.id, j.sql_hash) for j in load_jobs([Path(sys.argv[1])])]))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 8


def test_editing_another_job_keeps_ids(tmp_path: Path) -> None:
    """Changing one job's SQL changes neither another job's ids nor its hashes."""
    other = job("", name="other", sql="SELECT 1")
    before = load_jobs([write(tmp_path, BASIC + "\n" + other)])
    changed = job("", name="other", sql="SELECT 2")
    after = load_jobs([write(tmp_path, BASIC + "\n" + changed)])
    keep = [(j.id, j.sql_hash) for j in before if j.name == "report"]
    assert keep == [(j.id, j.sql_hash) for j in after if j.name == "report"]
    assert [j.id for j in before if j.name == "other"] == ["other"]
    assert [j.sql_hash for j in before if j.name == "other"] != [
        j.sql_hash for j in after if j.name == "other"
    ]


def test_ids_are_unique_and_file_name_safe(tmp_path: Path) -> None:
    """Values with separators, quotes and unicode give distinct, file-name-safe ids."""
    values = ["a,b", "a=b", "a#b", "a/b", "a b", "ü", "", "'", "a%2Cb"]
    body = f"[job.grid]\nv = {json.dumps(values)}\n"
    jobs = load_jobs([write(tmp_path, job(body, sql="SELECT {v}"))])
    ids = [j.id for j in jobs]
    assert len(set(ids)) == len(values)
    for job_id in ids:
        assert _ID_CHARS.fullmatch(job_id), job_id
        (tmp_path / job_id).touch()  # a real file of that name can exist


def test_long_coordinates_are_hashed_stably(tmp_path: Path) -> None:
    """Over-long grid coordinates are replaced by a short sha256 in the id."""
    long_values = ["x" * 150, "y" * 150]
    body = f"[job.grid]\nv = {json.dumps(long_values)}\nn = [1]\n"
    jobs = load_jobs([write(tmp_path, job(body, sql="SELECT {v}, {n}"))])
    coords = f"v={'x' * 150},n=1"
    assert jobs[0].id == "j@h=" + hashlib.sha256(coords.encode()).hexdigest()[:16]
    assert jobs[0].id != jobs[1].id


# --- only filter and multiple files ------------------------------------------------------


def test_only_filters_by_id_or_name(tmp_path: Path) -> None:
    """`only` is a glob on the job id or the job name; no match gives an empty list."""
    path = write(tmp_path, BASIC + "\n" + job("", name="other"))
    assert [j.id for j in load_jobs([path], only="other")] == ["other"]
    assert len(load_jobs([path], only="report")) == 6
    assert [j.id for j in load_jobs([path], only="report@period=2023-02,*")] == [
        "report@period=2023-02,currency=usd",
        "report@period=2023-02,currency=eur",
    ]
    assert len(load_jobs([path], only="*currency=eur")) == 3
    assert load_jobs([path], only="nothing*") == []
    assert len(load_jobs([path], only="*")) == 7


def test_duplicate_ids_across_files_are_rejected(tmp_path: Path) -> None:
    """The same job name in two files is an error naming both files."""
    a = write(tmp_path, job("", name="same"), name="a.toml")
    b = write(tmp_path, job("", name="same", sql="SELECT 2"), name="b.toml")
    with pytest.raises(JobFileError) as info:
        load_jobs([a, b])
    assert str(b) in str(info.value)
    assert str(a) in str(info.value)
    assert "job id 'same' is also defined in" in str(info.value)


def test_duplicate_outputs_across_files_are_rejected(tmp_path: Path) -> None:
    """Two jobs in different files writing the same path are an error."""
    a = write(tmp_path, job('output = "shared.parquet"\n', name="a"), name="a.toml")
    b = write(tmp_path, job('output = "shared.parquet"\n', name="b"), name="b.toml")
    with pytest.raises(JobFileError, match=r"would write shared.parquet, as does 'a'"):
        load_jobs([a, b])


def test_directories_and_repeated_paths(tmp_path: Path) -> None:
    """A directory means its *.toml files by name; a file named twice is read once."""
    write(tmp_path, job("", name="b"), name="b.toml")
    a = write(tmp_path, job("", name="a"), name="a.toml")
    (tmp_path / "notes.txt").write_text("not a job file")
    assert [j.id for j in load_jobs([tmp_path, a])] == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(JobFileError, match=r"no \*\.toml job files"):
        load_jobs([empty])


# --- the error catalogue -----------------------------------------------------------------


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error names the file, line and column."""
    error = load_error(tmp_path, '[[job]]\nname = "x"\nsql = \n')
    assert "not valid TOML" in str(error)
    assert "line 3, column 7" in str(error)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (job('outptu = "x.parquet"\n'), "outptu", "unknown key 'outptu'; did you mean 'output'?"),
        (
            job('[job.grid.period]\nevery = "month"\nstart = "2023"\nend = "2023"\nstep = 2\n'),
            "grid.period.step",
            "unknown key 'step'",
        ),
        ("jobs = []\n", "jobs", "unknown key 'jobs'; did you mean 'job'?"),
    ],
)
def test_unknown_keys_are_named_with_alternatives(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    """An unknown key at any level is named, with a suggestion and the allowed keys."""
    error = load_error(tmp_path, text)
    assert error.field == field
    assert message in str(error)
    assert "(allowed: " in str(error)


def test_unknown_job_key_lists_allowed_keys(tmp_path: Path) -> None:
    """The allowed-keys list of a job is complete and sorted."""
    error = load_error(tmp_path, job("colour = 1\n"))
    assert (
        "(allowed: deadline, grid, name, output, params, repeat, saved_query, sql, types)"
        in str(error)
    )
    assert error.job == "j"


CATALOGUE = [
    # (id, job file text, field, message fragment)
    (
        "both",
        '[[job]]\nname = "j"\nsql = "SELECT 1"\nsaved_query = "qfl_1"\n',
        "sql",
        "both are set",
    ),
    ("neither", '[[job]]\nname = "j"\n', "sql", "neither is set"),
    ("empty sql", '[[job]]\nname = "j"\nsql = "  "\n', "sql", "non-empty string"),
    (
        "bad saved id",
        '[[job]]\nname = "j"\nsaved_query = "x; y"\n',
        "saved_query",
        "is not a saved query id",
    ),
    (
        "missing placeholder",
        job("[job.params]\nmin_amount = 1\n", sql="SELECT {min_amont}, {min_amount}"),
        "sql",
        "placeholder {min_amont} has no value; did you mean 'min_amount'?",
    ),
    (
        "unused param",
        job("[job.params]\nunused = 1\n"),
        "params.unused",
        "parameter 'unused' is not used in the SQL",
    ),
    (
        "unused grid axis",
        job('[job.grid]\ncurrency = ["usd"]\n'),
        "grid.currency",
        "grid axis 'currency' is not used in the SQL",
    ),
    (
        "unused period axis",
        job('[job.grid.period]\nevery = "day"\nstart = "2023-01-01"\nend = "2023-01-02"\n'),
        "grid.period",
        "use {period} or {period_start} or {period_end}",
    ),
    (
        "saved query params",
        '[[job]]\nname = "j"\nsaved_query = "qfl_1"\n[job.params]\nx = 1\n',
        "params",
        "a saved query takes no parameters",
    ),
    (
        "saved query grid",
        '[[job]]\nname = "j"\nsaved_query = "qfl_1"\n[job.grid]\nx = [1]\n',
        "grid",
        "a saved query takes no parameters",
    ),
    (
        "empty grid",
        job("[job.grid]\nx = []\n", sql="SELECT {x}"),
        "grid.x",
        "no values gives no jobs",
    ),
    (
        "start after end",
        job(
            '[job.grid.p]\nevery = "month"\nstart = "2024-01"\nend = "2023-12"\n', sql="SELECT {p}"
        ),
        "grid.p",
        "start '2024-01' is after end '2023-12'",
    ),
    (
        "bad month",
        job('[job.grid.p]\nevery = "month"\nstart = "2023-13"\nend = "2024"\n', sql="SELECT {p}"),
        "grid.p.start",
        "month 13 is not 1..12",
    ),
    (
        "bad end date",
        job('[job.grid.p]\nevery = "day"\nstart = "2023"\nend = "2023-02-30"\n', sql="SELECT {p}"),
        "grid.p.end",
        "day is out of range for month",
    ),
    (
        "datetime bound",
        job(
            '[job.grid.p]\nevery = "day"\nstart = 2023-01-01T00:00:00\nend = "2023"\n',
            sql="SELECT {p}",
        ),
        "grid.p.start",
        "expected a date",
    ),
    (
        "bad every",
        job('[job.grid.p]\nevery = "monthly"\nstart = "2023"\nend = "2023"\n', sql="SELECT {p}"),
        "grid.p.every",
        "'monthly' is not a period; did you mean 'month'?",
    ),
    (
        "missing every",
        job('[job.grid.p]\nstart = "2023"\nend = "2023"\n', sql="SELECT {p}"),
        "grid.p.every",
        "a period grid needs every, start, end",
    ),
    (
        "duplicate names",
        job("", name="dup") + "\n" + job("", name="dup"),
        "name",
        "job name 'dup' is used by [[job]] #1 and #2",
    ),
    ("unsafe name", job("", name="../evil"), "name", "is not a valid job name"),
    ("space in name", job("", name="a b"), "name", "is not a valid job name"),
    ("dot name", job("", name=".hidden"), "name", "is not a valid job name"),
    ("empty name", job("", name=""), "name", "is not a valid job name"),
    ("missing name", '[[job]]\nsql = "SELECT 1"\n', "name", "[[job]] #1 has no name"),
    ("repeat zero", job("repeat = 0\n"), "repeat", "whole number from 1 to 10000, got 0"),
    ("repeat bool", job("repeat = true\n"), "repeat", "got True"),
    ("repeat string", job('repeat = "3"\n'), "repeat", "got '3'"),
    (
        "unknown type",
        job('[job.types]\namount = "bigintt"\n'),
        "types.amount",
        "unknown column type 'bigintt'; did you mean 'bigint'?",
    ),
    (
        "bad decimal",
        job('[job.types]\namount = "decimal(40,2)"\n'),
        "types.amount",
        "unknown column type",
    ),
    (
        "type not string",
        job("[job.types]\namount = 1\n"),
        "types.amount",
        "a column type is a string",
    ),
    ("bad deadline", job('deadline = "soon"\n'), "deadline", "is not a duration"),
    ("zero deadline", job("deadline = 0\n"), "deadline", "not a positive duration"),
    ("output absolute", job('output = "/tmp/x.parquet"\n'), "output", "must be relative"),
    ("output dotdot", job('output = "../x.parquet"\n'), "output", "may not start with '.'"),
    ("output not parquet", job('output = "{job}.csv"\n'), "output", "must end in '.parquet'"),
    (
        "output unknown placeholder",
        job('output = "{jbo}.parquet"\n'),
        "output",
        "{jbo} has no value; did you mean 'job'?",
    ),
    (
        "output list param",
        job(
            'output = "{job}-{l}.parquet"\n[job.params]\nl = [1, 2]\n',
            sql="SELECT 1 WHERE x IN {l}",
        ),
        "output",
        "list parameter {l} cannot be part of a path",
    ),
    (
        "time param",
        job("[job.params]\nt = 10:00:00\n", sql="SELECT {t}"),
        "params.t",
        "a time of day cannot be",
    ),
    (
        "table param",
        job("[job.params]\nt = { a = 1 }\n", sql="SELECT {t}"),
        "params.t",
        "a table cannot be",
    ),
    (
        "nan param",
        job("[job.params]\nf = nan\n", sql="SELECT {f}"),
        "params.f",
        "only finite numbers",
    ),
    ("nul param", job('[job.params]\ns = "a\\u0000b"\n', sql="SELECT {s}"), "params.s", "NUL"),
    (
        "mixed list",
        job('[job.params]\nl = [1, "a"]\n', sql="SELECT {l}"),
        "params.l",
        "of one type, got number, string",
    ),
    (
        "nested list",
        job("[job.params]\nl = [[1]]\n", sql="SELECT {l}"),
        "params.l[0]",
        "a list is not allowed here",
    ),
    (
        "empty list param",
        job("[job.params]\nl = []\n", sql="SELECT {l}"),
        "params.l",
        "an empty list",
    ),
    (
        "duplicate grid value",
        job('[job.grid]\nc = ["usd", "usd"]\n', sql="SELECT {c}"),
        "grid.c",
        "'usd' is listed twice",
    ),
    (
        "grid scalar",
        job("[job.grid]\nc = 1\n", sql="SELECT {c}"),
        "grid.c",
        "a grid axis is a list",
    ),
    (
        "reserved param",
        job("[job.params]\njob = 1\n", sql="SELECT {job}"),
        "params.job",
        "'job' is reserved",
    ),
    (
        "bad param name",
        job('[job.params]\n"a-b" = 1\n'),
        "params.a-b",
        "not a valid parameter name",
    ),
    (
        "name clash",
        job(
            "[job.params]\nperiod_start = 1\n"
            '[job.grid.period]\nevery = "day"\nstart = "2023"\nend = "2023"\n',
            sql="SELECT {period_start}",
        ),
        "grid.period",
        "'period_start' is already defined by params.period_start",
    ),
    (
        "sql placeholder in string",
        job("", sql="SELECT 1\nWHERE x = '{x}'"),
        "sql",
        "inside a string literal",
    ),
    (
        "sql error position",
        job("", sql="SELECT 1\nWHERE x = '{x}'"),
        "sql",
        "(line 2, column 12 of the template)",
    ),
    ("sql attribute access", job("", sql="SELECT {x.__class__}"), "sql", "is not a placeholder"),
    ("job as table", '[job]\nname = "j"\n', "job", "write [[job]], not [job]"),
]


@pytest.mark.parametrize(
    ("text", "field", "message"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_error_catalogue(tmp_path: Path, text: str, field: str, message: str) -> None:
    """Each invalid job file is refused with a message naming the file, job and field."""
    error = load_error(tmp_path, text)
    assert error.field == field
    assert message in str(error)
    if field not in ("job",):
        assert error.job is not None
        assert f"job {error.job!r}" in str(error)


def test_empty_file_has_no_jobs(tmp_path: Path) -> None:
    """A file without [[job]] tables is an error, not silently nothing."""
    assert "no jobs" in str(load_error(tmp_path, "# nothing here\n"))


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    """A missing file and a non-UTF-8 file are JobFileErrors naming the path."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(JobFileError, match="cannot read the file"):
        load_job_file(missing)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[job]]\nname = "caf\xe9"\n')
    with pytest.raises(JobFileError, match="not UTF-8"):
        load_job_file(latin)


def test_error_carries_path_job_and_field(tmp_path: Path) -> None:
    """JobFileError exposes path, job and field as attributes."""
    path = write(tmp_path, job("repeat = -1\n", name="bench"))
    with pytest.raises(JobFileError) as info:
        load_job_file(path)
    assert (info.value.path, info.value.job, info.value.field) == (str(path), "bench", "repeat")
    assert str(info.value).startswith(f"{path}: job 'bench': field 'repeat': ")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        (" 0.5s ", 0.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """Deadlines are seconds or s/m/h strings, compound allowed."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, "30", "5 min", "-1s", 0, -3, float("inf"), "0s", None])
def test_parse_duration_rejects(value: object) -> None:
    """Booleans, unitless strings and non-positive or infinite durations are refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("BIGINT", "bigint"),
        ("Varchar", "varchar"),
        ("decimal(38, 18)", "decimal(38,18)"),
        ("DECIMAL(10)", "decimal(10,0)"),
        ("timestamp(3)", "timestamp(3)"),
        ("varchar(20)", "varchar(20)"),
        ("double", "double"),
        ("INT", "integer"),
        ("char(3)", "char(3)"),
    ],
)
def test_column_types_normalise(name: str, canonical: str) -> None:
    """Column type names are matched case- and space-insensitively and canonicalised."""
    assert normalize_column_type(name) == canonical


@pytest.mark.parametrize(
    "name",
    [
        "string",
        "bool",
        "decimal(0,0)",
        "decimal(5,6)",
        "timestamp(12)",
        "varchar(0)",
        "array(bigint)",
    ],
)
def test_column_types_reject(name: str) -> None:
    """Unknown or out-of-range type names are refused."""
    with pytest.raises(ValueError, match="unknown column type"):
        normalize_column_type(name)


def test_expand_is_pure(tmp_path: Path) -> None:
    """Expanding the same spec twice gives equal jobs."""
    (spec,) = load_job_file(write(tmp_path, BASIC))
    first: list[Job] = expand(spec)
    assert first == expand(spec)
    assert spec.grid[0].every == "month"
    assert spec.grid[1].provides == ("currency",)
