"""The one exception hierarchy of batchrunner.

::

    BatchrunnerError
    ├── ConfigError                  bad command line, environment or base URL (exit code 2)
    ├── JobFileError(path, job, field)   a job file that cannot be loaded or expanded
    ├── ApiError(status, request_id, type, code, param)   an HTTP error answer from the API
    │   ├── AuthenticationFailed     401: the key is missing, malformed or unknown
    │   ├── PermissionDenied         403: the key lacks access (e.g. a restricted key)
    │   ├── NotFound                 404: no such object or route
    │   ├── InvalidRequest           400 and other 4xx that retrying cannot fix
    │   ├── IdempotencyConflict      400 idempotency_error / 409 key in flight
    │   ├── RateLimited              429
    │   └── ServerError              5xx
    ├── TransportError               connection failed, reset or timed out (no HTTP answer)
    ├── QueryFailed(run_id, message) the query run ended failed (or in an unknown status)
    ├── QueryTimedOut(run_id)        the per-job deadline passed while polling
    ├── DownloadError(file_id)       a result download ended short or was not CSV
    ├── ConversionError(path)        the CSV could not become Parquet (ragged rows, bad UTF-8...)
    └── OutputError(path)            the output could not be written (disk full, read-only)

Every error can carry the job id it belongs to. Messages never contain the API key:
the client masks it before any error is built, and :func:`mask_secret` is the one way to
show a key.
"""

from __future__ import annotations


def mask_secret(key: str) -> str:
    """Show a key the way Stripe does in its 401 messages: prefix and last four only."""
    if not key:
        return "(none)"
    prefix, _, _ = key.rpartition("_")
    if len(key) <= 12 or not prefix:
        return "*" * min(len(key), 8)
    return f"{prefix}_{'*' * 8}{key[-4:]}"


class BatchrunnerError(Exception):
    """Base of every error batchrunner raises on purpose."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id

    def with_job(self, job_id: str) -> BatchrunnerError:
        """Attach the job id (once) and return self, for re-raising with context."""
        if self.job_id is None:
            self.job_id = job_id
        return self

    def __str__(self) -> str:
        return f"[{self.job_id}] {self.message}" if self.job_id else self.message


class ConfigError(BatchrunnerError):
    """Bad command line, environment or configuration: nothing was started."""


class JobFileError(BatchrunnerError):
    """A job file that cannot be loaded, validated or expanded."""

    def __init__(
        self, path: str, message: str, *, job: str | None = None, field: str | None = None
    ) -> None:
        where = path
        if job:
            where += f": job {job!r}"
        if field:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.job = job
        self.field = field


class ApiError(BatchrunnerError):
    """An error answer from the Stripe API, with everything Stripe told us about it."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        request_id: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
        retry_after: float | None = None,
        job_id: str | None = None,
    ) -> None:
        detail = f"HTTP {status}"
        if error_type:
            detail += f" {error_type}"
        if code:
            detail += f"/{code}"
        if request_id:
            detail += f", request {request_id}"
        super().__init__(f"{message} ({detail})", job_id=job_id)
        self.status = status
        self.request_id = request_id
        self.error_type = error_type
        self.code = code
        self.param = param
        self.should_retry = should_retry
        self.retry_after = retry_after


class AuthenticationFailed(ApiError):
    """401: the API key is missing, malformed or unknown. Stops the whole run."""


class PermissionDenied(ApiError):
    """403: the key may not use this endpoint. Stops the whole run."""


class NotFound(ApiError):
    """404: no such object (query run, saved query, file) or route."""


class InvalidRequest(ApiError):
    """400 and other client errors that retrying cannot fix."""


class IdempotencyConflict(ApiError):
    """400 idempotency_error (parameters differ) or 409 (same key still in flight)."""


class RateLimited(ApiError):
    """429: too many requests."""


class ServerError(ApiError):
    """5xx: Stripe had a problem; usually worth retrying."""


class TransportError(BatchrunnerError):
    """No HTTP answer: connection refused, reset, or a timeout."""


class QueryFailed(BatchrunnerError):
    """The query run ended ``failed`` (or in a status this client does not know)."""

    def __init__(
        self, run_id: str, message: str, *, status: str = "failed", job_id: str | None = None
    ) -> None:
        super().__init__(f"query run {run_id} {status}: {message}", job_id=job_id)
        self.run_id = run_id
        self.reason = message
        self.status = status


class QueryTimedOut(BatchrunnerError):
    """The per-job deadline passed before the query run finished."""

    def __init__(self, run_id: str, deadline_s: float, *, job_id: str | None = None) -> None:
        super().__init__(
            f"query run {run_id} still unfinished after {deadline_s:g} s; rerun to keep polling it",
            job_id=job_id,
        )
        self.run_id = run_id
        self.deadline_s = deadline_s


class DownloadError(BatchrunnerError):
    """A result download ended short, was cut, or was not CSV."""

    def __init__(self, file_id: str, message: str, *, job_id: str | None = None) -> None:
        super().__init__(f"download of {file_id}: {message}", job_id=job_id)
        self.file_id = file_id


class ConversionError(BatchrunnerError):
    """The CSV could not be converted to Parquet."""

    def __init__(self, path: str, message: str, *, job_id: str | None = None) -> None:
        super().__init__(f"converting {path}: {message}", job_id=job_id)
        self.path = path


class OutputError(BatchrunnerError):
    """An output file could not be written (disk full, read-only directory, bad path)."""

    def __init__(self, path: str, message: str, *, job_id: str | None = None) -> None:
        super().__init__(f"writing {path}: {message}", job_id=job_id)
        self.path = path
