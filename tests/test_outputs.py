"""Atomic outputs, temp-file sweeping, write errors and the manifest."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from anyio.lowlevel import checkpoint

from batchrunner.errors import OutputError
from batchrunner.outputs import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    atomic_output,
    sweep_stale_temps,
    temp_path_for,
    utc_iso,
    write_json_atomic,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


def child_env() -> dict[str, str]:
    """The environment for a child Python that imports batchrunner from this checkout."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def leftovers(directory: Path) -> list[str]:
    """Names of temporary files in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def write_then_raise(final: Path, exc: BaseException) -> None:
    """Write part of a file through atomic_output, then fail with ``exc``."""
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"partial")
        raise exc


def publish(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` through atomic_output with an ordinary open()."""
    with atomic_output(final) as tmp, tmp.open("wb") as f:
        f.write(data)


def entry(job_id: str, **changes: object) -> ManifestEntry:
    """A manifest entry with plausible values."""
    base: dict[str, object] = {
        "job_id": job_id,
        "params": {"day": "2024-01-01", "n": 3, "ratio": 0.5, "flag": True, "none": None},
        "query_run_id": f"qry_{job_id}",
        "output": f"daily/{job_id}.parquet",
        "rows": 10,
        "bytes": 2048,
        "sql_hash": "abc",
        "timings": {"server_run": 1.25, "download": 0.5},
        "finished_at": "2024-01-31T12:00:00.000Z",
    }
    base.update(changes)
    return ManifestEntry(**base)  # type: ignore[arg-type]


# -- temp names and the atomic write ----------------------------------------------------


def test_temp_path_is_hidden_unique_and_beside_the_final(tmp_path: Path) -> None:
    """Temp names live in the final's (created) directory, start with a dot and never repeat."""
    final = tmp_path / "a" / "b" / "out.parquet"
    first, second = temp_path_for(final), temp_path_for(final)
    assert final.parent.is_dir()
    assert first.parent == final.parent
    assert first != second
    assert first.name.startswith(".out.parquet.")
    assert first.name.endswith(".tmp")


def test_temp_name_of_a_very_long_final_name_stays_within_limits(tmp_path: Path) -> None:
    """A 250-character final name still gets a temp name the file system accepts."""
    final = tmp_path / ("x" * 246 + ".csv")
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"ok")
    assert final.read_bytes() == b"ok"
    assert leftovers(tmp_path) == []


def test_success_publishes_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    """On a clean exit the final holds the written bytes and no temp file remains."""
    final = tmp_path / "out" / "result.csv"
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"a,b\n1,2\n")
        assert not final.exists()
    assert final.read_bytes() == b"a,b\n1,2\n"
    assert leftovers(final.parent) == []


def test_success_replaces_an_older_output(tmp_path: Path) -> None:
    """A rerun's output replaces the previous file whole."""
    final = tmp_path / "result.csv"
    final.write_bytes(b"old")
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exception_leaves_no_final_and_no_temp(
    tmp_path: Path, exc_type: type[BaseException]
) -> None:
    """An error or Ctrl-C inside the block removes the temp and never creates the final."""
    final = tmp_path / "result.csv"
    with pytest.raises(exc_type):
        write_then_raise(final, exc_type("stop"))
    assert not final.exists()
    assert leftovers(tmp_path) == []


def test_exception_keeps_the_previous_output_intact(tmp_path: Path) -> None:
    """A failed rewrite leaves the previous complete output as it was."""
    final = tmp_path / "result.csv"
    final.write_bytes(b"previous complete output")
    with pytest.raises(RuntimeError):
        write_then_raise(final, RuntimeError("converter failed"))
    assert final.read_bytes() == b"previous complete output"
    assert leftovers(tmp_path) == []


async def test_cancellation_removes_the_temp(tmp_path: Path) -> None:
    """A task cancelled while writing leaves neither a final nor a temp file."""
    final = tmp_path / "result.csv"
    with anyio.CancelScope() as scope, atomic_output(final) as tmp:
        tmp.write_bytes(b"partial")
        scope.cancel()
        await checkpoint()
        pytest.fail("the checkpoint should have raised the cancellation")
    assert scope.cancelled_caught
    assert not final.exists()
    assert leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_is_an_output_error(tmp_path: Path) -> None:
    """Leaving the block without creating the temp file fails instead of publishing nothing."""
    final = tmp_path / "result.csv"
    with pytest.raises(OutputError, match="left no file"), atomic_output(final):
        pass
    assert not final.exists()


def test_kill_9_mid_write_never_leaves_a_partial_final(tmp_path: Path) -> None:
    """A writer killed mid-file leaves the old final whole and only a temp, which sweep removes."""
    final = tmp_path / "result.csv"
    final.write_bytes(b"previous complete output")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from batchrunner.outputs import atomic_output\n"
        "with atomic_output(Path(sys.argv[1])) as tmp:\n"
        "    with open(tmp, 'wb') as f:\n"
        "        f.write(b'x' * 1_000_000)\n"
        "        f.flush()\n"
        "        print(tmp, flush=True)\n"
        "        sys.stdin.read()\n"  # block, mid-file, until killed
        "        f.write(b'never')\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(final)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        line = child.stdout.readline().decode().strip()
        if not line:
            child.kill()
            pytest.fail(f"child did not start: {child.stderr.read().decode()}")
        temp = Path(line)
        assert temp.stat().st_size == 1_000_000
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL

    assert final.read_bytes() == b"previous complete output"
    assert leftovers(tmp_path) == [temp.name]
    assert sweep_stale_temps(tmp_path) == 1
    assert leftovers(tmp_path) == []


# -- errors the user must fix ------------------------------------------------------------


def test_disk_full_while_syncing_is_an_output_error_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC at fsync becomes OutputError saying to free space; no temp, old output kept."""
    final = tmp_path / "result.csv"
    final.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as info, atomic_output(final) as tmp:
        tmp.write_bytes(b"new")
    assert "no space left on device; free space and rerun: finished jobs are kept" in str(
        info.value
    )
    assert info.value.path == str(final)
    assert final.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_disk_full_raised_by_the_writer_is_an_output_error(tmp_path: Path) -> None:
    """ENOSPC from the caller's writer (pyarrow names no file) is translated too."""
    final = tmp_path / "result.parquet"
    with pytest.raises(OutputError, match="no space left"):
        write_then_raise(final, OSError(errno.ENOSPC, "Error writing bytes to file"))
    assert not final.exists()
    assert leftovers(tmp_path) == []


def test_disk_full_in_write_json_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_json_atomic reports a full disk as OutputError and leaves nothing behind."""
    real_replace = os.replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match="no space left"):
        write_json_atomic(tmp_path / "m.json", {"a": 1})
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_system_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EROFS at publication becomes OutputError telling to choose a writable directory."""

    def read_only(src: object, dst: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with (
        pytest.raises(OutputError, match="read-only file system"),
        atomic_output(tmp_path / "r.csv") as tmp,
    ):
        tmp.write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_other_files_errors_from_the_writer_pass_through(tmp_path: Path) -> None:
    """An OSError about some other file (e.g. the input) is not mislabelled as an output error."""
    final = tmp_path / "result.parquet"
    missing = tmp_path / "input.csv"
    with pytest.raises(FileNotFoundError), atomic_output(final):
        missing.read_bytes()
    assert leftovers(tmp_path) == []


@contextmanager
def unprivileged() -> Iterator[None]:
    """Act without root's permission bypass (root ignores chmod): effective uid nobody."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


def test_read_only_directory_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory we may not write to gives OutputError, and nothing is created in it."""
    # As nobody the pytest base directory (0700, root) cannot be traversed: work relative to
    # the test's own directory instead, made searchable.
    tmp_path.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    locked = Path("locked")
    locked.mkdir()
    (locked / "result.csv").write_bytes(b"old")
    locked.chmod(0o555)
    try:
        with unprivileged():
            with pytest.raises(OutputError, match="permission denied") as info:
                publish(locked / "result.csv", b"new")
            assert "finished jobs are kept" in str(info.value)
            with pytest.raises(OutputError, match="permission denied"):
                temp_path_for(locked / "sub" / "x.csv")
    finally:
        locked.chmod(0o755)
    assert sorted(p.name for p in locked.iterdir()) == ["result.csv"]
    assert (locked / "result.csv").read_bytes() == b"old"


def test_a_parent_that_is_a_file_is_an_output_error(tmp_path: Path) -> None:
    """An output path under a regular file fails clearly instead of with a raw OSError."""
    (tmp_path / "report").write_text("I am a file")
    with (
        pytest.raises(OutputError, match="not a directory"),
        atomic_output(tmp_path / "report" / "2024" / "out.csv") as tmp,
    ):
        tmp.write_bytes(b"x")
    assert (tmp_path / "report").read_text() == "I am a file"


# -- sweeping ----------------------------------------------------------------------------


def test_sweep_removes_only_our_temp_names(tmp_path: Path) -> None:
    """Only dotted <name>.<32 hex>.tmp files are removed, in subdirectories too."""
    ours = [
        temp_path_for(tmp_path / "a.parquet"),
        temp_path_for(tmp_path / "deep" / "er" / "b.csv"),
    ]
    for p in ours:
        p.write_bytes(b"junk")
    theirs = [
        tmp_path / ".a.parquet.tmp",
        tmp_path / "a.parquet.0123456789abcdef0123456789abcdef.tmp",
        tmp_path / ".a.parquet.0123456789ABCDEF0123456789ABCDEF.tmp",
        tmp_path / ".a.parquet.0123456789abcdef0123456789abcdef.tmp.keep",
        tmp_path / "a.parquet",
    ]
    for p in theirs:
        p.write_bytes(b"keep")
    a_dir = tmp_path / ".d.0123456789abcdef0123456789abcdef.tmp"
    a_dir.mkdir()
    link = tmp_path / ".l.0123456789abcdef0123456789abcdef.tmp"
    link.symlink_to(tmp_path / "a.parquet")

    assert sweep_stale_temps(tmp_path) == 2
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)
    assert a_dir.is_dir()
    assert link.is_symlink()
    assert sweep_stale_temps(tmp_path) == 0


def test_sweep_of_a_missing_directory_is_zero(tmp_path: Path) -> None:
    """Sweeping an output directory that does not exist yet removes nothing."""
    assert sweep_stale_temps(tmp_path / "not-yet") == 0


# -- JSON and the manifest ---------------------------------------------------------------


def test_write_json_atomic_round_trips_unicode(tmp_path: Path) -> None:
    """JSON is written as UTF-8 and reads back equal."""
    data = {"name": "Zürich ☃", "n": [1, 2.5, None, True]}
    path = tmp_path / "x" / "data.json"
    write_json_atomic(path, data)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert "Zürich" in path.read_text(encoding="utf-8")
    assert leftovers(path.parent) == []


def test_manifest_upsert_save_load_round_trip(tmp_path: Path) -> None:
    """Entries saved to OUT/manifest.json load back equal; upsert replaces by job id."""
    m = Manifest.load(tmp_path)
    assert len(m) == 0
    m.upsert(entry("b"))
    m.upsert(entry("a"))
    m.upsert(entry("a", rows=99))
    m.save()
    assert (tmp_path / MANIFEST_NAME).is_file()

    loaded = Manifest.load(tmp_path)
    assert loaded.recovered_from is None
    assert set(loaded.entries) == {"a", "b"}
    a = loaded.get("a")
    assert a is not None
    assert a.rows == 99
    assert loaded.entries["b"] == entry("b")
    assert dict(a.params) == dict(entry("a").params)
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert list(doc["jobs"]) == ["a", "b"]


def test_manifest_rejects_absolute_output_paths(tmp_path: Path) -> None:
    """Outputs are listed relative to the output directory; an absolute one is refused."""
    m = Manifest(tmp_path)
    with pytest.raises(ValueError, match="relative"):
        m.upsert(entry("a", output=str(tmp_path / "a.parquet")))
    assert len(m) == 0


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": "batchrunner-manifest", "version": 1, "jobs": {"a": ',
        b"\xff\xfe not utf-8",
        b"[]",
        b'{"format": "batchrunner-manifest", "version": 1, "jobs": {"a": {"job_id": "a"}}}',
        b'{"format": "batchrunner-manifest", "version": 1, "jobs": {"a": 1}}',
        b'{"format": "something-else", "version": 1, "jobs": {}}',
    ],
)
def test_corrupt_manifest_is_kept_aside_and_a_fresh_one_started(
    tmp_path: Path, content: bytes
) -> None:
    """An unreadable manifest moves to manifest.json.corrupt-<UTC time> and loading starts empty."""
    (tmp_path / MANIFEST_NAME).write_bytes(content)
    m = Manifest.load(tmp_path, clock=lambda: 1_706_702_400.0)  # 2024-01-31T12:00:00Z
    assert len(m) == 0
    aside = tmp_path / "manifest.json.corrupt-20240131T120000Z"
    assert m.recovered_from == aside
    assert aside.read_bytes() == content
    assert not (tmp_path / MANIFEST_NAME).exists()
    m.upsert(entry("a"))
    m.save()
    assert set(Manifest.load(tmp_path).entries) == {"a"}


def test_second_corruption_at_the_same_second_keeps_both_copies(tmp_path: Path) -> None:
    """Two corrupt manifests moved aside in the same second do not overwrite each other."""
    for content in [b"first", b"second"]:
        (tmp_path / MANIFEST_NAME).write_bytes(content)
        Manifest.load(tmp_path, clock=lambda: 0.0)
    kept = sorted(p.read_bytes() for p in tmp_path.glob("manifest.json.corrupt-*"))
    assert kept == [b"first", b"second"]


def test_manifest_entry_with_a_bool_row_count_is_corrupt(tmp_path: Path) -> None:
    """A boolean where a count belongs is a corrupt entry, not the number 1."""
    bad = entry("a").to_json() | {"rows": True}
    doc = {"format": "batchrunner-manifest", "version": 1, "jobs": {"a": bad}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(doc))
    m = Manifest.load(tmp_path)
    assert m.recovered_from is not None
    assert len(m) == 0


def test_utc_iso_formats_unix_time() -> None:
    """Unix time renders as ISO 8601 UTC with milliseconds and a Z."""
    assert utc_iso(1_706_702_400.25) == "2024-01-31T12:00:00.250Z"
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
