"""batchrunner: Stripe Sigma query runs to typed Parquet at the pace the API allows.

The public face is small; everything else lives in modules named for one concept each::

    import batchrunner
    result = batchrunner.run_sync([Path("jobs/monthly_balance_transactions.toml")])

The local Sigma emulator is :mod:`batchrunner.emulator` (imported on demand: it brings
DuckDB along).
"""

from batchrunner.api import QueryApi, QueryRun
from batchrunner.client import ClientConfig, SigmaClient
from batchrunner.engine import JobResult, RunResult
from batchrunner.errors import (
    ApiError,
    AuthenticationFailed,
    BatchrunnerError,
    ConfigError,
    JobFileError,
    QueryFailed,
)
from batchrunner.jobs import Job, load_jobs
from batchrunner.runner import RunOptions, run, run_jobs, run_sync

__all__ = [
    "ApiError",
    "AuthenticationFailed",
    "BatchrunnerError",
    "ClientConfig",
    "ConfigError",
    "Job",
    "JobFileError",
    "JobResult",
    "QueryApi",
    "QueryFailed",
    "QueryRun",
    "RunOptions",
    "RunResult",
    "SigmaClient",
    "load_jobs",
    "run",
    "run_jobs",
    "run_sync",
]
