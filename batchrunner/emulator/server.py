"""The emulator's HTTP face: a local Stripe Sigma API on two loopback listeners.

The API listener answers the Sigma endpoints and ``GET /v1/files/{id}``; the files
listener answers only ``GET /v1/files/{id}/contents`` (like ``files.stripe.com``), so a
client that mixes the two bases gets 404s. Both answer ``/_emulator/stats``.

Every ``/v1`` request goes through one pipeline, in this order::

    route (404 unknown) -> auth (401 / 403) -> rate limit (429) -> injected faults
    -> parameters (400) -> Idempotency-Key (replay / 409 / 400) -> endpoint
    -> save the response for the key -> maybe reset the connection

Faults and idempotency: an injected ``5xx`` or ``reset_before`` happens *before the server
acted*, like a failure at the load balancer, so nothing is created and nothing is saved
under the idempotency key (a retry with the same key executes normally). A genuine
internal 500, raised while the endpoint executed, is saved and replayed as Stripe says.
``reset_after`` happens after the endpoint executed and its response was saved: a retry
with the same key gets the replay and no second run.

Every response carries ``Request-Id``; errors use Stripe's shape
``{"error": {"type", "code", "message", "param", "doc_url", "request_log_url"}}`` (absent
members are ``null``). ``Stripe-Should-Retry`` is ``true`` on 409 and 5xx, ``false`` on the
other 4xx this server emits, and absent on 429 (the client's backoff rules apply).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio
import anyio.abc
from aiohttp import web

from batchrunner.emulator.auth import Account, Authenticator, AuthFailure
from batchrunner.emulator.config import EmulatorConfig
from batchrunner.emulator.faults import FaultInjector
from batchrunner.emulator.idempotency import (
    Fingerprint,
    IdempotencyStore,
    InFlight,
    Mismatch,
    Replay,
    SavedResponse,
    key_error,
)
from batchrunner.emulator.ratelimit import Clock, RateLimiter
from batchrunner.emulator.runs import (
    FileStore,
    ResultFile,
    RunEngine,
    RunTiming,
    SavedQueries,
    UnknownCursor,
    WarehouseLike,
    new_id,
)
from batchrunner.emulator.stats import Stats
from batchrunner.emulator.stripe_errors import (
    HttpError,
    dumps,
    empty,
    exclusive,
    missing,
    no_such,
    should_retry,
    too_long,
)

log = logging.getLogger(__name__)

DEFAULT_STRIPE_VERSION: Final = "2025-07-30.preview"
MAX_SQL_LENGTH: Final = 100_000
MAX_NAME_LENGTH: Final = 5_000
_CSV_TYPE: Final = "text/csv; charset=utf-8"
_STREAM_CHUNK: Final = 64 * 1024
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_NOT_SAVED: Final = frozenset({400, 409, 429})


# --------------------------------------------------------------------------------------
# Range requests


def byte_range(start: int | None, stop: int | None, size: int) -> tuple[int, int] | None:
    """(offset, count) for a parsed ``Range`` slice over ``size`` bytes; None if unsatisfiable.

    ``start``/``stop`` are what aiohttp's ``request.http_range`` gives: ``bytes=5-9`` is
    ``(5, 10)``, ``bytes=5-`` is ``(5, None)``, ``bytes=-3`` is ``(-3, None)``.
    """
    if start is None:
        return 0, size
    if start < 0 and stop is None:
        offset = max(0, size + start)
        return (offset, size - offset) if size > 0 else None
    if start >= size:
        return None
    end = size if stop is None else min(stop, size)
    return start, end - start


# --------------------------------------------------------------------------------------
# The request pipeline


class _Ctx:
    """One /v1 request as it moves through the pipeline."""

    __slots__ = (
        "account",
        "idempotency_key",
        "params",
        "path_id",
        "request",
        "request_id",
        "stat_status",
    )

    def __init__(self, request: web.Request, request_id: str) -> None:
        self.request = request
        self.request_id = request_id
        self.account: Account | None = None
        self.params: dict[str, str] = {}
        self.idempotency_key: str | None = None
        self.path_id = request.match_info.get("id", "")
        # The status to count when the response decides its own later (FileResponse).
        self.stat_status: int | None = None

    @property
    def livemode(self) -> bool:
        assert self.account is not None
        return self.account.livemode


_Reply = tuple[int, bytes] | web.StreamResponse
_Handler = Callable[[_Ctx], Awaitable[_Reply]]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    method: str
    pattern: str
    handler: _Handler
    params: frozenset[str] = frozenset()
    files: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {self.pattern}"


class _Aborted(web.StreamResponse):
    """Returned after the transport was aborted: aiohttp's write fails quietly."""


class EmulatorServer:
    """State and request handling of one emulator.

    Used through :func:`batchrunner.emulator.serving.serve_emulator`.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        warehouse: WarehouseLike,
        results_dir: Path,
        task_group: anyio.abc.TaskGroup,
        rate_clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.warehouse = warehouse
        self._auth = Authenticator(config.keys())
        self._limiter = (
            RateLimiter(config.rate_limits)
            if rate_clock is None
            else RateLimiter(config.rate_limits, clock=rate_clock)
        )
        self._faults = FaultInjector(config.faults, seed=config.seed)
        self._faults_active = config.faults.active
        self._idempotency = IdempotencyStore()
        self._files = FileStore()
        self._saved = SavedQueries()
        self._engine = RunEngine(
            warehouse=warehouse,
            results_dir=results_dir,
            files=self._files,
            task_group=task_group,
            timing=RunTiming(
                base_s=config.run_time_base_s,
                per_row_s=config.run_time_per_row_s,
                jitter=config.run_time_jitter,
                time_scale=config.time_scale,
                max_run_time_s=config.max_run_time_s,
                slow_fraction=config.slow_run_fraction,
                slow_factor=config.slow_run_factor,
            ),
            faults=self._faults,
            max_concurrent=config.max_concurrent_runs,
            success_status=config.success_status,
            csv_bom=config.csv_bom,
            seed=config.seed,
        )
        self._stats = Stats()
        self._runners: list[web.AppRunner] = []
        self.loop_thread = threading.get_ident()
        self.api_base = ""
        self.files_base = ""

    # -- statistics ---------------------------------------------------------------------

    def stats(self, *, runs: bool = False) -> dict[str, Any]:
        """Everything counted so far (see ``/_emulator/stats``).

        ``runs=True`` adds ``run_timelines``: one entry per query run ever created (precise
        created/started/finalized/first-download times and polls served), for benchmarks.
        It is opt-in because it grows with the runs.
        """
        out = self._stats.to_dict()
        out.update(self._engine.stats())
        out["faults_injected"] = dict(self._faults.counts)
        # Keys held by the idempotency store (in flight or saved), both modes, all API keys.
        out["idempotency_keys_held"] = len(self._idempotency)
        out["faults"] = str(self.config.faults)
        out["rate_limits_enabled"] = self.config.rate_limits.enabled
        if runs:
            out["run_timelines"] = self._engine.timelines()
        return out

    def reset_stats(self) -> None:
        """Zero the counters; objects, keys and saved responses stay."""
        self._stats = Stats()
        self._engine.reset_stats()
        self._faults.reset_counts()

    # -- listeners ----------------------------------------------------------------------

    def _endpoints(self) -> list[_Endpoint]:
        lists = frozenset({"limit", "starting_after", "ending_before"})
        return [
            _Endpoint(
                "POST",
                "/v1/sigma/query_runs",
                self._create_run,
                frozenset({"sql", "from_saved_query"}),
            ),
            _Endpoint("GET", "/v1/sigma/query_runs/{id}", self._retrieve_run),
            _Endpoint(
                "POST", "/v1/sigma/saved_queries", self._create_saved, frozenset({"sql", "name"})
            ),
            _Endpoint("GET", "/v1/sigma/saved_queries", self._list_saved, lists),
            _Endpoint("GET", "/v1/sigma/saved_queries/{id}", self._retrieve_saved),
            _Endpoint(
                "POST",
                "/v1/sigma/saved_queries/{id}",
                self._update_saved,
                frozenset({"sql", "name"}),
            ),
            _Endpoint("DELETE", "/v1/sigma/saved_queries/{id}", self._delete_saved),
            _Endpoint("GET", "/v1/sigma/scheduled_query_runs", self._list_scheduled, lists),
            _Endpoint("GET", "/v1/sigma/scheduled_query_runs/{id}", self._retrieve_scheduled),
            _Endpoint("GET", "/v1/files/{id}", self._retrieve_file),
            _Endpoint("GET", "/v1/files/{id}/contents", self._file_contents, files=True),
        ]

    def _app(self, endpoints: list[_Endpoint]) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        router = app.router
        for ep in endpoints:
            router.add_route(ep.method, ep.pattern, partial(self._handle, ep))
        router.add_get("/_emulator/stats", self._stats_view)
        router.add_post("/_emulator/reset-stats", self._reset_stats_view)
        router.add_route("*", "/{tail:.*}", self._unknown_route)
        return app

    async def start(self) -> None:
        """Bind the listeners and learn their URLs."""
        config = self.config
        endpoints = self._endpoints()
        if config.files_port is None:
            apps = [(self._app(endpoints), config.port)]
        else:
            apps = [
                (self._app([e for e in endpoints if not e.files]), config.port),
                (self._app([e for e in endpoints if e.files]), config.files_port),
            ]
        bases = []
        for app, port in apps:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, config.host, port)
            await site.start()
            bases.append(self._base_url(runner))
        self.api_base = bases[0]
        self.files_base = bases[-1]
        self._files.files_base = self.files_base

    def _base_url(self, runner: web.AppRunner) -> str:
        address = runner.addresses[0]
        host, port = address[0], address[1]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        """Close the listeners (in-flight requests get a second to finish)."""
        self._engine.close()
        with anyio.CancelScope(shield=True):
            for runner in reversed(self._runners):
                await runner.cleanup()
        self._runners.clear()

    # -- the pipeline -------------------------------------------------------------------

    def _json(
        self,
        ctx: _Ctx,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        headers = {
            "Request-Id": ctx.request_id,
            "Stripe-Version": ctx.request.headers.get("Stripe-Version", DEFAULT_STRIPE_VERSION),
        }
        retry = should_retry(status)
        if retry is not None:
            headers["Stripe-Should-Retry"] = retry
        if ctx.idempotency_key is not None:
            headers["Idempotency-Key"] = ctx.idempotency_key
        if extra:
            headers.update(extra)
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    def _error(self, ctx: _Ctx, err: HttpError) -> web.Response:
        return self._json(ctx, err.status, err.body(ctx.request_id, ctx.account), err.headers)

    def _abort(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        self._stats.resets += 1
        return _Aborted(status=599)

    async def _handle(self, ep: _Endpoint, request: web.Request) -> web.StreamResponse:
        ctx = _Ctx(request, new_id("req_", 14))
        try:
            response = await self._pipeline(ep, ctx)
        except HttpError as err:
            response = self._error(ctx, err)
        except web.HTTPException as exc:  # e.g. 413 from reading an oversized body
            response = self._error(ctx, HttpError(exc.status, exc.reason))
        except Exception:
            log.exception("endpoint %s failed", ep.label)
            response = self._error(ctx, self._internal_error())
        status = ctx.stat_status or response.status
        if isinstance(response, _Aborted):
            self._stats.record(ep.label, "reset")
        else:
            if status == 429:
                self._stats.http_429 += 1
            self._stats.record(ep.label, str(status))
        return response

    async def _pipeline(self, ep: _Endpoint, ctx: _Ctx) -> web.StreamResponse:
        request = ctx.request
        auth = self._auth.authenticate(request.headers.get("Authorization"))
        if isinstance(auth, AuthFailure):
            # Refused here, before the rate limiter and the idempotency store: a refused
            # request (401, or 403 for a key without Sigma access) uses no rate-limit
            # window and saves nothing under its Idempotency-Key. ctx.account stays None,
            # so the body has no request_log_url.
            headers = {"WWW-Authenticate": 'Basic realm="Stripe"'} if auth.status == 401 else None
            raise HttpError(auth.status, auth.message, headers=headers)
        ctx.account = auth
        admitted = (
            self._limiter.admit_files_read(auth.livemode)
            if ep.files
            else self._limiter.admit_api(auth.livemode, ep.label)
        )
        if not admitted:
            self._stats.rate_limited += 1
            raise self._rate_limit_error()
        reset_after = False
        if self._faults_active:
            faults = self._faults.for_request(auth.api_key)
            if faults.rate_limited:
                raise self._rate_limit_error()
            if faults.reset_before:
                return self._abort(request)
            if faults.server_error is not None:
                raise HttpError(
                    faults.server_error,
                    "An unknown error occurred while processing your request.",
                    error_type="api_error",
                )
            reset_after = faults.reset_after
            if reset_after and ep.method == "GET" and ep.files:
                return self._abort(request)  # a download has nothing to act on: no bytes sent
        await self._parse_params(ep, ctx)
        if ep.method == "POST":
            key = request.headers.get("Idempotency-Key")
            if key:
                ctx.idempotency_key = key
                response = await self._idempotent(ep, ctx, key)
                return self._abort(request) if reset_after else response
        reply = await self._execute(ep, ctx)
        if reset_after:
            return self._abort(request)
        if isinstance(reply, web.StreamResponse):
            return reply
        return self._json(ctx, reply[0], reply[1])

    def _rate_limit_error(self) -> HttpError:
        return HttpError(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )

    async def _execute(self, ep: _Endpoint, ctx: _Ctx) -> _Reply:
        if self.config.latency_s:
            await anyio.sleep(self.config.latency_s)
        return await ep.handler(ctx)

    async def _idempotent(self, ep: _Endpoint, ctx: _Ctx, key: str) -> web.StreamResponse:
        problem = key_error(key)
        if problem is not None:
            ctx.idempotency_key = None
            raise HttpError(400, problem, error_type="idempotency_error")
        assert ctx.account is not None
        scope = ctx.account.api_key
        fingerprint = Fingerprint.of(ep.label, ctx.request.path, sorted(ctx.params.items()))
        outcome = self._idempotency.begin(scope, key, fingerprint)
        if isinstance(outcome, Replay):
            self._stats.idempotent_replays += 1
            saved = outcome.response
            return self._json(
                ctx,
                saved.status,
                saved.body,
                {"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
            )
        if isinstance(outcome, InFlight):
            self._stats.idempotency_conflicts += 1
            raise HttpError(
                409, outcome.message, error_type="idempotency_error", code="idempotency_key_in_use"
            )
        if isinstance(outcome, Mismatch):
            self._stats.idempotency_mismatches += 1
            raise HttpError(400, outcome.message, error_type="idempotency_error")
        try:
            try:
                reply = await self._execute(ep, ctx)
            except HttpError as err:
                reply = (err.status, err.body(ctx.request_id, ctx.account))
            except Exception:  # a genuine internal error: saved and replayed, like Stripe
                log.exception("endpoint %s failed", ep.label)
                reply = (500, self._internal_error().body(ctx.request_id, ctx.account))
        except BaseException:  # cancelled (shutdown): nothing was answered, nothing saved
            self._idempotency.abandon(scope, key)
            raise
        assert isinstance(reply, tuple)
        status, body = reply
        if status in _NOT_SAVED:
            self._idempotency.abandon(scope, key)
        else:
            self._idempotency.complete(scope, key, SavedResponse(status, body, ctx.request_id))
        return self._json(ctx, status, body)

    def _internal_error(self) -> HttpError:
        return HttpError(500, "An unknown error occurred", error_type="api_error")

    async def _parse_params(self, ep: _Endpoint, ctx: _Ctx) -> None:
        request = ctx.request
        pairs: list[tuple[str, str]] = []
        if request.query_string:
            pairs = parse_qsl(request.query_string, keep_blank_values=True)
        if ep.method == "POST":
            mime = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
            body = await request.read()
            if mime and mime != "application/x-www-form-urlencoded":
                raise HttpError(
                    400,
                    f"Invalid request: unsupported Content-Type {mime}. Stripe's API takes "
                    "application/x-www-form-urlencoded request bodies.",
                )
            if body:
                try:
                    text = body.decode("utf-8")
                    pairs += parse_qsl(text, keep_blank_values=True, max_num_fields=1000)
                except (UnicodeDecodeError, ValueError):
                    raise HttpError(
                        400, "Invalid request: the body is not valid UTF-8 form data."
                    ) from None
        params: dict[str, str] = {}
        allowed = ep.params
        for name, value in pairs:
            if name not in allowed and not (name == "expand" or name.startswith("expand[")):
                raise HttpError(
                    400,
                    f"Received unknown parameter: {name}",
                    code="parameter_unknown",
                    param=name,
                )
            params[name] = value
        ctx.params = params

    async def _unknown_route(self, request: web.Request) -> web.StreamResponse:
        ctx = _Ctx(request, new_id("req_", 14))
        self._stats.record(f"{request.method} (unrecognized)", "404")
        return self._error(
            ctx,
            HttpError(
                404,
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            ),
        )

    def _loopback_only(self, request: web.Request, ctx: _Ctx) -> None:
        if request.remote not in _LOOPBACK:
            raise HttpError(403, "The emulator's statistics are served to loopback peers only.")

    async def _stats_view(self, request: web.Request) -> web.StreamResponse:
        ctx = _Ctx(request, new_id("req_", 14))
        try:
            self._loopback_only(request, ctx)
        except HttpError as err:
            return self._error(ctx, err)
        runs = request.query.get("runs", "").lower() in ("1", "true")
        return self._json(ctx, 200, dumps(self.stats(runs=runs)))

    async def _reset_stats_view(self, request: web.Request) -> web.StreamResponse:
        ctx = _Ctx(request, new_id("req_", 14))
        try:
            self._loopback_only(request, ctx)
        except HttpError as err:
            return self._error(ctx, err)
        self.reset_stats()
        return self._json(ctx, 200, b'{"reset":true}')

    # -- endpoints ----------------------------------------------------------------------

    def _sql_param(self, ctx: _Ctx, *, required: bool) -> str | None:
        sql = ctx.params.get("sql")
        if sql is None:
            if required:
                raise missing("sql")
            return None
        if not sql.strip():
            raise empty("sql")
        if len(sql) > MAX_SQL_LENGTH:
            raise too_long("sql", sql, MAX_SQL_LENGTH)
        return sql

    def _name_param(self, ctx: _Ctx) -> str | None:
        name = ctx.params.get("name")
        if name is not None and len(name) > MAX_NAME_LENGTH:
            raise too_long("name", name, MAX_NAME_LENGTH)
        return name or None

    async def _create_run(self, ctx: _Ctx) -> _Reply:
        params = ctx.params
        saved_id = params.get("from_saved_query")
        if saved_id is not None and "sql" in params:
            raise exclusive("sql", "from_saved_query")
        if saved_id is not None:
            if not saved_id:
                raise empty("from_saved_query")
            saved = self._saved.get(ctx.livemode, saved_id)
            if saved is None:
                raise no_such("saved query", saved_id, param="from_saved_query", status=400)
            sql = saved.sql
        else:
            sql = self._sql_param(ctx, required=True) or ""
        run = self._engine.create(ctx.livemode, sql, idempotency_key=ctx.idempotency_key)
        return 200, run.body()

    async def _retrieve_run(self, ctx: _Ctx) -> _Reply:
        run = self._engine.get(ctx.livemode, ctx.path_id)
        if run is None:
            raise no_such("query run", ctx.path_id)
        self._engine.note_poll(run)
        return 200, run.body()

    async def _create_saved(self, ctx: _Ctx) -> _Reply:
        sql = self._sql_param(ctx, required=True) or ""
        name = self._name_param(ctx)
        query = self._saved.create(ctx.livemode, sql=sql, name=name)
        return 200, dumps(query.to_dict())

    async def _retrieve_saved(self, ctx: _Ctx) -> _Reply:
        query = self._saved.get(ctx.livemode, ctx.path_id)
        if query is None:
            raise no_such("saved query", ctx.path_id)
        return 200, dumps(query.to_dict())

    async def _update_saved(self, ctx: _Ctx) -> _Reply:
        query = self._saved.get(ctx.livemode, ctx.path_id)
        if query is None:
            raise no_such("saved query", ctx.path_id)
        sql = self._sql_param(ctx, required=False)
        name = self._name_param(ctx)
        if sql is not None:
            query.sql = sql
        if "name" in ctx.params:
            query.name = name
        return 200, dumps(query.to_dict())

    async def _delete_saved(self, ctx: _Ctx) -> _Reply:
        if not self._saved.delete(ctx.livemode, ctx.path_id):
            raise no_such("saved query", ctx.path_id)
        return 200, dumps({"id": ctx.path_id, "object": "sigma.sigma_api_query", "deleted": True})

    def _page_args(self, ctx: _Ctx) -> tuple[int, str | None, str | None]:
        params = ctx.params
        raw = params.get("limit", "10")
        try:
            limit = int(raw)
        except ValueError:
            raise HttpError(
                400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param="limit"
            ) from None
        if limit < 1:
            raise HttpError(400, "This value must be greater than or equal to 1.", param="limit")
        if limit > 100:
            raise HttpError(400, "This value must be less than or equal to 100.", param="limit")
        after = params.get("starting_after") or None
        before = params.get("ending_before") or None
        if after is not None and before is not None:
            raise exclusive("starting_after", "ending_before")
        return limit, after, before

    async def _list_saved(self, ctx: _Ctx) -> _Reply:
        limit, after, before = self._page_args(ctx)
        try:
            items, has_more = self._saved.page(
                ctx.livemode, limit=limit, starting_after=after, ending_before=before
            )
        except UnknownCursor as exc:
            raise no_such("saved query", exc.object_id, param=exc.param, status=400) from None
        return 200, dumps(
            {
                "object": "list",
                "data": [q.to_dict() for q in items],
                "has_more": has_more,
                "url": "/v1/sigma/saved_queries",
            }
        )

    async def _list_scheduled(self, ctx: _Ctx) -> _Reply:
        # Scheduled runs come from the Dashboard's schedules; the emulator has none.
        _limit, after, before = self._page_args(ctx)
        cursor = after or before
        if cursor is not None:
            param = "starting_after" if after else "ending_before"
            raise no_such("scheduled query run", cursor, param=param, status=400)
        return 200, dumps(
            {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": "/v1/sigma/scheduled_query_runs",
            }
        )

    async def _retrieve_scheduled(self, ctx: _Ctx) -> _Reply:
        raise no_such("scheduled query run", ctx.path_id)

    def _file(self, ctx: _Ctx) -> ResultFile:
        file = self._files.get(ctx.livemode, ctx.path_id)
        if file is None:
            raise no_such("file upload", ctx.path_id)
        return file

    async def _retrieve_file(self, ctx: _Ctx) -> _Reply:
        return 200, dumps(self._file(ctx).to_dict(self.files_base))

    async def _file_contents(self, ctx: _Ctx) -> _Reply:
        file = self._file(ctx)
        self._engine.note_download(file.run_id)
        request = ctx.request
        size = file.size
        try:
            rng = request.http_range
            span = byte_range(rng.start, rng.stop, size)
        except ValueError:
            span = None
        if span is None:
            raise HttpError(
                416,
                f"The requested range is not satisfiable for a file of {size} bytes.",
                headers={"Content-Range": f"bytes */{size}"},
            )
        partial_content = "Range" in request.headers
        ctx.stat_status = 206 if partial_content else 200
        self._stats.downloads["started"] += 1
        headers = {
            "Request-Id": ctx.request_id,
            "Content-Type": _CSV_TYPE,
            "Content-Disposition": f'attachment; filename="{file.filename}"',
            "Stripe-Version": request.headers.get("Stripe-Version", DEFAULT_STRIPE_VERSION),
        }
        fault = self._faults.for_download() if self._faults_active else None
        if fault is None:
            # Counted when committed: the client may hold the bytes before sendfile returns.
            self._stats.bytes_served += span[1]
            return web.FileResponse(file.path, headers=headers)
        self._stats.downloads[fault] += 1
        offset, count = span
        return await self._stream_faulty(
            request, file, offset, count, partial_content, fault == "cut", headers
        )

    async def _stream_faulty(
        self,
        request: web.Request,
        file: ResultFile,
        offset: int,
        count: int,
        partial_content: bool,
        cut: bool,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A cut (part of the body, then the connection closes) or throttled download.

        A client may go away mid-stream (a slow download is exactly where clients time
        out): writing then raises ``ConnectionError`` (aiohttp's
        ``ClientConnectionResetError`` is one). That is normal, not a server failure: it
        is logged as one INFO line and counted as ``downloads["dropped"]``. Anything else
        propagates, and cancellation (the server shutting down) is never caught here.
        """
        response = web.StreamResponse(status=206 if partial_content else 200, headers=headers)
        response.headers["Accept-Ranges"] = "bytes"
        if partial_content:
            response.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{file.size}"
        response.content_length = count
        limit = int(count * self._faults.cut_fraction()) if cut else count
        bps = self.config.faults.slow_bps
        chunk = _STREAM_CHUNK if cut else max(1, min(_STREAM_CHUNK, bps // 10))
        sent = 0
        try:
            await response.prepare(request)
            async with await anyio.open_file(file.path, "rb") as source:
                await source.seek(offset)
                while sent < limit:
                    data = await source.read(min(chunk, limit - sent))
                    if not data:
                        break
                    await response.write(data)
                    sent += len(data)
                    self._stats.bytes_served += len(data)
                    if not cut:
                        await anyio.sleep(len(data) / bps)
            if not cut:
                await response.write_eof()
        except ConnectionError as exc:
            self._stats.downloads["dropped"] += 1
            log.info(
                "download of %s stopped after %d of %d bytes: the client went away (%s)",
                file.id,
                sent,
                count,
                type(exc).__name__,
            )
            # aiohttp finishes this response on the dead connection quietly (debug log).
            return response
        if cut:
            # close(), not abort(): the part already written reaches the client, then EOF
            # arrives short of Content-Length, which is what a cut download looks like.
            transport = request.transport
            if transport is not None:
                transport.close()
        return response
