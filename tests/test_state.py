"""The local state file: round trips, durability, resume rules, locking and bad files."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batchrunner.errors import ConfigError
from batchrunner.state import (
    SCHEMA_VERSION,
    JobRecord,
    JobStatus,
    ResumeAction,
    StateStore,
    hash_sql,
    new_idempotency_key,
    resume_action,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment for a child Python that imports batchrunner from this checkout."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def counting_clock(start: float = 1_000.0) -> Callable[[], float]:
    """A clock that advances one second per reading."""
    ticks = itertools.count()
    return lambda: start + next(ticks)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "state.db"


@pytest.fixture
def store(state_path: Path) -> Iterator[StateStore]:
    s = StateStore.open(state_path, clock=counting_clock())
    yield s
    s.close()


def record(**changes: object) -> JobRecord:
    """A record in a given shape, for the pure resume rules."""
    base: dict[str, object] = {
        "job_id": "j",
        "status": JobStatus.PLANNED,
        "sql_hash": "h",
        "idempotency_key": None,
        "query_run_id": None,
        "file_id": None,
        "attempts": 0,
        "error": None,
        "output": None,
        "rows": None,
        "bytes": None,
        "created_at": 0.0,
        "updated_at": 0.0,
        "timings": {},
    }
    base.update(changes)
    return JobRecord(**base)  # type: ignore[arg-type]


# -- round trips -------------------------------------------------------------------------


def test_full_lifecycle_round_trips_through_reopen(state_path: Path) -> None:
    """Every field written during a job's life reads back the same after reopening."""
    with StateStore.open(state_path, clock=counting_clock()) as s:
        planned = s.ensure_planned("daily-1", "hash-a")
        assert planned.status is JobStatus.PLANNED
        assert planned.attempts == 0
        s.begin_submit("daily-1", "br-key-1")
        s.record_run("daily-1", "qry_123")
        s.set_status("daily-1", JobStatus.DOWNLOADING, file_id="file_9", timings={"queue": 1.5})
        s.set_status(
            "daily-1",
            JobStatus.SUCCEEDED,
            output="daily/1.parquet",
            rows=42,
            bytes=4096,
            timings={"download": 0.25},
        )
        before = s.get("daily-1")

    with StateStore.open(state_path) as s:
        after = s.get("daily-1")
    assert after == before
    assert after is not None
    assert after.status is JobStatus.SUCCEEDED
    assert after.idempotency_key == "br-key-1"
    assert after.query_run_id == "qry_123"
    assert after.file_id == "file_9"
    assert after.attempts == 1
    assert (after.output, after.rows, after.bytes) == ("daily/1.parquet", 42, 4096)
    assert dict(after.timings) == {"queue": 1.5, "download": 0.25}
    assert after.created_at == 1_000.0
    assert after.updated_at > after.created_at


def test_arbitrary_text_round_trips_safely(store: StateStore) -> None:
    """Quotes, NULs, newlines, SQL and non-ASCII text in errors and ids come back verbatim."""
    nasty = "it's \"bad\"\x00\n'); DROP TABLE jobs; --\u202e☃ 𝄞"
    store.ensure_planned(nasty, nasty)
    store.set_status(nasty, JobStatus.FAILED, error=nasty, output=nasty)
    rec = store.get(nasty)
    assert rec is not None
    assert (rec.job_id, rec.sql_hash, rec.error, rec.output) == (nasty,) * 4
    assert [r.job_id for r in store.all()] == [nasty]


def test_schema_has_no_column_for_credentials(store: StateStore, state_path: Path) -> None:
    """The job table has exactly the documented columns: nowhere to store an API key."""
    conn = sqlite3.connect(state_path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()
    assert columns == {
        "job_id", "status", "sql_hash", "idempotency_key", "query_run_id", "file_id",
        "attempts", "error", "output", "rows", "bytes", "created_at", "updated_at", "timings",
    }  # fmt: skip


def test_all_lists_jobs_in_planning_order(store: StateStore) -> None:
    """all() returns jobs in the order they were first planned, not by name."""
    for job_id in ["c", "a", "b"]:
        store.ensure_planned(job_id, "h")
    assert [r.job_id for r in store.all()] == ["c", "a", "b"]


def test_get_unknown_job_is_none_and_writes_to_it_raise(store: StateStore) -> None:
    """An unknown job reads as None; writing to it is a KeyError, not a silent no-op."""
    assert store.get("nope") is None
    with pytest.raises(KeyError, match="nope"):
        store.set_status("nope", JobStatus.RUNNING)
    with pytest.raises(KeyError):
        store.begin_submit("nope", "k")
    with pytest.raises(KeyError):
        store.record_run("nope", "qry_1")
    with pytest.raises(KeyError):
        store.reset("nope")


def test_summary_counts_every_status(store: StateStore) -> None:
    """summary() counts jobs per status and lists absent statuses as zero."""
    for job_id in ["a", "b", "c"]:
        store.ensure_planned(job_id, "h")
    store.begin_submit("a", "k-a")
    store.set_status("b", JobStatus.FAILED, error="boom")
    summary = store.summary()
    assert summary[JobStatus.PLANNED] == 1
    assert summary[JobStatus.SUBMITTING] == 1
    assert summary[JobStatus.FAILED] == 1
    assert summary[JobStatus.SUCCEEDED] == 0
    assert set(summary) == set(JobStatus)


# -- writes and their rules --------------------------------------------------------------


def test_begin_submit_is_visible_to_another_connection_at_once(
    store: StateStore, state_path: Path
) -> None:
    """The key is committed when begin_submit returns: a separate reader already sees it."""
    store.ensure_planned("j", "h")
    store.begin_submit("j", "br-j-1-abc")
    reader = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True)
    try:
        row = reader.execute(
            "SELECT status, idempotency_key, attempts FROM jobs WHERE job_id = 'j'"
        ).fetchone()
        assert row == ("submitting", "br-j-1-abc", 1)
        store.record_run("j", "qry_7")
        assert reader.execute("SELECT query_run_id FROM jobs").fetchone() == ("qry_7",)
    finally:
        reader.close()


def test_key_and_run_id_commit_with_full_sync(store: StateStore) -> None:
    """begin_submit and record_run commit under synchronous=FULL, other writes under NORMAL."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.ensure_planned("j", "h")
    plain = list(statements)
    statements.clear()
    store.begin_submit("j", "k")
    submit = list(statements)
    statements.clear()
    store.record_run("j", "qry_1")
    run = list(statements)

    def synced_commit(trace: list[str]) -> bool:
        full = trace.index("PRAGMA synchronous = FULL")
        return full < trace.index("COMMIT") < trace.index("PRAGMA synchronous = NORMAL")

    assert synced_commit(submit)
    assert synced_commit(run)
    assert "PRAGMA synchronous = FULL" not in plain
    assert "COMMIT" in plain


def test_ensure_planned_keeps_a_job_whose_sql_is_unchanged(store: StateStore) -> None:
    """Planning a known job with the same SQL hash leaves its progress alone."""
    store.ensure_planned("j", "h1")
    store.begin_submit("j", "k1")
    store.record_run("j", "qry_1")
    again = store.ensure_planned("j", "h1")
    assert again.status is JobStatus.RUNNING
    assert again.query_run_id == "qry_1"


def test_ensure_planned_resets_a_job_whose_sql_changed(store: StateStore) -> None:
    """A changed SQL hash sends the job back to planned with no key, run or output."""
    store.ensure_planned("j", "h1")
    store.begin_submit("j", "k1")
    store.record_run("j", "qry_1")
    store.set_status(
        "j", JobStatus.SUCCEEDED, file_id="f", output="o", rows=1, bytes=2, timings={"x": 1.0}
    )
    rec = store.ensure_planned("j", "h2")
    assert rec.status is JobStatus.PLANNED
    assert rec.sql_hash == "h2"
    assert (rec.idempotency_key, rec.query_run_id, rec.file_id) == (None, None, None)
    assert (rec.output, rec.rows, rec.bytes, rec.error) == (None, None, None, None)
    assert dict(rec.timings) == {}
    assert rec.attempts == 1
    assert store.get("j") == rec


def test_begin_submit_counts_attempts_and_allows_the_same_key_again(store: StateStore) -> None:
    """Resubmitting with the stored key is allowed and counted as another attempt."""
    store.ensure_planned("j", "h")
    store.begin_submit("j", "k1")
    store.begin_submit("j", "k1")
    rec = store.get("j")
    assert rec is not None
    assert (rec.status, rec.idempotency_key, rec.attempts) == (JobStatus.SUBMITTING, "k1", 2)


def test_begin_submit_refuses_anything_that_could_duplicate_a_run(store: StateStore) -> None:
    """A new key while a create may be in flight, or any submit once a run exists, is refused."""
    store.ensure_planned("j", "h")
    store.begin_submit("j", "k1")
    with pytest.raises(ValueError, match="k1"):
        store.begin_submit("j", "k2")
    store.record_run("j", "qry_1")
    with pytest.raises(ValueError, match="qry_1"):
        store.begin_submit("j", "k1")
    rec = store.get("j")
    assert rec is not None
    assert (rec.idempotency_key, rec.attempts) == ("k1", 1)


def test_begin_submit_rejects_keys_stripe_would_refuse(store: StateStore) -> None:
    """An empty key or one over 255 characters never reaches the state file."""
    store.ensure_planned("j", "h")
    for bad in ["", "k" * 256]:
        with pytest.raises(ValueError, match="255"):
            store.begin_submit("j", bad)
    rec = store.get("j")
    assert rec is not None
    assert rec.attempts == 0


def test_set_status_keeps_fields_not_given_and_merges_timings(store: StateStore) -> None:
    """Fields left out keep their values; timings merge, a repeated phase is overwritten."""
    store.ensure_planned("j", "h")
    store.set_status("j", JobStatus.DOWNLOADING, file_id="f1", timings={"a": 1.0, "b": 2.0})
    store.set_status("j", JobStatus.CONVERTING, timings={"b": 3.0, "c": 4.0})
    rec = store.get("j")
    assert rec is not None
    assert rec.status is JobStatus.CONVERTING
    assert rec.file_id == "f1"
    assert dict(rec.timings) == {"a": 1.0, "b": 3.0, "c": 4.0}


def test_reset_clears_the_run_but_keeps_attempt_history(store: StateStore) -> None:
    """reset() forgets key, run, file, error and output; attempts keep counting after it."""
    store.ensure_planned("j", "h")
    store.begin_submit("j", "k1")
    store.record_run("j", "qry_1")
    store.set_status("j", JobStatus.FAILED, file_id="f", error="boom", timings={"x": 1.0})
    store.reset("j")
    rec = store.get("j")
    assert rec is not None
    assert rec.status is JobStatus.PLANNED
    assert (rec.idempotency_key, rec.query_run_id, rec.file_id, rec.error) == (None,) * 4
    assert dict(rec.timings) == {}
    store.begin_submit("j", "k2")
    rec = store.get("j")
    assert rec is not None
    assert rec.attempts == 2


def test_usable_from_several_threads(store: StateStore) -> None:
    """Calls from different threads are serialised, none is lost."""
    jobs = [f"j{i}" for i in range(40)]

    def life(job_id: str) -> None:
        store.ensure_planned(job_id, "h")
        store.begin_submit(job_id, f"k-{job_id}")
        store.record_run(job_id, f"qry_{job_id}")
        store.set_status(job_id, JobStatus.SUCCEEDED, rows=1)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(life, jobs))
    assert store.summary()[JobStatus.SUCCEEDED] == len(jobs)
    assert {r.query_run_id for r in store.all()} == {f"qry_{j}" for j in jobs}


def test_closed_store_refuses_use_and_closes_twice(state_path: Path) -> None:
    """After close() every call fails loudly, and a second close() is harmless."""
    s = StateStore.open(state_path)
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.get("j")


# -- resume rules and keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "output_exists", "expected"),
    [
        ({"status": JobStatus.SUCCEEDED, "query_run_id": "q", "idempotency_key": "k"}, True,
         ResumeAction.SKIP),
        ({"status": JobStatus.SUCCEEDED, "query_run_id": "q", "idempotency_key": "k"}, False,
         ResumeAction.POLL),
        ({"status": JobStatus.RUNNING, "query_run_id": "q", "idempotency_key": "k"}, False,
         ResumeAction.POLL),
        ({"status": JobStatus.DOWNLOADING, "query_run_id": "q", "idempotency_key": "k"}, False,
         ResumeAction.POLL),
        ({"status": JobStatus.CONVERTING, "query_run_id": "q", "idempotency_key": "k"}, True,
         ResumeAction.POLL),
        ({"status": JobStatus.SUBMITTING, "idempotency_key": "k"}, False,
         ResumeAction.RESUBMIT),
        ({"status": JobStatus.PLANNED}, False, ResumeAction.SUBMIT),
        ({"status": JobStatus.FAILED, "query_run_id": "q", "idempotency_key": "k"}, True,
         ResumeAction.RETRY),
        ({"status": JobStatus.FAILED, "idempotency_key": "k"}, False, ResumeAction.RETRY),
    ],
)  # fmt: skip
def test_resume_action(
    changes: dict[str, object], output_exists: bool, expected: ResumeAction
) -> None:
    """Each stored state resumes the documented way; nothing with a run id is resubmitted."""
    assert resume_action(record(**changes), output_exists=output_exists) is expected


def test_idempotency_keys_are_unique_prefixed_and_short() -> None:
    """Keys start with br-, carry a header-safe job id, differ per call and fit 255 chars."""
    a = new_idempotency_key("daily 2024/01", 1)
    b = new_idempotency_key("daily 2024/01", 1)
    assert a != b
    assert a.startswith("br-daily_2024_01-1-")
    long_key = new_idempotency_key("x" * 1000 + "é", 12345)
    assert len(long_key) <= 255
    assert long_key.startswith("br-xxx")
    assert long_key.isascii()
    assert all(c.isalnum() or c in "._-" for c in long_key)


def test_hash_sql_tells_texts_apart() -> None:
    """The SQL fingerprint is stable for a text and differs for another."""
    assert hash_sql("SELECT 1") == hash_sql("SELECT 1")
    assert hash_sql("SELECT 1") != hash_sql("SELECT 2")
    assert len(hash_sql("")) == 64


# -- opening: locks and bad files --------------------------------------------------------


def test_second_open_of_a_state_file_in_use_is_refused(state_path: Path) -> None:
    """A second open while the first is alive fails with a clear message naming the holder."""
    first = StateStore.open(state_path)
    try:
        holder = rf"in use by another running batchrunner \(pid {os.getpid()}\)"
        with pytest.raises(ConfigError, match=holder):
            StateStore.open(state_path)
    finally:
        first.close()
    with StateStore.open(state_path) as again:
        assert again.all() == []


def test_kill_9_keeps_the_key_and_frees_the_lock(state_path: Path) -> None:
    """A run killed right after begin_submit leaves its key stored and the file unlocked."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from batchrunner.state import StateStore\n"
        "s = StateStore.open(Path(sys.argv[1]))\n"
        "s.ensure_planned('job-1', 'h1')\n"
        "s.begin_submit('job-1', 'br-job-1-1-abc')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = child_env()
    with subprocess.Popen(
        [sys.executable, "-c", script, str(state_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        ready = child.stdout.readline()
        if ready != b"ready\n":
            child.kill()
            pytest.fail(f"child did not start: {child.stderr.read().decode()}")
        with pytest.raises(ConfigError, match=f"pid {child.pid}"):
            StateStore.open(state_path)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL

    with StateStore.open(state_path) as s:
        rec = s.get("job-1")
    assert rec is not None
    assert (rec.status, rec.idempotency_key, rec.attempts) == (
        JobStatus.SUBMITTING,
        "br-job-1-1-abc",
        1,
    )
    assert resume_action(rec, output_exists=False) is ResumeAction.RESUBMIT


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    """A non-SQLite file is a ConfigError and is left byte for byte as it was."""
    path = tmp_path / "jobs.toml"
    path.write_text("[jobs]\nname = 'x'\n" * 20)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="not a batchrunner state file"):
        StateStore.open(path)
    assert path.read_bytes() == before


def test_a_damaged_sqlite_file_is_refused(tmp_path: Path) -> None:
    """A file with SQLite's header but garbage pages is a ConfigError, not a crash."""
    path = tmp_path / "state.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with pytest.raises(ConfigError, match="not a usable batchrunner state file"):
        StateStore.open(path)


def test_another_programs_database_is_refused_and_not_converted(tmp_path: Path) -> None:
    """An SQLite database without our marker is refused and not switched to WAL."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="not a batchrunner state file"):
        StateStore.open(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        conn.close()


def test_a_state_file_from_a_newer_batchrunner_is_refused(state_path: Path) -> None:
    """A schema version above ours is refused with a message saying to upgrade."""
    StateStore.open(state_path).close()
    conn = sqlite3.connect(state_path)
    conn.execute(
        "UPDATE batchrunner_meta SET value = ? WHERE key = 'schema_version'",
        (str(SCHEMA_VERSION + 1),),
    )
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer batchrunner"):
        StateStore.open(state_path)


def test_a_directory_is_not_a_state_file(tmp_path: Path) -> None:
    """Pointing the state file at a directory is a ConfigError."""
    with pytest.raises(ConfigError, match="is a directory"):
        StateStore.open(tmp_path)


def test_an_empty_file_becomes_a_state_file(tmp_path: Path) -> None:
    """A zero-byte file (e.g. made by touch) is initialised as a new state file."""
    path = tmp_path / "state.db"
    path.touch()
    with StateStore.open(path) as s:
        s.ensure_planned("j", "h")
        assert [r.job_id for r in s.all()] == ["j"]
