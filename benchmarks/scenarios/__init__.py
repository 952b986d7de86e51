"""The scenarios, by name, in their default order; each module is imported only when run.

Every module exposes ``run(*, quick: bool, workdir: Path) -> ScenarioResult``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from benchmarks.harness import ScenarioResult

SCENARIOS: dict[str, str] = {
    "rate": "benchmarks.scenarios.rate",
    "poll": "benchmarks.scenarios.poll",
    "large": "benchmarks.scenarios.large",
    "naive": "benchmarks.scenarios.naive",
    "overhead": "benchmarks.scenarios.overhead",
    "emulator": "benchmarks.scenarios.emulator",
    "soak": "benchmarks.scenarios.soak",
    "load": "benchmarks.scenarios.load",
}


class Scenario(Protocol):
    """What a scenario module's ``run`` looks like."""

    def __call__(self, *, quick: bool, workdir: Path) -> ScenarioResult: ...


def load(name: str) -> Scenario:
    """The ``run`` function of scenario ``name`` (KeyError for an unknown name)."""
    module = importlib.import_module(SCENARIOS[name])
    run: Scenario = module.run
    return run
