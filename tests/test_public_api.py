"""Tests for the package's public face, and what every run entry point shares."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

import batchrunner
from batchrunner import Job, RunOptions, load_jobs, run_jobs
from batchrunner.emulator import EmulatorHandle
from batchrunner.polling import PollPolicy


def test_all_is_sorted_and_importable() -> None:
    """__all__ is short, sorted, and every name in it exists."""
    assert list(batchrunner.__all__) == sorted(batchrunner.__all__)
    for name in batchrunner.__all__:
        assert hasattr(batchrunner, name), name


def test_every_error_is_a_batchrunner_error() -> None:
    """The exported errors share one root, so callers can catch them all at once."""
    for name in ("ApiError", "AuthenticationFailed", "ConfigError", "JobFileError", "QueryFailed"):
        assert issubclass(getattr(batchrunner, name), batchrunner.BatchrunnerError)


def _options(emu: EmulatorHandle, out: Path) -> RunOptions:
    return RunOptions(
        out_dir=out,
        api_key=emu.test_key,
        api_base=emu.api_base,
        files_base=emu.files_base,
        rate=500.0,
        poll=PollPolicy(first_s=0.05, factor=1.5, cap_s=0.2, floor_s=0.02),
    )


def _two_jobs(tmp_path: Path) -> list[Job]:
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[[job]]\nname = "a"\nsql = "select id from charges limit 2"\nrepeat = 2\n', "utf-8"
    )
    return load_jobs([path])


async def test_run_jobs_freezes_the_gc_during_the_run_and_thaws_it_after(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """run_jobs (so run, run_sync and the CLI) runs with the GC frozen, then unfreezes."""
    before = gc.get_freeze_count()
    assert before == 0  # else "frozen during the run" below would prove nothing
    seen: list[int] = []
    result = await run_jobs(
        _two_jobs(tmp_path),
        _options(emulator, tmp_path / "out"),
        observer=lambda _event: seen.append(gc.get_freeze_count()),
    )
    assert result.ok and len(result.results) == 2
    assert seen and min(seen) > 0
    assert gc.get_freeze_count() == before


async def test_run_jobs_leaves_a_callers_freeze_alone(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A freeze made before the run is neither extended nor thawed by run_jobs."""
    jobs = _two_jobs(tmp_path)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen: list[int] = []
        result = await run_jobs(
            jobs,
            _options(emulator, tmp_path / "out"),
            observer=lambda _event: seen.append(gc.get_freeze_count()),
        )
        after = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert result.ok and seen
    # Frozen objects can only leave (freed by reference counting), never join.
    assert 0 < max(seen) <= frozen and 0 < after <= frozen


async def test_a_custom_host_without_a_key_is_refused_not_emulated(tmp_path: Path) -> None:
    """No key but a non-default API base: ConfigError naming the host; nothing runs or lands."""
    options = RunOptions(out_dir=tmp_path / "out", api_base="http://127.0.0.1:9")
    with pytest.raises(batchrunner.ConfigError, match=r"no API key.*127\.0\.0\.1:9"):
        await run_jobs(_two_jobs(tmp_path), options)
    assert not list((tmp_path / "out").rglob("*.parquet"))
