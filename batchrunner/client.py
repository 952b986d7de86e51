"""The Sigma query API over HTTP: the one place that knows aiohttp and Stripe's wire format.

:class:`SigmaClient` implements :class:`batchrunner.api.QueryApi`. Everything HTTP stays
here: one ``aiohttp.ClientSession``, separate API and files hosts, Bearer auth, the
``Stripe-Version`` header, form bodies, request pacing (:mod:`batchrunner.limiter`),
retries (:mod:`batchrunner.retry`), and the translation of aiohttp's exceptions and
Stripe's error JSON into :mod:`batchrunner.errors` — at exactly one boundary,
:func:`_translate_transport_errors`.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import anyio

from batchrunner.api import Download, QueryRun
from batchrunner.errors import (
    ApiError,
    AuthenticationFailed,
    ConfigError,
    DownloadError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    TransportError,
    mask_secret,
)
from batchrunner.limiter import Priority, RateBudget, RateConfig
from batchrunner.outputs import output_error
from batchrunner.retry import RetryPolicy, retry_delay, should_retry

STRIPE_API_BASE = "https://api.stripe.com"
STRIPE_FILES_BASE = "https://files.stripe.com"
STRIPE_VERSION = "2025-07-30.preview"
DOWNLOAD_CHUNK = 1 << 20  # 1 MiB: the fastest aiohttp chunk size measured here (PERFORMANCE-NOTES)
CSV_CONTENT_TYPES = frozenset(
    {"text/csv", "text/plain", "application/csv", "application/octet-stream", ""}
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

CREATE_RUN = "POST /v1/sigma/query_runs"
RETRIEVE_RUN = "GET /v1/sigma/query_runs/:id"


def check_base_url(url: str, *, what: str) -> str:
    """Refuse a base URL that would send the key in clear text beyond this machine."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{what} {url!r} uses plain http to a non-loopback host; use https "
            "(plain http is only allowed for 127.0.0.1/localhost, e.g. the emulator)"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """How to reach the API.

    Example::

        ClientConfig(api_key=os.environ["STRIPE_API_KEY"], api_base="http://127.0.0.1:12111")
    """

    api_key: str = field(repr=False)
    api_base: str = STRIPE_API_BASE
    files_base: str = STRIPE_FILES_BASE
    stripe_version: str = STRIPE_VERSION
    rate: RateConfig | None = None
    retry: RetryPolicy = RetryPolicy()
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    download_stall_timeout_s: float = 60.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ConfigError("no API key: set STRIPE_API_KEY (or pass --api-key-env NAME)")
        if any(c.isspace() for c in self.api_key):
            raise ConfigError("the API key contains white space; check STRIPE_API_KEY")
        object.__setattr__(self, "api_base", check_base_url(self.api_base, what="API base"))
        object.__setattr__(self, "files_base", check_base_url(self.files_base, what="files base"))


@dataclass(slots=True)
class ClientStats:
    """Requests this client sent, for reports and benchmarks."""

    requests: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    rate_limited: int = 0
    download_bytes: int = 0

    def count(self, endpoint: str) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


_ERROR_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: IdempotencyConflict,
    429: RateLimited,
}


_AUTH_HINTS: dict[int, str] = {
    401: "check the API key in STRIPE_API_KEY (or the variable --api-key-env names)",
    403: "this key may not use Sigma: use a secret key, or a restricted key with the Sigma "
    "permission",
}


@contextmanager
def _translate_transport_errors(what: str) -> Iterator[None]:
    """The boundary where aiohttp's and the socket's exceptions become ours."""
    try:
        yield
    except aiohttp.ClientResponseError as exc:  # raised by aiohttp itself, e.g. bad framing
        raise TransportError(f"{what}: {exc.message or type(exc).__name__}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise TransportError(f"{what}: response body cut short ({exc})") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise TransportError(f"{what}: timed out") from exc


def api_error_from(answer: _Answer, *, api_key: str) -> ApiError:
    """Build the typed error for a non-2xx answer from Stripe's error JSON."""
    info: dict[str, Any] = {}
    try:
        parsed = _json(answer.body)
        if isinstance(parsed.get("error"), dict):
            info = parsed["error"]
    except ValueError:
        pass
    message = str(info.get("message") or f"HTTP {answer.status} with no Stripe error body")
    if api_key and api_key in message:  # never let the key ride along in a message
        message = message.replace(api_key, mask_secret(api_key))
    status = answer.status
    hint = _AUTH_HINTS.get(status)
    if hint is not None:  # no retry helps these: say what will
        message = f"{message.rstrip('.')}; {hint}"
    error_type = info.get("type")
    cls = _ERROR_BY_STATUS.get(status)
    if cls is None:
        if status >= 500:
            cls = ServerError
        elif error_type == "idempotency_error":
            cls = IdempotencyConflict
        else:
            cls = InvalidRequest
    header = answer.headers.get("Stripe-Should-Retry")
    retry_after = answer.headers.get("Retry-After")
    return cls(
        message,
        status=status,
        request_id=answer.headers.get("Request-Id"),
        error_type=error_type,
        code=info.get("code"),
        param=info.get("param"),
        should_retry=None if header is None else header.lower() == "true",
        retry_after=_parse_retry_after(retry_after),
    )


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-dates are not worth honouring for a sub-minute pause


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - one error kind for callers
    return value


def query_run_from(obj: Mapping[str, Any]) -> QueryRun:
    """A :class:`QueryRun` from Stripe's ``sigma.sigma_query_run`` JSON."""
    error = obj.get("error")
    message = None
    if isinstance(error, Mapping):
        message = str(error.get("message") or "query failed (no message)")
    elif error:
        message = str(error)
    result = obj.get("result")
    file_id = result.get("file") if isinstance(result, Mapping) else None
    return QueryRun(
        id=str(obj["id"]),
        status=str(obj.get("status") or "unknown"),
        created=int(obj.get("created") or 0),
        finalized_at=obj.get("finalized_at"),
        file_id=file_id,
        error_message=message,
        livemode=bool(obj.get("livemode")),
    )


class SigmaClient:
    """Stripe Sigma's query-run API (v1 preview) as a :class:`~batchrunner.api.QueryApi`.

    Use as an async context manager::

        async with SigmaClient(ClientConfig(api_key=key)) as api:
            run = await api.create_run(sql="select 1", idempotency_key="br-...")
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.config = config
        self.budget = RateBudget(config.rate or RateConfig.for_key(config.api_key))
        self.stats = ClientStats()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._auth = {
            "Authorization": f"Bearer {config.api_key}",
            "Stripe-Version": config.stripe_version,
            "User-Agent": "batchrunner/0.1",
        }

    def __repr__(self) -> str:
        config = self.config
        return f"SigmaClient(api_base={config.api_base!r}, files_base={config.files_base!r})"

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self.config.request_timeout_s, connect=self.config.connect_timeout_s
                ),
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session and every pooled connection."""
        if self._session is not None:
            session, self._session = self._session, None
            with anyio.CancelScope(shield=True):
                await session.close()

    # -- the QueryApi ------------------------------------------------------------------

    async def create_run(
        self, *, sql: str | None = None, saved_query: str | None = None, idempotency_key: str
    ) -> QueryRun:
        if (sql is None) == (saved_query is None):
            raise ValueError("give exactly one of sql or saved_query")
        form = {"sql": sql} if sql is not None else {"from_saved_query": str(saved_query)}
        body = await self._call_api(
            "POST",
            "/v1/sigma/query_runs",
            endpoint=CREATE_RUN,
            priority=Priority.LOW,
            form=form,
            idempotency_key=idempotency_key,
        )
        return query_run_from(body)

    async def retrieve_run(self, run_id: str) -> QueryRun:
        body = await self._call_api(
            "GET",
            f"/v1/sigma/query_runs/{run_id}",
            endpoint=RETRIEVE_RUN,
            priority=Priority.HIGH,
        )
        return query_run_from(body)

    async def download(
        self, file_id: str, dest: Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Download:
        return await _Downloader(self, file_id, dest, on_bytes).run()

    # -- plumbing ------------------------------------------------------------------------

    async def _call_api(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        priority: Priority,
        form: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """One API call with pacing and retries; the same idempotency key on every try."""
        headers = dict(self._auth)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        url = self.config.api_base + path
        policy = self.config.retry
        for attempt in range(1, policy.max_attempts + 1):
            await self.budget.acquire_api(endpoint, priority)
            self.stats.count(endpoint)
            error: ApiError | TransportError
            try:
                with _translate_transport_errors(f"{method} {path}"):
                    answer = await self._exchange(method, url, headers, form)
            except TransportError as exc:
                error = exc
                retry = should_retry(None, None)
                retry_after = None
            else:
                if answer.status < 300:
                    try:
                        return _json(answer.body)
                    except ValueError:
                        error = ServerError(
                            "the API answered 2xx with a body that is not JSON",
                            status=answer.status,
                            request_id=answer.headers.get("Request-Id"),
                        )
                        retry, retry_after = True, None
                else:
                    error = api_error_from(answer, api_key=self.config.api_key)
                    if isinstance(error, RateLimited):
                        self.stats.rate_limited += 1
                        self.budget.slow_down_api(endpoint)
                    if isinstance(error, AuthenticationFailed | PermissionDenied):
                        raise error  # no key gets better by asking again
                    retry = should_retry(error.status, error.should_retry)
                    retry_after = error.retry_after
            if not retry or attempt == policy.max_attempts:
                raise error
            self.stats.retries += 1
            await self._sleep(
                retry_delay(policy, attempt, self._rng.random(), retry_after=retry_after)
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        form: Mapping[str, str] | None,
    ) -> _Answer:
        session = self._open()
        async with session.request(method, url, headers=headers, data=form) as resp:
            body = await resp.read()
            return _Answer(resp.status, resp.headers, body)

    @asynccontextmanager
    async def _stream(
        self, url: str, headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        session = self._open()
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.connect_timeout_s,
            sock_read=self.config.download_stall_timeout_s,
        )
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            yield resp


@contextmanager
def _local_file(path: Path) -> Iterator[None]:
    """Writing the downloaded file failed: the disk's problem (full, read-only), not the
    network's, so it becomes an OutputError, which no retry loop catches."""
    try:
        yield
    except OSError as exc:
        raise output_error(path, exc) from exc


class _Downloader:
    """One result download: streams to disk, resumes with ``Range`` or restarts."""

    def __init__(
        self, client: SigmaClient, file_id: str, dest: Path, on_bytes: Callable[[int], None] | None
    ) -> None:
        self.client = client
        self.file_id = file_id
        self.dest = dest
        self.on_bytes = on_bytes
        self.url = f"{client.config.files_base}/v1/files/{file_id}/contents"
        self.written = 0
        self.resumed = 0
        self.restarted = 0

    async def run(self) -> Download:
        try:
            return await self._run()
        except OSError as exc:  # opening, flushing or closing the local file
            raise output_error(self.dest, exc) from exc

    async def _run(self) -> Download:
        client = self.client
        policy = client.config.retry
        async with await anyio.open_file(self.dest, "wb") as out:
            for attempt in range(1, policy.max_attempts + 1):
                await client.budget.files.acquire(Priority.HIGH)
                client.stats.count("GET /v1/files/:id/contents")
                try:
                    with _translate_transport_errors(f"download {self.file_id}"):
                        await self._attempt(out)
                    await out.flush()
                    return Download(self.dest, self.written, self.resumed, self.restarted)
                except ApiError as exc:
                    if isinstance(exc, AuthenticationFailed | PermissionDenied):
                        raise
                    if isinstance(exc, RateLimited):
                        client.budget.files.slow_down()
                    if not should_retry(exc.status, exc.should_retry) or (
                        attempt == policy.max_attempts
                    ):
                        raise
                    retry_after = exc.retry_after
                except TransportError as exc:
                    if attempt == policy.max_attempts:
                        raise DownloadError(
                            self.file_id, f"{exc.message}; gave up after {attempt} attempts"
                        ) from exc
                    retry_after = None
                client.stats.retries += 1
                await client._sleep(
                    retry_delay(policy, attempt, client._rng.random(), retry_after=retry_after)
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, out: anyio.AsyncFile[bytes]) -> None:
        headers = dict(self.client._auth)
        if self.written:
            headers["Range"] = f"bytes={self.written}-"
        async with self.client._stream(self.url, headers) as resp:
            if resp.status >= 400:
                answer = _Answer(resp.status, resp.headers, await resp.read())
                raise api_error_from(answer, api_key=self.client.config.api_key)
            self._check_content_type(resp)
            total = await self._position(resp, out)
            async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                with _local_file(self.dest):
                    await out.write(chunk)
                self.written += len(chunk)
                self.client.stats.download_bytes += len(chunk)
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
            if total is not None and self.written != total:
                raise aiohttp.ClientPayloadError(f"got {self.written} of {total} bytes")

    def _check_content_type(self, resp: aiohttp.ClientResponse) -> None:
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in CSV_CONTENT_TYPES:
            raise DownloadError(
                self.file_id, f"the files host answered {ctype!r}, not CSV; check --files-base"
            )

    async def _position(
        self, resp: aiohttp.ClientResponse, out: anyio.AsyncFile[bytes]
    ) -> int | None:
        """Place the file cursor for this response; return the expected final size."""
        length = resp.headers.get("Content-Length")
        if resp.status == 206 and self.written:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if match and int(match[1]) == self.written:
                self.resumed += 1
                return None if match[3] == "*" else int(match[3])
        if self.written:  # Range ignored (200) or unusable: start again from byte 0
            self.restarted += 1
            self.written = 0
            with _local_file(self.dest):
                await out.seek(0)
                await out.truncate()
        return int(length) if length is not None and length.isdigit() else None
