"""API keys the way Stripe takes them: Bearer or Basic, four key shapes, mode from the key.

``Authorization: Bearer sk_test_...`` and ``Authorization: Basic base64("sk_test_...:")``
(the key as user name, password ignored) both work. A key is ``sk_test_``, ``sk_live_``,
``rk_test_`` or ``rk_live_`` followed by letters and digits; its ``_live_``/``_test_``
decides ``livemode``, and the emulator's objects live per mode. A missing, malformed or
unknown key gets Stripe's 401 message, with the key masked by
:func:`batchrunner.errors.mask_secret` (never echoed whole).

A configured restricted key whose secret part starts with ``nosigma`` (``rk_test_nosigma...``)
stands for a restricted key created without the Sigma permission: it is known, and every
request made with it is refused with Stripe's 403 message (an ``invalid_request_error`` that
names the missing permission), so that clients can be tested against a key that is valid but
not allowed. Both refusals come back as an :class:`AuthFailure` carrying its status, so the
server answers them before rate limiting and idempotency: a refused request never uses the
rate-limit window and never saves anything under an ``Idempotency-Key``.
"""

from __future__ import annotations

import binascii
import random
import string
from base64 import b64decode
from dataclasses import dataclass
from typing import Final, Literal

from batchrunner.errors import ConfigError, mask_secret

KEY_PREFIXES: Final = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
_KEY_CHARS: Final = frozenset(string.ascii_letters + string.digits)
_ALPHABET: Final = string.ascii_letters + string.digits

#: The secret part of a restricted key without the Sigma permission starts with this.
NO_SIGMA_MARK: Final = "nosigma"

MISSING_KEY_MESSAGE: Final = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)


@dataclass(frozen=True, slots=True)
class Account:
    """Who is calling: the key used and the mode it selects."""

    api_key: str
    livemode: bool

    @property
    def mode(self) -> str:
        """``"live"`` or ``"test"``."""
        return "live" if self.livemode else "test"


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was refused: 401 (no or unknown key) or 403 (key lacks Sigma access).

    The message is safe to send back (keys in it are masked).
    """

    message: str
    status: Literal[401, 403] = 401


def key_livemode(key: str) -> bool | None:
    """``True``/``False`` for a well-shaped live/test key, ``None`` for any other string."""
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest and _KEY_CHARS.issuperset(rest):
                return "_live_" in prefix
            return None
    return None


def lacks_sigma_permission(key: str) -> bool:
    """Whether ``key`` is a restricted key configured without the Sigma permission."""
    return key.startswith(("rk_test_", "rk_live_")) and key[8:].startswith(NO_SIGMA_MARK)


def permission_message(key: str) -> str:
    """Stripe's 403 message for a restricted key that lacks a permission (key masked)."""
    return (
        f"The provided key '{mask_secret(key)}' does not have the required permissions for "
        "this endpoint on account 'acct_emulator'. Having the 'rak_sigma_query_write' "
        "permission would allow this request to continue."
    )


def default_keys(seed: int) -> tuple[str, str]:
    """The emulator's default (test, live) secret keys, the same for the same seed."""
    rng = random.Random(f"emulator-keys:{seed}")
    test = "sk_test_emu" + "".join(rng.choices(_ALPHABET, k=24))
    live = "sk_live_emu" + "".join(rng.choices(_ALPHABET, k=24))
    return test, live


def credential(authorization: str | None) -> str | None:
    """The key carried by an ``Authorization`` header (Bearer, or Basic with the key as user)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return value or None
        user, _, _password = decoded.partition(":")
        return user or None
    return authorization.strip() or None


class Authenticator:
    """Check ``Authorization`` headers against the configured keys (valid headers cached)."""

    __slots__ = ("_accounts", "_cache")

    def __init__(self, keys: tuple[str, ...]) -> None:
        accounts: dict[str, Account] = {}
        for key in keys:
            livemode = key_livemode(key)
            if livemode is None:
                shapes = ", ".join(p + "..." for p in KEY_PREFIXES)
                raise ConfigError(f"API key {mask_secret(key)} is not shaped like {shapes}")
            accounts[key] = Account(api_key=key, livemode=livemode)
        if not accounts:
            raise ConfigError("the emulator needs at least one API key")
        self._accounts = accounts
        # Header value -> account, for headers that authenticated (bounded by the keys).
        self._cache: dict[str, Account] = {}

    def authenticate(self, authorization: str | None) -> Account | AuthFailure:
        """The account for a header, or why it is refused.

        A missing, malformed or unknown key is a 401; a restricted key without the Sigma
        permission (see :func:`lacks_sigma_permission`) is a 403.
        """
        if authorization is not None:
            hit = self._cache.get(authorization)
            if hit is not None:
                return self._permitted(hit)
        key = credential(authorization)
        if key is None:
            return AuthFailure(MISSING_KEY_MESSAGE)
        account = self._accounts.get(key)
        if account is None:
            return AuthFailure(f"Invalid API Key provided: {mask_secret(key)}")
        if len(self._cache) < 1024:
            self._cache[authorization or ""] = account
        return self._permitted(account)

    @staticmethod
    def _permitted(account: Account) -> Account | AuthFailure:
        if lacks_sigma_permission(account.api_key):
            return AuthFailure(permission_message(account.api_key), status=403)
        return account
