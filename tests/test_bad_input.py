"""The bad-input catalogue, through the CLI: each case ends in a clear message.

Every message names the file or the job and says what to do. Job-file problems are refused
before anything is sent. A problem with one job's query or result fails that job only; its
neighbours finish. Auth failures (401, 403) stop the run at once.

Server-side cases the emulator cannot produce (a ragged or non-UTF-8 CSV, duplicate column
names, one missing file) come from :class:`FakeSigma`, a few-route stand-in for
Sigma's API and files hosts on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlglot
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from click.testing import CliRunner, Result
from sqlglot import exp

from batchrunner.cli import main
from batchrunner.emulator import EmulatorHandle
from batchrunner.jobs import load_jobs

MakeEmulator = Callable[..., AbstractAsyncContextManager[EmulatorHandle]]

GOOD_KEY = "sk_test_FakeSigmaKey000000000001"
RESTRICTED_KEY = "rk_test_nosigmaRestrictedKey000002"  # no Sigma permission
BIG_FIELD = 100_000_000  # bytes in one CSV field


# --- servers ---------------------------------------------------------------------------


@pytest.fixture
def emu(make_emulator: MakeEmulator) -> Iterator[EmulatorHandle]:
    """The test emulator, for tests that drive the (synchronous) CLI."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(make_emulator()) as handle,
    ):
        yield handle


def csv_bodies() -> dict[str, tuple[int, str, bytes]]:
    """What the fake files host answers per case: (status, content type, body)."""
    return {
        "good": (200, "text/csv", b"id,amount\nch_1,100\nch_2,250\n"),
        "ragged": (200, "text/csv", b"id,amount\nch_1,100\nch_2,250,oops\nch_3,7\n"),
        "badutf8": (200, "text/csv", b"id,name\nch_1,caf\xe9\n"),
        "dupcols": (200, "text/csv", b"id,amount,id\nch_1,100,ch_1\n"),
        "headeronly": (200, "text/csv", b"id,amount\n"),
        "html": (200, "text/html", b"<html><body>Sign in</body></html>"),
        "bigfield": (200, "text/csv", b"id,note\nch_1," + b"x" * BIG_FIELD + b"\n"),
    }


@dataclass
class FakeSigma:
    """A stand-in for Sigma: every run succeeds at once; its file holds a canned case.

    The case is the ``case_<name>`` alias in the SQL. ``file_missing`` runs name a file the
    files host does not have (404).
    """

    api_base: str = ""
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    bodies: dict[str, tuple[int, str, bytes]] = field(default_factory=csv_bodies)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/sigma/query_runs", self.create)
        app.router.add_get("/v1/sigma/query_runs/{id}", self.retrieve)
        app.router.add_get("/v1/files/{id}/contents", self.contents)
        return app

    def refuse(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key == GOOD_KEY:
            return None
        return stripe_error(401, "Invalid API Key provided: sk_test_********XXXX")

    async def create(self, request: web.Request) -> web.StreamResponse:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        form = await request.post()
        sql = str(form.get("sql", ""))
        case = sql.split("case_", 1)[1].split()[0] if "case_" in sql else "good"
        run_id = "qry_" + hashlib.sha256(sql.encode()).hexdigest()[:20]
        now = int(time.time())
        self.runs[run_id] = {
            "id": run_id,
            "object": "sigma.sigma_api_query_run",
            "created": now,
            "finalized_at": now,
            "livemode": False,
            "status": "succeeded",
            "sql": sql,
            "error": None,
            "result": {"file": f"file_{case}_{run_id[4:12]}"},
        }
        return web.json_response(self.runs[run_id], headers={"Request-Id": "req_fake"})

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        run = self.runs.get(request.match_info["id"])
        if run is None:
            return stripe_error(404, f"No such query run: '{request.match_info['id']}'")
        return web.json_response(run, headers={"Request-Id": "req_fake"})

    async def contents(self, request: web.Request) -> web.StreamResponse:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        file_id = request.match_info["id"]
        case = file_id.split("_")[1]
        if case not in self.bodies:
            return stripe_error(404, f"No such file upload: '{file_id}'")
        status, ctype, body = self.bodies[case]
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})


def stripe_error(status: int, message: str) -> web.Response:
    body = {
        "error": {
            "type": "invalid_request_error",
            "code": None,
            "message": message,
            "param": None,
            "doc_url": None,
            "request_log_url": None,
        }
    }
    return web.json_response(body, status=status, headers={"Request-Id": "req_fake"})


@pytest.fixture
def fake() -> Iterator[FakeSigma]:
    """A FakeSigma on an ephemeral loopback port (API and files on the same listener)."""
    server = FakeSigma()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server.api_base = f"http://127.0.0.1:{port}"
        return runner

    with start_blocking_portal() as portal:
        runner = portal.call(start)
        try:
            yield server
        finally:
            portal.call(runner.cleanup)


# --- helpers ---------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def run_cli(args: list[str], env: Mapping[str, str | None]) -> Result:
    """``batchrunner ARGS`` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, args, env={"COLUMNS": "250", **env}, catch_exceptions=False)


def emu_env(emu: EmulatorHandle, key: str | None = None) -> dict[str, str | None]:
    return {
        "STRIPE_API_KEY": key or emu.test_key,
        "STRIPE_API_BASE": emu.api_base,
        "STRIPE_FILES_BASE": emu.files_base,
    }


def fake_env(fake: FakeSigma, key: str = GOOD_KEY) -> dict[str, str | None]:
    return {
        "STRIPE_API_KEY": key,
        "STRIPE_API_BASE": fake.api_base,
        "STRIPE_FILES_BASE": fake.api_base,
    }


def failure_lines(result: Result) -> dict[str, str]:
    """The summary's ``failed: [job] message`` lines, by job id."""
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("failed: ["):
            job_id, _, message = line.removeprefix("failed: [").partition("] ")
            found[job_id] = message
    return found


def created_runs(emu: EmulatorHandle) -> int:
    return int(emu.stats()["query_runs_created"]["total"])


# --- job files: refused before anything is sent -----------------------------------------

JOB_FILE_CASES = {
    "malformed_toml": (
        '[[job]\nname = "x"\n',
        ["not valid TOML", "line 1"],
    ),
    "unknown_key": (
        '[[job]]\nname = "a"\nsqll = "select 1"\n',
        ["job 'a'", "unknown key 'sqll'", "did you mean 'sql'", "allowed:"],
    ),
    "unknown_nested_key": (
        '[[job]]\nname = "a"\nsql = "select {d_start}, {d_end}, {d}"\n'
        '[job.grid.d]\nevery = "day"\nstart = 2024-01-01\nedn = 2024-01-02\n',
        ["job 'a'", "field 'grid.d.edn'", "did you mean 'end'"],
    ),
    "impossible_month": (
        '[[job]]\nname = "a"\nsql = "select {p}, {p_start}, {p_end}"\n'
        '[job.grid.p]\nevery = "month"\nstart = "2023-02"\nend = "2023-13"\n',
        ["job 'a'", "field 'grid.p.end'", "'2023-13'", "month 13"],
    ),
    "impossible_day": (
        '[[job]]\nname = "a"\nsql = "select {p}, {p_start}, {p_end}"\n'
        '[job.grid.p]\nevery = "day"\nstart = "2023-02-30"\nend = "2023-03-01"\n',
        ["job 'a'", "field 'grid.p.start'", "'2023-02-30'"],
    ),
    "impossible_week": (
        '[[job]]\nname = "a"\nsql = "select {p}, {p_start}, {p_end}"\n'
        '[job.grid.p]\nevery = "week"\nstart = "2021-W53"\nend = "2022-W02"\n',
        ["job 'a'", "field 'grid.p.start'", "'2021-W53'"],
    ),
    "start_after_end": (
        '[[job]]\nname = "a"\nsql = "select {p}, {p_start}, {p_end}"\n'
        '[job.grid.p]\nevery = "day"\nstart = "2023-03-02"\nend = "2023-03-01"\n',
        ["job 'a'", "is after end"],
    ),
    "missing_name": (
        '[[job]]\nsql = "select 1"\n',
        ["job '#1'", "field 'name'", "[[job]] #1 has no name"],
    ),
    "missing_sql": (
        '[[job]]\nname = "a"\n',
        ["job 'a'", "give exactly one of 'sql' and 'saved_query'"],
    ),
    "placeholder_without_value": (
        '[[job]]\nname = "a"\nsql = "select 1 where x = {min_amont}"\n'
        "[job.params]\nmin_amount = 5\n",
        ["job 'a'", "{min_amont}", "did you mean 'min_amount'", "[job.params] or [job.grid]"],
    ),
}


@pytest.mark.parametrize("case", sorted(JOB_FILE_CASES))
def test_job_file_problems_are_refused_before_anything_is_sent(
    case: str, emu: EmulatorHandle, tmp_path: Path
) -> None:
    """A broken job file exits 2 naming the file, job and field; no request is sent."""
    text, wanted = JOB_FILE_CASES[case]
    path = write(tmp_path / f"{case}.toml", text)
    good = write(tmp_path / "good.toml", '[[job]]\nname = "good"\nsql = "select 1 as x"\n')
    result = run_cli(["run", str(good), str(path), "--out", str(tmp_path / "out")], emu_env(emu))
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert message.startswith("error: "), message
    assert str(path) in message
    for part in wanted:
        assert part in message, (part, message)
    assert "Traceback" not in result.output
    assert sum(sum(v.values()) for v in emu.stats()["requests"].values()) == 0
    assert not (tmp_path / "out").exists()


def test_parameter_values_are_inert_literals(emu: EmulatorHandle, tmp_path: Path) -> None:
    """Quotes, semicolons and comment markers in values stay one literal: same query shape."""
    values = [
        "x'; DROP TABLE charges; --",
        "/* unclosed comment",
        "a */ b",
        "it''s",
        "\\'; SELECT 1; --",
        "two\nlines -- with a comment",
        "{v} and {{braces}}",
        "é ' \" ` ;",
    ]
    path = write(
        tmp_path / "inert.toml",
        '[[job]]\nname = "inert"\nsql = "SELECT {v} AS v, 1 AS one"\n'
        f"[job.grid]\nv = {json.dumps(values)}\n",
    )
    jobs = load_jobs([path])
    assert len(jobs) == len(values)
    for job, value in zip(jobs, values, strict=True):
        assert job.sql is not None
        (tree,) = sqlglot.parse(job.sql, read="trino")
        assert isinstance(tree, exp.Select)
        first, second = tree.expressions
        literal = first.this if isinstance(first, exp.Alias) else first
        assert isinstance(literal, exp.Literal) and literal.is_string, job.sql
        assert literal.this == value  # one string literal holding exactly the value
        assert isinstance(second, exp.Alias) and second.alias == "one"
    result = run_cli(["run", str(path), "--out", str(tmp_path / "out")], emu_env(emu))
    assert result.exit_code == 0, result.output
    for job, value in zip(jobs, values, strict=True):
        table = pq.read_table(tmp_path / "out" / job.output)
        assert table.to_pylist() == [{"v": value, "one": 1}], job.id


def test_unknown_saved_query_fails_that_job_only(emu: EmulatorHandle, tmp_path: Path) -> None:
    """An unknown saved_query fails its job with Stripe's message and a hint; others finish."""
    path = write(
        tmp_path / "j.toml",
        '[[job]]\nname = "saved"\nsaved_query = "qfl_doesnotexist"\n'
        '[[job]]\nname = "good"\nsql = "select id, amount from charges limit 3"\n',
    )
    result = run_cli(["run", str(path), "--out", str(tmp_path / "out")], emu_env(emu))
    assert result.exit_code == 1, result.output
    failed = failure_lines(result)
    assert set(failed) == {"saved"}
    assert "No such saved query: 'qfl_doesnotexist'" in failed["saved"]
    assert "check the saved query id" in failed["saved"]
    assert pq.read_table(tmp_path / "out" / "good" / "part-0.parquet").num_rows == 3
    assert "Rerun the same command" in result.stdout


def test_missing_key_with_an_explicit_api_base_is_refused(
    emu: EmulatorHandle, tmp_path: Path
) -> None:
    """No key but an API base given: refused naming the variable, not run on synthetic data."""
    path = write(tmp_path / "j.toml", '[[job]]\nname = "a"\nsql = "select 1 as x"\n')
    env = {**emu_env(emu), "STRIPE_API_KEY": None}
    result = run_cli(["run", str(path), "--out", str(tmp_path / "out")], env)
    assert result.exit_code == 2, result.output
    assert "STRIPE_API_KEY" in result.stderr and emu.api_base in result.stderr
    assert sum(sum(v.values()) for v in emu.stats()["requests"].values()) == 0


def test_rejected_key_401_stops_the_run_at_once(emu: EmulatorHandle, tmp_path: Path) -> None:
    """A 401 stops every job (exit 2), says to check the key, and creates no run."""
    path = write(
        tmp_path / "j.toml",
        '[[job]]\nname = "a"\nsql = "select id from charges limit 2"\nrepeat = 30\n',
    )
    key = "sk_test_WrongKeyForThisEmulator0000"
    result = run_cli(["run", str(path), "--out", str(tmp_path / "out")], emu_env(emu, key))
    assert result.exit_code == 2, result.output
    assert "stopped: [a#r" in result.stderr, result.stderr
    assert "Invalid API Key provided" in result.stderr
    assert "check the API key in STRIPE_API_KEY" in result.stderr
    assert key not in result.output
    assert created_runs(emu) == 0
    requests = sum(sum(v.values()) for v in emu.stats()["requests"].values())
    assert requests < 10  # stopped at once, not 30 jobs x retries


def test_forbidden_key_403_stops_the_run_at_once(
    make_emulator: MakeEmulator, tmp_path: Path
) -> None:
    """A 403 (a restricted key without Sigma access) stops the run with what to do."""
    path = write(
        tmp_path / "j.toml",
        '[[job]]\nname = "a"\nsql = "select id from charges limit 2"\nrepeat = 20\n',
    )
    keys = ("sk_test_AllowedKey0000000000000001", RESTRICTED_KEY)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(make_emulator(api_keys=keys)) as emu,
    ):
        status, body = raw_get(f"{emu.api_base}/v1/sigma/query_runs/qry_1", RESTRICTED_KEY)
        assert status == 403 and "required permissions" in body["error"]["message"]
        assert RESTRICTED_KEY not in json.dumps(body)
        result = run_cli(
            ["run", str(path), "--out", str(tmp_path / "out")], emu_env(emu, RESTRICTED_KEY)
        )
        created = created_runs(emu)
        requests = sum(sum(v.values()) for v in emu.stats()["requests"].values())
    assert result.exit_code == 2, result.output
    assert "stopped: [a#r" in result.stderr, result.stderr
    assert "does not have the required permissions" in result.stderr
    assert "HTTP 403" in result.stderr
    assert "this key may not use Sigma" in result.stderr
    assert RESTRICTED_KEY not in result.output
    assert created == 0 and requests < 10  # stopped at once
    assert not list((tmp_path / "out").rglob("*.parquet"))


def raw_get(url: str, key: str) -> tuple[int, Any]:
    """One GET with a Bearer key; (status, parsed JSON body)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_broken_results_fail_their_jobs_with_what_to_do(fake: FakeSigma, tmp_path: Path) -> None:
    """Ragged, non-UTF-8, non-CSV, duplicate-column and missing results each fail alone."""
    cases = ["good", "ragged", "badutf8", "dupcols", "headeronly", "html", "missing", "bigfield"]
    path = write(
        tmp_path / "j.toml",
        "".join(f'[[job]]\nname = "{c}"\nsql = "select 1 as case_{c}"\n' for c in cases),
    )
    out = tmp_path / "out"
    result = run_cli(["run", str(path), "--out", str(out), "--workers", "1"], fake_env(fake))
    assert result.exit_code == 1, result.output
    failed = failure_lines(result)
    assert set(failed) == {"ragged", "badutf8", "dupcols", "html", "missing"}, failed
    expected = {
        "ragged": ["data row 2", "has 3 fields, expected 2", "rerun"],
        "badutf8": ["invalid UTF-8", "byte offset 16", "rerun"],
        "dupcols": ["duplicate column name 'id'", "alias one of them in the SQL"],
        "html": ["'text/html', not CSV", "check --files-base"],
        "missing": ["No such file upload", "HTTP 404", "rerun"],
    }
    for job_id, parts in expected.items():
        for part in parts:
            assert part in failed[job_id], (job_id, part, failed[job_id])
        assert ".batchrunner/downloads" not in failed[job_id]  # no path to a deleted temp file
    # The neighbours finished, including the two odd-but-valid results.
    assert pq.read_table(out / "good" / "part-0.parquet").num_rows == 2
    empty = pq.read_table(out / "headeronly" / "part-0.parquet")
    assert empty.num_rows == 0 and empty.column_names == ["id", "amount"]
    big = pq.read_table(out / "bigfield" / "part-0.parquet")
    assert big.num_rows == 1 and len(big.column("note")[0].as_py()) == BIG_FIELD
    # Nothing of the failed jobs is left: no Parquet, no temporary or downloaded file.
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".tmp", ".csv"}]
    assert not leftovers
    for job_id in failed:
        assert not [p for p in (out / job_id).rglob("*") if p.is_file()], job_id


def test_failed_jobs_are_listed_by_status_with_their_messages(
    fake: FakeSigma, tmp_path: Path
) -> None:
    """``batchrunner status --failed`` shows each failed job with its message."""
    path = write(
        tmp_path / "j.toml",
        '[[job]]\nname = "ragged"\nsql = "select 1 as case_ragged"\n'
        '[[job]]\nname = "good"\nsql = "select 1 as case_good"\n',
    )
    out = tmp_path / "out"
    assert run_cli(["run", str(path), "--out", str(out)], fake_env(fake)).exit_code == 1
    status = run_cli(["status", "--out", str(out), "--failed"], {"COLUMNS": "400"})
    assert status.exit_code == 0, status.output
    table = status.stdout.rsplit("\n", 2)[0]  # all but the closing counts line
    assert "ragged" in table and "has 3 fields" in table
    assert "good" not in table  # --failed lists only the failures
    assert "failed: 1" in status.stdout and "succeeded: 1" in status.stdout
