"""Tests for batchrunner.emulator.idempotency: the store behind Idempotency-Key."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest
from conftest import MakeEmulator, assert_stripe_error, call

from batchrunner.emulator import EmulatorHandle
from batchrunner.emulator.idempotency import (
    Fingerprint,
    IdempotencyStore,
    InFlight,
    Mismatch,
    Proceed,
    Replay,
    SavedResponse,
    key_error,
)
from batchrunner.emulator.server import EmulatorServer

FP = Fingerprint.of("POST /v1/sigma/query_runs", "/v1/sigma/query_runs", [("sql", "select 1")])


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_response_is_replayed_even_a_500() -> None:
    """After complete(), the same key and params get the saved response, whatever it was."""
    store = IdempotencyStore()
    assert isinstance(store.begin("sk", "k", FP), Proceed)
    store.complete("sk", "k", SavedResponse(500, b'{"error":{}}', "req_1"))
    outcome = store.begin("sk", "k", FP)
    assert outcome == Replay(SavedResponse(500, b'{"error":{}}', "req_1"))


def test_in_flight_key_conflicts() -> None:
    """While the first request is processing, the same key is a conflict (409)."""
    store = IdempotencyStore()
    store.begin("sk", "k", FP)
    assert isinstance(store.begin("sk", "k", FP), InFlight)


def test_other_params_or_endpoint_mismatch() -> None:
    """The same key with other parameters or another endpoint is a mismatch (400)."""
    store = IdempotencyStore()
    store.begin("sk", "k", FP)
    store.complete("sk", "k", SavedResponse(200, b"{}", "req_1"))
    other = Fingerprint.of(FP.endpoint, FP.path, [("sql", "select 2")])
    assert isinstance(store.begin("sk", "k", other), Mismatch)
    elsewhere = Fingerprint.of("POST /v1/sigma/saved_queries", "/v1/sigma/saved_queries", [])
    outcome = store.begin("sk", "k", elsewhere)
    assert isinstance(outcome, Mismatch) and "same endpoint" in outcome.message


def test_parameter_order_does_not_matter() -> None:
    """Fingerprints sort parameters, so reordered forms replay."""
    a = Fingerprint.of("POST /x", "/x", [("a", "1"), ("b", "2")])
    b = Fingerprint.of("POST /x", "/x", [("b", "2"), ("a", "1")])
    assert a == b


def test_abandoned_keys_are_not_saved() -> None:
    """A request refused before executing leaves the key free for a different request."""
    store = IdempotencyStore()
    store.begin("sk", "k", FP)
    store.abandon("sk", "k")
    other = Fingerprint.of(FP.endpoint, FP.path, [("sql", "select 2")])
    assert isinstance(store.begin("sk", "k", other), Proceed)


def test_keys_are_scoped_per_api_key() -> None:
    """The same idempotency key under another API key is a new request."""
    store = IdempotencyStore()
    store.begin("sk_a", "k", FP)
    assert isinstance(store.begin("sk_b", "k", FP), Proceed)


def test_saved_responses_expire_after_the_ttl() -> None:
    """After 24 hours a key is pruned and executes again."""
    clock = FakeClock()
    store = IdempotencyStore(clock=clock)
    store.begin("sk", "k", FP)
    store.complete("sk", "k", SavedResponse(200, b"{}", "req_1"))
    clock.now += 24 * 3600 - 1
    assert isinstance(store.begin("sk", "k", FP), Replay)
    clock.now += 2
    assert isinstance(store.begin("sk", "k", FP), Proceed)
    assert len(store) == 1


def test_key_length_limit() -> None:
    """Keys up to 255 characters are fine; longer ones are refused."""
    assert key_error("k" * 255) is None
    assert "255" in (key_error("k" * 256) or "")


# -- over HTTP --------------------------------------------------------------------------


def runs_url(emu: EmulatorHandle) -> str:
    return f"{emu.api_base}/v1/sigma/query_runs"


async def test_same_key_replays_the_first_response(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """A repeat with the same key and params gets the same body, marked replayed; one run."""
    idem = {"Idempotency-Key": "k-1"}
    form = {"sql": "select 1 as a"}
    status, first, h1 = await call(
        http, "POST", runs_url(emulator), emulator.test_key, data=form, headers=idem
    )
    assert status == 200 and "Idempotent-Replayed" not in h1
    assert h1["Idempotency-Key"] == "k-1"
    status, second, h2 = await call(
        http, "POST", runs_url(emulator), emulator.test_key, data=form, headers=idem
    )
    assert status == 200 and second == first
    assert h2["Idempotent-Replayed"] == "true" and h2["Original-Request"] == h1["Request-Id"]
    assert h2["Request-Id"] != h1["Request-Id"]
    stats = emulator.stats()
    assert stats["runs_created_by_idempotency_key"] == {"k-1": 1}
    assert stats["idempotent_replays"] == 1


async def test_same_key_other_params_is_an_idempotency_error(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Reusing a key with other parameters or on another endpoint is a 400 idempotency_error."""
    idem = {"Idempotency-Key": "k-2"}
    key = emulator.test_key
    await call(http, "POST", runs_url(emulator), key, data={"sql": "select 1"}, headers=idem)
    status, body, headers = await call(
        http, "POST", runs_url(emulator), key, data={"sql": "select 2"}, headers=idem
    )
    assert status == 400 and headers["Stripe-Should-Retry"] == "false"
    assert_stripe_error(body, type_="idempotency_error")
    status, body, _ = await call(
        http,
        "POST",
        f"{emulator.api_base}/v1/sigma/saved_queries",
        key,
        data={"sql": "select 1"},
        headers=idem,
    )
    assert status == 400 and body["error"]["type"] == "idempotency_error"
    assert emulator.stats()["query_runs_created"]["total"] == 1


async def test_validation_failures_are_not_saved(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """A 400 for bad params does not bind the key: the corrected request executes."""
    idem = {"Idempotency-Key": "k-3"}
    key = emulator.test_key
    status, _, _ = await call(
        http, "POST", runs_url(emulator), key, data={"sqll": "select 1"}, headers=idem
    )
    assert status == 400
    status, _, headers = await call(
        http, "POST", runs_url(emulator), key, data={"sql": "select 1"}, headers=idem
    )
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert emulator.stats()["runs_created_by_idempotency_key"] == {"k-3": 1}


async def test_not_found_answers_are_saved_and_replayed(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """A 404 comes from an executing endpoint, so it is saved like any other answer."""
    idem = {"Idempotency-Key": "k-4"}
    url = f"{emulator.api_base}/v1/sigma/saved_queries/qfl_nope"
    first = await call(http, "POST", url, emulator.test_key, data={"sql": "s"}, headers=idem)
    second = await call(http, "POST", url, emulator.test_key, data={"sql": "s"}, headers=idem)
    assert first[0] == second[0] == 404 and first[1] == second[1]
    assert second[2]["Idempotent-Replayed"] == "true"


async def test_concurrent_same_key_gets_409(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """While the first request is processing, a second with the same key gets a 409."""
    async with make_emulator(latency_s=0.5) as emu:
        results: list[tuple[int, Any]] = []

        async def post() -> None:
            status, body, headers = await call(
                http,
                "POST",
                runs_url(emu),
                emu.test_key,
                data={"sql": "select 1"},
                headers={"Idempotency-Key": "k-5"},
            )
            results.append((status, body))
            if status == 409:
                assert headers["Stripe-Should-Retry"] == "true"

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            tg.start_soon(post)
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 409]
        conflict = next(body for status, body in results if status == 409)
        assert conflict["error"]["code"] == "idempotency_key_in_use"
        stats = emu.stats()
        assert stats["idempotency_conflicts"] == 1
        assert stats["runs_created_by_idempotency_key"] == {"k-5": 1}
        # The conflict was not saved: the key now replays the first answer.
        status, _, headers = await call(
            http,
            "POST",
            runs_url(emu),
            emu.test_key,
            data={"sql": "select 1"},
            headers={"Idempotency-Key": "k-5"},
        )
        assert status == 200 and headers["Idempotent-Replayed"] == "true"


async def test_keys_are_per_api_key_and_at_most_255_chars(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """The same key under two API keys makes two runs; a 256-char key is a 400."""
    keys = ("sk_test_aaaaaaaaaaaa1111", "rk_test_bbbbbbbbbbbb2222")
    async with make_emulator(api_keys=keys) as emu:
        for api_key in keys:
            status, _, headers = await call(
                http,
                "POST",
                runs_url(emu),
                api_key,
                data={"sql": "select 1"},
                headers={"Idempotency-Key": "shared"},
            )
            assert status == 200 and "Idempotent-Replayed" not in headers
        assert emu.stats()["runs_created_by_idempotency_key"] == {"shared": 2}
        status, body, _ = await call(
            http,
            "POST",
            runs_url(emu),
            keys[0],
            data={"sql": "select 1"},
            headers={"Idempotency-Key": "k" * 256},
        )
        assert status == 400 and body["error"]["type"] == "idempotency_error"
        status, _, _ = await call(
            http,
            "POST",
            runs_url(emu),
            keys[0],
            data={"sql": "select 1"},
            headers={"Idempotency-Key": "k" * 255},
        )
        assert status == 200


async def test_get_ignores_idempotency_keys(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """GET requests carry no key semantics: nothing is replayed."""
    url = f"{emulator.api_base}/v1/sigma/query_runs/qry_x"
    for _ in range(2):
        status, _, headers = await call(
            http, "GET", url, emulator.test_key, headers={"Idempotency-Key": "g"}
        )
        assert status == 404 and "Idempotent-Replayed" not in headers


async def test_genuine_internal_errors_are_saved(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 raised while the endpoint executed is saved and replayed, as Stripe says."""

    async def boom(self: EmulatorServer, ctx: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(EmulatorServer, "_create_saved", boom)
    async with make_emulator() as emu:
        url = f"{emu.api_base}/v1/sigma/saved_queries"
        idem = {"Idempotency-Key": "k-500"}
        first = await call(http, "POST", url, emu.test_key, data={"sql": "s"}, headers=idem)
        second = await call(http, "POST", url, emu.test_key, data={"sql": "s"}, headers=idem)
    assert first[0] == second[0] == 500 and first[1] == second[1]
    assert_stripe_error(first[1], type_="api_error")
    assert first[2]["Stripe-Should-Retry"] == "true"
    assert second[2]["Idempotent-Replayed"] == "true"
