"""What people write today to export Sigma queries: requests, sleep(2) polling, pandas.

This is the baseline of the ``naive`` benchmark, written the way public Sigma scripts and
Athena clients do it: create a run, ``time.sleep(2)`` between polls until it is done,
download the CSV into memory, ``pandas.read_csv`` it and ``to_parquet`` it. The only
concession to reality is a retry after a 429 (sleep 2 s and resend), which everyone adds the
first time a rate limit breaks their script.

    python -m benchmarks.naive_script JOBS.json OUT_DIR [--threads N]

JOBS.json is a list of ``{"sql": ..., "output": ...}``. The API base, files base and key come
from STRIPE_API_BASE, STRIPE_FILES_BASE and STRIPE_API_KEY. It prints one JSON line:
``{"wall_s": seconds for all jobs, "http_429": count}`` (interpreter start and imports are
not counted, as they are not for batchrunner).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import requests

API = os.environ.get("STRIPE_API_BASE", "https://api.stripe.com")
FILES = os.environ.get("STRIPE_FILES_BASE", "https://files.stripe.com")
HEADERS = {"Authorization": f"Bearer {os.environ.get('STRIPE_API_KEY', '')}"}

too_many = 0
lock = threading.Lock()


def send(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request; after a 429, wait 2 s and send it again."""
    global too_many
    while True:
        resp = requests.request(method, url, headers=HEADERS, timeout=60, **kwargs)
        if resp.status_code != 429:
            resp.raise_for_status()
            return resp
        with lock:
            too_many += 1
        time.sleep(2)


def export(sql: str, output: str) -> None:
    """Run one query and write its result as Parquet."""
    run = send("POST", f"{API}/v1/sigma/query_runs", data={"sql": sql}).json()
    while run["status"] in ("pending", "running"):
        time.sleep(2)
        run = send("GET", f"{API}/v1/sigma/query_runs/{run['id']}").json()
    if run["status"] not in ("succeeded", "completed"):
        raise RuntimeError(f"query {run['id']} {run['status']}: {run['error']}")
    csv = send("GET", f"{FILES}/v1/files/{run['result']['file']}/contents").content
    frame = pd.read_csv(io.BytesIO(csv))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(output)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    jobs = json.loads(args.jobs.read_text())
    outputs = [str(args.out / job["output"]) for job in jobs]
    started = time.perf_counter()
    if args.threads == 1:
        for job, output in zip(jobs, outputs, strict=True):
            export(job["sql"], output)
    else:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(export, [job["sql"] for job in jobs], outputs))
    print(json.dumps({"wall_s": time.perf_counter() - started, "http_429": too_many}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
