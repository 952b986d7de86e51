"""Output paths from templates, never outside the output directory.

Two defences, either sufficient alone:

* the template's own text is checked: relative, ``/``-separated, no empty, ``.`` or ``..``
  segments, no segment starting with ``.``, no ``\\``, ``:``, control or Windows-reserved
  characters, and it ends in ``.parquet``;
* a parameter value becomes text inside one path segment only: it is percent-encoded
  (UTF-8, everything but ``A-Z a-z 0-9 _ . - ~``), so ``/``, ``\\``, NUL, spaces, ``%``,
  ``=`` and non-ASCII can never act as syntax, and a leading ``.`` is encoded too (``..``
  becomes ``%2E.``). pyarrow's Hive partitioning decodes percent-encoding by default, so
  ``currency=usd`` partitions read back as the original values.

Errors are :class:`ValueError` (:class:`TypeError` for a value with no path form), with
messages for the person who wrote the job file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import quote

from batchrunner.literals import Placeholder, Template, parse_template

NULL_COMPONENT: Final = "__HIVE_DEFAULT_PARTITION__"
"""How an empty string or None appears in a path (Hive's and pyarrow's null partition)."""

MAX_COMPONENT: Final = 200
"""Longest encoded value in a path: most file systems stop at 255 bytes per name."""

_FORBIDDEN: Final = frozenset('\\:*?"<>|')


def default_output_template(axes: Sequence[str]) -> str:
    """``{job}/<axis>={<axis>}/.../part-{repeat}.parquet`` over the grid axes in order."""
    return "".join(["{job}/", *(f"{axis}={{{axis}}}/" for axis in axes), "part-{repeat}.parquet"])


def path_text(value: object) -> str:
    """A parameter value as plain text, before encoding (also used in job ids)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, date):  # datetime included
        return value.isoformat()
    if isinstance(value, list | tuple):
        raise TypeError("a list parameter cannot be part of an output path")
    raise TypeError(f"a {type(value).__name__} value cannot be part of an output path")


def encode_text(text: str) -> str:
    """Percent-encode ``text`` so that it is inert inside one file name (injective)."""
    return quote(text, safe="", encoding="utf-8", errors="strict")


def path_component(value: object) -> str:
    """A parameter value as a safe piece of one path segment."""
    text = path_text(value)
    if not text:
        return NULL_COMPONENT
    encoded = encode_text(text)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]  # no hidden files, no "." or ".." segments
    if len(encoded) > MAX_COMPONENT:
        raise ValueError(
            f"value {text[:40]!r}... is {len(encoded)} characters once encoded for a path; "
            f"the limit is {MAX_COMPONENT}"
        )
    return encoded


def parse_output_template(text: str) -> Template:
    """Parse and check an output path template (relative to the output directory)."""
    if not text.strip():
        raise ValueError("the output path is empty")
    template = parse_template(text)
    if text.startswith(("/", "~")):
        raise ValueError(f"output {text!r} must be relative to the output directory, not absolute")
    literal = "".join(p for p in template.parts if isinstance(p, str))
    for char in literal:
        if char in _FORBIDDEN or ord(char) < 0x20 or ord(char) == 0x7F:
            raise ValueError(
                f"output {text!r} contains {char!r}; paths use '/' as separator and may not "
                'contain \\ : * ? " < > | or control characters'
            )
    segments: list[list[str | Placeholder]] = [[]]
    for part in template.parts:
        if isinstance(part, Placeholder):
            segments[-1].append(part)
            continue
        first, *rest = part.split("/")
        if first:
            segments[-1].append(first)
        for piece in rest:
            segments.append([piece] if piece else [])
    for segment in segments:
        if not segment:
            raise ValueError(f"output {text!r} has an empty path segment ('//' or a '/' at an end)")
        head = segment[0]
        if isinstance(head, str) and head.startswith("."):
            raise ValueError(
                f"output {text!r}: a path segment may not start with '.' "
                "(no '..', '.' or hidden files)"
            )
    tail = segments[-1][-1]
    if not (isinstance(tail, str) and tail.endswith(".parquet")):
        raise ValueError(f"output {text!r} must end in '.parquet'")
    return template


def render_output_path(template: Template, values: Mapping[str, object]) -> Path:
    """The relative output path for one job; every value is encoded by :func:`path_component`."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
        elif part.name not in values:
            raise ValueError(f"output placeholder {{{part.name}}} has no value")
        else:
            try:
                out.append(path_component(values[part.name]))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"output placeholder {{{part.name}}}: {exc}") from None
    rendered = "".join(out)
    # Belt and braces: the checks above make these impossible.
    pure = PurePosixPath(rendered)
    if pure.is_absolute() or any(seg in ("", ".", "..") for seg in rendered.split("/")):
        raise ValueError(f"output path {rendered!r} would leave the output directory")
    return Path(*pure.parts)
