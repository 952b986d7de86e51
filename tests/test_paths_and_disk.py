"""Paths and disk: nothing is written outside the output directory; a full or read-only disk
ends in a clear error with the state intact, and the next run completes once it is fixed.

Disk-full and read-only cases use a real small tmpfs when this process may mount one (root
on Linux, as in CI); otherwise they are skipped, and the portable variants (an ``ENOSPC`` from
the Parquet writer, a ``chmod``-ed directory for non-root users) still run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
import pyarrow.parquet as pq
import pytest

from batchrunner.emulator import EmulatorHandle, RateLimits
from batchrunner.errors import JobFileError
from batchrunner.jobs import load_jobs
from batchrunner.paths import NULL_COMPONENT
from batchrunner.polling import PollPolicy
from batchrunner.runner import RunOptions, run_jobs
from batchrunner.state import JobStatus, StateStore

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]
ROOT = Path(__file__).resolve().parent.parent
FAST_POLL = PollPolicy(first_s=0.05, factor=1.5, cap_s=0.2, floor_s=0.02)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# --- names and templates refused at load ---------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../evil", "/etc/evil", "a/b", ".hidden", "..", "a\\b", "C:evil", "a b", "é", ""]
)
def test_job_names_that_could_leave_the_directory_are_refused(name: str, tmp_path: Path) -> None:
    """A job name with a separator, a leading dot or odd characters is refused at load."""
    path = write(tmp_path / "j.toml", f'[[job]]\nname = {json.dumps(name)}\nsql = "select 1"\n')
    with pytest.raises(JobFileError) as info:
        load_jobs([path])
    assert "field 'name'" in str(info.value)
    assert "is not a valid job name" in str(info.value) or "has no name" in str(info.value)


@pytest.mark.parametrize(
    ("output", "wanted"),
    [
        ("../x.parquet", "may not start with '.'"),
        ("a/../../x.parquet", "may not start with '.'"),
        ("./x.parquet", "may not start with '.'"),
        ("/tmp/x.parquet", "must be relative"),
        ("~/x.parquet", "must be relative"),
        ("a\\..\\x.parquet", "contains '\\\\'"),
        ("C:/x.parquet", "contains ':'"),
        ("a//x.parquet", "empty path segment"),
        (".hidden/x.parquet", "may not start with '.'"),
        ("{job}/x.csv", "must end in '.parquet'"),
    ],
)
def test_output_templates_that_could_leave_the_directory_are_refused(
    output: str, wanted: str, tmp_path: Path
) -> None:
    """An output template that is absolute, climbs, or holds odd characters is refused."""
    text = f'[[job]]\nname = "a"\nsql = "select 1"\noutput = {json.dumps(output)}\n'
    with pytest.raises(JobFileError) as info:
        load_jobs([write(tmp_path / "j.toml", text)])
    assert "field 'output'" in str(info.value)
    assert wanted in str(info.value), str(info.value)


def test_too_long_and_nul_values_are_refused(tmp_path: Path) -> None:
    """A value too long for a file name, or holding NUL, is refused before anything runs."""
    long_value = "x" * 250
    text = (
        '[[job]]\nname = "a"\nsql = "select {v} as v"\n'
        f"[job.grid]\nv = [{json.dumps(long_value)}]\n"
    )
    with pytest.raises(JobFileError, match="limit is 200"):
        load_jobs([write(tmp_path / "long.toml", text)])
    nul = '[[job]]\nname = "a"\nsql = "select {v} as v"\n[job.grid]\nv = ["a\\u0000b"]\n'
    with pytest.raises(JobFileError, match="NUL"):
        load_jobs([write(tmp_path / "nul.toml", nul)])


ODD_VALUES = [
    "../../../escaped",
    "/etc/passwd",
    "..",
    ".",
    ".hidden",
    "a/b/c",
    "a\\b",
    "C:\\Windows\\x",
    "~root",
    "$HOME",
    '*?<>|:"',
    "%2F..%2F",
    "",
    " ",
    "é/ü",
    "line\nbreak",
    "CON",
    "x" * 150,
]


async def test_parameter_values_never_write_outside_the_output_directory(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Traversal, absolute and odd values land encoded inside OUT and decode back exactly."""
    jobs_file = write(
        tmp_path / "jobs.toml",
        '[[job]]\nname = "hive"\nsql = "select {v} as v"\n'
        f"[job.grid]\nv = {json.dumps(ODD_VALUES)}\n"
        '[[job]]\nname = "bare"\nsql = "select {v} as v"\noutput = "{v}/{v}.parquet"\n'
        f"[job.grid]\nv = {json.dumps(ODD_VALUES)}\n",
    )
    out = tmp_path / "deep" / "er" / "out"
    before = files_under(tmp_path)
    jobs = load_jobs([jobs_file])
    result = await run_jobs(
        jobs,
        RunOptions(
            out_dir=out,
            api_key=emulator.test_key,
            api_base=emulator.api_base,
            files_base=emulator.files_base,
            rate=500.0,
            poll=FAST_POLL,
        ),
    )
    assert result.ok, [r.error for r in result.failed]
    created = files_under(tmp_path) - before
    outside = [p for p in created if not p.resolve().is_relative_to(out.resolve())]
    assert not outside, outside
    assert not any(p.is_symlink() for p in created)
    for job in jobs:
        final = out / job.output
        assert final.resolve().parent.is_relative_to(out.resolve())
        value = str(job.params["v"])
        assert pq.read_table(final).column("v").to_pylist() == [value]
        segment = job.output.parts[1] if job.name == "hive" else job.output.parts[0]
        encoded = segment.removeprefix("v=")
        assert unquote(encoded) == value or (value == "" and encoded == NULL_COMPONENT)
        assert not encoded.startswith(".") and "/" not in encoded
    parquet = [p for p in created if p.suffix == ".parquet"]
    assert len(parquet) == 2 * len(ODD_VALUES)


# --- a small disk of our own ---------------------------------------------------------------


def _can_mount() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"batchrunner-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True, capture_output=True)
        return True
    finally:
        probe.rmdir()


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="needs root to mount a small tmpfs")


class Disk:
    """A tmpfs mounted at ``path`` whose size and writability the test changes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, options: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True
        )


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Disk]:
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def cli_env(emu: EmulatorHandle) -> dict[str, str]:
    return {
        **os.environ,
        "STRIPE_API_KEY": emu.test_key,
        "STRIPE_API_BASE": emu.api_base,
        "STRIPE_FILES_BASE": emu.files_base,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "250",
    }


async def cli(emu: EmulatorHandle, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``batchrunner ARGS`` as a subprocess against ``emu``."""
    command = [sys.executable, "-m", "batchrunner", *args]
    with anyio.fail_after(120):
        return await anyio.run_process(command, env=cli_env(emu), check=False)


def text(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode() + done.stderr.decode()


def fill(path: Path) -> Path:
    """Write zeros to ``path`` until the disk refuses another byte."""
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * (1 << 16))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return path


def states(state_path: Path) -> dict[str, JobStatus]:
    with StateStore.open(state_path) as store:
        return {r.job_id: r.status for r in store.all()}


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and p.suffix in {".tmp", ".csv"}]


BIG_AND_SMALL = """
[[job]]
name = "small"
sql = "select id, amount from charges limit 5"
repeat = 3

[[job]]
name = "big"
sql = "select * from charges"
repeat = 2
"""


@needs_mount
async def test_disk_full_fails_clearly_keeps_state_and_the_rerun_completes(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """Results that do not fit fail with 'no space left'; after freeing space a rerun ends it."""
    jobs = write(tmp_path / "jobs.toml", BIG_AND_SMALL)
    async with make_emulator(rate_limits=RateLimits(enabled=False)) as emu:
        with small_disk(tmp_path / "disk", "1m") as disk:
            out = disk.path / "out"
            # The state file lives off the small disk: only the outputs may run out of space
            # (a full disk under the state file is the next test's case).
            state = tmp_path / "state.sqlite"
            first = await cli(emu, "run", str(jobs), "--out", str(out), "--state", str(state))
            assert first.returncode == 1, text(first)
            assert "no space left on device; free space and rerun" in text(first)
            assert "Traceback" not in text(first)
            after_first = await anyio.to_thread.run_sync(states, state)
            assert {s for k, s in after_first.items() if k.startswith("small")} == {
                JobStatus.SUCCEEDED
            }
            assert {s for k, s in after_first.items() if k.startswith("big")} == {JobStatus.FAILED}
            assert not leftovers(out)
            for k in after_first:  # nothing partial at a final path
                if k.startswith("big"):
                    assert not (out / "big" / f"part-{k[-1]}.parquet").exists()

            disk.remount("size=64m")  # space is back
            second = await cli(emu, "run", str(jobs), "--out", str(out), "--state", str(state))
            assert second.returncode == 0, text(second)
            assert text(second).count("skipped small#r") == 3
            for i in range(2):
                assert pq.read_table(out / "big" / f"part-{i}.parquet").num_rows == 1760
            assert not leftovers(out)


@needs_mount
async def test_full_disk_for_the_state_file_stops_with_a_clear_error(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """With no byte left even for the state file, the run refuses to start, saying why."""
    jobs = write(tmp_path / "jobs.toml", BIG_AND_SMALL)
    async with make_emulator(rate_limits=RateLimits(enabled=False)) as emu:
        with small_disk(tmp_path / "disk", "4m") as disk:
            out = disk.path / "out"
            first = await cli(emu, "run", str(jobs), "--out", str(out), "--only", "small")
            assert first.returncode == 0, text(first)
            filler = fill(disk.path / "filler")
            created_before = emu.stats()["query_runs_created"]["total"]
            full = await cli(emu, "run", str(jobs), "--out", str(out))
            assert full.returncode in (1, 2), text(full)
            assert "free space" in text(full) and "rerun" in text(full), text(full)
            assert "Traceback" not in text(full)
            filler.unlink()
            assert set(states(out / ".batchrunner" / "state.sqlite").values()) <= {
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
                JobStatus.PLANNED,
                JobStatus.SUBMITTING,
                JobStatus.RUNNING,
                JobStatus.DOWNLOADING,
                JobStatus.CONVERTING,
            }
            last = await cli(emu, "run", str(jobs), "--out", str(out))
            assert last.returncode == 0, text(last)
            assert text(last).count("skipped small#r") == 3
            assert pq.read_table(out / "big" / "part-1.parquet").num_rows == 1760
            # The small jobs never ran again: only the big ones made new runs.
            assert emu.stats()["query_runs_created"]["total"] - created_before <= 2 * 2


@contextmanager
def read_only(directory: Path, disk: Disk | None) -> Iterator[None]:
    """Make ``directory`` read-only: a read-only remount as root, chmod otherwise."""
    if disk is not None:
        disk.remount("ro")
    else:
        for path in [directory, *directory.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)
    try:
        yield
    finally:
        if disk is not None:
            disk.remount("rw")
        else:
            for path in [directory, *directory.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o755)


@pytest.fixture
def ro_disk(tmp_path: Path) -> Iterator[Disk | None]:
    """A tmpfs when mountable; None (use chmod) for non-root users; skip for root without."""
    if CAN_MOUNT:
        with small_disk(tmp_path / "disk", "64m") as disk:
            yield disk
    elif os.geteuid() != 0:
        yield None
    else:
        pytest.skip("root ignores chmod and may not mount: no way to make a directory read-only")


@pytest.mark.parametrize("state_inside", [True, False], ids=["state-in-out", "state-elsewhere"])
async def test_read_only_output_directory_is_a_clear_error_and_resumes_after(
    make_emulator: MakeEmulator, tmp_path: Path, ro_disk: Disk | None, state_inside: bool
) -> None:
    """A read-only OUT stops the run before any query, saying what to do; then it resumes."""
    jobs = write(tmp_path / "jobs.toml", BIG_AND_SMALL)
    out = (ro_disk.path if ro_disk else tmp_path) / "out"
    state = out / ".batchrunner" / "state.sqlite"
    where = ["--out", str(out)]
    if not state_inside:
        state = tmp_path / "elsewhere" / "state.sqlite"
        where += ["--state", str(state)]
    async with make_emulator(rate_limits=RateLimits(enabled=False)) as emu:
        first = await cli(emu, "run", str(jobs), *where, "--only", "small")
        assert first.returncode == 0, text(first)
        with read_only(out, ro_disk):
            blocked = await cli(emu, "run", str(jobs), *where)
            created = emu.stats()["query_runs_created"]["total"]
        assert blocked.returncode == 2, text(blocked)
        message = text(blocked)
        assert "Traceback" not in message
        assert str(out) in message
        assert "writable" in message and "rerun" in message, message
        assert created == 3  # nothing was sent for the big jobs
        assert set(states(state).values()) == {JobStatus.SUCCEEDED}
        last = await cli(emu, "run", str(jobs), *where)
        assert last.returncode == 0, text(last)
        assert text(last).count("skipped small#r") == 3
        assert pq.read_table(out / "big" / "part-0.parquet").num_rows == 1760


async def test_enospc_from_the_parquet_writer_fails_the_job_clearly(
    emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk-full error while writing Parquet names the output and says to free space."""
    jobs = load_jobs(
        [write(tmp_path / "jobs.toml", '[[job]]\nname = "a"\nsql = "select 1 as x"\n')]
    )

    class FullDisk(pq.ParquetWriter):  # type: ignore[misc]
        def write_table(self, *args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "ParquetWriter", FullDisk)  # the writer batchrunner.convert uses
    options = RunOptions(
        out_dir=tmp_path / "out",
        api_key=emulator.test_key,
        api_base=emulator.api_base,
        files_base=emulator.files_base,
        rate=500.0,
        poll=FAST_POLL,
    )
    result = await run_jobs(jobs, options)
    (failed,) = result.failed
    final = tmp_path / "out" / "a" / "part-0.parquet"
    assert failed.error == (
        f"[a] writing {final}: no space left on device; free space and rerun: "
        "finished jobs are kept"
    )
    assert not leftovers(tmp_path / "out") and not final.exists()
    monkeypatch.undo()
    again = await run_jobs(jobs, options)  # space is back: the rerun completes
    assert again.ok and pq.read_table(final).num_rows == 1


class _RefuseDownloadingRows:
    """An SQLite connection whose disk fills up when a job is marked ``downloading``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.startswith("UPDATE jobs SET status") and params and params[0] == "downloading":
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = 13  # SQLITE_FULL
            raise error
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_a_state_write_refused_mid_run_stops_the_run_and_the_rerun_completes(
    emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the state file mid-run stops every job with what to do; no crash."""
    jobs = load_jobs(
        [
            write(
                tmp_path / "jobs.toml",
                '[[job]]\nname = "a"\nsql = "select id, amount from charges limit 7"\nrepeat = 6\n',
            )
        ]
    )
    real_open = StateStore.open

    def open_on_a_filling_disk(path: Path, **kwargs: Any) -> StateStore:
        store = real_open(path, **kwargs)
        store._conn = _RefuseDownloadingRows(store._conn)  # type: ignore[assignment]
        return store

    monkeypatch.setattr(StateStore, "open", open_on_a_filling_disk)
    options = RunOptions(
        out_dir=tmp_path / "out",
        api_key=emulator.test_key,
        api_base=emulator.api_base,
        files_base=emulator.files_base,
        rate=500.0,
        poll=FAST_POLL,
    )
    stopped = await run_jobs(jobs, options)
    assert stopped.stopped_by is not None
    assert "cannot record job state: database or disk is full; free space and rerun" in (
        stopped.stopped_by
    )
    assert not list((tmp_path / "out").rglob("*.parquet")) and not leftovers(tmp_path / "out")
    monkeypatch.undo()
    with StateStore.open(options.state_file) as store:  # intact: the runs made are recorded
        run_ids = {r.job_id: r.query_run_id for r in store.all() if r.query_run_id}
    assert run_ids
    again = await run_jobs(jobs, options)
    assert again.ok
    finished = {r.job_id: r.query_run_id for r in again.results}
    assert all(finished[job_id] == run_id for job_id, run_id in run_ids.items())  # by id
    assert emulator.stats()["query_runs_created"]["total"] == 6  # none created twice
