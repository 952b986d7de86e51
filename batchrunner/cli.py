"""The ``batchrunner`` command: a thin layer over :mod:`batchrunner.runner`.

Exit codes: 0 every job succeeded, 1 some job failed, 2 usage or configuration error
(including a rejected API key), 130 interrupted (state saved; rerun to resume).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import anyio
import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from batchrunner.client import STRIPE_API_BASE, STRIPE_FILES_BASE
from batchrunner.engine import RunResult
from batchrunner.errors import BatchrunnerError
from batchrunner.jobs import load_jobs
from batchrunner.progress import ProgressDisplay
from batchrunner.runner import DEFAULT_KEY_ENV, RunOptions, api_key_from_env, run_jobs

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _console(*, stderr: bool) -> Console:
    """A console that wraps to the terminal, or writes long lines when piped to a file."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 200
    return Console(stderr=stderr, highlight=False, width=width)


err = _console(stderr=True)
out = _console(stderr=False)


def _die(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # Messages hold brackets ("[[job]]", "[job.params]", "[job-id]"): never parse them as markup.
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


@contextmanager
def _errors_to_exit_codes() -> Iterator[None]:
    """The one place where exceptions become messages and exit codes."""
    try:
        yield
    except BatchrunnerError as exc:
        _die(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="batchrunner")
def main() -> None:
    """Run Stripe Sigma SQL jobs in bulk and land every result as typed Parquet.

    \b
    Quick start (no key needed: the embedded Sigma emulator answers):
      batchrunner run jobs/monthly_balance_transactions.toml
    Against Stripe:
      STRIPE_API_KEY=rk_live_... batchrunner run jobs/monthly_balance_transactions.toml
    """


def _job_paths(paths: Sequence[str]) -> list[Path]:
    return [Path(p) for p in paths]


@main.command()
@click.argument("jobfiles", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for the Parquet files and manifest.json.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="State file (SQLite). Default: OUT/.batchrunner/state.sqlite.",
)
@click.option("--only", metavar="PATTERN", help="Only jobs whose id or name matches this glob.")
@click.option("--dry-run", is_flag=True, help="List what would run, send nothing.")
@click.option("--force", is_flag=True, help="Run finished jobs again.")
@click.option(
    "--max-running",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Query runs in flight on Sigma at once.",
)
@click.option(
    "--max-downloads",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent result downloads.",
)
@click.option(
    "--workers",
    "convert_workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="CSV→Parquet conversion threads.",
)
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="Convert each result while it downloads (--no-pipeline: download first).",
)
@click.option(
    "--run-attempts",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Query runs per job when a run ends failed (1: fail the job at once).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    help="API requests per second [default: 24 for test keys, 95 for live keys].",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write a JSON report with per-job timings and p50/p95/max.",
)
@click.option(
    "--api-base",
    envvar="STRIPE_API_BASE",
    default="https://api.stripe.com",
    show_default=True,
    help="API host (env STRIPE_API_BASE).",
)
@click.option(
    "--files-base",
    envvar="STRIPE_FILES_BASE",
    default="https://files.stripe.com",
    show_default=True,
    help="Files host (env STRIPE_FILES_BASE).",
)
@click.option(
    "--api-key-env",
    default=DEFAULT_KEY_ENV,
    show_default=True,
    metavar="NAME",
    help="Environment variable holding the API key. Unset: use the embedded emulator.",
)
@click.option(
    "--emulator-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Data size of the embedded emulator (1 ≈ 100,000 balance transactions).",
)
def run(
    jobfiles: tuple[str, ...],
    out_dir: str,
    state_path: str | None,
    only: str | None,
    dry_run: bool,
    force: bool,
    max_running: int,
    max_downloads: int,
    convert_workers: int,
    run_attempts: int,
    pipeline: bool,
    rate: float | None,
    report_path: str | None,
    api_base: str,
    files_base: str,
    api_key_env: str,
    emulator_scale: float,
) -> None:
    """Run the jobs of JOBFILE... and write one Parquet file per expanded job."""
    with _errors_to_exit_codes():
        jobs = load_jobs(_job_paths(jobfiles), only=only)
        if not jobs:
            _die(f"no job matches --only {only!r}" if only else "the job files define no jobs")
        if dry_run:
            for job in jobs:
                out.print(f"{job.id} -> {Path(out_dir) / job.output}", markup=False)
            out.print(f"{len(jobs)} jobs; nothing was sent (--dry-run)")
            return
        api_key = api_key_from_env(api_key_env)
        if api_key is None and (api_base, files_base) != (STRIPE_API_BASE, STRIPE_FILES_BASE):
            # A base was chosen on purpose: answering from synthetic data would mislead.
            _die(
                f"no API key: {api_key_env} is not set, but the API base is {api_base} and the "
                f"files base {files_base}; set {api_key_env} to a key for that host, or unset "
                "STRIPE_API_BASE and STRIPE_FILES_BASE (and --api-base, --files-base) to run "
                "against the embedded emulator"
            )
        options = RunOptions(
            out_dir=Path(out_dir),
            state_path=Path(state_path) if state_path else None,
            only=only,
            force=force,
            max_running=max_running,
            max_downloads=max_downloads,
            convert_workers=convert_workers,
            run_attempts=run_attempts,
            pipeline=pipeline,
            rate=rate,
            api_key=api_key,
            api_base=api_base,
            files_base=files_base,
            report_path=Path(report_path) if report_path else None,
            emulator_scale=emulator_scale,
        )
        # run_jobs freezes the objects alive at the start out of the cyclic GC for the run.
        result = _run_with_progress(jobs, options)
    _print_summary(result, options)
    sys.exit(EXIT_OK if result.ok else (EXIT_USAGE if result.stopped_by else EXIT_FAILED))


def _run_with_progress(jobs: Sequence[Any], options: RunOptions) -> RunResult:
    def announce(line: str) -> None:
        err.print(line, markup=False, soft_wrap=True)

    with ProgressDisplay(len(jobs)) as progress:

        async def go() -> RunResult:
            return await run_jobs(jobs, options, observer=progress, announce=announce)

        try:
            return anyio.run(go)
        except KeyboardInterrupt:
            progress.__exit__(None, None, None)
            err.print(
                "\nInterrupted. State is saved; no partial file was left. Run the same command "
                "again to resume (finished jobs are skipped, queries in flight are picked up "
                "by id).",
                markup=False,
            )
            sys.exit(EXIT_INTERRUPTED)


def _print_summary(result: RunResult, options: RunOptions) -> None:
    counts = {
        s: sum(1 for r in result.results if r.status == s)
        for s in ("succeeded", "skipped", "failed")
    }
    table = Table(title="batchrunner summary", show_lines=False)
    for column in ("succeeded", "skipped", "failed", "rows", "Parquet bytes", "wall"):
        table.add_column(column, justify="right")
    rows = sum(r.rows or 0 for r in result.results if r.status == "succeeded")
    size = sum(r.bytes or 0 for r in result.results if r.status == "succeeded")
    table.add_row(
        str(counts["succeeded"]),
        str(counts["skipped"]),
        str(counts["failed"]),
        f"{rows:,}",
        f"{size:,}",
        f"{result.wall_s:.1f} s",
    )
    out.print(table)
    for failed in result.failed[:20]:
        out.print(f"failed: {failed.error}", markup=False, soft_wrap=True)
    if len(result.failed) > 20:
        out.print(f"... and {len(result.failed) - 20} more (see `batchrunner status`)")
    if result.stopped_by:
        err.print(f"[red]stopped:[/red] {escape(result.stopped_by)}", markup=True, soft_wrap=True)
    elif result.failed:
        out.print("Rerun the same command to retry the failed jobs; finished ones are kept.")
    out.print(
        f"Outputs in {options.out_dir}/ (manifest: {options.out_dir / 'manifest.json'})",
        markup=False,
    )


@main.command()
@click.argument("jobfiles", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--only", metavar="PATTERN", help="Only jobs whose id or name matches this glob.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plan(jobfiles: tuple[str, ...], only: str | None, as_json: bool) -> None:
    """Show the expanded jobs of JOBFILE... and their rendered SQL; send nothing."""
    with _errors_to_exit_codes():
        jobs = load_jobs(_job_paths(jobfiles), only=only)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": j.id,
                        "output": str(j.output),
                        "sql": j.sql,
                        "saved_query": j.saved_query,
                        "params": {k: str(v) for k, v in j.params.items()},
                    }
                    for j in jobs
                ],
                indent=2,
            )
        )
        return
    for job in jobs:
        out.rule(job.id)
        out.print(f"output: {job.output}", markup=False)
        out.print(
            job.sql if job.sql is not None else f"saved query {job.saved_query}", markup=False
        )
    out.print(f"{len(jobs)} jobs")


@main.command()
@click.option(
    "--out", "out_dir", default="out", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="State file. Default: OUT/.batchrunner/state.sqlite.",
)
@click.option("--failed", "only_failed", is_flag=True, help="Only failed jobs.")
def status(out_dir: str, state_path: str | None, only_failed: bool) -> None:
    """Print the state table: every job, its status, run id, rows and error."""
    from batchrunner.state import StateStore

    path = Path(state_path) if state_path else RunOptions(out_dir=Path(out_dir)).state_file
    if not path.exists():
        _die(f"no state file at {path}; run `batchrunner run` first or pass --state")
    with _errors_to_exit_codes(), StateStore.open(path) as store:
        records = store.all()
    table = Table(title=str(path))
    for column in ("job", "status", "query run", "attempts", "rows", "error"):
        table.add_column(column, overflow="fold")
    for rec in records:
        if only_failed and rec.status != "failed":
            continue
        table.add_row(
            rec.job_id,
            str(rec.status),
            rec.query_run_id or "",
            str(rec.attempts),
            "" if rec.rows is None else f"{rec.rows:,}",
            rec.error or "",
        )
    out.print(table)
    counts: dict[str, int] = {}
    for rec in records:
        counts[str(rec.status)] = counts.get(str(rec.status), 0) + 1
    out.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no jobs")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=12111, show_default=True, type=int, help="API port (0: any).")
@click.option(
    "--files-port",
    default=12112,
    show_default=True,
    type=int,
    help="Files host port (0: any; -1: serve files on the API port).",
)
@click.option(
    "--scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Data size: 1 ≈ 100,000 balance transactions.",
)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Multiplies modelled run times; 0 = as fast as DuckDB.",
)
@click.option(
    "--faults",
    default="",
    metavar="SPEC",
    help="e.g. 'chaos' or '5xx=0.1,429=0.05,reset_before=0.02,cut_download=0.02'.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    metavar="KEY",
    help="Accept this key (repeatable). Default: one test and one live key.",
)
@click.option("--no-rate-limits", is_flag=True, help="Switch Stripe's rate limits off.")
@click.option("--max-concurrent-runs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--run-time-base",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Modelled seconds every run takes before the per-row part (then × --time-scale).",
)
@click.option(
    "--run-time-jitter",
    default=0.3,
    show_default=True,
    type=click.FloatRange(min=0, max=1, max_open=True),
    help="Run times vary by a factor drawn from U(1 - J, 1 + J).",
)
@click.option(
    "--slow-run-fraction",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0, max=1),
    help="Share of runs (chosen by --seed) that take --slow-run-factor times longer.",
)
@click.option("--slow-run-factor", default=10.0, show_default=True, type=click.FloatRange(min=1))
@click.option(
    "--success-status",
    type=click.Choice(["succeeded", "completed"]),
    default="succeeded",
    show_default=True,
)
@click.option("--bom", is_flag=True, help="Start result CSVs with a UTF-8 BOM.")
def emulator(
    host: str,
    port: int,
    files_port: int,
    scale: float,
    seed: int,
    time_scale: float,
    faults: str,
    api_keys: tuple[str, ...],
    no_rate_limits: bool,
    max_concurrent_runs: int,
    run_time_base: float,
    run_time_jitter: float,
    slow_run_fraction: float,
    slow_run_factor: float,
    success_status: str,
    bom: bool,
) -> None:
    """Serve a local Stripe Sigma API (synthetic data) until Ctrl-C."""
    from batchrunner.emulator import (
        EmulatorConfig,
        EmulatorHandle,
        FaultSpec,
        RateLimits,
        serve_forever,
    )

    with _errors_to_exit_codes():
        try:
            spec = FaultSpec.parse(faults)
        except (ValueError, BatchrunnerError) as exc:
            raise click.BadParameter(str(exc), param_hint="--faults") from exc
        config = EmulatorConfig(
            host=host,
            port=port,
            files_port=None if files_port < 0 else files_port,
            scale=scale,
            seed=seed,
            time_scale=time_scale,
            faults=spec,
            api_keys=api_keys,
            rate_limits=RateLimits(enabled=not no_rate_limits),
            max_concurrent_runs=max_concurrent_runs,
            run_time_base_s=run_time_base,
            run_time_jitter=run_time_jitter,
            slow_run_fraction=slow_run_fraction,
            slow_run_factor=slow_run_factor,
            success_status="completed" if success_status == "completed" else "succeeded",
            csv_bom=bom,
        )

        def ready(handle: EmulatorHandle) -> None:
            print(
                f"API base:   {handle.api_base}\nFiles base: {handle.files_base}\n"
                f"Test key:   {handle.test_key}\nLive key:   {handle.live_key}\n"
                f"Stats:      {handle.api_base}/_emulator/stats\n"
                "Serving until Ctrl-C.",
                flush=True,
            )

        async def serve() -> None:
            await serve_forever(config, on_ready=ready)

        try:
            anyio.run(serve)
        except KeyboardInterrupt:
            sys.exit(EXIT_OK)
