"""Tests for batchrunner.emulator.faults: spec parsing and deterministic decisions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from conftest import MakeEmulator, assert_stripe_error, bearer, call, wait_run

from batchrunner.emulator import EmulatorHandle
from batchrunner.emulator.faults import FAULT_KINDS, FaultInjector, FaultSpec, RequestFaults
from batchrunner.emulator.runs import SPURIOUS_MESSAGE
from batchrunner.errors import ConfigError


def test_chaos_preset_has_the_published_rates() -> None:
    """``chaos`` is 5xx 0.10, 429 0.05, resets 0.02 each, cut 0.02, slow 0.01, run 0.01."""
    spec = FaultSpec.parse("chaos")
    assert {k: spec.rate(k) for k in FAULT_KINDS} == {
        "5xx": 0.10,
        "429": 0.05,
        "reset_before": 0.02,
        "reset_after": 0.02,
        "cut_download": 0.02,
        "slow_download": 0.01,
        "run_failure": 0.01,
    }


def test_later_items_override_the_preset() -> None:
    """``chaos,5xx=0.2`` keeps chaos but raises 5xx; knobs parse as integers."""
    spec = FaultSpec.parse("chaos, 5xx=0.2, 429_burst=5, seed=9")
    assert spec.rate("5xx") == 0.2 and spec.rate("429") == 0.05
    assert spec.burst_429 == 5 and spec.seed == 9


def test_explicit_spec_and_round_trip() -> None:
    """A spec's text form parses back to the same spec; empty means no faults."""
    spec = FaultSpec.parse("5xx=0.1,429=0.05,reset_before=0.02,cut_download=0.5")
    assert FaultSpec.parse(str(spec)) == spec
    assert not FaultSpec.parse("").active and str(FaultSpec()) == "none"
    assert FaultSpec.parse("none") == FaultSpec()


@pytest.mark.parametrize("text", ["bogus", "5xx=2", "5xx=x", "teapot=0.1", "429_burst=a"])
def test_bad_specs_are_config_errors(text: str) -> None:
    """Unknown presets/kinds, rates outside [0, 1] and non-numbers are refused."""
    with pytest.raises(ConfigError):
        FaultSpec.parse(text)


def test_same_seed_same_decisions() -> None:
    """Two injectors with the same seed make the same decisions for the same events."""
    spec = FaultSpec.parse("chaos")
    runs = []
    for _ in range(2):
        inj = FaultInjector(spec, seed=3)
        runs.append(
            [inj.for_request("k") for _ in range(300)]
            + [inj.for_download() for _ in range(100)]
            + [inj.for_run() for _ in range(100)]
        )
    assert runs[0] == runs[1]
    other = FaultInjector(spec, seed=4)
    assert [other.for_request("k") for _ in range(300)] != runs[0][:300]


def test_kinds_roll_independent_dice() -> None:
    """Other kinds' rates and events do not change one kind's decisions."""
    low = FaultInjector(FaultSpec.parse("reset_after=0.3"), seed=1)
    high = FaultInjector(
        FaultSpec.parse("reset_after=0.3,cut_download=0.9,run_failure=0.9"), seed=1
    )
    a = [low.for_request("k").reset_after for _ in range(200)]
    b = []
    for _ in range(200):
        high.for_download()
        high.for_run()
        b.append(high.for_request("k").reset_after)
    assert a == b and any(a)


def test_rates_are_roughly_honoured() -> None:
    """A 0.25 rate injects about a quarter of the time over many events."""
    inj = FaultInjector(FaultSpec(http_5xx=0.25), seed=11)
    hits = sum(inj.for_request("k").server_error is not None for _ in range(4000))
    assert 850 < hits < 1150
    assert inj.counts["5xx"] == hits


def test_server_errors_are_500_502_or_503() -> None:
    """Injected 5xx statuses come from 500, 502 and 503, all of them."""
    inj = FaultInjector(FaultSpec(http_5xx=1.0), seed=2)
    assert {inj.for_request("k").server_error for _ in range(100)} == {500, 502, 503}


def test_429_comes_in_bursts_per_key() -> None:
    """A triggered 429 also refuses the next ``burst_429`` requests of that key only."""
    inj = FaultInjector(FaultSpec(http_429=0.05, burst_429=3), seed=5)
    decisions = [inj.for_request("a").rate_limited for _ in range(400)]
    first = decisions.index(True)
    assert decisions[first : first + 4] == [True] * 4
    inj = FaultInjector(FaultSpec(http_429=0.05, burst_429=3), seed=5)
    for _ in range(first + 1):
        inj.for_request("a")
    # "a" is inside its burst; "b" is not, so its requests pass (their own rolls miss).
    mixed = [(key, inj.for_request(key).rate_limited) for key in "babab"]
    assert mixed == [("b", False), ("a", True), ("b", False), ("a", True), ("b", False)]
    assert inj.counts["429"] == 1 + 2


def test_download_and_run_faults() -> None:
    """cut/slow decisions and run failures follow their rates; cut fractions are partial."""
    inj = FaultInjector(FaultSpec(cut_download=1.0, run_failure=1.0), seed=1)
    assert inj.for_download() == "cut" and inj.for_run()
    assert 0.1 <= inj.cut_fraction() <= 0.9
    slow = FaultInjector(FaultSpec(slow_download=1.0), seed=1)
    assert slow.for_download() == "slow"
    none = FaultInjector(FaultSpec(), seed=1)
    assert none.for_download() is None and not none.for_run()
    assert not none.for_request("k").any


# -- over HTTP --------------------------------------------------------------------------

SEED = 7  # the test emulator's seed (conftest), which the fault dice use by default


def predicted(spec: FaultSpec, n: int) -> list[RequestFaults]:
    """The first ``n`` request-level decisions an emulator with ``spec`` will make."""
    injector = FaultInjector(spec, seed=SEED)
    return [injector.for_request("any") for _ in range(n)]


def seed_where(
    make: Callable[[int], FaultSpec], want: Callable[[list[RequestFaults]], bool]
) -> FaultSpec:
    """The first spec (by dice seed) whose opening decisions satisfy ``want``."""
    for seed in range(1000):
        spec = make(seed)
        if want(predicted(spec, 5)):
            return spec
    raise AssertionError("no seed found")


@pytest.fixture
async def fresh_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that never reuses connections (so aiohttp never retries a reset GET)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def test_injected_5xx_happens_before_acting_and_is_not_saved(
    make_emulator: MakeEmulator, fresh_http: aiohttp.ClientSession
) -> None:
    """A 5xx fault creates nothing and binds no key: the retry with the key executes once."""
    spec = seed_where(
        lambda s: FaultSpec(http_5xx=0.5, seed=s),
        lambda d: d[0].server_error is not None and d[1].server_error is None,
    )
    async with make_emulator(faults=spec) as emu:
        url = f"{emu.api_base}/v1/sigma/query_runs"
        idem = {"Idempotency-Key": "k"}
        status, body, headers = await call(
            fresh_http, "POST", url, emu.test_key, data={"sql": "select 1"}, headers=idem
        )
        assert status in (500, 502, 503) and headers["Stripe-Should-Retry"] == "true"
        assert_stripe_error(body, type_="api_error")
        assert emu.stats()["query_runs_created"]["total"] == 0
        status, _, headers = await call(
            fresh_http, "POST", url, emu.test_key, data={"sql": "select 1"}, headers=idem
        )
        assert status == 200 and "Idempotent-Replayed" not in headers
        stats = emu.stats()
    assert stats["runs_created_by_idempotency_key"] == {"k": 1}
    assert stats["faults_injected"]["5xx"] == 1


async def test_reset_after_acts_then_drops_the_connection(
    make_emulator: MakeEmulator, fresh_http: aiohttp.ClientSession
) -> None:
    """reset_after: the run exists and the key is saved, so the retry is a replay."""
    spec = seed_where(
        lambda s: FaultSpec(reset_after=0.5, seed=s),
        lambda d: d[0].reset_after and not d[1].reset_after,
    )
    async with make_emulator(faults=spec) as emu:
        url = f"{emu.api_base}/v1/sigma/query_runs"
        idem = {"Idempotency-Key": "k"}
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(
                fresh_http, "POST", url, emu.test_key, data={"sql": "select 1"}, headers=idem
            )
        assert emu.stats()["runs_created_by_idempotency_key"] == {"k": 1}
        status, run, headers = await call(
            fresh_http, "POST", url, emu.test_key, data={"sql": "select 1"}, headers=idem
        )
        assert status == 200 and headers["Idempotent-Replayed"] == "true"
        stats = emu.stats()
    assert stats["runs_created_by_idempotency_key"] == {"k": 1}
    assert stats["requests"]["POST /v1/sigma/query_runs"] == {"reset": 1, "200": 1}
    assert run["id"].startswith("qry_")


async def test_reset_before_creates_nothing(
    make_emulator: MakeEmulator, fresh_http: aiohttp.ClientSession
) -> None:
    """reset_before: the connection drops and no run exists."""
    async with make_emulator(faults=FaultSpec(reset_before=1.0)) as emu:
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(
                fresh_http,
                "POST",
                f"{emu.api_base}/v1/sigma/query_runs",
                emu.test_key,
                data={"sql": "select 1"},
                headers={"Idempotency-Key": "k"},
            )
        stats = emu.stats()
    assert stats["query_runs_created"]["total"] == 0
    assert stats["faults_injected"]["reset_before"] == 1 and stats["connection_resets"] == 1


async def test_fault_429_and_stats_outside_v1(
    make_emulator: MakeEmulator, fresh_http: aiohttp.ClientSession
) -> None:
    """An injected 429 has Stripe's rate_limit shape; /_emulator routes are never faulted."""
    async with make_emulator(faults=FaultSpec(http_429=1.0, http_5xx=1.0)) as emu:
        status, body, _ = await call(
            fresh_http, "GET", f"{emu.api_base}/v1/sigma/query_runs/qry_1", emu.test_key
        )
        assert status == 429 and assert_stripe_error(body)["code"] == "rate_limit"
        for base in (emu.api_base, emu.files_base):
            assert (await call(fresh_http, "GET", f"{base}/_emulator/stats", None))[0] == 200
        stats = emu.stats()
    assert stats["http_429"] == 1 and stats["rate_limited"] == 0
    assert stats["faults_injected"]["429"] == 1


async def finished_file(http: aiohttp.ClientSession, emu: EmulatorHandle) -> str:
    """Run a 200-row query and return its download URL."""
    _, run, _ = await call(
        http,
        "POST",
        f"{emu.api_base}/v1/sigma/query_runs",
        emu.test_key,
        data={"sql": "select * from balance_transactions limit 200"},
    )
    done = await wait_run(http, emu, run["id"])
    return f"{emu.files_base}/v1/files/{done['result']['file']}/contents"


async def test_cut_download_sends_part_then_closes(
    make_emulator: MakeEmulator, fresh_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """cut_download: full Content-Length, part of the body, then the connection ends."""
    async with make_emulator(faults=FaultSpec(cut_download=1.0)) as emu:
        url = await finished_file(fresh_http, emu)
        chunks: list[bytes] = []

        async def read_all(resp: aiohttp.ClientResponse) -> None:
            async for chunk in resp.content.iter_any():
                chunks.append(chunk)

        async with fresh_http.get(url, headers=bearer(emu.test_key)) as resp:
            assert resp.status == 200
            length = int(resp.headers["Content-Length"])
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_all(resp)
        received = sum(map(len, chunks))
        stats = emu.stats()
    assert 0 < received < length
    assert stats["downloads"]["cut"] == 1 and stats["bytes_served"] == received


async def test_slow_download_is_complete(
    make_emulator: MakeEmulator, fresh_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """slow_download throttles but delivers the whole file, honouring Range too."""
    async with make_emulator(faults=FaultSpec(slow_download=1.0, slow_bps=2_000_000)) as emu:
        url = await finished_file(fresh_http, emu)
        status, body, headers = await call(fresh_http, "GET", url, emu.test_key)
        assert status == 200 and int(headers["Content-Length"]) == len(body.encode())
        async with fresh_http.get(url, headers={**bearer(emu.test_key), "Range": "bytes=4-"}) as r:
            assert r.status == 206 and await r.read() == body.encode()[4:]
        stats = emu.stats()
    reference = tmp_path / "ref.csv"
    emu.warehouse.execute_to_csv("select * from balance_transactions limit 200", reference)
    assert body.encode() == reference.read_bytes()
    assert stats["downloads"]["slow"] == 2


async def test_run_failure_fails_the_run(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """run_failure: the create succeeds, the run ends failed with an internal error message."""
    async with make_emulator(faults=FaultSpec(run_failure=1.0)) as emu:
        _, run, _ = await call(
            http,
            "POST",
            f"{emu.api_base}/v1/sigma/query_runs",
            emu.test_key,
            data={"sql": "select 1"},
        )
        done = await wait_run(http, emu, run["id"])
    assert done["status"] == "failed" and done["error"] == {"message": SPURIOUS_MESSAGE}
