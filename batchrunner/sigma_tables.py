"""The published Sigma tables: names, column names and Trino types.

The facts come from Stripe's published schema and ship inside the package as
``data/sigma_tables.json``; both the emulator (to create every table) and the converter
(to type columns a query selects unchanged) read them from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class SigmaTable:
    """One published table: its dataset, columns (name → Trino type) and primary key."""

    name: str
    dataset: str
    columns: Mapping[str, str]
    primary_key: tuple[str, ...]


@cache
def sigma_tables() -> Mapping[str, SigmaTable]:
    """Every published table by name (tables are named without their dataset in SQL)."""
    raw = json.loads(
        resources.files("batchrunner").joinpath("data/sigma_tables.json").read_text("utf-8")
    )
    tables = {
        name: SigmaTable(
            name=name,
            dataset=spec["dataset"],
            columns=MappingProxyType(dict(spec["columns"])),
            primary_key=tuple(spec["primary_key"]),
        )
        for name, spec in raw["tables"].items()
    }
    return MappingProxyType(tables)


def column_type(table: str, column: str) -> str | None:
    """The Trino type of ``table.column``, or None if either is unknown."""
    spec = sigma_tables().get(table)
    return None if spec is None else spec.columns.get(column)
