"""Parameter values as Trino literals, and the ``{name}`` templates they fill.

Parameters enter SQL only as complete, typed, escaped literals; there is no way to paste raw
text. A value such as ``'; DROP TABLE x; --`` therefore renders as one inert string literal.

Templates are read by a small tokenizer rather than :meth:`str.format` (which would allow
``{x.__class__}`` and ``{x[0]}``): a placeholder is ``{`` identifier ``}``, ``{{`` and ``}}``
are literal braces, and anything else in braces is an error. SQL templates are also read the
way Trino's lexer reads them, and refuse a placeholder

* inside a string literal, quoted identifier or comment (``'{x}'`` would close the quotes
  around the value; a newline in a value would end a ``--`` comment), or
* touching a letter, digit, ``_``, ``.``, a quote or another placeholder (``{a}{b}`` would
  lex as the single string ``'a''b'``; ``x{n}`` and ``{n}.5`` would change a token).

Errors are :class:`ValueError` (:class:`TemplateError` for templates; :class:`TypeError` for a
value of a type that has no literal), with messages meant for the person who wrote the job file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from typing import Final, TypeAlias

Scalar: TypeAlias = str | int | float | bool | date | datetime | None
"""One parameter value."""

ParamValue: TypeAlias = Scalar | tuple[Scalar, ...]
"""A parameter value: a scalar, or a tuple of scalars rendered as ``(a, b)`` for ``IN``."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be a placeholder: ASCII letters, digits and ``_``, not first a digit."""
    return _IDENTIFIER.fullmatch(name) is not None


def _string_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a string containing a NUL character cannot be a SQL literal")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string with an unpaired surrogate is not valid UTF-8") from None
    # Trino strings have no backslash escapes: doubling the quote is the whole escape.
    return "'" + value.replace("'", "''") + "'"


def _timestamp_literal(value: datetime) -> str:
    if value.utcoffset() is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    micro = value.microsecond
    fraction = f"{micro // 1000:03d}" if micro % 1000 == 0 else f"{micro:06d}"
    return (
        f"TIMESTAMP '{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{fraction}'"
    )


def _signed(text: str) -> str:
    # "x -{n}" with n = -5 would read "x --5": the rest of the line becomes a comment.
    return f"({text})" if text.startswith("-") else text


def trino_literal(value: object) -> str:
    """The Trino literal for one parameter value.

    ====================  ===============================================
    ``None``              ``NULL``
    ``bool``              ``TRUE`` / ``FALSE``
    ``int``               digits (64-bit range), ``(-5)`` when negative
    ``float``             ``repr`` with an exponent (``0.1e0``) so Trino reads a DOUBLE,
                          not a DECIMAL; NaN and infinities are refused
    ``str``               ``'...'`` with ``'`` doubled; NUL is refused
    ``date``              ``DATE '2023-01-01'``
    ``datetime``          ``TIMESTAMP '2023-01-01 00:00:00.000'`` (microseconds when
                          present); an aware value is converted to UTC first
    ``list`` / ``tuple``  ``(lit, lit)`` for ``IN``: non-empty, of scalars
    ====================  ===============================================
    """
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty list cannot be a SQL literal (IN () is not valid SQL)")
        items = []
        for item in value:
            if isinstance(item, list | tuple):
                raise TypeError("lists of lists cannot be SQL literals")
            items.append(trino_literal(item))
        return "(" + ", ".join(items) + ")"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"integer {value} is outside the 64-bit range of BIGINT")
        return _signed(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be a SQL literal (only finite numbers can)")
        text = repr(value)
        return _signed(text if "e" in text else text + "e0")
    if isinstance(value, str):
        return _string_literal(value)
    if isinstance(value, datetime):
        return _timestamp_literal(value)
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    raise TypeError(f"a {type(value).__name__} value cannot be a SQL parameter")


class TemplateError(ValueError):
    """A template that cannot be parsed or filled; names the line and column."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        where = f" (line {line}, column {column} of the template)" if line is not None else ""
        super().__init__(message + where)
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A ``{name}`` in a template, with where it was written (1-based)."""

    name: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text (braces already unescaped) and placeholders."""

    text: str
    parts: tuple[str | Placeholder, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The placeholder names, each once, in order of first use."""
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, Placeholder)))


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def parse_template(text: str) -> Template:
    """Split ``text`` into literal text and ``{name}`` placeholders."""
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{}" and text.startswith(char * 2, i):
            literal.append(char)
            i += 2
            continue
        if char == "}":
            raise TemplateError(
                "a single '}' is not allowed; write '}}' for a literal brace",
                **_where(text, i),
            )
        if char == "{":
            close = text.find("}", i + 1)
            if close < 0:
                raise TemplateError(
                    "'{' is never closed; write '{{' for a literal brace", **_where(text, i)
                )
            inner = text[i + 1 : close]
            if not is_identifier(inner):
                shown = inner if len(inner) <= 40 else inner[:37] + "..."
                raise TemplateError(
                    f"'{{{shown}}}' is not a placeholder: a placeholder is a plain name such "
                    "as {period_start} (no attributes, indexes, conversions or format specs); "
                    "write '{{' and '}}' for literal braces",
                    **_where(text, i),
                )
            if literal:
                parts.append("".join(literal))
                literal.clear()
            parts.append(Placeholder(inner, *_line_column(text, i)))
            i = close + 1
            continue
        literal.append(char)
        i += 1
    if literal:
        parts.append("".join(literal))
    return Template(text, tuple(parts))


def _where(text: str, offset: int) -> dict[str, int]:
    line, column = _line_column(text, offset)
    return {"line": line, "column": column}


def render_text(template: Template, values: Mapping[str, str]) -> str:
    """Fill a template with already-rendered text (callers escape; see :func:`render_sql`)."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
        elif part.name in values:
            out.append(values[part.name])
        else:
            raise TemplateError(
                f"placeholder {{{part.name}}} has no value", line=part.line, column=part.column
            )
    return "".join(out)


class _Lex(Enum):
    """Where Trino's lexer is inside SQL text."""

    CODE = "code"
    STRING = "a string literal"
    IDENTIFIER = "a quoted identifier"
    LINE_COMMENT = "a -- comment"
    BLOCK_COMMENT = "a /* */ comment"


def _advance(text: str, state: _Lex) -> _Lex:
    """The lexer state after reading ``text`` from ``state`` (Trino block comments don't nest)."""
    i = 0
    while i < len(text):
        char = text[i]
        if state is _Lex.CODE:
            if char == "'":
                state = _Lex.STRING
            elif char == '"':
                state = _Lex.IDENTIFIER
            elif text.startswith("--", i):
                state, i = _Lex.LINE_COMMENT, i + 1
            elif text.startswith("/*", i):
                state, i = _Lex.BLOCK_COMMENT, i + 1
        elif state is _Lex.STRING or state is _Lex.IDENTIFIER:
            quote = "'" if state is _Lex.STRING else '"'
            if char == quote:
                if text.startswith(quote * 2, i):
                    i += 1  # a doubled quote is an escaped quote, still inside
                else:
                    state = _Lex.CODE
        elif state is _Lex.LINE_COMMENT:
            if char in "\r\n":
                state = _Lex.CODE
        elif text.startswith("*/", i):
            state, i = _Lex.CODE, i + 1
        i += 1
    return state


def _sticky(char: str) -> bool:
    # Characters that would fuse with a literal into another token.
    return char.isalnum() or char in "_.'\"$"


def parse_sql_template(text: str) -> Template:
    """Parse a SQL template and check each placeholder stands where a literal can."""
    template = parse_template(text)
    state = _Lex.CODE
    parts = template.parts
    for index, part in enumerate(parts):
        if isinstance(part, str):
            state = _advance(part, state)
            continue
        here = {"line": part.line, "column": part.column}
        if state is not _Lex.CODE:
            raise TemplateError(
                f"placeholder {{{part.name}}} is inside {state.value}; a parameter renders as "
                "a complete literal (quotes included), so write it bare in SQL code, e.g. "
                f"WHERE x = {{{part.name}}}",
                **here,
            )
        before = parts[index - 1] if index > 0 else ""
        after = parts[index + 1] if index + 1 < len(parts) else ""
        if isinstance(before, Placeholder) or isinstance(after, Placeholder):
            raise TemplateError(
                f"placeholder {{{part.name}}} touches another placeholder; separate them "
                "with a space or an operator",
                **here,
            )
        if (before and _sticky(before[-1])) or (after and _sticky(after[0])):
            raise TemplateError(
                f"placeholder {{{part.name}}} touches a letter, digit, '_', '.' or quote; "
                "leave a space or operator between a placeholder and its neighbours",
                **here,
            )
    return template


def render_sql(template: Template, params: Mapping[str, object]) -> str:
    """Fill a SQL template: every placeholder becomes the Trino literal of its value."""
    rendered: dict[str, str] = {}
    for name in template.names:
        if name not in params:
            continue  # render_text reports it with its position
        try:
            rendered[name] = trino_literal(params[name])
        except (ValueError, TypeError) as exc:
            raise TemplateError(f"parameter {name!r}: {exc}") from None
    return render_text(template, rendered)
