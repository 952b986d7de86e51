"""Tests for batchrunner.emulator.auth: key shapes, Bearer/Basic and masked 401 messages."""

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
)
from batchrunner.errors import ConfigError


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
