"""Tests for the benchmark harness: it runs a scenario end to end and reports in shape.

Speed is never asserted: only that figures exist, are finite and that the table, JSON and
RESULTS.md block carry them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from batchrunner.emulator.ratelimit import RateLimits
from benchmarks.__main__ import BEGIN, END, main, record, render_table, table_rows
from benchmarks.harness import RunTimeline, ScenarioResult, rate_lower_bound_s, write_job_file
from benchmarks.scenarios import SCENARIOS, load
from benchmarks.scenarios.overhead import measure

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Emulator children generate their (tiny) data in a temporary cache."""
    path = tmp_path_factory.mktemp("bench-cache")
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(path))
    return path


def test_overhead_runs_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    """A tiny overhead run returns finite, positive figures for every job it ran."""
    result = measure(jobs=20, workdir=tmp_path, scale="0.01")
    assert result.scenario == "overhead"
    assert set(result.figures) == {"jobs_per_s", "cpu_ms_per_job", "emulator_cpu_ms_per_job"}
    assert all(math.isfinite(v) and v > 0 for v in result.figures.values())
    assert len(list((tmp_path / "out" / "tiny").glob("part-*.parquet"))) == 20
    assert json.loads(json.dumps(result.to_json()))["figures"] == result.figures


def test_cli_writes_json_per_scenario(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m benchmarks emulator --quick --json F` prints the table and writes the JSON."""
    out = tmp_path / "bench.json"
    assert main(["emulator", "--quick", "--json", str(out), "--workdir", str(tmp_path)]) == 0
    [entry] = json.loads(out.read_text())
    assert set(entry) >= {"scenario", "figures", "goal", "goal_met"}
    assert entry["scenario"] == "emulator" and isinstance(entry["goal_met"], bool)
    assert entry["figures"]["polls_per_s"] > 0
    assert "polls_per_s" in capsys.readouterr().out


def test_registry_order_and_lazy_load() -> None:
    """The default order is the issue's; a registered module loads to a callable run."""
    assert list(SCENARIOS) == [
        "rate",
        "poll",
        "large",
        "naive",
        "overhead",
        "emulator",
        "soak",
        "load",
    ]
    assert callable(load("emulator"))
    with pytest.raises(KeyError):
        load("nope")


def test_unknown_scenario_is_a_usage_error() -> None:
    """Naming a scenario that does not exist exits with argparse's usage status."""
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2


def test_lower_bound_takes_the_binding_window() -> None:
    """Creates + polls share the global window; downloads bind when the files host is slower."""
    assert rate_lower_bound_s(1000) == 2000 / 25
    assert rate_lower_bound_s(1000, livemode=True) == 1000 / 20  # the files host binds
    live = RateLimits(files_reads=100)
    assert rate_lower_bound_s(1000, livemode=True, limits=live) == 1000 / 25  # per endpoint
    assert rate_lower_bound_s(100, limits=RateLimits(files_reads=2)) == 50
    assert rate_lower_bound_s(10, polls_per_job=3) == 10 * 4 / 25


def test_timeline_delays() -> None:
    """Detection delay is first download − finalize; None while either is missing."""
    line = RunTimeline("qry_1", 10.0, 10.5, 12.0, 12.75, 2)
    assert line.detection_delay == 0.75 and line.run_time == 1.5
    assert RunTimeline("qry_2", 10.0, None, None, None, 0).detection_delay is None


def test_table_and_results_block(tmp_path: Path) -> None:
    """Rows carry reference and ratio; recording replaces only the generated block."""
    result = ScenarioResult(
        "rate", figures={"wall_s": 100.0, "http_429": 0}, references={"wall_s": ("bound", 80.0)}
    )
    assert table_rows([result]) == [
        ("rate", "wall_s", "100", "bound 80", "1.25"),
        ("rate", "http_429", "0", "", ""),
    ]
    assert "| rate | wall_s | 100 | bound 80 | 1.25 |" in render_table([result], markdown=True)
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# R\n\nbefore\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    record(path, f"{BEGIN}\nnew\n{END}")
    assert path.read_text() == f"# R\n\nbefore\n\n{BEGIN}\nnew\n{END}\n\nafter\n"


def test_job_file_renders_nested_tables(tmp_path: Path) -> None:
    """Grids given as nested dicts become TOML inline tables batchrunner loads."""
    from batchrunner.jobs import load_jobs

    grid = {"day": {"every": "day", "start": "2023-01-01", "end": "2023-01-03"}}
    sql = 'SELECT "x" FROM t WHERE created >= {day_start} AND created < {day_end}'
    path = write_job_file(tmp_path / "j.toml", [{"name": "d", "sql": sql, "grid": grid}])
    jobs = load_jobs([path])
    assert [j.id for j in jobs] == ["d@day=2023-01-01", "d@day=2023-01-02", "d@day=2023-01-03"]
