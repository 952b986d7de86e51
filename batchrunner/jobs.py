"""Job files: TOML in, validated :class:`JobSpec` values, expanded into concrete :class:`Job` runs.

A job file holds one or more ``[[job]]`` tables (the format is documented in the README's
"Job files" section). Loading checks everything that can be checked without running anything
and raises :class:`~batchrunner.errors.JobFileError` naming the file, the job and the field;
:func:`expand` turns one spec into the cartesian product of its grid (axes in declared order,
periods ascending, repeats innermost) with SQL rendered through typed literals only.

Job ids are stable: they are built from the job name, the grid coordinates and the repeat
index (hashed with :mod:`hashlib` only when long), never from anything random or from other
jobs, so the same file gives the same ids on every run and machine.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import itertools
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn

from batchrunner.errors import JobFileError
from batchrunner.literals import (
    ParamValue,
    Scalar,
    Template,
    is_identifier,
    parse_sql_template,
    render_sql,
    trino_literal,
)
from batchrunner.paths import (
    default_output_template,
    encode_text,
    parse_output_template,
    path_text,
    render_output_path,
)
from batchrunner.periods import GRANULARITIES, parse_bound, period_grid

JOB_KEYS: Final = (
    "name",
    "sql",
    "saved_query",
    "params",
    "grid",
    "output",
    "repeat",
    "deadline",
    "types",
)
"""The keys a ``[[job]]`` table may have."""

PERIOD_KEYS: Final = ("every", "start", "end")
"""The keys of a period grid axis table."""

RESERVED_NAMES: Final = frozenset({"job", "repeat"})
"""Placeholders the output template gets from the job itself; not usable as parameters."""

MAX_REPEAT: Final = 10_000
MAX_JOBS_PER_SPEC: Final = 100_000
MAX_NAME_LENGTH: Final = 100
_MAX_COORDINATES: Final = 120  # longer grid coordinates are hashed in ids (file-name limits)

_JOB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SAVED_QUERY = re.compile(r"qfl_[A-Za-z0-9_]+")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}

COLUMN_TYPES: Final = (
    "bigint",
    "boolean",
    "char",
    "char(n)",
    "date",
    "decimal(p,s)",
    "double",
    "integer",
    "real",
    "smallint",
    "timestamp",
    "timestamp(p)",
    "tinyint",
    "varchar",
    "varchar(n)",
)
"""The Trino type names ``[job.types]`` accepts (case and spaces are normalised)."""

_SIMPLE_TYPES: Final = frozenset(t for t in COLUMN_TYPES if "(" not in t)
_TYPE_ALIASES: Final = {"int": "integer"}  # Trino accepts INT for INTEGER
_SIZED_TYPE = re.compile(r"(decimal|varchar|char|timestamp)\((\d+)(?:,(\d+))?\)")


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One value of a grid axis: its key (for ids and default paths) and the values it sets."""

    key: Scalar
    values: Mapping[str, ParamValue]


@dataclass(frozen=True, slots=True)
class GridAxis:
    """One grid axis: a list of values, or a period grid (``every`` set).

    A list axis ``currency`` provides ``{currency}``; a period axis ``period`` provides
    ``{period}`` (the label, e.g. ``"2023-01"``), ``{period_start}`` and ``{period_end}``
    (TIMESTAMPs, end exclusive).
    """

    name: str
    points: tuple[GridPoint, ...]
    provides: tuple[str, ...]
    every: str | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One ``[[job]]`` table from a file, validated."""

    name: str
    path: Path
    sql: str | None
    saved_query: str | None
    params: Mapping[str, ParamValue]
    grid: tuple[GridAxis, ...]
    output: str | None
    column_types: Mapping[str, str]
    repeat: int
    deadline_s: float | None

    def __hash__(self) -> int:
        return hash((self.path, self.name))


@dataclass(frozen=True, slots=True)
class Job:
    """One concrete run: final SQL (or saved query), its parameters and its output path."""

    id: str
    name: str
    source: Path
    sql: str | None
    saved_query: str | None
    params: Mapping[str, ParamValue]
    output: Path
    column_types: Mapping[str, str]
    repeat_index: int
    deadline_s: float | None
    sql_hash: str

    def __hash__(self) -> int:
        return hash(self.id)


class _Where:
    """Raises :class:`JobFileError` for one file and (once known) one job."""

    def __init__(self, path: Path, job: str | None = None) -> None:
        self.path = path
        self.job = job

    def fail(self, message: str, field: str | None = None) -> NoReturn:
        raise JobFileError(str(self.path), message, job=self.job, field=field)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(
    table: Mapping[str, Any], allowed: Sequence[str], where: _Where, prefix: str
) -> None:
    for key in table:
        if key not in allowed:
            where.fail(
                f"unknown key {key!r}{_did_you_mean(key, allowed)} "
                f"(allowed: {', '.join(sorted(allowed))})",
                field=prefix + key,
            )


def parse_duration(value: object) -> float:
    """Seconds from a positive number or a string like ``"90s"``, ``"30m"``, ``"1h30m"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit]
            for amount, unit in _DURATION_PART.findall(value.strip())
        )
    else:
        raise ValueError(f"{value!r} is not a duration; write seconds or '90s', '30m', '2h'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def normalize_column_type(name: str) -> str:
    """The canonical spelling of a Trino column type name, or :class:`ValueError`."""
    compact = "".join(name.split()).lower()
    compact = _TYPE_ALIASES.get(compact, compact)
    if compact in _SIMPLE_TYPES:
        return compact
    if m := _SIZED_TYPE.fullmatch(compact):
        kind, first, second = m[1], int(m[2]), m[3]
        if kind == "decimal":
            scale = int(second) if second is not None else 0
            if 1 <= first <= 38 and 0 <= scale <= first:
                return f"decimal({first},{scale})"
        elif second is None:
            if kind in ("varchar", "char") and first >= 1:
                return f"{kind}({first})"
            if kind == "timestamp" and first <= 9:
                return f"timestamp({first})"
    choices = sorted(_SIMPLE_TYPES)
    raise ValueError(
        f"unknown column type {name!r}{_did_you_mean(compact, choices)} "
        f"(known: {', '.join(COLUMN_TYPES)}; decimal 1<=p<=38, 0<=s<=p; timestamp p<=9)"
    )


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, date):
        return "date"
    return "string"


def _scalar(value: object, where: _Where, field: str) -> Scalar:
    """Check one TOML value can be a parameter; aware datetimes become naive UTC."""
    if isinstance(value, dict):
        where.fail("a table cannot be a parameter value", field)
    if isinstance(value, list):
        where.fail("a list is not allowed here", field)
    if isinstance(value, time):
        where.fail("a time of day cannot be a parameter; use a date or a date and time", field)
    if isinstance(value, datetime) and value.utcoffset() is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if not isinstance(value, str | int | float | date):
        where.fail(f"a {type(value).__name__} cannot be a parameter value", field)
    try:
        trino_literal(value)
    except (ValueError, TypeError) as exc:
        where.fail(str(exc), field)
    return value


def _scalar_list(
    values: list[Any], where: _Where, field: str, *, unique: bool
) -> tuple[Scalar, ...]:
    if not values:
        what = "a grid axis with no values gives no jobs" if unique else "an empty list"
        where.fail(f"{what}; give at least one value", field)
    items = tuple(_scalar(v, where, f"{field}[{i}]") for i, v in enumerate(values))
    kinds = {_kind(v) for v in items}
    if len(kinds) > 1:
        where.fail(f"values must all be of one type, got {', '.join(sorted(kinds))}", field)
    if unique:
        seen: set[Scalar] = set()
        for item in items:
            if item in seen:
                where.fail(f"value {item!r} is listed twice", field)
            seen.add(item)
    return items


def _check_name(name: str, where: _Where, field: str, taken: dict[str, str]) -> None:
    if not is_identifier(name):
        where.fail(
            f"{name!r} is not a valid parameter name (letters, digits and _, not starting "
            "with a digit)",
            field,
        )
    if name in RESERVED_NAMES:
        where.fail(f"{name!r} is reserved for the output path; choose another name", field)
    if name in taken:
        where.fail(f"{name!r} is already defined by {taken[name]}", field)
    taken[name] = field


def _parse_params(raw: object, where: _Where, taken: dict[str, str]) -> dict[str, ParamValue]:
    if not isinstance(raw, dict):
        where.fail("must be a table of name = value", "params")
    params: dict[str, ParamValue] = {}
    for name, value in raw.items():
        field = f"params.{name}"
        _check_name(name, where, field, taken)
        if isinstance(value, list):
            params[name] = _scalar_list(value, where, field, unique=False)
        else:
            params[name] = _scalar(value, where, field)
    return params


def _parse_period_axis(
    name: str, raw: dict[str, Any], where: _Where, taken: dict[str, str]
) -> GridAxis:
    prefix = f"grid.{name}."
    _check_keys(raw, PERIOD_KEYS, where, prefix)
    for key in PERIOD_KEYS:
        if key not in raw:
            where.fail(f"a period grid needs {', '.join(PERIOD_KEYS)}", prefix + key)
    every = raw["every"]
    if not isinstance(every, str) or every not in GRANULARITIES:
        hint = _did_you_mean(every, GRANULARITIES) if isinstance(every, str) else ""
        where.fail(
            f"{every!r} is not a period{hint} (one of {', '.join(GRANULARITIES)})",
            prefix + "every",
        )
    for key in ("start", "end"):
        try:
            parse_bound(raw[key])  # first, to name the bound at fault
        except (ValueError, TypeError) as exc:
            where.fail(str(exc), prefix + key)
    try:
        periods = period_grid(every=every, start=raw["start"], end=raw["end"])
    except (ValueError, TypeError) as exc:
        where.fail(str(exc), f"grid.{name}")
    provides = (name, f"{name}_start", f"{name}_end")
    for placeholder in provides:
        _check_name(placeholder, where, f"grid.{name}", taken)
    points = tuple(
        GridPoint(
            key=p.label,
            values=MappingProxyType(
                {name: p.label, f"{name}_start": p.start_ts, f"{name}_end": p.end_ts}
            ),
        )
        for p in periods
    )
    return GridAxis(name=name, points=points, provides=provides, every=every)


def _parse_grid(raw: object, where: _Where, taken: dict[str, str]) -> tuple[GridAxis, ...]:
    if not isinstance(raw, dict):
        where.fail("must be a table of axes: name = [values] or name = {every, start, end}", "grid")
    axes: list[GridAxis] = []
    for name, value in raw.items():
        field = f"grid.{name}"
        if isinstance(value, dict):
            axes.append(_parse_period_axis(name, value, where, taken))
        elif isinstance(value, list):
            _check_name(name, where, field, taken)
            values = _scalar_list(value, where, field, unique=True)
            points = tuple(GridPoint(key=v, values=MappingProxyType({name: v})) for v in values)
            axes.append(GridAxis(name=name, points=points, provides=(name,)))
        else:
            where.fail(
                "a grid axis is a list of values or a period table {every, start, end}", field
            )
    return tuple(axes)


def _parse_types(raw: object, where: _Where) -> dict[str, str]:
    if not isinstance(raw, dict):
        where.fail('must be a table of column = "trino type"', "types")
    types: dict[str, str] = {}
    for column, name in raw.items():
        field = f"types.{column}"
        if not column.strip():
            where.fail("a column name cannot be empty", field)
        if not isinstance(name, str):
            where.fail('a column type is a string such as "bigint"', field)
        try:
            types[column] = normalize_column_type(name)
        except (ValueError, TypeError) as exc:
            where.fail(str(exc), field)
    return types


def _parse_sql(sql: str, where: _Where) -> Template:
    try:
        return parse_sql_template(sql)
    except (ValueError, TypeError) as exc:
        where.fail(str(exc), "sql")


def _parse_output(output: str, where: _Where) -> Template:
    try:
        return parse_output_template(output)
    except (ValueError, TypeError) as exc:
        where.fail(str(exc), "output")


def _check_placeholders(
    sql: Template,
    output: Template | None,
    params: Mapping[str, ParamValue],
    axes: Sequence[GridAxis],
    where: _Where,
) -> None:
    available = [*params, *(n for axis in axes for n in axis.provides)]
    used = set(sql.names)
    for name in sql.names:
        if name not in available:
            defined = ", ".join(available) or "none"
            where.fail(
                f"placeholder {{{name}}} has no value{_did_you_mean(name, available)} "
                f"(defined: {defined}; add it to [job.params] or [job.grid])",
                "sql",
            )
    for name in params:
        if name not in used:
            where.fail(
                f"parameter {name!r} is not used in the SQL; remove it or use {{{name}}}",
                f"params.{name}",
            )
    for axis in axes:
        if not used.intersection(axis.provides):
            names = " or ".join(f"{{{n}}}" for n in axis.provides)
            where.fail(
                f"grid axis {axis.name!r} is not used in the SQL (every run would send the "
                f"same query); use {names}",
                f"grid.{axis.name}",
            )
    if output is None:
        return
    path_names = [*available, *sorted(RESERVED_NAMES)]
    for name in output.names:
        if name not in path_names:
            where.fail(
                f"placeholder {{{name}}} has no value{_did_you_mean(name, path_names)} "
                f"(available: {', '.join(path_names)})",
                "output",
            )
        if isinstance(params.get(name), tuple):
            where.fail(f"list parameter {{{name}}} cannot be part of a path", "output")


def _parse_spec(path: Path, index: int, table: dict[str, Any]) -> JobSpec:
    raw_name = table.get("name")
    label = raw_name if isinstance(raw_name, str) and raw_name else f"#{index}"
    where = _Where(path, label)
    _check_keys(table, JOB_KEYS, where, "")

    if "name" not in table:
        where.fail(f"[[job]] #{index} has no name", "name")
    name = table["name"]
    if not isinstance(name, str) or not _JOB_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        where.fail(
            f"{name!r} is not a valid job name: 1-{MAX_NAME_LENGTH} of A-Z a-z 0-9 _ . - "
            "starting with a letter, digit or _",
            "name",
        )

    sql, saved_query = table.get("sql"), table.get("saved_query")
    if (sql is None) == (saved_query is None):
        where.fail(
            "give exactly one of 'sql' and 'saved_query'"
            + (" (both are set)" if sql is not None else " (neither is set)"),
            "sql",
        )
    if sql is not None and (not isinstance(sql, str) or not sql.strip()):
        where.fail("must be a non-empty string", "sql")
    if saved_query is not None and (
        not isinstance(saved_query, str) or not _SAVED_QUERY.fullmatch(saved_query)
    ):
        where.fail(f"{saved_query!r} is not a saved query id (qfl_...)", "saved_query")

    taken: dict[str, str] = {}
    params = _parse_params(table.get("params", {}), where, taken)
    axes = _parse_grid(table.get("grid", {}), where, taken)
    if saved_query is not None:
        for key, present in (("params", params), ("grid", axes)):
            if present:
                where.fail("a saved query takes no parameters; remove this or use 'sql'", key)

    output = table.get("output")
    if output is not None and not isinstance(output, str):
        where.fail('must be a string such as "{job}/period={period}/part-0.parquet"', "output")
    output_template = _parse_output(output, where) if output is not None else None
    if sql is not None:
        _check_placeholders(_parse_sql(sql, where), output_template, params, axes, where)
    elif output_template is not None:
        _check_placeholders(Template("", ()), output_template, params, axes, where)

    repeat = table.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
        where.fail(f"must be a whole number from 1 to {MAX_REPEAT}, got {repeat!r}", "repeat")

    deadline_s: float | None = None
    if "deadline" in table:
        try:
            deadline_s = parse_duration(table["deadline"])
        except (ValueError, TypeError) as exc:
            where.fail(str(exc), "deadline")

    return JobSpec(
        name=name,
        path=path,
        sql=sql,
        saved_query=saved_query,
        params=MappingProxyType(params),
        grid=axes,
        output=output,
        column_types=MappingProxyType(_parse_types(table.get("types", {}), where)),
        repeat=repeat,
        deadline_s=deadline_s,
    )


def load_job_file(path: Path) -> list[JobSpec]:
    """Read and validate one job file; every problem is a :class:`JobFileError`."""
    where = _Where(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        where.fail(f"cannot read the file: {exc.strerror or exc}")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        where.fail(f"not UTF-8 text (bad byte at offset {exc.start})")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where.fail(f"not valid TOML: {exc}")
    _check_keys(document, ("job",), where, "")
    tables = document.get("job")
    if tables is None:
        where.fail("no jobs: a job file holds one or more [[job]] tables")
    if not isinstance(tables, list):
        where.fail("'job' must be an array of tables: write [[job]], not [job]", "job")
    specs: list[JobSpec] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            where.fail(f"[[job]] #{index} is not a table", "job")
        spec = _parse_spec(path, index, table)
        if spec.name in first_index:
            _Where(path, spec.name).fail(
                f"job name {spec.name!r} is used by [[job]] #{first_index[spec.name]} and "
                f"#{index}; names must be unique",
                "name",
            )
        first_index[spec.name] = index
        specs.append(spec)
    return specs


def _job_id(name: str, coordinates: Sequence[tuple[str, Scalar]], index: int, repeat: int) -> str:
    job_id = name
    if coordinates:
        # Percent-encoding keeps ',', '=', '/', '#' in values from reading as structure.
        coords = ",".join(f"{axis}={encode_text(path_text(key))}" for axis, key in coordinates)
        if len(coords) > _MAX_COORDINATES:
            coords = "h=" + hashlib.sha256(coords.encode("utf-8")).hexdigest()[:16]
        job_id += "@" + coords
    if repeat > 1:
        job_id += f"#r{index}"
    return job_id


def _render(template: Template, values: Mapping[str, ParamValue], where: _Where) -> str:
    try:
        return render_sql(template, values)
    except (ValueError, TypeError) as exc:
        where.fail(str(exc), "sql")


def expand(spec: JobSpec) -> list[Job]:
    """Every run of one spec: the grid's cartesian product times ``repeat``, in a fixed order."""
    where = _Where(spec.path, spec.name)
    count = math.prod(len(axis.points) for axis in spec.grid) * spec.repeat
    if count > MAX_JOBS_PER_SPEC:
        where.fail(f"expands to {count} jobs, more than the limit of {MAX_JOBS_PER_SPEC}", "grid")
    sql_template = _parse_sql(spec.sql, where) if spec.sql is not None else None
    output_text = spec.output or default_output_template([axis.name for axis in spec.grid])
    output_template = _parse_output(output_text, where)

    jobs: list[Job] = []
    written: dict[str, tuple[str, str]] = {}
    for combination in itertools.product(*(axis.points for axis in spec.grid)):
        values: dict[str, ParamValue] = dict(spec.params)
        for point in combination:
            values.update(point.values)
        sql = _render(sql_template, values, where) if sql_template is not None else None
        identity = sql if sql is not None else f"saved_query:{spec.saved_query}"
        sql_hash = hashlib.sha256(identity.encode("utf-8")).hexdigest()
        coordinates = [
            (axis.name, point.key) for axis, point in zip(spec.grid, combination, strict=True)
        ]
        frozen_values = MappingProxyType(values)
        for index in range(spec.repeat):
            job_id = _job_id(spec.name, coordinates, index, spec.repeat)
            try:
                output = render_output_path(
                    output_template, {**values, "job": spec.name, "repeat": index}
                )
            except (ValueError, TypeError) as exc:
                where.fail(f"job {job_id}: {exc}", "output")
            shown = output.as_posix()
            key = shown.casefold()
            if key in written:
                other_id, other_path = written[key]
                also = f" and {shown}" if other_path != shown else ""
                case = " (paths differing only in letter case count as one)" if also else ""
                where.fail(
                    f"jobs {other_id!r} and {job_id!r} would both write {other_path}{also}{case}"
                    "; put every grid axis, and {repeat} when repeat > 1, in the output template",
                    "output",
                )
            written[key] = (job_id, shown)
            jobs.append(
                Job(
                    id=job_id,
                    name=spec.name,
                    source=spec.path,
                    sql=sql,
                    saved_query=spec.saved_query,
                    params=frozen_values,
                    output=output,
                    column_types=spec.column_types,
                    repeat_index=index,
                    deadline_s=spec.deadline_s,
                    sql_hash=sql_hash,
                )
            )
    return jobs


def _job_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, directories as their ``*.toml`` files by name; each file once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        found = sorted(path.glob("*.toml")) if path.is_dir() else [path]
        if path.is_dir() and not found:
            _Where(path).fail("the directory holds no *.toml job files")
        for file in found:
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                files.append(file)
    return files


def load_jobs(paths: Sequence[Path], *, only: str | None = None) -> list[Job]:
    """Load and expand every job file (directories: their ``*.toml`` files).

    Job ids and output paths must be unique across all files, checked before filtering.
    ``only`` is a glob (:func:`fnmatch.fnmatchcase`) matched against each job's id and its
    name; when nothing matches the result is empty and the caller decides what that means.
    """
    jobs: list[Job] = []
    ids: dict[str, Path] = {}
    outputs: dict[str, Job] = {}
    for file in _job_files(paths):
        for spec in load_job_file(file):
            for job in expand(spec):
                if job.id in ids:
                    _Where(file, job.name).fail(
                        f"job id {job.id!r} is also defined in {ids[job.id]}", "name"
                    )
                ids[job.id] = file
                key = job.output.as_posix().casefold()
                if key in outputs:
                    other = outputs[key]
                    _Where(file, job.name).fail(
                        f"job {job.id!r} would write {job.output.as_posix()}, as does "
                        f"{other.id!r} from {other.source}",
                        "output",
                    )
                outputs[key] = job
                jobs.append(job)
    if only is None:
        return jobs
    return [
        job
        for job in jobs
        if fnmatch.fnmatchcase(job.id, only) or fnmatch.fnmatchcase(job.name, only)
    ]
