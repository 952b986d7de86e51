"""The API key never leaves the process: not in output, files, logs, messages or reprs.

A distinctive key is used for whole runs (with faults, failures and a rejected key thrown in,
so that every error path speaks), then every byte the runs produced is searched for any
8-character piece of the key's secret part. A non-loopback ``http`` base URL is refused.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio.to_thread
import pytest
from click.testing import CliRunner

from batchrunner.cli import main
from batchrunner.client import ClientConfig, SigmaClient
from batchrunner.emulator import EmulatorHandle, FaultSpec, RateLimits
from batchrunner.errors import BatchrunnerError
from batchrunner.jobs import load_jobs
from batchrunner.limiter import RateConfig
from batchrunner.polling import PollPolicy
from batchrunner.progress import ProgressDisplay
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, run_jobs

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk_test_CanaryQx7Lm2Vb9Tn4Wp8Rk3Zs6Hd1"  # the emulator accepts this one
WRONG_KEY = "sk_test_CanaryWrongJf5Gy1Uc7Ea3Oi9Pq2"  # and refuses this one
FAULTS = "5xx=0.1,429=0.05,reset_before=0.05,reset_after=0.05,cut_download=0.2,run_failure=0.05"
CLI_FAULTS = "5xx=0.03,reset_after=0.03,cut_download=0.1"
FAST_POLL = PollPolicy(first_s=0.05, factor=1.5, cap_s=0.2, floor_s=0.02)
FAST_RETRY = RetryPolicy(max_attempts=8, base_s=0.005, cap_s=0.02, floor_s=0.001)


def pieces(key: str, size: int = 8) -> set[str]:
    """Every ``size``-character piece of the key's secret part (after ``sk_test_``)."""
    secret = key.split("_", 2)[2]
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


SECRET_PIECES = pieces(KEY) | pieces(WRONG_KEY)


def leaks(data: bytes | str) -> list[str]:
    """The key pieces found in ``data`` (empty when it holds none)."""
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return sorted(p for p in SECRET_PIECES if p.encode() in raw)


def test_leak_detector_finds_a_key() -> None:
    """The search finds a whole key and an 8-character fragment, and not a masked key."""
    assert leaks(f"Authorization: Bearer {KEY}")
    assert leaks(b"...Qx7Lm2Vb9T...")
    assert not leaks("sk_test_********6Hd1 (masked as Stripe does)")


def job_text(name: str) -> str:
    return f"""
[[job]]
name = "{name}"
sql = '''
SELECT id, amount, currency, created FROM balance_transactions
WHERE created >= {{period_start}} AND created < {{period_end}}
'''
[job.grid.period]
every = "month"
start = "2024-01"
end = "2024-10"

[[job]]
name = "{name}_bad_table"
sql = "SELECT * FROM no_such_table"

[[job]]
name = "{name}_bad_saved"
saved_query = "qfl_nosuchquery"
"""


def every_file(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


@pytest.fixture
def faulty(make_emulator: MakeEmulator) -> MakeEmulator:
    """Emulators that accept only KEY, inject faults and do not rate-limit."""

    def make(**overrides: object) -> AbstractAsyncContextManager[EmulatorHandle]:
        settings: dict[str, object] = {
            "api_keys": (KEY,),
            "faults": FaultSpec.parse(FAULTS),
            "rate_limits": RateLimits(enabled=False),
        }
        settings.update(overrides)
        return make_emulator(**settings)

    return make


async def test_cli_runs_leave_no_trace_of_the_key(faulty: MakeEmulator, tmp_path: Path) -> None:
    """Run, rerun, status and a rejected key: no byte of output or any file holds the key."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(job_text("secrets"), "utf-8")
    out = tmp_path / "out"
    produced: list[tuple[str, bytes]] = []

    # Fewer faults than in-process: the CLI retries with Stripe's real waits (0.5 s and up).
    async with faulty(faults=FaultSpec.parse(CLI_FAULTS)) as emu:
        base = {
            **os.environ,
            "STRIPE_API_BASE": emu.api_base,
            "STRIPE_FILES_BASE": emu.files_base,
            "PYTHONPATH": str(ROOT),
        }

        def cli(*args: str, key: str = KEY) -> subprocess.CompletedProcess[bytes]:
            done = subprocess.run(
                [sys.executable, "-m", "batchrunner", *args],
                env={**base, "STRIPE_API_KEY": key},
                capture_output=True,
                timeout=120,
                check=False,
            )
            produced.append((f"{args[0]} stdout", done.stdout))
            produced.append((f"{args[0]} stderr", done.stderr))
            return done

        run_args = ("run", str(jobs), "--out", str(out), "--report", str(tmp_path / "r.json"))
        first = await anyio.to_thread.run_sync(lambda: cli(*run_args, "--rate", "200"))
        again = await anyio.to_thread.run_sync(lambda: cli(*run_args))
        status = await anyio.to_thread.run_sync(lambda: cli("status", "--out", str(out)))
        wrong = await anyio.to_thread.run_sync(
            lambda: cli("run", str(jobs), "--out", str(tmp_path / "out2"), key=WRONG_KEY)
        )
        created = emu.stats()["query_runs_created"]["total"]
        injected = sum(emu.stats()["faults_injected"].values())

    # The runs did real work and took the error paths (so there was something to leak).
    assert first.returncode == 1, first.stderr.decode()
    assert b"no_such_table" in first.stdout + first.stderr or b"do not exist" in first.stdout
    assert again.returncode == 1 and status.returncode == 0
    assert wrong.returncode == 2 and b"Invalid API Key" in wrong.stderr
    assert created >= 11 and injected > 0
    assert (out / "manifest.json").is_file() and (tmp_path / "r.json").is_file()
    assert (out / ".batchrunner" / "state.sqlite").is_file()

    for path in every_file(tmp_path):  # Parquet, manifest, report, state (+ WAL), lock...
        produced.append((str(path), path.read_bytes()))
    found = {name: leaks(data) for name, data in produced if leaks(data)}
    assert not found, found


async def test_logs_progress_results_and_reprs_hold_no_key(
    faulty: MakeEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With every logger at DEBUG and live progress bars, nothing rendered holds the key."""
    caplog.set_level(logging.DEBUG)
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(job_text("inproc"), "utf-8")
    jobs = load_jobs([jobs_file])
    screen = io.StringIO()
    async with faulty() as emu:
        options = RunOptions(
            out_dir=tmp_path / "out",
            api_key=KEY,
            api_base=emu.api_base,
            files_base=emu.files_base,
            rate=500.0,
            poll=FAST_POLL,
            retry=FAST_RETRY,
            report_path=tmp_path / "report.json",
        )
        with ProgressDisplay(len(jobs), stream=screen, live=True) as progress:
            result = await run_jobs(jobs, options, observer=progress)
        wrong = dataclasses.replace(options, api_key=WRONG_KEY, out_dir=tmp_path / "o2")
        rejected = await run_jobs(jobs, wrong)
    assert result.failed and rejected.stopped_by
    assert any(r.status == "succeeded" for r in result.results)
    config = ClientConfig(api_key=KEY, api_base=emu.api_base, files_base=emu.files_base)
    rendered = {
        "logs": caplog.text,
        "log records": "\n".join(_render_record(r) for r in caplog.records),
        "progress": screen.getvalue(),
        "options": repr(options) + str(options),
        "result": repr(result) + str(result) + repr(rejected) + str(rejected.stopped_by),
        "errors": "\n".join(r.error or "" for r in (*result.results, *rejected.results)),
        "client config": repr(config) + str(config),
        "client": repr(SigmaClient(config)),
        "rate config": repr(RateConfig.for_key(KEY)),
    }
    assert caplog.records, "the run logged nothing: the log check would prove nothing"
    found = {name: leaks(text) for name, text in rendered.items() if leaks(text)}
    assert not found, found


def _render_record(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += "".join(traceback.format_exception(record.exc_info[1]))
    return text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)


async def test_client_errors_hold_no_key_in_message_repr_or_traceback(
    faulty: MakeEmulator, tmp_path: Path
) -> None:
    """Resets, 5xx, cut downloads and a 401 raise errors whose whole chain is key-free."""
    caught: list[BaseException] = []
    one_try = RetryPolicy(max_attempts=1, base_s=0.0, cap_s=0.0, floor_s=0.0)
    fast = RateConfig(api_global=1000.0, per_endpoint=1000.0, files=1000.0)

    def client(emu: EmulatorHandle, key: str = KEY) -> SigmaClient:
        return SigmaClient(
            ClientConfig(
                api_key=key,
                api_base=emu.api_base,
                files_base=emu.files_base,
                rate=fast,
                retry=one_try,
            )
        )

    async with faulty(faults=FaultSpec()) as clean, client(clean) as api:
        run = await api.create_run(sql="select * from charges", idempotency_key="k-secret-1")
        while run.in_progress:
            run = await api.retrieve_run(run.id)
        assert run.file_id
        for key in (WRONG_KEY,):
            async with client(clean, key) as bad:
                try:
                    await bad.retrieve_run(run.id)
                except BatchrunnerError as exc:
                    caught.append(exc)
        try:
            await api.retrieve_run("qry_doesnotexist")
        except BatchrunnerError as exc:
            caught.append(exc)
    for spec in ("reset_before=1.0", "reset_after=1.0", "5xx=1.0", "cut_download=1.0"):
        async with faulty(faults=FaultSpec.parse(spec)) as emu, client(emu) as api:
            for attempt in range(3):
                try:
                    if spec.startswith("cut"):
                        await api.download(run.file_id, tmp_path / f"{attempt}.csv")
                    else:
                        await api.create_run(sql="select 1", idempotency_key=f"k-{spec}-{attempt}")
                except BatchrunnerError as exc:
                    caught.append(exc)
    kinds = {type(e).__name__ for e in caught}
    assert {"AuthenticationFailed", "NotFound", "TransportError", "ServerError"} <= kinds, kinds
    assert "DownloadError" in kinds or "TransportError" in kinds
    for error in caught:
        text = "".join(traceback.format_exception(error))
        for link in _chain(error):
            text += str(link) + repr(link) + repr(getattr(link, "args", ()))
        assert not leaks(text), (type(error).__name__, leaks(text), text[-3000:])


@pytest.mark.parametrize(
    ("option", "url", "wanted"),
    [
        ("--api-base", "http://api.example.com", "plain http to a non-loopback host"),
        ("--files-base", "http://files.example.com:8080", "plain http to a non-loopback host"),
        ("--api-base", "http://10.1.2.3:12111", "plain http to a non-loopback host"),
        ("--api-base", "ftp://api.example.com", "is not an http(s) URL"),
    ],
)
def test_non_loopback_plain_http_is_refused(
    option: str, url: str, wanted: str, tmp_path: Path
) -> None:
    """A base URL that would send the key in clear text off this machine is refused (exit 2)."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nname = "a"\nsql = "select 1 as x"\n', "utf-8")
    result = CliRunner().invoke(
        main,
        ["run", str(jobs), "--out", str(tmp_path / "out"), option, url],
        env={"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": None, "STRIPE_FILES_BASE": None},
        catch_exceptions=False,
    )
    assert result.exit_code == 2, result.output
    assert wanted in result.stderr and url in result.stderr
    assert "use https" in result.stderr or "http(s)" in result.stderr
    assert not leaks(result.output)
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_loopback_plain_http_is_allowed() -> None:
    """Plain http to this machine (the emulator) is allowed; https anywhere is."""
    for base in ("http://127.0.0.1:12111", "http://localhost:1", "http://[::1]:2"):
        assert ClientConfig(api_key=KEY, api_base=base, files_base=base).api_base == base
    assert ClientConfig(api_key=KEY, api_base="https://api.example.com").api_base
