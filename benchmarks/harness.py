"""What every scenario shares: an emulator in its own process, running batchrunner, reading
the emulator's per-run timelines, and the result shape.

The emulator always runs in a child process (``python -m batchrunner emulator``), so its CPU
is not the runner's; the runner runs in this process (through :func:`run_batchrunner`) or as
a ``batchrunner run`` child when its peak RSS is wanted (:func:`peak_rss_of`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import psutil

from batchrunner.emulator.ratelimit import RateLimits
from batchrunner.engine import RunResult
from batchrunner.jobs import Job, load_jobs
from batchrunner.polling import PollPolicy
from batchrunner.report import percentile
from batchrunner.runner import RunOptions, run_jobs

DEFAULT_POLL = PollPolicy()
#: The limits Stripe publishes, as the emulator enforces them by default.
STRIPE_LIMITS = RateLimits()


@dataclass(slots=True)
class ScenarioResult:
    """One scenario's figures, the reference each is compared with, and its goal.

    ``references`` maps a figure to ``(label, value)``: what the figure is compared with in
    the table (a measured alternative, a bound or the goal's threshold); the table shows
    ``value / reference`` as the ratio.
    """

    scenario: str
    figures: dict[str, float] = field(default_factory=dict)
    references: dict[str, tuple[str, float]] = field(default_factory=dict)
    goal: str = ""
    goal_met: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figures": self.figures,
            "goal": self.goal,
            "goal_met": self.goal_met,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------
# The emulator in its own process


@dataclass(frozen=True, slots=True)
class EmulatorProcess:
    """A running ``batchrunner emulator`` in its own process (its CPU is not ours)."""

    api_base: str
    files_base: str
    test_key: str
    live_key: str
    process: subprocess.Popen[str]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the emulator process has used so far."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stats(self, *, runs: bool = False) -> dict[str, Any]:
        """``GET /_emulator/stats`` (``runs``: with every run's timeline)."""
        url = f"{self.api_base}/_emulator/stats" + ("?runs=1" if runs else "")
        with urllib.request.urlopen(url, timeout=60) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def reset_stats(self) -> None:
        """Zero the emulator's counters (runs and their timelines stay)."""
        request = urllib.request.Request(f"{self.api_base}/_emulator/reset-stats", method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()

    def client_env(self) -> dict[str, str]:
        """Environment for a ``batchrunner run`` child that talks to this emulator."""
        env = dict(os.environ)
        env.update(
            STRIPE_API_KEY=self.test_key,
            STRIPE_API_BASE=self.api_base,
            STRIPE_FILES_BASE=self.files_base,
        )
        return env


_LINE = re.compile(r"^(API base|Files base|Test key|Live key):\s+(\S+)")


def _drain(stream: Iterable[str], ready: queue.Queue[tuple[str, str] | None]) -> None:
    """Read the emulator's stdout to the end (so it never blocks on a full pipe)."""
    for line in stream:
        if match := _LINE.match(line):
            ready.put((match[1], match[2]))
    ready.put(None)


@contextmanager
def emulator_process(
    *args: str,
    cache_dir: Path | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 900.0,
) -> Iterator[EmulatorProcess]:
    """Start ``python -m batchrunner emulator --port 0 --files-port 0 ARGS`` and wait for it.

    Its stderr goes to ``log_path`` (default: discarded); its stdout is drained by a thread.
    """
    env = dict(os.environ)
    if cache_dir is not None:
        env["BATCHRUNNER_CACHE_DIR"] = str(cache_dir)
    cmd = [sys.executable, "-m", "batchrunner", "emulator", "--port", "0", "--files-port", "0"]
    cmd += args
    with open(log_path or os.devnull, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env
        )
    assert proc.stdout is not None
    ready: queue.Queue[tuple[str, str] | None] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(proc.stdout, ready), daemon=True)
    reader.start()
    found: dict[str, str] = {}
    try:
        deadline = time.monotonic() + ready_timeout_s
        while len(found) < 4:
            try:
                item = ready.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("the emulator did not start in time") from None
            if item is None:
                tail = log_path.read_text()[-2000:] if log_path else ""
                raise RuntimeError(f"the emulator exited before it was ready: {tail}")
            found[item[0]] = item[1]
        yield EmulatorProcess(
            found["API base"], found["Files base"], found["Test key"], found["Live key"], proc
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()


# --------------------------------------------------------------------------------------
# Running batchrunner


def write_job_file(path: Path, jobs: Sequence[Mapping[str, Any]]) -> Path:
    """A TOML job file from plain dicts (name, sql, repeat, grid as nested dicts...)."""
    lines: list[str] = []
    for job in jobs:
        lines.append("[[job]]")
        lines += [f"{key} = {_toml(value)}" for key, value in job.items()]
        lines.append("")
    path.write_text("\n".join(lines), "utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def jobs_from(path: Path, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
    """Write a job file and load it the way ``batchrunner run`` does."""
    return load_jobs([write_job_file(path, jobs)])


@dataclass(frozen=True, slots=True)
class BatchRun:
    """One in-process batchrunner run: its result, its ``--report`` JSON and CPU seconds."""

    result: RunResult
    report: dict[str, Any]
    cpu_s: float

    @property
    def run_ids(self) -> list[str]:
        return [r.query_run_id for r in self.result.results if r.query_run_id]


def run_batchrunner(
    emu: EmulatorProcess,
    jobs: Sequence[Job],
    out_dir: Path,
    *,
    poll: PollPolicy = DEFAULT_POLL,
    rate: float | None = None,
) -> BatchRun:
    """Run ``jobs`` with batchrunner's defaults (or the given policy) against ``emu``."""
    report_path = out_dir / "report.json"
    options = RunOptions(
        out_dir=out_dir,
        api_key=emu.test_key,
        api_base=emu.api_base,
        files_base=emu.files_base,
        report_path=report_path,
        poll=poll,
        rate=rate,
    )

    async def main() -> RunResult:
        return await run_jobs(jobs, options)

    cpu = time.process_time()
    result = anyio.run(main)
    cpu_s = time.process_time() - cpu
    report: dict[str, Any] = json.loads(report_path.read_text())
    failed = result.failed
    if failed or result.stopped_by:
        raise RuntimeError(
            f"{len(failed)} of {len(jobs)} jobs failed (first: {failed[0].error if failed else ''}"
            f"); stopped by: {result.stopped_by}"
        )
    return BatchRun(result, report, cpu_s)


# --------------------------------------------------------------------------------------
# What the emulator saw


@dataclass(frozen=True, slots=True)
class RunTimeline:
    """One query run as the emulator saw it (unix seconds on the emulator's clock)."""

    id: str
    created: float
    started: float | None
    finalized: float | None
    first_download: float | None
    polls: int
    last_poll: float | None = None

    @property
    def detection_delay(self) -> float | None:
        """Seconds from the run's end to the first request for its result."""
        if self.finalized is None or self.first_download is None:
            return None
        return self.first_download - self.finalized

    @property
    def client_latency(self) -> float | None:
        """Seconds from the poll that saw the run ended to the first download request."""
        if self.last_poll is None or self.first_download is None:
            return None
        return self.first_download - self.last_poll

    @property
    def run_time(self) -> float | None:
        """Seconds from start to end on the server (queueing as ``pending`` excluded)."""
        if self.finalized is None or self.started is None:
            return None
        return self.finalized - self.started


def timelines(
    emu: EmulatorProcess, run_ids: Iterable[str] | None = None, *, save_to: Path | None = None
) -> list[RunTimeline]:
    """The timelines of ``run_ids`` (all runs when None), in the order given.

    ``save_to`` keeps the raw timelines as JSON, for looking into a figure afterwards.
    """
    raw = emu.stats(runs=True)["run_timelines"]
    if save_to is not None:
        save_to.write_text(json.dumps(raw))
    by_id = {
        t["id"]: RunTimeline(
            t["id"],
            t["created"],
            t["started"],
            t["finalized"],
            t["first_download"],
            t["polls"],
            t.get("last_poll"),
        )
        for t in raw
    }
    if run_ids is None:
        return list(by_id.values())
    return [by_id[i] for i in run_ids]


def total_requests(stats: Mapping[str, Any]) -> int:
    """Every request the emulator answered on the Sigma and files endpoints (429s too)."""
    return sum(sum(by_status.values()) for by_status in stats["requests"].values())


def rate_lower_bound_s(
    jobs: int,
    *,
    limits: RateLimits = STRIPE_LIMITS,
    livemode: bool = False,
    creates_per_job: float = 1.0,
    polls_per_job: float = 1.0,
    downloads_per_job: float = 1.0,
) -> float:
    """Least seconds the emulator's rate limits allow for ``jobs`` jobs of ideal requests.

    Creates and polls share the mode's global window and each has its own endpoint window;
    downloads count only against the files host's window. The binding window decides.
    """
    api = limits.live_global if livemode else limits.test_global
    return max(
        jobs * (creates_per_job + polls_per_job) / api,
        jobs * creates_per_job / limits.per_endpoint,
        jobs * polls_per_job / limits.per_endpoint,
        jobs * downloads_per_job / limits.files_reads,
    )


def quantiles(values: Sequence[float]) -> tuple[float, float]:
    """(p50, p95) of ``values``; NaN for none."""
    return percentile(values, 0.5), percentile(values, 0.95)


def spread(values: Sequence[float]) -> str:
    """min / p50 / max of a sample, for notes."""
    if not values:
        return "none"
    return f"min {min(values):.2f}, p50 {percentile(values, 0.5):.2f}, max {max(values):.2f}"


def ratio(value: float, reference: float) -> float:
    """value / reference, NaN where undefined."""
    return value / reference if reference else math.nan


# --------------------------------------------------------------------------------------
# Processes, timers, the machine


class CpuTimer:
    """Wall and CPU seconds of this process over a block."""

    wall_s: float
    cpu_s: float

    def __enter__(self) -> CpuTimer:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


#: Runs the command given as its arguments and prints its exit code and peak RSS (KiB).
#: Linux starts a child's ``ru_maxrss`` at the RSS high-water mark of the process that
#: spawned it (exec saves the old, vfork-shared address space's peak), so a child spawned
#: straight from this process would report this process's peak whenever that is higher:
#: once measured as 404 MB for a runner of ~180 MB. Spawned from this small trampoline,
#: the child starts from a few MB.
_PEAK_RSS_TRAMPOLINE = """
import os, sys
null = os.open(os.devnull, os.O_WRONLY)
quiet = [(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, file_actions=quiet)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_of(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS in MB) of that child alone.

    Its output is discarded. It runs under :data:`_PEAK_RSS_TRAMPOLINE` (see there why).
    """
    start = time.perf_counter()
    trampoline = [sys.executable, "-S", "-c", _PEAK_RSS_TRAMPOLINE, *cmd]
    done = subprocess.run(trampoline, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    code, peak_kib = (int(word) for word in done.stdout.split())
    return code, wall, peak_kib / 1024.0


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("aiohttp", "anyio", "aiolimiter", "pyarrow", "duckdb", "pandas", "requests"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": ", ".join(versions),
    }
