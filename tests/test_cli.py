"""Tests for the ``batchrunner`` command: help, plan, dry runs, exit codes, status."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from batchrunner.cli import main
from batchrunner.emulator import EmulatorHandle

ROOT = Path(__file__).resolve().parent.parent
MONTHLY = str(ROOT / "jobs" / "monthly_balance_transactions.toml")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


async def invoke_async(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in a worker thread: it starts its own event loop there."""
    return await anyio.to_thread.run_sync(lambda: invoke(*args, env=env))


def emulator_env(emu: EmulatorHandle, key: str | None = None) -> dict[str, str]:
    return {
        "STRIPE_API_KEY": key or emu.test_key,
        "STRIPE_API_BASE": emu.api_base,
        "STRIPE_FILES_BASE": emu.files_base,
    }


def test_help_lists_every_command() -> None:
    """--help names run, plan, status and emulator, and run --help documents its options."""
    text = invoke("--help").output
    for command in ("run", "plan", "status", "emulator"):
        assert command in text
    run_help = invoke("run", "--help").output
    for option in (
        "--out",
        "--state",
        "--only",
        "--dry-run",
        "--force",
        "--max-running",
        "--rate",
        "--report",
        "--api-base",
        "--files-base",
    ):
        assert option in run_help


def test_plan_shows_rendered_sql_and_counts_jobs() -> None:
    """plan prints each job's output path and SQL with typed literals."""
    result = invoke("plan", MONTHLY)
    assert result.exit_code == 0
    assert "TIMESTAMP '2023-01-01 00:00:00.000'" in result.output
    assert result.output.rstrip().endswith("36 jobs")


def test_plan_json_is_machine_readable() -> None:
    """plan --json emits one object per expanded job."""
    jobs = json.loads(invoke("plan", MONTHLY, "--json", "--only", "*2024-0*").output)
    assert [j["id"].split("=")[-1] for j in jobs] == [f"2024-0{m}" for m in range(1, 10)]


def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    """--dry-run lists the jobs and their outputs and writes no file."""
    result = invoke("run", MONTHLY, "--dry-run", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert "36 jobs; nothing was sent" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_job_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    """A malformed job file is a usage error (exit 2) whose message names the file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[[job]\nname = 'x'\n", "utf-8")
    result = invoke("run", str(bad))
    assert result.exit_code == 2
    assert "bad.toml" in result.output


def test_only_matching_nothing_is_a_usage_error() -> None:
    """--only that selects no job says so and exits 2."""
    result = invoke("run", MONTHLY, "--only", "nothing-like-this")
    assert result.exit_code == 2
    assert "no job matches" in result.output


async def test_run_exit_codes_and_status(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """All good → 0; a failed job → 1 and listed by status; a rejected key → 2."""
    jobs = tmp_path / "j.toml"
    jobs.write_text(
        '[[job]]\nname = "ok"\nsql = "select id from charges limit 3"\n'
        '[[job]]\nname = "broken"\nsql = "select * from nowhere"\n',
        "utf-8",
    )
    out = tmp_path / "out"
    env = emulator_env(emulator)
    first = await invoke_async("run", str(jobs), "--out", str(out), "--only", "ok", env=env)
    assert first.exit_code == 0, first.output
    assert "succeeded" in first.output
    both = await invoke_async("run", str(jobs), "--out", str(out), env=env)
    assert both.exit_code == 1
    assert "tables which do not exist" in both.output
    status = invoke("status", "--out", str(out))
    assert status.exit_code == 0
    assert "failed: 1" in status.output and "succeeded: 1" in status.output
    bad_key = await invoke_async(
        "run",
        str(jobs),
        "--out",
        str(tmp_path / "o2"),
        env=emulator_env(emulator, key="sk_test_NopeNopeNope1234"),
    )
    assert bad_key.exit_code == 2
    assert "NopeNopeNope1234" not in bad_key.output


def test_status_without_state_file_is_a_usage_error(tmp_path: Path) -> None:
    """status with no state file explains what to do."""
    result = invoke("status", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "run `batchrunner run` first" in result.output


@pytest.mark.parametrize("bad", ["5xx=2", "nonsense=0.1"])
def test_emulator_rejects_bad_fault_spec(bad: str) -> None:
    """A malformed --faults spec is a usage error naming the option."""
    result = invoke("emulator", "--faults", bad)
    assert result.exit_code == 2
    assert "--faults" in result.output
