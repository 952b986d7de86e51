"""Output paths: templates are checked and values cannot steer a path out of the output dir."""

from __future__ import annotations

import string
from datetime import date, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest

from batchrunner.paths import (
    MAX_COMPONENT,
    NULL_COMPONENT,
    default_output_template,
    parse_output_template,
    path_component,
    path_text,
    render_output_path,
)

HOSTILE = [
    "../",
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "..\\..\\windows",
    ".hidden",
    "C:",
    "with space",
    "café",
    "日本語",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "%2F",
    "a=b",
    "*?<>|\"'",
    "~",
    "\u202etxt.exe",
]
_SAFE = set(string.ascii_letters + string.digits + "_.-~%")


def test_default_template() -> None:
    """The default path is Hive-style over the grid axes, ending in part-{repeat}.parquet."""
    assert default_output_template([]) == "{job}/part-{repeat}.parquet"
    assert (
        default_output_template(["period", "currency"])
        == "{job}/period={period}/currency={currency}/part-{repeat}.parquet"
    )


@pytest.mark.parametrize("value", HOSTILE)
def test_component_is_inert_and_reversible(value: str) -> None:
    """A value becomes one ASCII file-name fragment that percent-decodes back to itself."""
    component = path_component(value)
    assert set(component) <= _SAFE
    assert "/" not in component
    assert "\\" not in component
    assert not component.startswith(".")
    assert component not in ("", ".", "..")
    assert unquote(component) == value


def test_components_are_injective() -> None:
    """Distinct values never share a component (so encoded paths cannot collide)."""
    components = [path_component(v) for v in HOSTILE]
    assert len(set(components)) == len(HOSTILE)


def test_empty_and_none_use_the_hive_null_partition() -> None:
    """An empty string or None becomes Hive's null partition name, never an empty segment."""
    assert path_component("") == NULL_COMPONENT
    assert path_component(None) == NULL_COMPONENT


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (-7, "-7"),
        (0.5, "0.5"),
        (date(2023, 1, 5), "2023-01-05"),
        (datetime(2023, 1, 5, 6, 7, 8), "2023-01-05T06:07:08"),
        ("usd", "usd"),
    ],
)
def test_path_text(value: object, text: str) -> None:
    """Each scalar type has one plain-text form in paths."""
    assert path_text(value) == text


def test_lists_and_long_values_are_refused() -> None:
    """Lists have no path form, and over-long components are refused, not truncated."""
    with pytest.raises(TypeError, match="list parameter"):
        path_component(("a", "b"))
    with pytest.raises(ValueError, match=f"limit is {MAX_COMPONENT}"):
        path_component("x" * (MAX_COMPONENT + 1))
    assert path_component("x" * MAX_COMPONENT) == "x" * MAX_COMPONENT


@pytest.mark.parametrize("value", HOSTILE)
def test_rendered_path_stays_under_the_output_dir(value: str, tmp_path: Path) -> None:
    """Whatever the values, the rendered path resolves inside the output directory."""
    template = parse_output_template("{job}/k={v}/{v}-x/part-{repeat}.parquet")
    rel = render_output_path(template, {"job": "j", "v": value, "repeat": 0})
    assert not rel.is_absolute()
    assert len(rel.parts) == 4
    assert ".." not in rel.parts
    assert (tmp_path / rel).resolve().is_relative_to(tmp_path.resolve())
    assert rel.name == "part-0.parquet"


def test_rendered_path_example() -> None:
    """The README's example renders as documented."""
    template = parse_output_template("{job}/period={period}/part-0.parquet")
    assert render_output_path(
        template, {"job": "monthly_balance_transactions", "period": "2023-01"}
    ) == Path("monthly_balance_transactions/period=2023-01/part-0.parquet")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("/abs/x.parquet", "must be relative"),
        ("/{job}.parquet", "must be relative"),
        ("~/x.parquet", "must be relative"),
        ("../x.parquet", "may not start with '.'"),
        ("a/../x.parquet", "may not start with '.'"),
        ("./x.parquet", "may not start with '.'"),
        ("a/.hidden.parquet", "may not start with '.'"),
        ("..{job}/x.parquet", "may not start with '.'"),
        ("a//x.parquet", "empty path segment"),
        ("a/x.parquet/", "empty path segment"),
        ("a\\x.parquet", "contains '\\\\\\\\'"),
        ("C:/x.parquet", "contains ':'"),
        ("a/b\x01.parquet", "control characters"),
        ("a/x*.parquet", "contains '\\*'"),
        ("x.csv", "must end in '.parquet'"),
        ("{job}", "must end in '.parquet'"),
        ("{job}/x.parquet{repeat}", "must end in '.parquet'"),
        ("{job.name}/x.parquet", "is not a placeholder"),
    ],
)
def test_bad_templates_are_rejected(template: str, message: str) -> None:
    """Absolute, escaping, hidden, empty-segment, odd-character and non-parquet templates fail."""
    with pytest.raises(ValueError, match=message):
        parse_output_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "{job}/period={period}/part-0.parquet",
        "reports/{job}-{period}.parquet",
        "x.parquet",
        "{job}/{{literal}}/part-{repeat}.parquet",
        "a.b/c..d/e.parquet",
    ],
)
def test_good_templates_are_accepted(template: str) -> None:
    """Relative templates of plain segments ending in .parquet parse."""
    parse_output_template(template)


def test_missing_value_is_reported() -> None:
    """Rendering names a placeholder that has no value."""
    template = parse_output_template("{job}/{period}.parquet")
    with pytest.raises(ValueError, match=r"\{period\} has no value"):
        render_output_path(template, {"job": "j"})
