"""What every scenario shares: an emulator in its own process, timing, and the result shape."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass(slots=True)
class ScenarioResult:
    """One scenario's figures, the reference each is compared with, and its goal."""

    scenario: str
    figures: dict[str, float] = field(default_factory=dict)
    references: dict[str, tuple[str, float]] = field(default_factory=dict)
    goal: str = ""
    goal_met: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "figures": self.figures, "goal": self.goal,
                "goal_met": self.goal_met, "notes": self.notes}


@dataclass(frozen=True, slots=True)
class EmulatorProcess:
    """A running ``batchrunner emulator`` in its own process (its CPU is not ours)."""

    api_base: str
    files_base: str
    test_key: str
    live_key: str
    process: subprocess.Popen[str]

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stats(self) -> dict[str, Any]:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.api_base}/_emulator/stats", timeout=30) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data


_LINE = re.compile(r"^(API base|Files base|Test key|Live key):\s+(\S+)")


@contextmanager
def emulator_process(*args: str, cache_dir: Path | None = None,
                     ready_timeout_s: float = 900.0) -> Iterator[EmulatorProcess]:
    """Start ``python -m batchrunner emulator --port 0 --files-port 0 ARGS`` and wait for it."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["BATCHRUNNER_CACHE_DIR"] = str(cache_dir)
    cmd = [sys.executable, "-m", "batchrunner", "emulator", "--port", "0", "--files-port", "0",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    found: dict[str, str] = {}
    deadline = time.monotonic() + ready_timeout_s
    try:
        assert proc.stdout is not None
        while len(found) < 4:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"emulator exited before it was ready: {err[-2000:]}")
            if match := _LINE.match(line):
                found[match[1]] = match[2]
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not start in time")
        yield EmulatorProcess(found["API base"], found["Files base"], found["Test key"],
                              found["Live key"], proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class CpuTimer:
    """Wall and CPU seconds of this process over a block."""

    def __enter__(self) -> CpuTimer:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def write_job_file(path: Path, jobs: Sequence[dict[str, Any]]) -> Path:
    """A TOML job file from plain dicts (name, sql, repeat...)."""
    lines: list[str] = []
    for job in jobs:
        lines.append("[[job]]")
        for key, value in job.items():
            if isinstance(value, str):
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{key} = "{escaped}"')
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    path.write_text("\n".join(lines), "utf-8")
    return path


def peak_rss_of(cmd: Sequence[str], *, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS in MB) of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr is not None:
        proc.stderr.close()
    return proc.returncode, wall, usage.ru_maxrss / 1024.0
