"""Tests for batchrunner.emulator.auth: key shapes, Bearer/Basic, masked 401s and 403s."""

from __future__ import annotations

import json
from base64 import b64encode

import aiohttp
import pytest
from conftest import MakeEmulator, assert_stripe_error, bearer, call

from batchrunner.emulator import EmulatorHandle
from batchrunner.emulator.auth import (
    MISSING_KEY_MESSAGE,
    Account,
    Authenticator,
    AuthFailure,
    credential,
    default_keys,
    key_livemode,
    permission_message,
)
from batchrunner.emulator.ratelimit import RateLimits
from batchrunner.errors import ConfigError

ALLOWED_KEY = "sk_test_AllowedKey0000000000000001"
NO_SIGMA_KEY = "rk_test_nosigmaRestrictedKey000002"  # a restricted key without Sigma access


class FrozenClock:
    """A rate-limiter clock that never moves: the window never slides during a test."""

    def __call__(self) -> float:
        return 1000.0


@pytest.mark.parametrize(
    ("key", "live"),
    [
        ("sk_test_abc123", False),
        ("sk_live_abc123", True),
        ("rk_test_abc123", False),
        ("rk_live_abc123", True),
        ("pk_test_abc123", None),
        ("sk_test_", None),
        ("sk_test_abc-123", None),
        ("whatever", None),
    ],
)
def test_key_shapes(key: str, live: bool | None) -> None:
    """Only sk_/rk_ test/live keys with an alphanumeric tail are keys; mode follows them."""
    assert key_livemode(key) is live


def test_default_keys_are_deterministic_per_seed() -> None:
    """The default keys depend on the seed only, and look like sk_test_emu + 24 chars."""
    test, live = default_keys(7)
    assert (test, live) == default_keys(7) and test != default_keys(8)[0]
    assert test.startswith("sk_test_emu") and len(test) == len("sk_test_emu") + 24
    assert key_livemode(test) is False and key_livemode(live) is True


def test_bearer_and_basic_carry_the_key() -> None:
    """Bearer (any case) and Basic with the key as user name (empty password) both work."""
    key = "sk_test_abc"
    basic = b64encode(f"{key}:".encode()).decode()
    assert credential(f"Bearer {key}") == key
    assert credential(f"bearer  {key} ") == key
    assert credential(f"Basic {basic}") == key
    assert credential(None) is None and credential("Bearer ") is None


def test_authenticator_accepts_known_keys_only_and_masks() -> None:
    """Known keys map to their mode; unknown ones get Stripe's message with the key masked."""
    auth = Authenticator(("sk_test_aaaa1111", "rk_live_bbbb2222"))
    assert auth.authenticate("Bearer sk_test_aaaa1111") == Account("sk_test_aaaa1111", False)
    assert auth.authenticate("Bearer rk_live_bbbb2222") == Account("rk_live_bbbb2222", True)
    bad = auth.authenticate("Bearer sk_test_SecretSecretWxyz")
    assert isinstance(bad, AuthFailure)
    assert bad.message == "Invalid API Key provided: sk_test_********Wxyz"
    assert "SecretSecret" not in bad.message
    missing = auth.authenticate(None)
    assert isinstance(missing, AuthFailure) and missing.message == MISSING_KEY_MESSAGE


def test_restricted_key_without_sigma_is_a_403_failure_not_an_exception() -> None:
    """A known rk_..._nosigma key is refused with status 403 and the masked permission text."""
    auth = Authenticator(("sk_test_aaaa1111", NO_SIGMA_KEY))
    for _ in range(2):  # the second lookup comes from the header cache
        refused = auth.authenticate(f"Bearer {NO_SIGMA_KEY}")
        assert refused == AuthFailure(permission_message(NO_SIGMA_KEY), status=403)
    assert isinstance(refused, AuthFailure) and NO_SIGMA_KEY not in refused.message
    unknown = auth.authenticate("Bearer rk_test_nosigmaUnknown")
    assert isinstance(unknown, AuthFailure) and unknown.status == 401


def test_badly_shaped_configured_keys_are_refused() -> None:
    """Configuring a key that is not sk_/rk_ test/live is a ConfigError."""
    with pytest.raises(ConfigError):
        Authenticator(("pk_test_abc",))
    with pytest.raises(ConfigError):
        Authenticator(())


# -- over HTTP --------------------------------------------------------------------------


async def test_missing_and_unknown_keys_get_masked_401s(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """No key or an unknown key: 401 in Stripe's shape, key masked, Request-Id set."""
    url = f"{emulator.api_base}/v1/sigma/query_runs/qry_1"
    status, body, headers = await call(http, "GET", url, None)
    assert status == 401 and headers["Request-Id"].startswith("req_")
    assert assert_stripe_error(body)["message"] == MISSING_KEY_MESSAGE
    assert headers["Stripe-Should-Retry"] == "false" and "WWW-Authenticate" in headers
    secret = "sk_test_VeryDistinctiveSecret9876"
    async with http.get(url, headers=bearer(secret)) as resp:
        text = await resp.text()
        assert resp.status == 401
    assert "VeryDistinctive" not in text
    assert json.loads(text)["error"]["message"] == "Invalid API Key provided: sk_test_********9876"
    stats = emulator.stats()
    assert stats["requests"]["GET /v1/sigma/query_runs/{id}"] == {"401": 2}


async def test_basic_auth_with_the_key_as_user(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """HTTP Basic with the key as user name and an empty password authenticates."""
    async with http.post(
        f"{emulator.api_base}/v1/sigma/query_runs",
        data={"sql": "select 1"},
        headers={"Authorization": "Basic " + b64encode(f"{emulator.test_key}:".encode()).decode()},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["livemode"] is False


async def test_objects_live_in_the_mode_of_the_key(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """Live runs are livemode; a run is invisible in the other mode; rk_ keys share the mode."""
    keys = ("sk_test_aaaaaaaaaaaa1111", "rk_test_bbbbbbbbbbbb2222", "sk_live_cccccccccccc3333")
    async with make_emulator(api_keys=keys) as emu:
        assert (emu.test_key, emu.live_key) == (keys[0], keys[2])
        runs = f"{emu.api_base}/v1/sigma/query_runs"
        _, live_run, _ = await call(http, "POST", runs, keys[2], data={"sql": "select 1"})
        _, test_run, _ = await call(http, "POST", runs, keys[1], data={"sql": "select 1"})
        assert live_run["livemode"] is True and test_run["livemode"] is False
        status, body, _ = await call(http, "GET", f"{runs}/{live_run['id']}", keys[0])
        assert status == 404 and body["error"]["code"] == "resource_missing"
        assert (await call(http, "GET", f"{runs}/{test_run['id']}", keys[2]))[0] == 404
        status, got, _ = await call(http, "GET", f"{runs}/{test_run['id']}", keys[0])
        assert status == 200 and got["id"] == test_run["id"]
        assert emu.stats()["query_runs_created"] == {"total": 2, "test": 1, "live": 1}


async def test_forbidden_key_is_refused_before_the_rate_limiter(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """A burst from a no-Sigma key gets only 403s and uses none of the rate-limit window."""
    limits = RateLimits(test_global=2)
    async with make_emulator(
        api_keys=(ALLOWED_KEY, NO_SIGMA_KEY), rate_limits=limits, rate_clock=FrozenClock()
    ) as emu:
        url = f"{emu.api_base}/v1/sigma/query_runs/qry_1"
        statuses = [(await call(http, "GET", url, NO_SIGMA_KEY))[0] for _ in range(6)]
        assert statuses == [403] * 6
        status, body, headers = await call(http, "GET", url, NO_SIGMA_KEY)
        error = assert_stripe_error(body)
        assert status == 403 and error["message"] == permission_message(NO_SIGMA_KEY)
        assert error["request_log_url"] is None and "WWW-Authenticate" not in headers
        assert headers["Stripe-Should-Retry"] == "false"
        # The same instant on the frozen clock: the whole window of 2 is still free ...
        allowed = [(await call(http, "GET", url, ALLOWED_KEY))[0] for _ in range(3)]
        stats = emu.stats()
    assert allowed == [404, 404, 429]  # ... and really is 2 (the third is refused)
    assert stats["rate_limited"] == 1 and stats["http_429"] == 1
    assert stats["requests"]["GET /v1/sigma/query_runs/{id}"] == {"403": 7, "404": 2, "429": 1}


async def test_forbidden_key_saves_nothing_under_its_idempotency_key(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """A no-Sigma POST with an Idempotency-Key is a 403 that creates and saves nothing."""
    async with make_emulator(api_keys=(ALLOWED_KEY, NO_SIGMA_KEY)) as emu:
        url = f"{emu.api_base}/v1/sigma/query_runs"
        form = {"sql": "select 1"}
        idem = {"Idempotency-Key": "same-key-1"}
        for _ in range(2):
            status, body, headers = await call(
                http, "POST", url, NO_SIGMA_KEY, data=form, headers=idem
            )
            assert status == 403, body
            # Idempotency-Key is echoed only by requests that reached the idempotency step.
            assert "Idempotency-Key" not in headers and "Idempotent-Replayed" not in headers
        refused = emu.stats()
        status, run, headers = await call(http, "POST", url, ALLOWED_KEY, data=form, headers=idem)
        assert status == 200 and "Idempotent-Replayed" not in headers
        assert headers["Idempotency-Key"] == "same-key-1"
        accepted = emu.stats()
    assert refused["idempotency_keys_held"] == 0
    assert refused["query_runs_created"]["total"] == 0
    assert refused["runs_created_by_idempotency_key"] == {}
    assert refused["idempotent_replays"] == refused["idempotency_conflicts"] == 0
    assert refused["idempotency_mismatches"] == refused["rate_limited"] == 0
    assert refused["requests"] == {"POST /v1/sigma/query_runs": {"403": 2}}
    # The counter does move: the allowed key's request was saved and created a run.
    assert accepted["idempotency_keys_held"] == 1 and run["id"].startswith("qry_")
    assert accepted["query_runs_created"]["total"] == 1 and accepted["idempotent_replays"] == 0
